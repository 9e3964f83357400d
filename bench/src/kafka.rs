//! `feedline-bench kafka`: Kafka → `extract_activation` → Kafka next to a raw librdkafka
//! consume→produce pipe, same broker, same run, same records.
//!
//! Input: N activation-completion messages (~1 KB JSON, the generator's `activation` shape) in a
//! 4-partition topic. Each run reads all of them from the beginning as a fresh consumer group and
//! writes to its own output topic with an idempotent producer (`acks=all`); a run ends when the
//! N-th record is acknowledged.
//!
//! - feedline: the kafka source (JSON decoding, delivery tracking, commits of done offsets) →
//!   `extract_activation` → the kafka sink (JSON encoding, one delivery report per event).
//! - raw: one thread polls librdkafka and hands each record's bytes to a producer; no parsing.
//!
//! The broker is the test kit's tansu (from `FEEDLINE_TANSU` or `scripts/install-tansu.sh`'s
//! location), unless `--brokers` names one. Both pipes use `fetch.wait.max.ms=10` (tansu holds every fetch
//! that long). The feedline pipe never pauses partitions here (tansu resumes a paused partition
//! past the rest of a record batch; this is a throughput run, not a delivery test).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use feedline_connectors::generator::{render, Shape};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_testkit::tansu::{tansu_path, Tansu};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tokio_util::sync::CancellationToken;

use crate::common::{cpu_seconds, load_pipeline, median, status_mib};

const PARTITIONS: i32 = 4;
const FETCH_WAIT_MS: &str = "10";

/// Counts delivery reports.
#[derive(Default)]
struct Delivered {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl rdkafka::client::ClientContext for Delivered {}

impl ProducerContext for Delivered {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<Delivered>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(Delivered::default())?)
}

/// Send one record, waiting while librdkafka's queue is full.
fn send(
    p: &ThreadedProducer<Delivered>,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => bail!("produce: {e}"),
        }
    }
}

fn wait_delivered(p: &ThreadedProducer<Delivered>, n: u64, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while p.context().ok.load(Ordering::Relaxed) < n {
        if p.context().failed.load(Ordering::Relaxed) > 0 {
            bail!("{what}: deliveries failed");
        }
        if Instant::now() > deadline {
            bail!("{what}: only {} of {n} delivered", p.context().ok.load(Ordering::Relaxed));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

async fn create_topics(brokers: &str, names: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, PARTITIONS, TopicReplication::Fixed(1))).collect();
    for result in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => bail!("create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// The input: `events` activation messages (~1 KB each).
fn fill(brokers: &str, topic: &str, events: u64) -> anyhow::Result<usize> {
    let p = producer(brokers)?;
    let mut bytes = 0;
    for n in 0..events {
        let value = render(Shape::Activation, n);
        bytes += value.len();
        send(&p, topic, Some(format!("c{n}").as_bytes()), value.as_bytes())?;
    }
    wait_delivered(&p, events, "input")?;
    Ok(bytes / events.max(1) as usize)
}

/// One pipe's run: wall time and CPU seconds used by this process meanwhile.
#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: f64,
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let before = cpu_seconds();
    let out = f()?;
    let used = cpu_seconds().zip(before).map(|(after, before)| after - before);
    Ok((out, used.unwrap_or(f64::NAN)))
}

/// Raw pipe: poll → produce the same bytes, until `events` are acknowledged.
fn raw_pipe(brokers: &str, input: &str, output: &str, events: u64, round: u32) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-raw-{}-{round}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", FETCH_WAIT_MS)
        .create()?;
    let p = producer(brokers)?;
    let started = Instant::now();
    consumer.subscribe(&[input])?;
    let mut read = 0u64;
    while read < events {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("raw pipe: read only {read} of {events}");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                send(&p, output, m.key(), m.payload().unwrap_or_default())?;
                read += 1;
            }
            Some(Err(e)) => eprintln!("raw pipe: {e}"),
            None => {}
        }
    }
    wait_delivered(&p, events, "raw pipe")?;
    Ok(started.elapsed())
}

fn pipeline_toml(brokers: &str, input: &str, output: &str, group: &str) -> String {
    format!(
        r#"name = "bench-kafka"

[source]
type = "kafka"
brokers = "{brokers}"
group_id = "{group}"
topics = ["{input}"]
pause_after_ms = 3600000

[source.librdkafka]
"fetch.wait.max.ms" = {FETCH_WAIT_MS}

[[transforms]]
type = "extract_activation"

[[sinks]]
type = "kafka"
brokers = "{brokers}"
topic = "{output}"
"#
    )
}

