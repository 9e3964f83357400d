//! `feedline bench tracing`: what tracing costs the engine pipeline, measured in one run.
//!
//! The pipeline is `feedline bench engine`'s (generator → drop_own_cluster → soft_delete →
//! invalidate_cache → blackhole). Each setting runs in a child process of this binary, set up
//! exactly as `feedline run` sets itself up from `OTEL_*` variables: tracing off, then
//! parent-based trace-id-ratio sampling at 1% and at 100%, exporting OTLP/HTTP-protobuf to a
//! receiver in this (parent) process that accepts and counts requests. Settings are interleaved
//! over the rounds and the best run of each counts, so machine noise hits all of them alike.

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use feedline_engine::config::load_file;
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline_traced, RuntimeOptions};
use tokio_util::sync::CancellationToken;

use crate::commands::registry;
use crate::telemetry::Installed;

/// Set in the children: run one measurement and print it.
const CHILD_ENV: &str = "FEEDLINE_BENCH_TRACING_CHILD";

fn pipeline_toml(events: u64) -> String {
    format!(
        r#"name = "bench-tracing"
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

/// One measurement in a child: printed as `events_per_sec=… exported=… dropped=…`.
fn child(events: u64, installed: &Installed) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("feedline-bench-tracing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("bench.toml");
    std::fs::write(&file, pipeline_toml(events))?;
    let def = load_file(&file, &registry(), &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let options = RuntimeOptions { data_dir: dir.join("data"), drain_timeout: Duration::from_secs(60) };
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
    installed.shutdown(); // flush, so the counts below are final
    let _ = std::fs::remove_dir_all(&dir);
    let (exported, dropped) =
        installed.health.as_ref().map(|h| (h.exported(), h.dropped())).unwrap_or((0, 0));
    println!(
        "events_per_sec={} exported={exported} dropped={dropped}",
        events as f64 / elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// An OTLP/HTTP endpoint that accepts every export and counts requests and bytes.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (r, b, s) = (requests.clone(), bytes.clone(), stop.clone());
        std::thread::Builder::new().name("otlp-receiver".into()).spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else { return };
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| async move {
                        r.fetch_add(1, Ordering::Relaxed);
                        b.fetch_add(body.len() as u64, Ordering::Relaxed);
                        // An empty ExportTraceServiceResponse is an empty protobuf message.
                        ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                    }),
                );
                let _ = axum::serve(listener, app).with_graceful_shutdown(s.cancelled_owned()).await;
            });
        })?;
        Ok(Self { addr, requests, bytes, stop })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone, Copy)]
struct Setting {
    label: &'static str,
    ratio: Option<f64>,
}

struct Measured {
    rate: f64,
    exported: u64,
    dropped: u64,
}

fn measure(events: u64, setting: Setting, receiver: &Receiver) -> anyhow::Result<Measured> {
    let exe = std::env::current_exe().context("locating the feedline binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "tracing", "--events", &events.to_string()])
        .env(CHILD_ENV, "1")
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
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", receiver.addr))
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
        exported: field("exported").unwrap_or(0.0) as u64,
        dropped: field("dropped").unwrap_or(0.0) as u64,
    })
}

pub fn run(events: u64, rounds: u32, installed: &Installed) -> anyhow::Result<ExitCode> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child(events, installed);
    }
    let receiver = Receiver::start()?;
    let settings = [
        Setting { label: "off", ratio: None },
        Setting { label: "on, 1% sampled", ratio: Some(0.01) },
        Setting { label: "on, 100% sampled", ratio: Some(1.0) },
    ];
    let mut best: Vec<Option<Measured>> = settings.iter().map(|_| None).collect();
    for round in 0..rounds.max(1) {
        for (i, s) in settings.iter().enumerate() {
            let m = measure(events, *s, &receiver)?;
            eprintln!("  round {}: {:<18} {:>10.0} events/s", round + 1, s.label, m.rate);
            if best[i].as_ref().is_none_or(|b| m.rate > b.rate) {
                best[i] = Some(m);
            }
        }
    }
    let off = best[0].as_ref().map(|m| m.rate).unwrap_or(f64::NAN);
    println!(
        "feedline bench tracing: {events} events, generator → 3 transforms → blackhole, best of {rounds} \
         interleaved runs, OTLP/HTTP-protobuf to an in-process receiver"
    );
    for (s, m) in settings.iter().zip(&best) {
        let Some(m) = m else { continue };
        let loss = 100.0 * (1.0 - m.rate / off);
        println!(
            "  {:<18} {:>10.0} events/s   loss vs off {:>5.1}%   spans exported {:>9}   dropped {:>9}",
            s.label, m.rate, loss, m.exported, m.dropped
        );
    }
    println!(
        "  receiver: {} export requests, {:.1} MiB",
        receiver.requests.load(Ordering::Relaxed),
        receiver.bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
    );
    Ok(ExitCode::SUCCESS)
}
