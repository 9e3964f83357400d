//! `feedline-bench cosmos [--rate 1000 --seconds 10 --backlog 100000]`: the cache-invalidation
//! path — `cosmos_change_feed` (default poll settings) → `invalidate_cache` → `kafka` sink — run
//! in this process.
//!
//! - latency: documents are upserted at `--rate` per second for `--seconds` (open loop: each write
//!   starts at its scheduled time, whatever the previous ones are doing), each with its own id.
//!   The time each write is acknowledged is recorded, and a consumer reading the output topic
//!   records when each `mainId` arrives; the figures are the differences (p50/p90/p99/max), next to
//!   the upserts' own request latency. Goal: p99 < 100 ms.
//! - backlog: `--backlog` documents are written before the pipeline starts with
//!   `start_from = "beginning"`; the time until the sink has all of them acknowledged by Kafka
//!   gives changes/s. A consumer then checks that each id arrived.
//!
//! Cosmos DB is the test kit's server (Microsoft's in-memory emulator behind an HTTP front that
//! checks master-key signatures) on a free port; Kafka is the test kit's tansu, from
//! `FEEDLINE_TANSU` or `scripts/install-tansu.sh`'s location. The consumer uses `fetch.wait.max.ms=10` (tansu holds
//! every fetch that long), so up to ~10 ms of each latency is the measuring consumer's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use azure_data_cosmos::clients::ContainerClient;
use feedline_engine::config::load_file;
use feedline_engine::health::Health;
use feedline_engine::metrics::{ComponentMetrics, Metrics};
use feedline_engine::runtime::{run_pipeline, PipelineError, RuntimeOptions};
use feedline_testkit::cosmos::CosmosServer;
use feedline_testkit::tansu::{tansu_path, Tansu, TEST_FETCH_WAIT_MS};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::common::registry;

const DB: &str = "whisk";
/// Physical partitions (feed ranges) of each watched container.
const FEED_RANGES: u32 = 4;
/// Upserts in flight while the backlog is written.
const FILL_IN_FLIGHT: usize = 64;
const PIPELINE: &str = "bench-cosmos";
const SINK_ID: &str = "to-kafka";

/// What to measure.
#[derive(clap::Args)]
pub struct Options {
    /// Upserts per second of the latency run.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of the latency run in seconds (0 skips it).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Documents written before the backlog run starts (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
}

/// A whisk-like action document, ~0.7 KB, stored with id `guest|<name>` (sent as `guest/<name>`).
fn document(name: &str, n: u64) -> serde_json::Value {
    serde_json::json!({
        "id": format!("guest|{name}"),
        "namespace": "guest",
        "name": name,
        "entityType": "action",
        "version": "0.0.1",
        "publish": false,
        "annotations": [{"key": "exec", "value": "nodejs:20"}],
        "limits": {"timeout": 60000, "memory": 256, "logs": 10},
        "exec": {"kind": "nodejs:20", "binary": false, "code": format!("function main(p) {{ return {{n: {n}}}; }}{}", " ".repeat(400))},
        "updated": n,
    })
}

/// Upsert one document (partition key = id), retrying what the service would have us retry.
async fn upsert(container: &ContainerClient, doc: &serde_json::Value) -> anyhow::Result<()> {
    let id = doc["id"].as_str().context("document without id")?;
    for attempt in 0.. {
        match container.upsert_item(id.to_owned(), id, doc, None).await {
            Ok(_) => return Ok(()),
            Err(e)
                if attempt < 50
                    && matches!(u16::from(e.status().status_code()), 408 | 410 | 429 | 449 | 503) =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("upsert {id}: {e}"),
        }
    }
    bail!("upsert {id}: gave up")
}

/// What the consumer of the output topic has seen.
#[derive(Default)]
struct Received {
    /// `mainId` → when its first message arrived.
    first: Mutex<HashMap<String, Instant>>,
    duplicates: AtomicU64,
    /// Messages that were not invalidations.
    foreign: AtomicU64,
    stop: AtomicBool,
}

impl Received {
    fn count(&self) -> usize {
        self.first.lock().map(|m| m.len()).unwrap_or(0)
    }
    fn when(&self, main_id: &str) -> Option<Instant> {
        self.first.lock().ok()?.get(main_id).copied()
    }
}

/// Read `topic` (one partition) from the beginning until told to stop.
fn consume(brokers: &str, topic: &str, received: Arc<Received>) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-cosmos-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", TEST_FETCH_WAIT_MS.to_string())
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    while !received.stop.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                let value: Option<serde_json::Value> =
                    m.payload().and_then(|p| serde_json::from_slice(p).ok());
                match value.as_ref().and_then(|v| v["key"]["mainId"].as_str()) {
                    Some(id) => {
                        let mut first = received.first.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        if first.insert(id.to_owned(), now).is_some() {
                            received.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        received.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Err(e)) => eprintln!("bench cosmos: consumer: {e}"),
            None => {}
        }
    }
    Ok(())
}

