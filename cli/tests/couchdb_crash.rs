//! Crash test of the shipped `pipelines/activation-persister.toml` on real servers (tansu and
//! pouchdb-server): `feedline` is SIGKILLed in the middle of a 100k-activation run; after a
//! restart every one of the 100k activation documents is stored, exactly as `extract_activation`
//! shapes it, and the group's offsets reach the end of every partition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod couchdb_support;
#[path = "kafka_support/mod.rs"]
mod kafka_support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use couchdb_support::{
    activation_id, combined_message, comparable, completion_message, expected_document, listen_addr, metric,
    metrics, result_message, run, shrunk_message, Workdir,
};
use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::tansu::{Tansu, TEST_FETCH_WAIT_MS};
use feedline_testkit::wait_until;
use kafka_support::{committed, produce_unbatched};

const N: u64 = 100_000;

fn namespace(n: u64) -> &'static str {
    if n.is_multiple_of(2) {
        "guest"
    } else {
        "other"
    }
}

/// The completion messages of the activations `topic_of` picks, plus a shrunk result and a bare
/// completion every 1000 activations.
fn messages(topic_of: impl Fn(u64) -> bool) -> Vec<(Option<String>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for n in (0..N).filter(|n| topic_of(*n)) {
        let ns = namespace(n);
        let message = if n.is_multiple_of(3) { combined_message(ns, n) } else { result_message(ns, n) };
        out.push((Some(activation_id(n)), Some(message.to_string().into_bytes())));
        if n.is_multiple_of(1000) {
            out.push((None, Some(shrunk_message(n).to_string().into_bytes())));
            out.push((None, Some(completion_message(n).to_string().into_bytes())));
        }
    }
    out
}

#[test]
fn sigkill_during_a_100k_activation_run_loses_no_activation() {
    let started = Instant::now();
    let kafka = Tansu::start();
    let mut db = CouchDb::start();
    db.add_admin("admin", "crash-pw");
    let brokers = kafka.brokers();
    kafka.create_topic("completed0", 4);
    kafka.create_topic("completed-others", 2);
    // One record per batch: tansu 0.6 skips the rest of a batch when a fetch starts inside it,
    // which is what a restarted consumer does (docs/connectors-kafka.md). Produced while the
    // pipeline runs.
    let producers = [("completed0", 0), ("completed-others", 1)].map(|(topic, part)| {
        let brokers = brokers.clone();
        std::thread::spawn(move || {
            produce_unbatched(&brokers, topic, messages(|n| (n % 4 == 3) == (part == 1)))
        })
    });
    let url = db.url();
    let fetch_wait = TEST_FETCH_WAIT_MS.to_string();
    let env = [
        ("KAFKA_HOSTS", brokers.as_str()),
        ("KAFKA_FETCH_WAIT_MS", fetch_wait.as_str()),
        ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
        ("KAFKA_HEARTBEAT_INTERVAL_MS", "500"),
        ("COUCHDB_URL", url.as_str()),
        ("COUCHDB_USER", "admin"),
        ("COUCHDB_PASSWORD", "crash-pw"),
    ];
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/activation-persister.toml");
    let w = Workdir::new();
    let mut first = run(&pipeline, &w.path("data"), &w.path("first.log"), &env);
    assert!(
        wait_until(Duration::from_secs(120), || db.doc_count("activations").is_some_and(|n| n >= 30_000)),
        "{}",
        first.log()
    );
    first.signal(9);
    first.wait_timeout(Duration::from_secs(10)).expect("killed");
    let at_kill = db.doc_count("activations").unwrap();
    assert!(at_kill < N, "killed before the end ({at_kill})");
    let killed_after = started.elapsed();
    let [ends0, ends1] = producers.map(|p| p.join().expect("producer"));
    let produced = started.elapsed();

    let mut second = run(&pipeline, &w.path("data"), &w.path("second.log"), &env);
    assert!(
        wait_until(Duration::from_secs(60), || second.log().contains("kafka partitions assigned")),
        "no partitions assigned after the restart\n{}",
        second.log()
    );
    assert!(
        wait_until(Duration::from_secs(180), || db.doc_count("activations") == Some(N)),
        "{:?} of {N} after the restart\n{}",
        db.doc_count("activations"),
        second.log()
    );
    for n in [0, 1, 2, 3, 29_999, 50_001, N - 1] {
        let ns = namespace(n);
        let doc = db.get("activations", &format!("{ns}/{}", activation_id(n))).expect("stored");
        assert_eq!(comparable(&doc), expected_document(ns, n));
    }
    let sum = |topic: &str, partitions: i32| -> i64 {
        committed(&brokers, "activation-persister", topic, partitions).values().filter(|o| **o >= 0).sum()
    };
    let total = |ends: &HashMap<i32, i64>| ends.values().sum::<i64>();
    assert!(
        wait_until(Duration::from_secs(30), || sum("completed0", 4) == total(&ends0)
            && sum("completed-others", 2) == total(&ends1)),
        "offsets not committed to the end\n{}",
        second.log()
    );
    let rejected = metric(&metrics(&listen_addr(&second)), "feedline_events_rejected_total", &[]);
    assert_eq!(rejected, 0.0, "nothing dead-lettered");
    second.signal(15);
    assert!(second.wait_timeout(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", second.log());
    eprintln!(
        "crash test: SIGKILL at {at_kill} documents after {killed_after:?}; 100k activations produced \
         after {produced:?}; all {N} stored after the restart; test took {:?}",
        started.elapsed()
    );
}
