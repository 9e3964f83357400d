//! Shared by the Kafka integration tests (`kafka_*.rs`): produce and read records with rdkafka,
//! run `feedline` on a pipeline text, scrape `/metrics`. Everything is bounded in time.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use feedline_testkit::Feedline;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value as JSON (panics when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or_default()).unwrap()
    }
}

#[derive(Default)]
struct Deliveries {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Next offset per partition (max delivered offset + 1).
    ends: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let mut ends = self.ends.lock().unwrap();
                let end = ends.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("test producer: delivery failed: {e}");
                }
            }
        }
    }
}

/// Produce `records` (key, value; `None` value = tombstone) to `topic` in ordinary batches; waits
/// for every delivery and returns the end offset of each partition written to.
pub fn produce<I>(brokers: &str, topic: &str, records: I) -> HashMap<i32, i64>
where
    I: IntoIterator<Item = (Option<String>, Option<Vec<u8>>)>,
{
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("linger.ms", "5");
    produce_with(config, topic, records)
}

/// Produce one record per record batch. Input topics that a consumer will re-read from a
/// committed offset (restarts, rebalances, pause/resume) need this on tansu 0.6.0: a fetch from
/// an offset inside a batch returns the *next* batch, silently skipping the rest of that one
/// (measured: asking for offset 1 of a 1068-record batch returns offset 1068 first). Apache Kafka
/// returns the containing batch and the client skips to the offset, so nothing is lost there.
pub fn produce_unbatched<I>(brokers: &str, topic: &str, records: I) -> HashMap<i32, i64>
where
    I: IntoIterator<Item = (Option<String>, Option<Vec<u8>>)>,
{
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("max.in.flight", "100")
        .set("linger.ms", "1");
    produce_with(config, topic, records)
}

fn produce_with<I>(config: ClientConfig, topic: &str, records: I) -> HashMap<i32, i64>
where
    I: IntoIterator<Item = (Option<String>, Option<Vec<u8>>)>,
{
    let producer: BaseProducer<Deliveries> = config.create_with_context(Deliveries::default()).unwrap();
    let mut sent = 0u64;
    for (key, value) in records {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        if let Some(v) = value.as_deref() {
            record = record.payload(v);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
                Err((e, _)) => panic!("test producer: {e}"),
            }
        }
        sent += 1;
        if sent.is_multiple_of(1000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(180)).unwrap();
    let ctx = producer.context();
    assert_eq!(ctx.failed.load(Ordering::Relaxed), 0, "test producer lost records");
    assert_eq!(ctx.ok.load(Ordering::Relaxed), sent);
    let ends = ctx.ends.lock().unwrap().clone();
    ends
}

/// Read every partition of `topics` from the beginning (no group) until `done(records)` holds
/// and nothing new arrived for `idle`, or `timeout` passes. Counting by reading is the only
/// reliable way on tansu, whose high-water marks are wrong.
pub fn read_all(
    brokers: &str,
    topics: &[&str],
    idle: Duration,
    timeout: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", std::process::id())) // assign() needs one; nothing is committed
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
            }
        }
    }
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut last_new = Instant::now();
    let mut records = Vec::new();
    let mut satisfied = false;
    while started.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records.push(Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                last_new = Instant::now();
                satisfied = false;
            }
            Some(Err(e)) => eprintln!("test consumer: {e}"),
            None => {
                if !satisfied {
                    satisfied = done(&records);
                }
                if satisfied && last_new.elapsed() >= idle {
                    return records;
                }
            }
        }
    }
    records
}

/// The group's committed offset per partition of `topic` (-1001 = none).
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1001,
                },
            )
        })
        .collect()
}

pub use feedline_testkit::pipeline::{http_get, listen_addr, metric_sum, Workdir};

/// `feedline run <pipeline> --listen 127.0.0.1:0`, logging to `log` without colours.
pub fn run_feedline(pipeline: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Feedline {
    let mut env = env.to_vec();
    env.push(("NO_COLOR", "1")); // plain log lines to search
    feedline_testkit::pipeline::run_pipeline(pipeline, data_dir, log, env.as_slice(), &[])
}

/// A topic → topic pipeline `name` in consumer group `group`, committing every 200 ms, with a
/// 6 s session timeout so a killed member is replaced quickly.
pub fn topic_to_topic(name: &str, brokers: &str, group: &str, input: &str, output: &str) -> String {
    format!(
        r#"name = "{name}"

[source]
type = "kafka"
brokers = "{brokers}"
group_id = "{group}"
topics = ["{input}"]
commit_interval_ms = 200

[source.librdkafka]
"fetch.wait.max.ms" = 10
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500

[[sinks]]
type = "kafka"
brokers = "{brokers}"
topic = "{output}"
"#
    )
}

/// Partitions named in log lines containing `what` (e.g. "kafka partitions assigned"), in order.
pub fn logged_partitions(log: &str, what: &str) -> Vec<Vec<String>> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split_once("partitions=").map(|(_, p)| p))
        .map(|p| p.split(", ").map(|s| s.trim().to_owned()).collect())
        .collect()
}

/// How many times each key occurs.
pub fn key_counts(records: &[Record]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry(r.key.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    counts
}

/// A small deterministic PRNG (xorshift64*), seeded and printed by the tests that use it.
pub struct Rng(pub u64);

impl Rng {
    pub fn from_time() -> Self {
        let seed =
            std::env::var("FEEDLINE_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
                    | 1
            });
        eprintln!("random seed: {seed} (FEEDLINE_TEST_SEED={seed} repeats this run)");
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}
