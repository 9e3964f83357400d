//! `/health` and `/ready` tell the truth about a pipeline whose sink cannot reach its server:
//! `degraded` (ready 503, live 200) after `degraded_after_ms`, `running` again once it writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::pipeline::{http_get_json, listen_addr, run_pipeline, Workdir};
use feedline_testkit::wait_until;

fn append(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

fn state(addr: &str) -> (u16, serde_json::Value) {
    http_get_json(addr, "/ready")
}

#[test]
fn a_sink_that_cannot_reach_its_server_degrades_readiness_until_it_writes_again() {
    let mut db = CouchDb::start_persistent();
    db.create_db("docs");
    let w = Workdir::new();
    let input = w.path("in.jsonl");
    std::fs::write(&input, "{\"_id\":\"a\"}\n").unwrap();
    let pipeline = w.write(
        "p.toml",
        &format!(
            "name = \"p\"\n[source]\ntype = \"file\"\npath = \"{}\"\nfollow = true\npoll_interval_ms = 20\n\
             [[sinks]]\nid = \"store\"\ntype = \"couchdb\"\nurl = \"{}\"\ndatabase = \"docs\"\n\
             degraded_after_ms = 500\nretry = {{ initial_backoff_ms = 50, max_backoff_ms = 200 }}\n",
            input.display(),
            db.url()
        ),
    );
    let mut p = run_pipeline(&pipeline, &w.path("data"), &w.path("log"), &[], &[]);
    let addr = listen_addr(&p, Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(30), || db.get("docs", "a").is_some()), "{}", p.log());
    let (code, ready) = state(&addr);
    assert_eq!((code, &ready["pipelines"]["p"]["state"]), (200, &serde_json::json!("running")), "{ready}");

    db.stop();
    append(&input, "{\"_id\":\"b\"}\n");
    let mut last = serde_json::Value::Null;
    let degraded = wait_until(Duration::from_secs(30), || {
        let (code, ready) = state(&addr);
        last = ready;
        code == 503 && last["pipelines"]["p"]["state"] == "degraded"
    });
    assert!(degraded, "never degraded: {last}\n{}", p.log());
    assert_eq!(last["ready"], false, "{last}");
    let reason = last["pipelines"]["p"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("sink.store: "), "the reason names the sink: {reason}");
    let (live, health) = http_get_json(&addr, "/health");
    assert_eq!(live, 200, "degraded is not a reason to restart the process: {health}");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["pipelines"]["p"]["state"], "degraded", "{health}");

    db.restart();
    assert!(wait_until(Duration::from_secs(30), || db.get("docs", "b").is_some()), "{}", p.log());
    let recovered = wait_until(Duration::from_secs(10), || {
        let (code, ready) = state(&addr);
        last = ready;
        code == 200
    });
    assert!(recovered, "still not ready after the write got through: {last}");
    assert_eq!(last["pipelines"]["p"]["state"], "running", "{last}");
    assert!(p.log().contains("no longer degraded"), "{}", p.log());
    p.signal(15);
    let status = p.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "{}", p.log());
}

#[test]
fn a_kafka_source_that_reaches_no_broker_degrades_readiness() {
    let w = Workdir::new();
    let closed = feedline_testkit::free_port();
    let pipeline = w.write(
        "k.toml",
        &format!(
            "name = \"k\"\n[source]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{closed}\"\ngroup_id = \"g\"\n\
             topics = [\"in\"]\n[[sinks]]\ntype = \"blackhole\"\n"
        ),
    );
    let mut p = run_pipeline(&pipeline, &w.path("data"), &w.path("log"), &[], &[]);
    let addr = listen_addr(&p, Duration::from_secs(30));
    // Positive evidence first: the pipeline runs (and is ready) before the threshold passes.
    let mut last = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = state(&addr).1;
            last["pipelines"]["k"]["state"] == "running"
        }),
        "never running: {last}\n{}",
        p.log()
    );
    // The source threshold is the engine's 30 s; statistics arrive every 5 s.
    let degraded = wait_until(Duration::from_secs(60), || {
        let (code, ready) = state(&addr);
        last = ready;
        code == 503 && last["pipelines"]["k"]["state"] == "degraded"
    });
    assert!(degraded, "never degraded: {last}\n{}", p.log());
    let reason = last["pipelines"]["k"]["reason"].as_str().unwrap();
    assert!(reason.contains("no Kafka broker is reachable"), "{reason}");
    assert!(reason.starts_with("source."), "the reason names the source: {reason}");
    p.signal(15);
    p.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
}