/// The cache-invalidation pipeline with every `cosmos_change_feed` poll setting at its default.
fn pipeline_toml(server: &CosmosServer, container: &str, brokers: &str, topic: &str) -> String {
    format!(
        r#"name = "{PIPELINE}"

[source]
type = "cosmos_change_feed"
endpoint = "{endpoint}"
key = "{key}"
database = "{DB}"
containers = ["{container}"]
start_from = "beginning"

[[transforms]]
type = "invalidate_cache"

[[sinks]]
id = "{SINK_ID}"
type = "kafka"
brokers = "{brokers}"
topic = "{topic}"
key = "messages"
"#,
        endpoint = server.endpoint(),
        key = server.key(),
    )
}

/// A pipeline running in this process; stopped (and its scratch directory removed) by [`Self::stop`].
struct Running {
    task: tokio::task::JoinHandle<Result<(), PipelineError>>,
    stop: CancellationToken,
    /// The sink's metrics (`events_out`: acknowledged by Kafka).
    sink: ComponentMetrics,
    dir: PathBuf,
}

impl Running {
    fn start(
        runtime: &tokio::runtime::Runtime,
        server: &CosmosServer,
        container: &str,
        brokers: &str,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("feedline-bench-cosmos-{}-{container}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("bench-cosmos.toml");
        std::fs::write(&file, pipeline_toml(server, container, brokers, topic))?;
        let def = load_file(&file, &registry(), &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
        let options = RuntimeOptions { data_dir: dir.join("data"), drain_timeout: Duration::from_secs(10) };
        let metrics = Metrics::new();
        let sink = metrics.component(PIPELINE, SINK_ID, "sink");
        let stop = CancellationToken::new();
        let task =
            runtime.spawn(run_pipeline(Arc::new(def), options, metrics, Health::default(), stop.clone()));
        Ok(Running { task, stop, sink, dir })
    }

    fn delivered(&self) -> u64 {
        self.sink.events_out.get()
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        if self.task.is_finished() {
            bail!("the pipeline stopped early (see the log above)");
        }
        Ok(())
    }

    fn stop(self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        self.stop.cancel();
        let result = runtime.block_on(self.task);
        let _ = std::fs::remove_dir_all(&self.dir);
        result.context("pipeline task")?.context("bench pipeline")?;
        Ok(())
    }
}

/// Start a consumer thread on `topic`.
fn start_consumer(
    brokers: &str,
    topic: &str,
) -> (Arc<Received>, std::thread::JoinHandle<anyhow::Result<()>>) {
    let received = Arc::new(Received::default());
    let (brokers, topic, r) = (brokers.to_owned(), topic.to_owned(), received.clone());
    let handle = std::thread::spawn(move || consume(&brokers, &topic, r));
    (received, handle)
}

fn stop_consumer(
    received: &Received,
    handle: std::thread::JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    received.stop.store(true, Ordering::Relaxed);
    handle.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))?
}

/// Count, p50, p90, p99 and max of `values` (milliseconds).
fn summary(mut values: Vec<f64>) -> Option<[f64; 5]> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Some([values.len() as f64, at(0.50), at(0.90), at(0.99), values[values.len() - 1]])
}

fn row(label: &str, values: Vec<f64>, note: &str) -> String {
    match summary(values) {
        Some([n, p50, p90, p99, max]) => {
            format!("    {label:<28} {n:>7.0} {p50:>8.1} {p90:>8.1} {p99:>8.1} {max:>8.1}   {note}")
        }
        None => format!("    {label:<28} {:>7}", 0),
    }
}

/// `b - a` in milliseconds, negative when `b` came first.
fn signed_ms(a: Instant, b: Instant) -> f64 {
    match b.checked_duration_since(a) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(a.duration_since(b).as_secs_f64() * 1e3),
    }
}

/// One write of the latency run: when it started and when it was acknowledged.
struct Write {
    name: String,
    started: Instant,
    acked: Instant,
}

