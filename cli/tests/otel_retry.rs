//! A retrying sink, seen through traces: the file sink's target directory is blocked by a plain
//! file, so every write fails retriably until the test removes it. The receiver must show each
//! failed attempt as a `sink.file` batch span with the error (and the "retrying write" warning
//! as a span event), and each traced event's `sink.file` span with one `retry` event per failed
//! attempt, the error text, and finally `delivered`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otel_support;

use std::time::Duration;

use feedline_testkit::otlp::{chain, OtlpReceiver};
use otel_support::*;

const PIPELINE: &str = r#"
name = "retrying"

[source]
type = "file"
path = "in.jsonl"

[[transforms]]
type = "remap"
ops = [{ set = { path = "/seen", value = true } }]

[[sinks]]
type = "file"
path = "blocked/out.jsonl"
retry = { initial_backoff_ms = 50, max_backoff_ms = 100 }
"#;

#[test]
fn retries_show_as_span_events_with_the_error_and_attempt_spans() {
    let receiver = OtlpReceiver::start();
    let work = Workdir::new();
    let input: String = (0..10).map(|i| format!("{{\"id\":\"doc-{i}\"}}\n")).collect();
    work.write("in.jsonl", &input);
    work.write("blocked", "a file where the sink wants a directory");
    let pipeline = work.write("retrying.toml", PIPELINE);
    let env = otel_env(&receiver.grpc_endpoint(), "grpc", "feedline-retry", "always_on", "1");
    let mut f = run(&pipeline, &work.path("data"), &work.path("feedline.log"), &as_refs(&env));

    // Failed attempts are exported while the sink keeps retrying.
    let retrying = |spans: &[feedline_testkit::otlp::ReceivedSpan]| {
        batch_spans(spans)
            .iter()
            .filter(|s| s.name == "sink.file" && s.attr("feedline.outcome").as_deref() == Some("retrying"))
            .count()
    };
    assert!(
        receiver.wait_for(Duration::from_secs(30), |s| retrying(s) >= 3),
        "no retrying attempts exported:\n{}\n{}",
        dump(&receiver.spans()),
        f.log()
    );
    std::fs::remove_file(work.path("blocked")).unwrap();
    let status = f.wait_timeout(Duration::from_secs(60)).expect("finishes once the sink can write");
    assert!(status.success(), "{}", f.log());
    assert_eq!(lines(&work.path("blocked/out.jsonl")).len(), 10, "everything delivered after the retries");

    let spans = receiver.spans();
    // Batch level: a span per attempt; failed ones carry the error and the logged warning.
    let attempts: Vec<_> = batch_spans(&spans).into_iter().filter(|s| s.name == "sink.file").collect();
    let failed: Vec<_> =
        attempts.iter().filter(|s| s.attr("feedline.outcome").as_deref() == Some("retrying")).collect();
    assert!(failed.len() >= 3);
    for a in &failed {
        assert_eq!(a.status.0, 2, "failed attempt has status ERROR");
        assert!(a.attr("error.message").unwrap().contains("blocked"), "{:?}", a.attributes);
        let warning = a.events.iter().find(|(name, _)| name == "retrying write");
        let (_, fields) = warning.unwrap_or_else(|| panic!("no warning event on {:?}", a.events));
        assert!(
            fields.get("error").and_then(|e| e.as_str()).is_some_and(|e| e.contains("blocked")),
            "{fields:?}"
        );
    }
    let mut numbers: Vec<u64> =
        attempts.iter().map(|a| a.attr("feedline.attempt").unwrap().parse().unwrap()).collect();
    numbers.sort_unstable();
    assert_eq!(numbers[0], 1);
    assert!(
        attempts.iter().any(|a| a.attr("feedline.outcome").as_deref() == Some("delivered")),
        "the last attempt delivered"
    );

    // Event level: one sink span per event, a retry event per failed attempt, then delivered.
    let traces = event_traces(&spans);
    assert_eq!(traces.len(), 10, "{}", dump(&spans));
    for spans in traces.values() {
        let chain = chain(spans).unwrap_or_else(|| panic!("{}", dump(spans)));
        let names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["source.file", "transform.remap", "sink.file"]);
        let sink = &chain[2];
        assert_eq!(sink.attr("feedline.outcome").as_deref(), Some("delivered"));
        let retries: Vec<_> = sink.events.iter().filter(|(n, _)| n == "retry").collect();
        assert!(retries.len() >= 3, "{:?}", sink.events);
        assert_eq!(sink.attr("feedline.attempts").unwrap().parse::<usize>().unwrap(), retries.len() + 1);
        for (i, (_, attrs)) in retries.iter().enumerate() {
            assert_eq!(attrs.get("feedline.attempt").and_then(|v| v.as_i64()), Some(i as i64 + 1));
            assert!(attrs.get("error.message").and_then(|v| v.as_str()).unwrap().contains("blocked"));
        }
        assert!(sink.end_ns - sink.start_ns >= 100_000_000, "the span covers the retries' backoff");
    }
}
