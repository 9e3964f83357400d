//! The sink driver's promises, in-process with scripted sinks: retriable failures are retried
//! until they succeed, permanent ones and exhausted retries reach the dead-letter sink, fan-out
//! delivers to every sink, `max_in_flight` bounds concurrency, `rate_limit` holds the rate, and
//! partial batches linger only while every write slot is busy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use feedline_engine::config::load_file;
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_engine::{BuildContext, ComponentError, Event, Registry, Sink, SinkConfig, WriteResult};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// What a scripted sink does with event `seq`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Script {
    /// Accept everything.
    Accept,
    /// Fail every third event retriably on its first two attempts.
    Flaky,
    /// Reject events whose seq is a multiple of 7.
    RejectSevens,
    /// Fail everything retriably, forever.
    Down,
    /// Panic on the first write (a bug in a sink).
    Panic,
    /// Reject every record that holds a whole `event` (as a Kafka topic refuses an envelope
    /// over its message limit); accept the rest.
    RefuseWhole,
}

#[derive(Default)]
struct Record {
    delivered: Mutex<Vec<u64>>,
    attempts: Mutex<HashMap<u64, u32>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    write_times: Mutex<Vec<(Instant, usize)>>,
    accepted: Mutex<Vec<Value>>,
}

static RECORDS: Mutex<Option<HashMap<String, Arc<Record>>>> = Mutex::new(None);

fn record(name: &str) -> Arc<Record> {
    let mut all = RECORDS.lock().unwrap();
    all.get_or_insert_with(HashMap::new).entry(name.to_owned()).or_default().clone()
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ScriptedConfig {
    script: Script,
    record: String,
    #[serde(default)]
    write_ms: u64,
}

impl SinkConfig for ScriptedConfig {
    const TYPE: &'static str = "scripted";
    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(Scripted { script: self.script, record: record(&self.record), write_ms: self.write_ms }))
    }
}

struct Scripted {
    script: Script,
    record: Arc<Record>,
    write_ms: u64,
}

#[async_trait]
impl Sink for Scripted {
    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let r = &self.record;
        let now = r.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        r.max_in_flight.fetch_max(now, Ordering::SeqCst);
        r.write_times.lock().unwrap().push((Instant::now(), events.len()));
        tokio::time::sleep(Duration::from_millis(self.write_ms)).await;
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            let seq = e.value.get("seq").and_then(Value::as_u64).unwrap_or(u64::MAX);
            let attempt = {
                let mut a = r.attempts.lock().unwrap();
                let n = a.entry(seq).or_insert(0);
                *n += 1;
                *n
            };
            let result = match self.script {
                Script::Accept => Ok(()),
                Script::Flaky if seq.is_multiple_of(3) && attempt <= 2 => {
                    Err(ComponentError::retriable("flaky"))
                }
                Script::Flaky => Ok(()),
                Script::RejectSevens if seq.is_multiple_of(7) => {
                    Err(ComponentError::reject(format!("seq {seq} is a seven")))
                }
                Script::RejectSevens => Ok(()),
                Script::Down => Err(ComponentError::retriable("connection refused")),
                Script::Panic => panic!("scripted sink bug at seq {seq}"),
                Script::RefuseWhole if e.value.get("event").is_some() => {
                    Err(ComponentError::reject("message too large"))
                }
                Script::RefuseWhole => Ok(()),
            };
            if result.is_ok() {
                r.accepted.lock().unwrap().push(e.value.value().clone());
                r.delivered.lock().unwrap().push(seq);
            }
            out.push(result);
        }
        r.in_flight.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

async fn run(toml: &str) -> (tempfile::TempDir, Metrics) {
    let (dir, metrics, result) = run_result(toml).await;
    result.unwrap();
    (dir, metrics)
}

