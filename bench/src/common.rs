//! What the benchmarks share: the engine pipeline, loading and timing pipelines, CPU and memory
//! figures of this process, medians.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use feedline_engine::config::{load_file, PipelineDef};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_engine::Registry;
use tokio_util::sync::CancellationToken;

/// Every component `feedline` registers.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    feedline_connectors::register(&mut registry);
    feedline_transforms::register(&mut registry);
    registry
}

/// The engine benchmark's pipeline (also what `tracing` measures), named `name`.
pub fn pipeline_toml(name: &str, events: u64) -> String {
    format!(
        r#"name = "{name}"
[source]
type = "generator"
shape = "cosmos_change"
count = {events}
batch_size = 1000

[[transforms]]
type = "drop_own_cluster"
cluster_id = "west"

[[transforms]]
type = "soft_delete"
mode = "mark"

[[transforms]]
type = "invalidate_cache"
instance_id = "cache-invalidator"

[[sinks]]
type = "blackhole"
"#
    )
}

/// A memory figure of this process from `/proc/self/status` in MiB (Linux), if known:
/// `"VmRSS"` (resident now), `"VmHWM"` (peak resident).
pub fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time (user + system) this process has used so far, from `/proc/self/stat` (Linux; the
/// kernel reports it in USER_HZ = 100 ticks per second). `None` elsewhere.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Write `toml` to `dir/bench.toml` and load it with every registered component.
pub fn load_pipeline(dir: &Path, toml: &str) -> anyhow::Result<PipelineDef> {
    let file = dir.join("bench.toml");
    std::fs::write(&file, toml)?;
    load_file(&file, &registry(), &|_| None).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Run `toml` to completion on a fresh runtime (data under `dir/data`): its wall time and
/// metrics.
pub fn time_pipeline(dir: &Path, toml: &str) -> anyhow::Result<(Duration, Metrics)> {
    let def = load_pipeline(dir, toml)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options = RuntimeOptions { data_dir: dir.join("data"), drain_timeout: Duration::from_secs(30) };
    let metrics = Metrics::new();
    let started = Instant::now();
    runtime
        .block_on(run_pipeline(
            Arc::new(def),
            options,
            metrics.clone(),
            Health::default(),
            CancellationToken::new(),
        ))
        .context("bench pipeline")?;
    Ok((started.elapsed(), metrics))
}
