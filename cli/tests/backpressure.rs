//! Backpressure: a sink that stalls makes the source stop reading (memory stays bounded), and
//! when the sink recovers every event arrives — none lost, none invented.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use feedline_engine::config::load_file;
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_engine::{
    same_result, BuildContext, ComponentError, Event, Registry, Sink, SinkConfig, WriteResult,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Shared between the test and the sink it configures.
#[derive(Default)]
struct Probe {
    open: AtomicBool,
    seen: Mutex<Vec<u64>>,
}

static PROBE: OnceLock<Arc<Probe>> = OnceLock::new();

fn probe() -> Arc<Probe> {
    PROBE.get_or_init(Default::default).clone()
}

/// A sink that blocks every write while the probe's gate is closed.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GateSinkConfig {}

impl SinkConfig for GateSinkConfig {
    const TYPE: &'static str = "gate";
    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(GateSink(probe())))
    }
}

struct GateSink(Arc<Probe>);

#[async_trait]
impl Sink for GateSink {
    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        while !self.0.open.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut seen = self.0.seen.lock().unwrap();
        seen.extend(events.iter().filter_map(|e| e.value["seq"].as_u64()));
        same_result(events.len(), Ok(()))
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    kib / 1024.0
}

fn source_events_in(metrics: &Metrics) -> u64 {
    let text = metrics.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("feedline_events_in_total{component=\"generator\",kind=\"source\""))
        .unwrap_or("x 0");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_pauses_the_source_and_nothing_is_lost() {
    const EVENTS: u64 = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bp.toml");
    std::fs::write(
        &file,
        format!("[source]\ntype = \"generator\"\ncount = {EVENTS}\nbatch_size = 1000\n[[sinks]]\ntype = \"gate\"\n"),
    )
    .unwrap();
    let mut registry = Registry::new();
    feedline_connectors::register(&mut registry);
    registry.add_sink::<GateSinkConfig>();
    let def = load_file(&file, &registry, &|_| None).unwrap();
    let metrics = Metrics::new();
    let options =
        RuntimeOptions { data_dir: dir.path().join("data"), drain_timeout: Duration::from_secs(30) };
    let rss_before = rss_mib();
    let run = tokio::spawn(run_pipeline(
        Arc::new(def),
        options,
        metrics.clone(),
        Health::default(),
        CancellationToken::new(),
    ));

    // Stalled: the source reads a bounded amount, then waits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read_at_stall = source_events_in(&metrics);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read_later = source_events_in(&metrics);
    let rss_stalled = rss_mib();
    println!("stalled: source read {read_at_stall} then {read_later} events; RSS {rss_before:.0} → {rss_stalled:.0} MiB");
    assert_eq!(read_at_stall, read_later, "the source kept reading while the sink was stalled");
    assert!(read_later < 100_000, "read {read_later} events ahead of a stalled sink");
    assert!(rss_stalled - rss_before < 200.0, "memory grew by {:.0} MiB", rss_stalled - rss_before);
    assert!(probe().seen.lock().unwrap().is_empty());

    // Recovered: everything arrives, exactly the events generated.
    probe().open.store(true, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(120), run).await.expect("pipeline finishes").unwrap().unwrap();
    let mut seen = std::mem::take(&mut *probe().seen.lock().unwrap());
    assert_eq!(seen.len() as u64, EVENTS, "every event delivered once (no failures, so no duplicates)");
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len() as u64, EVENTS);
    assert_eq!((seen[0], seen[seen.len() - 1]), (0, EVENTS - 1));
}
