//! The shipped `pipelines/cache-invalidation-couchdb.toml` end to end on real servers:
//! pouchdb-server (CouchDB protocol, with an admin so the pipeline's credentials are checked)
//! and tansu (Kafka protocol). Changes of `whisks` — creates, updates, deletes — become
//! `cacheInvalidation` messages; this cluster's own changes are dropped; after a SIGKILL the feed
//! resumes from `_local/feedline-cache-invalidation-couchdb` (changes made while it was down
//! are delivered although the pipeline starts from "now" without a checkpoint).
//!
//! pouchdb-server keeps continuous feeds silent once an admin exists, so the test sets
//! `COUCHDB_FEED=longpoll` (docs/connectors-couchdb.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod couchdb_support;
#[path = "kafka_support/mod.rs"]
mod kafka_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use couchdb_support::{run, Workdir};
use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::tansu::Tansu;
use feedline_testkit::wait_until;
use kafka_support::read_all;
use serde_json::json;

fn invalidated(brokers: &str, expect: usize) -> Vec<String> {
    let records =
        read_all(brokers, &["cacheInvalidation"], Duration::from_millis(300), Duration::from_secs(20), |r| {
            r.len() >= expect
        });
    records
        .iter()
        .map(|r| {
            assert_eq!(r.key.as_deref(), Some("messages"));
            let v = r.json();
            assert_eq!(v["instanceId"], "cache-invalidator", "{v}");
            v["key"]["mainId"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn whisk_changes_become_cache_invalidations_and_resume_after_a_crash() {
    let started = Instant::now();
    let kafka = Tansu::start();
    kafka.create_topic("cacheInvalidation", 1);
    let mut db = CouchDb::start();
    db.add_admin("admin", "invalidator-pw");
    db.create_db("whisks");
    db.put_doc("whisks", &json!({"_id": "guest/before-start", "clusterId": "east"}));
    let brokers = kafka.brokers();
    let url = db.url();
    let env = [
        ("KAFKA_HOSTS", brokers.as_str()),
        ("COUCHDB_URL", url.as_str()),
        ("COUCHDB_USER", "admin"),
        ("COUCHDB_PASSWORD", "invalidator-pw"),
        ("CLUSTER_ID", "west"),
        ("COUCHDB_FEED", "longpoll"),
    ];
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/cache-invalidation-couchdb.toml");
    let w = Workdir::new();
    let mut f = run(&pipeline, &w.path("data"), &w.path("a.log"), &env);
    assert!(
        wait_until(Duration::from_secs(30), || f.log().contains("following the _changes feed")),
        "{}",
        f.log()
    );
    let rev_a = db.put_doc("whisks", &json!({"_id": "guest/a", "clusterId": "east"}));
    db.put_doc("whisks", &json!({"_id": "guest/mine", "clusterId": "west"}));
    let rev_c = db.put_doc("whisks", &json!({"_id": "guest/pkg/c", "clusterId": "east"}));
    db.put_doc("whisks", &json!({"_id": "guest/a", "_rev": rev_a, "clusterId": "east", "v": 2}));
    db.delete_doc("whisks", "guest/pkg/c", &rev_c);
    let ids = || invalidated(&brokers, 2).into_iter().collect::<BTreeSet<_>>();
    assert!(
        wait_until(Duration::from_secs(30), || ids()
            == BTreeSet::from(["guest/a".into(), "guest/pkg/c".into()])),
        "{:?}\n{}",
        ids(),
        f.log()
    );
    // Wait for the checkpoint, then crash; changes made while down are delivered after restart.
    let checkpointed =
        || db.request("GET", "/whisks/_local/feedline-cache-invalidation-couchdb", None).0 == 200;
    assert!(wait_until(Duration::from_secs(20), checkpointed), "{}", f.log());
    let before = invalidated(&brokers, 2).len();
    f.signal(9);
    f.wait_timeout(Duration::from_secs(10)).expect("killed");
    let rev_d = db.put_doc("whisks", &json!({"_id": "guest/d", "clusterId": "east"}));
    db.delete_doc("whisks", "guest/d", &rev_d);
    db.put_doc("whisks", &json!({"_id": "guest/e"}));
    let mut g = run(&pipeline, &w.path("data"), &w.path("b.log"), &env);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let all = invalidated(&brokers, before + 2);
            all.contains(&"guest/d".to_owned()) && all.contains(&"guest/e".to_owned())
        }),
        "changes made while down were not delivered\n{}",
        g.log()
    );
    assert!(g.log().contains("resuming the changes feed from the checkpoint"), "{}", g.log());
    let all = invalidated(&brokers, before + 2);
    assert!(!all.contains(&"guest/mine".to_owned()), "this cluster's own change must be dropped");
    assert!(!all.contains(&"guest/before-start".to_owned()), "start_from = now");
    g.signal(15);
    assert!(g.wait_timeout(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", g.log());
    eprintln!("cache invalidation end to end: {} messages; took {:?}", all.len(), started.elapsed());
}
