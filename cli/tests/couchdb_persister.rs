//! The shipped `pipelines/activation-persister.toml` end to end on real servers: tansu (Kafka
//! protocol) and pouchdb-server (CouchDB protocol), both on free 127.0.0.1 ports.
//!
//! Result, combined, shrunk and completion messages, duplicates and garbage are mixed on several
//! `completed*` topics, one of them created while the pipeline runs: exactly the expected
//! activation documents are stored, duplicates count as delivered, garbage lands in the
//! dead-letter topic, the group's offsets are committed, and a topic that does not match
//! `^completed.*` is never read.
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
use kafka_support::{committed, produce, read_all};
use serde_json::Value;

type Records = Vec<(Option<String>, Option<Vec<u8>>)>;

fn json_records(values: impl IntoIterator<Item = Value>) -> Records {
    values.into_iter().map(|v| (None, Some(v.to_string().into_bytes()))).collect()
}

fn garbage(texts: &[&str]) -> Records {
    texts.iter().map(|t| (None, Some(t.as_bytes().to_vec()))).collect()
}

fn shipped_pipeline() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/activation-persister.toml")
}

/// Sum of the end offsets per partition written by the test producer.
fn total(ends: &HashMap<i32, i64>) -> i64 {
    ends.values().sum()
}

#[test]
fn the_persister_stores_exactly_the_activations_of_every_completed_topic() {
    let started = Instant::now();
    let kafka = Tansu::start();
    let mut db = CouchDb::start();
    db.add_admin("admin", "persister-pw");
    let brokers = kafka.brokers();
    kafka.create_topic("completed0", 2);
    kafka.create_topic("completed-others", 1);
    kafka.create_topic("activations", 1);

    // completed0: 200 results (guest), 100 combined (guest), shrunk results, bare completions,
    // 20 duplicated results and garbage.
    let mut c0 = json_records((0..200).map(|n| result_message("guest", n)));
    c0.extend(json_records((200..300).map(|n| combined_message("guest", n))));
    c0.extend(json_records((0..50).map(shrunk_message)));
    c0.extend(json_records((0..50).map(completion_message)));
    c0.extend(json_records((0..20).map(|n| result_message("guest", n))));
    c0.extend(garbage(&["not json", "{\"response\":{\"activationId\":\"x\"}}", "[1,2,3]"]));
    c0.push((None, None)); // a tombstone: skipped
    let c0_ends = produce(&brokers, "completed0", c0);
    // completed-others: 100 results (namespace other) and one garbage record.
    let mut others = json_records((300..400).map(|n| result_message("other", n)));
    others.extend(garbage(&["{\"transid\":[]}"]));
    let others_ends = produce(&brokers, "completed-others", others);
    // `activations` does not match ^completed.*: never read.
    produce(&brokers, "activations", json_records((1000..1010).map(|n| result_message("guest", n))));

    let w = Workdir::new();
    let env = [
        ("KAFKA_HOSTS", brokers.as_str()),
        ("KAFKA_FETCH_WAIT_MS", &TEST_FETCH_WAIT_MS.to_string()),
        ("COUCHDB_URL", &db.url()),
        ("COUCHDB_USER", "admin"),
        ("COUCHDB_PASSWORD", "persister-pw"),
    ]
    .map(|(k, v)| (k, v.to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut f = run(&shipped_pipeline(), &w.path("data"), &w.path("feedline.log"), &env);
    let addr = listen_addr(&f);
    assert!(
        wait_until(Duration::from_secs(60), || db.doc_count("activations").is_some_and(|n| n >= 400)),
        "first topics not persisted: {:?}\n{}",
        db.doc_count("activations"),
        f.log()
    );

    // A matching topic created while running: picked up by the pattern subscription.
    kafka.create_topic("completed1", 1);
    let mut c1 = json_records((400..500).map(|n| result_message("guest", n)));
    c1.extend(json_records((300..310).map(|n| combined_message("other", n))));
    let c1_ends = produce(&brokers, "completed1", c1);
    assert!(
        wait_until(Duration::from_secs(60), || db.doc_count("activations") == Some(500)),
        "completed1 not persisted: {:?}\n{}",
        db.doc_count("activations"),
        f.log()
    );

    // Exactly the expected documents.
    let docs = db.all_docs("activations");
    assert_eq!(docs.len(), 500);
    for doc in &docs {
        let id = doc["_id"].as_str().unwrap();
        let (ns, hex) = id.split_once('/').unwrap();
        let n = u64::from_str_radix(hex, 16).unwrap();
        assert!(n < 500, "{id} must not be stored (topic `activations` is not completed*)");
        assert_eq!(ns, if (300..400).contains(&n) { "other" } else { "guest" }, "{id}");
        assert_eq!(comparable(doc), expected_document(ns, n));
        assert!(doc["updated"].as_i64().is_some_and(|u| u > 1_600_000_000_000), "{doc}");
    }
    assert!(db.get("activations", &format!("guest/{}", activation_id(1000))).is_none());

    // Offsets committed up to the end of every completed* partition; none for `activations`.
    let group = "activation-persister";
    let caught_up = || {
        let sum = |topic: &str, partitions: i32| -> i64 {
            committed(&brokers, group, topic, partitions).values().filter(|o| **o >= 0).sum()
        };
        sum("completed0", 2) == total(&c0_ends)
            && sum("completed-others", 1) == total(&others_ends)
            && sum("completed1", 1) == total(&c1_ends)
    };
    assert!(wait_until(Duration::from_secs(30), caught_up), "offsets not committed\n{}", f.log());
    assert!(
        committed(&brokers, group, "activations", 1).values().all(|o| *o < 0),
        "the group must not have read `activations`"
    );

    // Duplicates counted as delivered: 530 activation events written, 500 documents stored.
    let text = metrics(&addr);
    let delivered = metric(&text, "feedline_events_out_total", &[r#"component="couchdb""#, r#"kind="sink""#]);
    assert_eq!(delivered, 530.0, "every activation event, duplicates included, is delivered");
    let rejected_by_sink =
        metric(&text, "feedline_events_rejected_total", &[r#"component="couchdb""#, r#"kind="sink""#]);
    assert_eq!(rejected_by_sink, 0.0);

    // Garbage (3 on completed0, 1 on completed-others) in the dead-letter topic, with origins.
    let dead = read_all(
        &brokers,
        &["feedline-dead-letter"],
        Duration::from_millis(500),
        Duration::from_secs(30),
        |r| r.len() >= 4,
    );
    assert_eq!(dead.len(), 4, "{dead:?}");
    let mut origins: Vec<String> =
        dead.iter().map(|r| r.json()["origin"]["stream"].as_str().unwrap_or_default().to_owned()).collect();
    origins.sort();
    assert_eq!(origins, ["completed-others", "completed0", "completed0", "completed0"]);

    f.signal(15);
    assert!(f.wait_timeout(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", f.log());
    eprintln!("persister end to end took {:?}", started.elapsed());
}