/// Feedline pipe, in this process; returns the time and the highest RSS seen.
fn feedline_pipe(
    runtime: &tokio::runtime::Runtime,
    brokers: &str,
    input: &str,
    output: &str,
    events: u64,
    round: u32,
) -> anyhow::Result<(Duration, f64)> {
    let dir = std::env::temp_dir().join(format!("feedline-bench-kafka-{}-{round}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let group = format!("bench-feedline-{}-{round}", std::process::id());
    let def = load_pipeline(&dir, &pipeline_toml(brokers, input, output, &group))?;
    let options = RuntimeOptions { data_dir: dir.join("data"), drain_timeout: Duration::from_secs(30) };
    let metrics = Metrics::new();
    let delivered = metrics.component("bench-kafka", "kafka", "sink").events_out;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = runtime.spawn(run_pipeline(Arc::new(def), options, metrics, Health::default(), stop.clone()));
    let mut rss: f64 = 0.0;
    while delivered.get() < events {
        if task.is_finished() || started.elapsed() > Duration::from_secs(300) {
            stop.cancel();
            bail!("feedline pipe delivered only {} of {events}", delivered.get());
        }
        rss = rss.max(status_mib("VmRSS").unwrap_or(f64::NAN));
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed();
    stop.cancel();
    runtime.block_on(task).context("pipeline task")?.context("bench pipeline")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((elapsed, rss))
}

pub fn run(events: u64, brokers: Option<String>, rounds: u32) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let tansu = match brokers {
        Some(_) => None,
        None if !tansu_path().is_file() => bail!(
            "tansu not found at {} (run scripts/install-tansu.sh, set FEEDLINE_TANSU, or pass --brokers)",
            tansu_path().display()
        ),
        None => Some(Tansu::start()),
    };
    let brokers = brokers.or_else(|| tansu.as_ref().map(Tansu::brokers)).unwrap_or_default();
    let id = std::process::id();
    let input = format!("bench-in-{id}");
    let mut outputs = Vec::new();
    for round in 0..rounds.max(1) {
        outputs.push((format!("bench-out-feedline-{id}-{round}"), format!("bench-out-raw-{id}-{round}")));
    }
    let mut names = vec![input.as_str()];
    outputs.iter().for_each(|(f, r)| names.extend([f.as_str(), r.as_str()]));
    runtime.block_on(create_topics(&brokers, &names))?;
    let filling = Instant::now();
    let size = fill(&brokers, &input, events)?;
    eprintln!(
        "feedline-bench kafka: {events} records (~{size} bytes) in {input} on {brokers}, written in {:?}",
        filling.elapsed()
    );

    let (mut raws, mut feedlines, mut peak_rss) = (Vec::new(), Vec::new(), 0.0f64);
    for (round, (out_feedline, out_raw)) in outputs.iter().enumerate() {
        let round = round as u32;
        let run_raw = || {
            timed(|| raw_pipe(&brokers, &input, out_raw, events, round)).map(|(wall, cpu)| Run { wall, cpu })
        };
        let run_feedline = || {
            timed(|| feedline_pipe(&runtime, &brokers, &input, out_feedline, events, round))
                .map(|((wall, rss), cpu)| (Run { wall, cpu }, rss))
        };
        // Alternate which pipe goes first, so neither always meets a broker warmed by the other.
        let (raw, (feedline, rss)) = if round.is_multiple_of(2) {
            let raw = run_raw()?;
            (raw, run_feedline()?)
        } else {
            let feedline = run_feedline()?;
            (run_raw()?, feedline)
        };
        eprintln!(
            "  round {round}: raw {:.3} s ({:.2} CPU s), feedline {:.3} s ({:.2} CPU s), ratio {:.2}",
            raw.wall.as_secs_f64(),
            raw.cpu,
            feedline.wall.as_secs_f64(),
            feedline.cpu,
            raw.wall.as_secs_f64() / feedline.wall.as_secs_f64()
        );
        raws.push(raw);
        feedlines.push(feedline);
        peak_rss = peak_rss.max(rss);
    }
    let rate = |runs: &[Run], pick: fn(Vec<f64>) -> f64| {
        pick(runs.iter().map(|r| events as f64 / r.wall.as_secs_f64()).collect())
    };
    let best = |xs: Vec<f64>| xs.into_iter().fold(f64::NAN, f64::max);
    let cpu_per_100k =
        |runs: &[Run]| median(runs.iter().map(|r| r.cpu * 100_000.0 / events as f64).collect());
    println!("feedline-bench kafka: {events} activation records (~{size} B JSON), {PARTITIONS} partitions, broker {brokers}, {} rounds", raws.len());
    let figures = |runs: &[Run]| {
        format!(
            "median {:>8.0} events/s   best {:>8.0} events/s   {:.2} CPU s per 100k",
            rate(runs, median),
            rate(runs, best),
            cpu_per_100k(runs)
        )
    };
    println!("  feedline (kafka → extract_activation → kafka, tracked, idempotent producer, acks=all)");
    println!("           {}   RSS up to {peak_rss:.0} MiB", figures(&feedlines));
    println!("  raw      (librdkafka poll → produce the same bytes, idempotent producer, acks=all)");
    println!("           {}", figures(&raws));
    // Rounds pair the two pipes on the same broker state; tansu's speed varies between rounds.
    let paired = median(
        raws.iter().zip(&feedlines).map(|(r, f)| r.wall.as_secs_f64() / f.wall.as_secs_f64()).collect(),
    );
    println!(
        "  ratio feedline/raw: of median rates {:.2}, median of per-round ratios {paired:.2}, of best rates {:.2}",
        rate(&feedlines, median) / rate(&raws, median),
        rate(&feedlines, best) / rate(&raws, best)
    );
    Ok(ExitCode::SUCCESS)
}
