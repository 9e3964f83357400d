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

#[test]
fn a_telemetry_file_configures_export_and_otel_variables_override_it() {
    let receiver = OtlpReceiver::start();
    let work = Workdir::new();
    work.write("in.jsonl", &input(5));
    let pipeline = work.write("traced.toml", PIPELINE);
    let config = work.write(
        "telemetry.toml",
        &format!(
            "[telemetry]\nendpoint = \"{}\"\nprotocol = \"grpc\"\nservice_name = \"from-file\"\n\
             sampler = \"always_on\"\nscheduled_delay_ms = 100\n",
            receiver.grpc_endpoint()
        ),
    );
    let args = ["--telemetry-config", config.to_str().unwrap()];
    let mut f = run_with(&pipeline, &work.path("data"), &work.path("a.log"), &[], &args);
    assert!(f.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", f.log());
    assert!(receiver.spans().iter().all(|s| s.service == "from-file" && s.transport == "grpc"));
    assert_eq!(event_traces(&receiver.spans()).len(), 5);

    // The environment wins: another service name, and HTTP to the other listener.
    let before = receiver.spans().len();
    std::fs::remove_dir_all(work.path("data")).unwrap();
    let env = [
        ("OTEL_SERVICE_NAME", "from-env"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &*receiver.http_endpoint()),
    ];
    let mut f = run_with(&pipeline, &work.path("data"), &work.path("b.log"), &env, &args);
    assert!(f.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", f.log());
    let later = &receiver.spans()[before..];
    assert!(!later.is_empty() && later.iter().all(|s| s.service == "from-env" && s.transport == "http"));

    // A mistake in the file stops `run` before any pipeline starts.
    work.write("bad.toml", "[telemetry]\nsampler = \"sometimes\"\nendpoint = \"http://x:1\"\n");
    let bad_path = work.path("bad.toml");
    let bad = ["--telemetry-config", bad_path.to_str().unwrap()];
    let mut f = run_with(&pipeline, &work.path("data"), &work.path("c.log"), &[], &bad);
    assert!(!f.wait_timeout(Duration::from_secs(30)).unwrap().success());
    assert!(f.log().contains("unsupported sampler `sometimes`"), "{}", f.log());
}

#[test]
fn a_rejected_event_is_traced_into_the_dead_letter_sink() {
    let receiver = OtlpReceiver::start();
    let work = Workdir::new();
    // Events without `id` cannot be renamed: the remap rejects them.
    work.write("in.jsonl", &input(10));
    let pipeline = work.write(
        "rejecting.toml",
        r#"
name = "rejecting"

[source]
type = "file"
path = "in.jsonl"

[[transforms]]
type = "remap"
ops = [{ rename = { from = "/id", to = "/doc" } }]
on_error = "reject"

[[sinks]]
type = "file"
path = "out.jsonl"
"#,
    );
    let env = otel_env(&receiver.grpc_endpoint(), "grpc", "feedline-dlq", "always_on", "1");
    let mut f = run(&pipeline, &work.path("data"), &work.path("feedline.log"), &as_refs(&env));
    assert!(f.wait_timeout(Duration::from_secs(60)).unwrap().success(), "{}", f.log());
    assert_eq!(lines(&work.path("out.jsonl")).len(), 8);
    let spans = receiver.spans();
    let rejected: Vec<_> = event_traces(&spans)
        .into_values()
        .filter_map(|t| chain(&t))
        .filter(|c| c.iter().any(|s| s.name == "dead_letter"))
        .collect();
    assert_eq!(rejected.len(), 2, "{}", dump(&spans));
    for c in rejected {
        let names: Vec<&str> = c.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["source.file", "transform.remap", "dead_letter"]);
        assert_eq!(c[1].attr("feedline.outcome").as_deref(), Some("rejected"));
        assert_eq!(c[1].status.0, 2);
        assert!(c[1].attr("error.message").is_some());
        assert_eq!(c[2].attr("feedline.outcome").as_deref(), Some("delivered"));
    }
    assert!(batch_spans(&spans).iter().any(|s| s.name == "dead_letter"));
}
