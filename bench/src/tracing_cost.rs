//! `feedline-bench tracing`: what tracing costs the engine pipeline, measured in one run.
//!
//! The pipeline is `feedline-bench engine`'s (generator → drop_own_cluster → soft_delete →
//! invalidate_cache → blackhole). Each setting runs in a child process of this binary
//! (`feedline-bench tracing-child`), set up exactly as `feedline run` sets itself up from `OTEL_*`
//! variables (by `feedline`'s own telemetry module): tracing off, then parent-based
//! trace-id-ratio sampling at 1% and at 100%, exporting OTLP/HTTP-protobuf to the test kit's
//! receiver in this (parent) process, which only counts requests and bytes. Settings are
//! interleaved over the rounds in a rotating order, so machine noise hits all of them alike. The
//! report gives the best wall-clock throughput and the median CPU time per event (process CPU,
//! export thread and final flush included) — the steadier figure on a shared machine.

use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline_traced, RuntimeOptions};
use feedline_testkit::otlp::OtlpReceiver;
use tokio_util::sync::CancellationToken;

use crate::common::{cpu_seconds, load_pipeline, median, pipeline_toml};
use crate::telemetry::Installed;

/// One measurement in a child, printed as
/// `events_per_sec=… cpu_us_per_event=… exported=… dropped=…`.
pub fn child(events: u64, installed: &Installed) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("feedline-bench-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let def = load_pipeline(&dir, &pipeline_toml("bench-tracing", events))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options = RuntimeOptions { data_dir: dir.join("data"), drain_timeout: Duration::from_secs(60) };
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    runtime
        .block_on(run_pipeline_traced(
            Arc::new(def),
            options,
            Metrics::new(),
            Health::default(),
            CancellationToken::new(),
            installed.telemetry.clone(),
        ))
        .context("bench pipeline")?;
    let elapsed = started.elapsed();
    installed.shutdown(); // flush: the counts below are final and the export work is counted
    let cpu = cpu_seconds().zip(cpu_before).map(|(after, before)| after - before).unwrap_or(f64::NAN);
    let _ = std::fs::remove_dir_all(&dir);
    let (exported, dropped) =
        installed.health.as_ref().map(|h| (h.exported(), h.dropped())).unwrap_or((0, 0));
    println!(
        "events_per_sec={} cpu_us_per_event={} exported={exported} dropped={dropped}",
        events as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / events as f64
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy)]
struct Setting {
    label: &'static str,
    ratio: Option<f64>,
}

struct Measured {
    rate: f64,
    cpu_us: f64,
    exported: u64,
    dropped: u64,
}

fn measure(events: u64, setting: Setting, receiver: &OtlpReceiver) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("locating the feedline-bench binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["tracing-child", "--events", &events.to_string()])
        // `feedline run`'s default: batch spans are live as log context even with tracing off.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
    ] {
        cmd.env_remove(var);
    }
    if let Some(ratio) = setting.ratio {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", ratio.to_string())
            .env("OTEL_SERVICE_NAME", "feedline-bench");
    }
    let out = cmd.output().context("running a bench child")?;
    if !out.status.success() {
        bail!(
            "bench child ({}) failed: {}\n{}",
            setting.label,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Option<f64> {
        text.split_whitespace().find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Ok(Measured {
        rate: field("events_per_sec").with_context(|| format!("unexpected child output: {text}"))?,
        cpu_us: field("cpu_us_per_event").unwrap_or(f64::NAN),
        exported: field("exported").unwrap_or(0.0) as u64,
        dropped: field("dropped").unwrap_or(0.0) as u64,
    })
}

pub fn run(events: u64, rounds: u32) -> anyhow::Result<ExitCode> {
    let receiver = OtlpReceiver::start_counting();
    let settings = [
        Setting { label: "off", ratio: None },
        Setting { label: "on, 1% sampled", ratio: Some(0.01) },
        Setting { label: "on, 100% sampled", ratio: Some(1.0) },
    ];
    let mut runs: Vec<Vec<Measured>> = settings.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds.max(1) {
        // Rotate the order each round so no setting always follows the heavy 100% run.
        for k in 0..settings.len() {
            let i = (k + round as usize) % settings.len();
            let s = &settings[i];
            let m = measure(events, *s, &receiver)?;
            eprintln!(
                "  round {}: {:<18} {:>10.0} events/s {:>7.2} CPU µs/event",
                round + 1,
                s.label,
                m.rate,
                m.cpu_us
            );
            runs[i].push(m);
        }
    }
    let summary: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| {
            let best = r.iter().map(|m| m.rate).fold(f64::NAN, f64::max);
            (best, median(r.iter().map(|m| m.cpu_us).collect()))
        })
        .collect();
    let (off_best, off_cpu) = summary[0];
    println!(
        "feedline-bench tracing: {events} events, generator → 3 transforms → blackhole, {rounds} interleaved \
         runs per setting, OTLP/HTTP-protobuf to an in-process receiver"
    );
    println!(
        "  {:<18} {:>12} {:>8} {:>14} {:>8} {:>12} {:>10}",
        "setting", "best ev/s", "loss", "CPU µs/event", "extra", "spans sent", "dropped"
    );
    for ((s, (best, cpu)), r) in settings.iter().zip(&summary).zip(&runs) {
        let exported = r.iter().map(|m| m.exported).max().unwrap_or(0);
        let dropped = r.iter().map(|m| m.dropped).max().unwrap_or(0);
        println!(
            "  {:<18} {:>12.0} {:>7.1}% {:>14.2} {:>7.1}% {:>12} {:>10}",
            s.label,
            best,
            100.0 * (1.0 - best / off_best),
            cpu,
            100.0 * (cpu / off_cpu - 1.0),
            exported,
            dropped
        );
    }
    println!("  loss: best wall-clock throughput against off; extra: median CPU time per event against off");
    println!("  (process CPU, export thread and final flush included); spans sent/dropped: the largest run");
    println!(
        "  receiver: {} export requests, {:.1} MiB",
        receiver.requests(),
        receiver.bytes() as f64 / (1024.0 * 1024.0)
    );
    Ok(ExitCode::SUCCESS)
}