/// Upsert `count` documents at `rate`/s, open loop; the acknowledged writes and the failures.
async fn paced_writes(
    container: ContainerClient,
    rate: f64,
    count: u64,
) -> (Vec<Write>, Vec<String>, Duration) {
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let (mut done, mut failed) = (Vec::with_capacity(count as usize), Vec::new());
    let mut collect = |r: Result<anyhow::Result<Write>, tokio::task::JoinError>| match r {
        Ok(Ok(w)) => done.push(w),
        Ok(Err(e)) => failed.push(format!("{e:#}")),
        Err(e) => failed.push(e.to_string()),
    };
    for n in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
        let container = container.clone();
        tasks.spawn(async move {
            let name = format!("lat-{n}");
            let doc = document(&name, n);
            let started = Instant::now();
            upsert(&container, &doc).await?;
            Ok(Write { name, started, acked: Instant::now() })
        });
        while let Some(r) = tasks.try_join_next() {
            collect(r);
        }
    }
    let issued = start.elapsed();
    while let Some(r) = tasks.join_next().await {
        collect(r);
    }
    (done, failed, issued)
}

/// A watched container with `FEED_RANGES` feed ranges, and the output topic.
fn provision(
    runtime: &tokio::runtime::Runtime,
    server: &CosmosServer,
    tansu: &Tansu,
    container_name: &str,
    topic: &str,
) -> anyhow::Result<ContainerClient> {
    server.create_container(DB, container_name, "/id", FEED_RANGES);
    tansu.create_topic(topic, 1);
    Ok(runtime.block_on(async {
        let client = server.client_with_key(server.key()).await?;
        client.database_client(DB).container_client(container_name, None).await
    })?)
}

