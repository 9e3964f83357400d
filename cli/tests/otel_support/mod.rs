//! Shared by the tracing tests (`otel_*.rs`): run `feedline` with `OTEL_*` settings against the
//! test kit's OTLP receiver, read its `/metrics`, pick spans apart. Everything is bounded in time.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use feedline_testkit::otlp::{by_trace, ReceivedSpan};
use feedline_testkit::process::feedline_bin;
use feedline_testkit::Feedline;

/// A scratch directory.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// `feedline run <pipeline> --listen 127.0.0.1:0` with `env` (OTEL_* settings), stderr to `log`.
pub fn run(pipeline: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Feedline {
    run_with(pipeline, data_dir, log, env, &[])
}

/// [`run`] with extra arguments (e.g. `--telemetry-config FILE`).
pub fn run_with(
    pipeline: &Path,
    data_dir: &Path,
    log: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Feedline {
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    if std::env::var("RUST_LOG").is_err() {
        env.push(("RUST_LOG", "info"));
    }
    Feedline::spawn(&feedline_bin(), &args, &env, log)
}

/// OTEL_* settings exporting to `endpoint` over `protocol` with sampler `sampler`/`arg`.
pub fn otel_env(
    endpoint: &str,
    protocol: &'static str,
    service: &'static str,
    sampler: &'static str,
    arg: &'static str,
) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_SERVICE_NAME", service.to_owned()),
        ("OTEL_TRACES_SAMPLER", sampler.to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", arg.to_owned()),
        // Short export delay so tests see spans soon.
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
    ]
}

pub fn as_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The `/metrics` address a `--listen 127.0.0.1:0` process printed.
pub fn listen_addr(f: &Feedline, timeout: Duration) -> String {
    let mut addr = None;
    feedline_testkit::wait_until(timeout, || {
        addr = f.log().lines().find_map(|l| l.strip_prefix("feedline: listening on ").map(str::to_owned));
        addr.is_some()
    });
    addr.unwrap_or_else(|| panic!("no listen address in log:\n{}", f.log()))
}

/// GET `path` from `addr` (HTTP/1.0, body only).
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Sum of a Prometheus metric's samples whose labels contain all of `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lines of a JSON-lines file (0 when it does not exist yet).
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Spans with `feedline.span.scope = event`.
pub fn event_spans(spans: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.attr("feedline.span.scope").as_deref() == Some("event")).cloned().collect()
}

/// Spans with `feedline.span.scope = batch`.
pub fn batch_spans(spans: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.attr("feedline.span.scope").as_deref() == Some("batch")).cloned().collect()
}

/// Per-event spans grouped by trace.
pub fn event_traces(spans: &[ReceivedSpan]) -> BTreeMap<String, Vec<ReceivedSpan>> {
    by_trace(&event_spans(spans))
}

/// A readable dump of spans for assertion messages.
pub fn dump(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {}<-{} {} outcome={:?} events={:?}",
                s.service,
                &s.trace_id[..8],
                &s.span_id[..8],
                s.parent_span_id.get(..8).unwrap_or("root"),
                s.name,
                s.attr("feedline.outcome"),
                s.events.iter().map(|e| &e.0).collect::<Vec<_>>()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
