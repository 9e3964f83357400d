//! Traces per stage, checked by a real OTLP receiver (the test kit's, gRPC and HTTP/protobuf):
//! every sampled event is one trace whose spans chain `source.file` → each transform →
//! `sink.file` parent to child; batch spans carry pipeline, component, batch size and outcome;
//! the sampler decides how many events are traced; and without an endpoint nothing is exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otel_support;

use std::collections::BTreeSet;
use std::time::Duration;

use feedline_testkit::otlp::{chain, OtlpReceiver};
use otel_support::*;

const PIPELINE: &str = r#"
name = "traced"

[source]
type = "file"
path = "in.jsonl"

[[transforms]]
type = "filter"
condition = { exists = "id" }

[[transforms]]
type = "remap"
ops = [{ set = { path = "/traced", value = true } }]

[[sinks]]
type = "file"
path = "out.jsonl"
"#;

/// `n` input lines; every fifth has no `id` (the filter drops it).
fn input(n: usize) -> String {
    (0..n)
        .map(|i| {
            if i % 5 == 4 {
                format!("{{\"n\":{i}}}\n")
            } else {
                format!("{{\"id\":\"doc-{i}\",\"n\":{i}}}\n")
            }
        })
        .collect()
}

fn run_to_end(work: &Workdir, env: &[(&'static str, String)]) {
    let pipeline = work.write("traced.toml", PIPELINE);
    let mut f = run(&pipeline, &work.path("data"), &work.path("feedline.log"), &as_refs(env));
    let status = f.wait_timeout(Duration::from_secs(60)).expect("feedline finishes a non-following file");
    assert!(status.success(), "feedline failed:\n{}", f.log());
}

#[test]
fn every_sampled_event_is_one_trace_through_every_stage_over_grpc() {
    let receiver = OtlpReceiver::start();
    let work = Workdir::new();
    work.write("in.jsonl", &input(25));
    let env = otel_env(&receiver.grpc_endpoint(), "grpc", "feedline-stages", "parentbased_always_on", "1");
    run_to_end(&work, &env);
    assert_eq!(lines(&work.path("out.jsonl")).len(), 20);

    // Spans were flushed at exit: everything is there without waiting.
    let spans = receiver.spans();
    assert!(spans.iter().all(|s| s.transport == "grpc" && s.service == "feedline-stages"));
    let traces = event_traces(&spans);
    assert_eq!(traces.len(), 25, "one trace per event:\n{}", dump(&spans));
    let mut ids = BTreeSet::new();
    for spans in traces.values() {
        let chain = chain(spans).unwrap_or_else(|| panic!("not one parent/child chain:\n{}", dump(spans)));
        let names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
        let source = &chain[0];
        assert!(source.parent_span_id.is_empty(), "the source starts the trace");
        assert!(source.attr("feedline.source.position").is_some(), "position attribute");
        let dropped = source.attr("feedline.document.id").is_none();
        if dropped {
            assert_eq!(names, ["source.file", "transform.filter"], "{}", dump(spans));
            assert_eq!(chain[1].attr("feedline.outcome").as_deref(), Some("dropped"));
        } else {
            ids.insert(source.attr("feedline.document.id").unwrap());
            assert_eq!(
                names,
                ["source.file", "transform.filter", "transform.remap", "sink.file"],
                "{}",
                dump(spans)
            );
            assert_eq!(chain[1].attr("feedline.outcome").as_deref(), Some("emitted"));
            assert_eq!(chain[3].attr("feedline.outcome").as_deref(), Some("delivered"));
            assert_eq!(chain[3].attr("feedline.attempts").as_deref(), Some("1"));
        }
        for s in &chain {
            assert_eq!(s.attr("feedline.pipeline").as_deref(), Some("traced"));
            assert_eq!(
                s.attr("feedline.batch.size").as_deref().map(|n| n.parse::<u64>().unwrap() > 0),
                Some(true)
            );
            assert!(s.start_ns <= s.end_ns);
        }
        // Stages follow each other in time.
        for w in chain.windows(2) {
            assert!(w[0].start_ns <= w[1].start_ns, "{} starts before {}", w[0].name, w[1].name);
        }
    }
    assert_eq!(ids.len(), 20, "each kept document traced once");

    // Batch spans: one per stage per batch, with their attributes.
    let batches = batch_spans(&spans);
    for (name, size, outcome) in [
        ("source.file", "25", "sent"),
        ("transform.filter", "25", "ok"),
        ("transform.remap", "20", "ok"),
        ("sink.file", "20", "delivered"),
    ] {
        let b = batches
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no batch span {name}:\n{}", dump(&batches)));
        assert_eq!(b.attr("feedline.batch.size").as_deref(), Some(size), "{name}");
        assert_eq!(b.attr("feedline.outcome").as_deref(), Some(outcome), "{name}");
        assert_eq!(b.attr("feedline.component.type").as_deref(), Some(name.split('.').nth(1).unwrap()));
        assert!(b.attr("feedline.component.id").is_some());
        assert!(b.parent_span_id.is_empty(), "batch spans are roots");
    }
    // The file source commits its offset at the end (and on an interval), inside a span.
    let commit = batches.iter().find(|s| s.name == "checkpoint.commit").expect("checkpoint.commit span");
    assert_eq!(commit.attr("feedline.component.type").as_deref(), Some("file"));
    assert!(commit.attr("feedline.checkpoint.position").unwrap().parse::<u64>().unwrap() > 0);
    let filter = batches.iter().find(|s| s.name == "transform.filter").unwrap();
    assert_eq!(filter.attr("feedline.events.dropped").as_deref(), Some("5"));
}

#[test]
fn the_sampler_decides_which_events_are_traced_over_http() {
    let receiver = OtlpReceiver::start();
    let work = Workdir::new();
    work.write("in.jsonl", &input(400));
    let env = otel_env(
        &receiver.http_endpoint(),
        "http/protobuf",
        "feedline-sampled",
        "parentbased_traceidratio",
        "0.25",
    );
    run_to_end(&work, &env);
    assert_eq!(lines(&work.path("out.jsonl")).len(), 320, "sampling never changes delivery");
    let spans = receiver.spans();
    assert!(!spans.is_empty() && spans.iter().all(|s| s.transport == "http"));
    let traces = event_traces(&spans);
    // 25% of 400 = 100 expected; binomial sd ≈ 8.7.
    assert!((50..=150).contains(&traces.len()), "{} traced events", traces.len());
    for spans in traces.values() {
        let chain = chain(spans).unwrap_or_else(|| panic!("incomplete trace:\n{}", dump(spans)));
        assert_eq!(chain[0].name, "source.file", "a sampled event is traced from its source on");
        assert!(chain.len() == 2 || chain.len() == 4, "{}", dump(spans));
    }
}

#[test]
fn without_an_endpoint_nothing_is_exported() {
    let receiver = OtlpReceiver::start();
    let work = Workdir::new();
    work.write("in.jsonl", &input(10));
    // A sampler and service name alone do not turn tracing on.
    let env =
        vec![("OTEL_TRACES_SAMPLER", "always_on".to_owned()), ("OTEL_SERVICE_NAME", "quiet".to_owned())];
    run_to_end(&work, &env);
    assert_eq!(lines(&work.path("out.jsonl")).len(), 8);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.requests(), 0);
    // ... and the events carry no trace context out.
    let out = std::fs::read_to_string(work.path("out.jsonl")).unwrap();
    assert!(!out.contains("traceparent"));
}