fn latency_run(
    runtime: &tokio::runtime::Runtime,
    server: &CosmosServer,
    tansu: &Tansu,
    opts: &Options,
) -> anyhow::Result<()> {
    let (container_name, topic) = ("whisks", "bench-cosmos-latency");
    let container = provision(runtime, server, tansu, container_name, topic)?;
    let brokers = &tansu.brokers();
    let (received, consumer) = start_consumer(brokers, topic);
    let pipeline = Running::start(runtime, server, container_name, brokers, topic)?;

    // Warm up: leases created, producer connected, consumer assigned.
    let warm = Instant::now();
    let mut n = 0u64;
    while received.when("guest/warm-0").is_none() || received.count() < 10 {
        pipeline.check_alive()?;
        if warm.elapsed() > Duration::from_secs(60) {
            bail!("no change reached Kafka within 60 s of the pipeline's start");
        }
        if n < 10 {
            runtime.block_on(upsert(&container, &document(&format!("warm-{n}"), n)))?;
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let warm_up = warm.elapsed();

    let count = (opts.rate * opts.seconds as f64).round() as u64;
    eprintln!("bench cosmos: warmed up in {warm_up:.2?}; {count} upserts at {}/s", opts.rate);
    let (writes, failed, issued) = runtime.block_on(paced_writes(container, opts.rate, count));
    // Wait for the stragglers: every acknowledged write, or 10 s without progress.
    let mut last = (received.count(), Instant::now());
    loop {
        let missing = writes.iter().filter(|w| received.when(&format!("guest/{}", w.name)).is_none()).count();
        if missing == 0 || last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
        pipeline.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
        if received.count() != last.0 {
            last = (received.count(), Instant::now());
        }
    }
    pipeline.stop(runtime)?;
    stop_consumer(&received, consumer)?;

    let (mut to_kafka, mut upserts, mut missing) = (Vec::new(), Vec::new(), 0u64);
    for w in &writes {
        upserts.push(signed_ms(w.started, w.acked));
        match received.when(&format!("guest/{}", w.name)) {
            Some(at) => to_kafka.push(signed_ms(w.acked, at)),
            None => missing += 1,
        }
    }
    let early = to_kafka.iter().filter(|v| **v < 0.0).count();
    // The emulator's change feed copies and sorts a feed range's documents on every poll, so its
    // cost grows with the container: the trend per second shows how much of the latency is that.
    let begun = writes.iter().map(|w| w.started).min();
    let mut by_second: Vec<Vec<f64>> = Vec::new();
    for w in &writes {
        if let (Some(t0), Some(at)) = (begun, received.when(&format!("guest/{}", w.name))) {
            let s = w.started.duration_since(t0).as_secs() as usize;
            by_second.resize_with(by_second.len().max(s + 1), Vec::new);
            by_second[s].push(signed_ms(w.acked, at));
        }
    }
    let trend: Vec<String> = by_second
        .into_iter()
        .filter_map(summary)
        .map(|[_, p50, _, p99, _]| format!("{p50:.0}/{p99:.0}"))
        .collect();
    println!(
        "  latency: {count} upserts at {}/s for {} s (issued at {:.0}/s), whisk-like ~0.7 KB documents",
        opts.rate,
        opts.seconds,
        count as f64 / issued.as_secs_f64()
    );
    println!("    {:<28} {:>7} {:>8} {:>8} {:>8} {:>8}", "ms", "count", "p50", "p90", "p99", "max");
    println!("{}", row("upsert request → ack", upserts, ""));
    println!("{}", row("upsert ack → Kafka message", to_kafka, "goal p99 < 100 ms"));
    println!(
        "    missing: {missing}   duplicates: {}   failed writes: {}   messages before the ack: {early}   warm-up: {:.2} s",
        received.duplicates.load(Ordering::Relaxed),
        failed.len(),
        warm_up.as_secs_f64()
    );
    println!("    ack → Kafka p50/p99 by second of the run: {}", trend.join(" "));
    if let Some(e) = failed.first() {
        println!("    first failed write: {e}");
    }
    Ok(())
}

/// Write `count` documents, `FILL_IN_FLIGHT` at a time.
async fn fill(container: ContainerClient, count: u64) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    for n in 0..count {
        if tasks.len() >= FILL_IN_FLIGHT {
            tasks.join_next().await.context("fill task")???;
        }
        let container = container.clone();
        tasks.spawn(async move { upsert(&container, &document(&format!("bk-{n}"), n)).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn backlog_run(
    runtime: &tokio::runtime::Runtime,
    server: &CosmosServer,
    tansu: &Tansu,
    backlog: u64,
) -> anyhow::Result<()> {
    let (container_name, topic) = ("subjects", "bench-cosmos-backlog");
    let container = provision(runtime, server, tansu, container_name, topic)?;
    let brokers = &tansu.brokers();
    let filling = Instant::now();
    runtime.block_on(fill(container, backlog))?;
    let fill_time = filling.elapsed();
    eprintln!("bench cosmos: {backlog} documents written in {fill_time:.2?}; draining");

    let (received, consumer) = start_consumer(brokers, topic);
    let started = Instant::now();
    let pipeline = Running::start(runtime, server, container_name, brokers, topic)?;
    let limit = Duration::from_secs(120).max(Duration::from_millis(backlog * 2));
    let mut first = None;
    loop {
        let delivered = pipeline.delivered();
        if delivered > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if delivered >= backlog {
            break;
        }
        pipeline.check_alive()?;
        if started.elapsed() > limit {
            pipeline.stop(runtime)?;
            stop_consumer(&received, consumer)?;
            bail!("only {delivered} of {backlog} changes reached Kafka in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let all = started.elapsed();
    let first = first.unwrap_or(all);
    let checking = Instant::now();
    while (received.count() as u64) < backlog && checking.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    pipeline.stop(runtime)?;
    stop_consumer(&received, consumer)?;
    let seen = (0..backlog).filter(|n| received.when(&format!("guest/bk-{n}")).is_some()).count() as u64;
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "  backlog: {backlog} documents written before the start ({:.0} upserts/s, {FILL_IN_FLIGHT} in flight), start_from = \"beginning\"",
        rate(backlog, fill_time)
    );
    println!("    first message on Kafka after {:>8.2} s", first.as_secs_f64());
    println!(
        "    all {backlog} on Kafka after   {:>8.2} s   {:>8.0} changes/s   ({:.0}/s from the first message)",
        all.as_secs_f64(),
        rate(backlog, all),
        rate(backlog.saturating_sub(1), all.saturating_sub(first))
    );
    println!(
        "    consumer check: {seen} of {backlog} ids received, {} missing, {} duplicates",
        backlog - seen,
        received.duplicates.load(Ordering::Relaxed)
    );
    Ok(())
}

pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    if !(opts.rate > 0.0 && opts.rate.is_finite()) {
        bail!("--rate must be a positive number of upserts per second");
    }
    if !tansu_path().is_file() {
        bail!(
            "tansu not found at {} (run scripts/install-tansu.sh or set FEEDLINE_TANSU)",
            tansu_path().display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let server = CosmosServer::start();
    server.create_database(DB);
    let tansu = Tansu::start();
    let brokers = tansu.brokers();
    println!(
        "feedline-bench cosmos: cosmos_change_feed (poll_interval_ms = 50, max_items = 1000: defaults) → \
         invalidate_cache → kafka"
    );
    println!(
        "  Cosmos test server (in-memory emulator, {FEED_RANGES} feed ranges per container) at {}, tansu at {brokers}, \
         consumer fetch.wait.max.ms = {TEST_FETCH_WAIT_MS}",
        server.endpoint()
    );
    if opts.seconds > 0 {
        latency_run(&runtime, &server, &tansu, &opts)?;
    }
    if opts.backlog > 0 {
        backlog_run(&runtime, &server, &tansu, opts.backlog)?;
    }
    drop(runtime);
    drop(tansu);
    drop(server);
    Ok(ExitCode::SUCCESS)
}
