//! Shared by the tracing tests (`otel_*.rs`): run `feedline` with `OTEL_*` settings against the
//! test kit's OTLP receiver, read its `/metrics`, pick spans apart. Everything is bounded in time.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use feedline_testkit::otlp::{by_trace, ReceivedSpan};
use feedline_testkit::Feedline;

/// [`run`] with extra arguments (e.g. `--telemetry-config FILE`).
pub use feedline_testkit::pipeline::run_pipeline as run_with;
pub use feedline_testkit::pipeline::{http_get, listen_addr, metric_sum, read_jsonl as lines, Workdir};

/// `feedline run <pipeline> --listen 127.0.0.1:0` with `env` (OTEL_* settings), stderr to `log`.
pub fn run(pipeline: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Feedline {
    run_with(pipeline, data_dir, log, env, &[])
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
