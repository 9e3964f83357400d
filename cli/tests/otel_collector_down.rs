//! An unreachable collector never slows or stops a pipeline. The same traced pipeline (every
//! event sampled: the most export work there can be) runs three times: collector up (the test
//! kit's receiver), collector down (connection refused) and collector hung (accepts TCP, never
//! answers). Every run delivers every event; the down and hung runs are not slower than the up
//! run; their lost spans are counted on `/metrics` and none are counted as exported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod otel_support;

use std::time::{Duration, Instant};

use feedline_testkit::otlp::OtlpReceiver;
use otel_support::*;

const EVENTS: usize = 30_000;

const PIPELINE: &str = r#"
name = "down"

[source]
type = "file"
path = "in.jsonl"
follow = true
poll_interval_ms = 20

[[transforms]]
type = "remap"
ops = [{ set = { path = "/seen", value = true } }]

[[sinks]]
type = "file"
path = "out.jsonl"
fsync = false
"#;

struct Run {
    rate: f64,
    exported: f64,
    dropped: f64,
}

fn run_once(endpoint: &str, label: &str) -> Run {
    let work = Workdir::new();
    let input: String = (0..EVENTS).map(|i| format!("{{\"id\":\"doc-{i}\",\"n\":{i}}}\n")).collect();
    work.write("in.jsonl", &input);
    let pipeline = work.write("down.toml", PIPELINE);
    let env = otel_env(endpoint, "grpc", "feedline-down", "always_on", "1");
    let started = Instant::now();
    let mut f = run(&pipeline, &work.path("data"), &work.path("feedline.log"), &as_refs(&env));
    let addr = listen_addr(&f, Duration::from_secs(30));
    let delivered = |m: &str| metric_sum(m, "feedline_events_out_total", &["kind=\"sink\""]);
    let done = feedline_testkit::wait_until(Duration::from_secs(120), || {
        delivered(&http_get(&addr, "/metrics")) >= EVENTS as f64
    });
    let elapsed = started.elapsed();
    assert!(done, "{label}: not everything delivered:\n{}", f.log());
    assert!(f.running(), "{label}: the pipeline keeps running");
    // Give the exporter a moment to count what it lost or sent.
    std::thread::sleep(Duration::from_millis(700));
    let metrics = http_get(&addr, "/metrics");
    f.signal(15);
    let status = f.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "{label}: {}", f.log());
    assert_eq!(lines(&work.path("out.jsonl")).len(), EVENTS, "{label}: every event delivered once");
    let run = Run {
        rate: EVENTS as f64 / elapsed.as_secs_f64(),
        exported: metric_sum(&metrics, "feedline_otel_spans_exported_total", &[]),
        dropped: metric_sum(&metrics, "feedline_otel_spans_dropped_total", &[]),
    };
    eprintln!(
        "{label:>5}: {:>8.0} events/s, spans exported {}, dropped {} ({})",
        run.rate,
        run.exported,
        run.dropped,
        metrics
            .lines()
            .filter(|l| l.starts_with("feedline_otel_spans_dropped_total{"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    run
}

#[test]
fn an_unreachable_collector_costs_no_throughput_and_no_events() {
    let receiver = OtlpReceiver::start();
    let up = run_once(&receiver.grpc_endpoint(), "up");
    assert!(up.exported > 0.0, "the receiver got spans");
    assert!(!receiver.spans().is_empty());

    // Refused: nothing listens on this port.
    let closed = format!("http://127.0.0.1:{}", feedline_testkit::free_port());
    let down = run_once(&closed, "down");
    // Hung: the kernel accepts the connection, nobody ever answers.
    let hung_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung = run_once(&format!("http://{}", hung_listener.local_addr().unwrap()), "hung");

    for (label, r) in [("down", &down), ("hung", &hung)] {
        assert_eq!(r.exported, 0.0, "{label}: nothing can have been exported");
        assert!(r.dropped > 0.0, "{label}: lost spans are counted");
        // Same work minus the exporting: at least as fast as with the collector up, give or take
        // the noise of a shared two-core machine.
        assert!(
            r.rate >= 0.7 * up.rate,
            "{label}: {:.0} events/s vs {:.0} with the collector up",
            r.rate,
            up.rate
        );
    }
}
