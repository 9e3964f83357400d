//! `feedline-bench engine`: the engine's throughput next to a bare serde_json baseline, in one run.
//!
//! Pipeline: generator (Cosmos-style changes, rendered and parsed like real input) →
//! drop_own_cluster → soft_delete → invalidate_cache → blackhole, with full delivery tracking.
//! Baseline: render the same events, `serde_json::from_str`, `serde_json::to_vec` — the least
//! any JSON pipe must do.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use feedline_connectors::generator::{render, Shape};

use crate::common::{pipeline_toml, status_mib, time_pipeline};

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

pub fn run(events: u64) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("feedline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (engine, _) = time_pipeline(&dir, &pipeline_toml("bench", events))?;
    let rss = status_mib("VmHWM");
    let base = baseline(events)?;
    let _ = std::fs::remove_dir_all(&dir);
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!("feedline-bench engine: {events} Cosmos-style change events, 3 transforms, blackhole sink");
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
