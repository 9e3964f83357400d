//! `feedline bench`: the engine's throughput next to a bare serde_json baseline, in one run.
//!
//! Pipeline: generator (Cosmos-style changes, rendered and parsed like real input) →
//! drop_own_cluster → soft_delete → invalidate_cache → blackhole, with full delivery tracking.
//! Baseline: render the same events, `serde_json::from_str`, `serde_json::to_vec` — the least
//! any JSON pipe must do.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use feedline_connectors::generator::{render, Shape};
use feedline_engine::config::{load_file, PipelineDef};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use tokio_util::sync::CancellationToken;

use crate::commands::registry;

/// A test server installed by one of the `scripts/install-*.sh` scripts: `$env_var`, else
/// `relative` under `${FEEDLINE_CACHE:-~/.cache/feedline}`.
pub fn installed_tool(env_var: &str, relative: &str) -> std::path::PathBuf {
    match std::env::var_os(env_var) {
        Some(p) => p.into(),
        None => std::env::var_os("FEEDLINE_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/feedline")
            })
            .join(relative),
    }
}

/// The engine benchmark's pipeline (also what `bench tracing` measures), named `name`.
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

/// Wait (up to 30 s) until a server started for a bench accepts TCP connections at `addr`.
pub fn wait_accepting(addr: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("{what} did not accept connections on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn baseline(events: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut bytes = 0usize;
    for i in 0..events {
        let text = render(Shape::CosmosChange, i);
        let v: serde_json::Value = serde_json::from_str(&text)?;
        bytes += std::hint::black_box(serde_json::to_vec(&v)?).len();
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed())
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

pub fn run(events: u64) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("feedline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (engine, _) = time_pipeline(&dir, &pipeline_toml("bench", events))?;
    let rss = status_mib("VmHWM");
    let base = baseline(events)?;
    let _ = std::fs::remove_dir_all(&dir);
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!("feedline bench: {events} Cosmos-style change events, 3 transforms, blackhole sink");
    println!("  engine   (generator → drop_own_cluster → soft_delete → invalidate_cache → blackhole)");
    println!(
        "           {:>12.0} events/s   {:>8.3} s   peak RSS {:.1} MiB",
        rate(engine),
        engine.as_secs_f64(),
        rss.unwrap_or(f64::NAN)
    );
    println!("  baseline (render + serde_json parse + serialize, one thread)");
    println!("           {:>12.0} events/s   {:>8.3} s", rate(base), base.as_secs_f64());
    println!("  ratio engine/baseline: {:.2}", rate(engine) / rate(base));
    Ok(ExitCode::SUCCESS)
}