async fn run_result(
    toml: &str,
) -> (tempfile::TempDir, Metrics, Result<(), feedline_engine::runtime::PipelineError>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, toml).unwrap();
    let mut registry = Registry::new();
    feedline_connectors::register(&mut registry);
    registry.add_sink::<ScriptedConfig>();
    let def = load_file(&file, &registry, &|_| None).unwrap();
    let metrics = Metrics::new();
    let options =
        RuntimeOptions { data_dir: dir.path().join("data"), drain_timeout: Duration::from_secs(10) };
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        run_pipeline(Arc::new(def), options, metrics.clone(), Health::default(), CancellationToken::new()),
    )
    .await
    .expect("pipeline finishes");
    (dir, metrics, result)
}

fn sorted(v: &Mutex<Vec<u64>>) -> Vec<u64> {
    let mut v = v.lock().unwrap().clone();
    v.sort_unstable();
    v
}

fn dead_letters(dir: &tempfile::TempDir, pipeline: &str) -> Vec<Value> {
    feedline_engine::jsonl::read_json_lines(&dir.path().join(format!("data/{pipeline}/dead-letter.jsonl")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_failures_are_retried_until_delivered_and_fan_out_reaches_every_sink() {
    let (_dir, metrics) = run(r#"
name = "flaky"
[source]
type = "generator"
count = 3000
batch_size = 100
[[sinks]]
type = "scripted"
script = "flaky"
record = "flaky-a"
retry = { initial_backoff_ms = 1, max_backoff_ms = 5 }
[[sinks]]
type = "scripted"
script = "accept"
record = "flaky-b"
"#)
    .await;
    let all: Vec<u64> = (0..3000).collect();
    assert_eq!(sorted(&record("flaky-a").delivered), all, "flaky sink got everything once");
    assert_eq!(sorted(&record("flaky-b").delivered), all, "second sink got everything once");
    assert_eq!(record("flaky-a").attempts.lock().unwrap()[&3], 3, "seq 3 needed three attempts");
    assert!(metrics.render().contains(
        "feedline_sink_retries_total{component=\"scripted\",kind=\"sink\",pipeline=\"flaky\"} 2000"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_and_exhausted_retries_reach_the_dead_letter_sink() {
    let (dir, _) = run(r#"
name = "rejects"
[source]
type = "generator"
count = 700
[[sinks]]
type = "scripted"
script = "reject_sevens"
record = "rejects"
"#)
    .await;
    let dead = dead_letters(&dir, "rejects");
    assert_eq!(dead.len(), 100);
    assert!(dead
        .iter()
        .all(|d| d["stage"] == "sink.scripted" && d["error"].as_str().unwrap().ends_with("is a seven")));
    assert_eq!(record("rejects").delivered.lock().unwrap().len(), 600);

    let (dir, _) = run(r#"
name = "down"
[source]
type = "generator"
count = 50
[[sinks]]
type = "scripted"
script = "down"
record = "down"
retry = { initial_backoff_ms = 1, max_backoff_ms = 2, max_attempts = 3 }
"#)
    .await;
    let dead = dead_letters(&dir, "down");
    assert_eq!(dead.len(), 50);
    assert_eq!(dead[0]["error"], "gave up after 3 attempts: connection refused");
    assert!(record("down").attempts.lock().unwrap().values().all(|a| *a == 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_concurrent_writes() {
    run(r#"
name = "concurrency"
[source]
type = "generator"
count = 2000
batch_size = 50
[[sinks]]
type = "scripted"
script = "accept"
record = "concurrency"
write_ms = 5
max_in_flight = 3
batch = { max_events = 50 }
"#)
    .await;
    let r = record("concurrency");
    assert_eq!(r.max_in_flight.load(Ordering::SeqCst), 3, "writes overlapped up to the bound, never beyond");
    assert_eq!(r.delivered.lock().unwrap().len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_never_exceeded() {
    let started = Instant::now();
    run(r#"
name = "rate"
[source]
type = "generator"
count = 1500
[[sinks]]
type = "scripted"
script = "accept"
record = "rate"
rate_limit = 500.0
"#)
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let r = record("rate");
    let times = r.write_times.lock().unwrap().clone();
    // Rate over the writes after the first (the first batch goes out at once).
    let (first, _) = times[0];
    let (last, _) = times[times.len() - 1];
    let events_after_first: usize = times.iter().skip(1).map(|(_, n)| n).sum();
    let rate = events_after_first as f64 / (last - first).as_secs_f64();
    println!("rate_limit 500/s: measured {rate:.1}/s over {} writes, {elapsed:.2}s total", times.len());
    // A cap must never be exceeded; how close it gets from below depends on the machine's load,
    // so that side is only checked for sanity here (the figure is printed for the record).
    assert!(rate <= 525.0, "rate {rate} exceeds the cap");
    assert!(rate >= 250.0, "rate {rate}: the limiter stalls");
    assert!(times.iter().all(|(_, n)| *n <= 50), "batches shrink to ~100 ms of events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_linger_only_while_every_write_slot_is_busy() {
    // An idle sink writes each event as it comes, however long `timeout_ms` is.
    run(r#"
name = "idle"
[source]
type = "generator"
count = 3
batch_size = 1
rate = 10.0
[[sinks]]
type = "scripted"
script = "accept"
record = "idle"
batch = { max_events = 1000, timeout_ms = 60000 }
"#)
    .await;
    let sizes: Vec<usize> = record("idle").write_times.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes, [1, 1, 1], "each event written at once by an idle sink");

    // A busy sink still gets batches that grew while its one slot was taken (2000 events come
    // in batches of 10).
    run(r#"
name = "busy"
[source]
type = "generator"
count = 2000
batch_size = 10
[[sinks]]
type = "scripted"
script = "accept"
record = "busy"
write_ms = 20
max_in_flight = 1
batch = { max_events = 1000, timeout_ms = 60000 }
"#)
    .await;
    let r = record("busy");
    let sizes: Vec<usize> = r.write_times.lock().unwrap().iter().map(|(_, n)| *n).collect();
    assert!(
        sizes.len() < 100 && sizes.iter().all(|n| *n >= 10),
        "batches grew while the slot was busy: {sizes:?}"
    );
    assert_eq!(r.delivered.lock().unwrap().len(), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_sink_fails_the_pipeline_with_the_panic_message() {
    let (_dir, _, result) = run_result(
        r#"
name = "panics"
[source]
type = "generator"
count = 100
[[sinks]]
type = "scripted"
script = "panic"
record = "panics"
"#,
    )
    .await;
    let error = result.expect_err("a sink panic is a pipeline failure").to_string();
    assert!(error.contains("sink.scripted panicked: scripted sink bug at seq"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_the_dead_letter_sink_refuses_is_written_truncated_and_the_source_goes_on() {
    let (_dir, metrics) = run(r#"
name = "truncated"
[source]
type = "generator"
count = 70
batch_size = 10
[[sinks]]
type = "scripted"
script = "reject_sevens"
record = "truncated-main"
[dead_letter]
type = "scripted"
script = "refuse_whole"
record = "truncated-dead-letter"
"#)
    .await;
    let written = record("truncated-dead-letter").accepted.lock().unwrap().clone();
    assert_eq!(written.len(), 10, "one truncated envelope per rejected event: {written:#?}");
    for envelope in &written {
        assert_eq!(envelope["truncated"], true, "{envelope}");
        assert_eq!(envelope["dead_letter_error"], "message too large");
        assert!(envelope["error"].as_str().unwrap().contains("is a seven"), "{envelope}");
        assert_eq!(envelope["origin"]["source"], "generator");
        assert_eq!(envelope["sha256"].as_str().map(str::len), Some(64));
        assert!(envelope["size"].as_u64().unwrap() > 10);
        let n = envelope["origin"]["position"].as_u64().unwrap();
        // The generator builds its values in memory: their JSON text is the serialised tree.
        let original: Value =
            serde_json::from_str(&feedline_connectors::generator::render(Default::default(), n)).unwrap();
        assert_eq!(envelope["event_head"], original.to_string(), "the whole event (shorter than the head)");
    }
    let render = metrics.render();
    assert!(
        render.contains(r#"feedline_poison_records_total{component="scripted",kind="dead_letter",pipeline="truncated"} 10"#),
        "{render}"
    );
}
