//! Crash test of activation persisting into a real CouchDB-protocol server (pouchdb-server):
//! `feedline` is SIGKILLed in the middle of a 100k-activation run; after a restart every one of
//! the 100k activation documents is stored, exactly as `extract_activation` shapes it.
//!
//! The input is a JSON-lines file of completion messages (result and combined forms, with shrunk
//! results and bare completions mixed in), read by the checkpointed `file` source: this isolates
//! the CouchDB sink's part of the delivery contract. The Kafka → CouchDB persister itself is
//! tested end to end in `couchdb_persister.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod couchdb_support;

use std::io::Write;
use std::time::{Duration, Instant};

use couchdb_support::{
    activation_id, combined_message, comparable, completion_message, expected_document, result_message, run,
    shrunk_message, Workdir,
};
use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::wait_until;

const N: u64 = 100_000;

#[test]
fn sigkill_during_a_100k_activation_run_loses_no_activation() {
    let started = Instant::now();
    let db = CouchDb::start();
    let w = Workdir::new();
    {
        let mut input = std::io::BufWriter::new(std::fs::File::create(w.path("completed.jsonl")).unwrap());
        for n in 0..N {
            let ns = if n.is_multiple_of(2) { "guest" } else { "other" };
            let message = if n.is_multiple_of(3) { combined_message(ns, n) } else { result_message(ns, n) };
            writeln!(input, "{message}").unwrap();
            if n.is_multiple_of(1000) {
                writeln!(input, "{}", shrunk_message(n)).unwrap();
                writeln!(input, "{}", completion_message(n)).unwrap();
            }
        }
    }
    let file = w.write(
        "persist.toml",
        &format!(
            r#"name = "persist"
[source]
type = "file"
path = "completed.jsonl"
batch_size = 500
max_pending_batches = 16

[[transforms]]
type = "extract_activation"

[[sinks]]
type = "couchdb"
url = "{url}"
database = "activations"
create_database = true
on_conflict = "ignore"
max_in_flight = 4
batch = {{ max_events = 500 }}
"#,
            url = db.url()
        ),
    );
    let data = w.path("data");
    let mut first = run(&file, &data, &w.path("first.log"), &[]);
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

    let mut second = run(&file, &data, &w.path("second.log"), &[]);
    let status = second.wait_timeout(Duration::from_secs(150)).expect("the second run finishes the file");
    assert!(status.success(), "{}", second.log());
    assert_eq!(db.doc_count("activations"), Some(N), "{}", second.log());
    assert!(!data.join("persist/dead-letter.jsonl").exists(), "nothing dead-lettered");
    for n in [0, 1, 2, 29_999, 50_001, N - 1] {
        let ns = if n.is_multiple_of(2) { "guest" } else { "other" };
        let doc = db.get("activations", &format!("{ns}/{}", activation_id(n))).expect("stored");
        assert_eq!(comparable(&doc), expected_document(ns, n));
        assert!(doc["updated"].as_i64().is_some_and(|u| u > 1_600_000_000_000));
    }
    eprintln!(
        "crash test: SIGKILL at {at_kill} of {N} documents after {killed_after:?}; all {N} stored after the restart; test took {:?}",
        started.elapsed()
    );
}
