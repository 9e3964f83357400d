//! The shipped `pipelines/cache-invalidation.toml` end to end on real servers: the Cosmos test
//! server (the SDK's in-memory emulator behind the testkit's signature-checking HTTP front) and
//! tansu (Kafka protocol).
//!
//! Two invalidators run side by side on the same `whisks` and `subjects` containers, as two
//! clusters' would: one with `CLUSTER_ID=west`, one with no cluster id. Changes become the exact
//! `cacheInvalidation` message with record key `messages`, ids stored with `|` are published
//! with `/`, soft-deleted documents still invalidate, `west`'s own changes are dropped by the
//! first and published by the second (no cluster id: nothing dropped).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "kafka_support/mod.rs"]
mod kafka_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use feedline_testkit::cosmos::CosmosServer;
use feedline_testkit::tansu::Tansu;
use feedline_testkit::Feedline;
use kafka_support::{read_all, run_feedline, Record, Workdir};
use serde_json::json;

const DB: &str = "whisk";
const WEST_TOPIC: &str = "cacheInvalidation";
const ANY_TOPIC: &str = "cacheInvalidation-nocluster";

fn shipped_pipeline() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/cache-invalidation.toml")
}

/// The main ids published on `topic`, each record checked to be exactly the invalidation message.
fn published(brokers: &str, topic: &str, done: impl Fn(&BTreeSet<String>) -> bool) -> Vec<String> {
    let records = read_all(brokers, &[topic], Duration::from_millis(500), Duration::from_secs(30), |r| {
        done(&r.iter().map(main_id).collect())
    });
    records.iter().map(main_id).collect()
}

fn main_id(record: &Record) -> String {
    assert_eq!(record.key.as_deref(), Some("messages"), "record key");
    let value = record.json();
    let id = value["key"]["mainId"].as_str().unwrap_or_default().to_owned();
    assert_eq!(value, json!({"instanceId": "cache-invalidator", "key": {"mainId": id}}), "exact message");
    id
}

/// Write a probe document until its invalidation shows up on `topic`: the pipeline starts its
/// feed at "now", so changes written before it polled the first time would not be seen.
fn wait_ready(server: &CosmosServer, container: &str, brokers: &str, topic: &str, who: &Feedline) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for n in 0.. {
        assert!(Instant::now() < deadline, "the invalidator never published a probe; log:\n{}", who.log());
        let id = format!("probe|{topic}|{n}");
        upsert(server, container, &[json!({"id": id, "_clusterId": "east"})]);
        let want = id.replace('|', "/");
        let seen = read_all(brokers, &[topic], Duration::ZERO, Duration::from_secs(2), |r| {
            r.iter().any(|r| r.json()["key"]["mainId"] == want.as_str())
        });
        if seen.iter().any(|r| r.json()["key"]["mainId"] == want.as_str()) {
            return;
        }
    }
}

fn upsert(server: &CosmosServer, container: &str, docs: &[serde_json::Value]) {
    server.upsert(&server.container(DB, container), docs);
}

fn not_probes(ids: Vec<String>) -> Vec<String> {
    ids.into_iter().filter(|id| !id.starts_with("probe/")).collect()
}

#[test]
fn cosmos_changes_become_cache_invalidations_on_kafka_and_own_cluster_changes_are_dropped() {
    let kafka = Tansu::start();
    let brokers = kafka.brokers();
    kafka.create_topic(WEST_TOPIC, 1);
    kafka.create_topic(ANY_TOPIC, 1);
    let server = CosmosServer::start();
    server.create_database(DB);
    server.create_container(DB, "whisks", "/id", 4);
    server.create_container(DB, "subjects", "/id", 2);
    let work = Workdir::new();
    let endpoint = server.endpoint();
    let common = [
        ("COSMOSDB_ENDPOINT", endpoint.as_str()),
        ("COSMOSDB_KEY", server.key()),
        ("COSMOSDB_NAME", DB),
        ("KAFKA_HOSTS", brokers.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        common.iter().copied().chain(extra.iter().copied()).collect()
    };
    std::fs::create_dir_all(work.path("data-west")).unwrap();
    std::fs::create_dir_all(work.path("data-any")).unwrap();
    let west = run_feedline(
        &shipped_pipeline(),
        &work.path("data-west"),
        &work.path("west.log"),
        &with(&[("CLUSTER_ID", "west"), ("CACHE_INVALIDATION_TOPIC", WEST_TOPIC)]),
    );
    let any = run_feedline(
        &shipped_pipeline(),
        &work.path("data-any"),
        &work.path("any.log"),
        &with(&[("CACHE_INVALIDATION_TOPIC", ANY_TOPIC)]),
    );
    wait_ready(&server, "whisks", &brokers, WEST_TOPIC, &west);
    wait_ready(&server, "subjects", &brokers, WEST_TOPIC, &west);
    wait_ready(&server, "whisks", &brokers, ANY_TOPIC, &any);
    wait_ready(&server, "subjects", &brokers, ANY_TOPIC, &any);

    // Own-cluster changes first, so that by the time the others are published they are, too.
    let own = [json!({"id": "guest|own-action", "_clusterId": "west", "namespace": "guest"})];
    upsert(&server, "whisks", &own);
    upsert(&server, "subjects", &[json!({"id": "west-subject", "subject": "w", "_clusterId": "west"})]);
    upsert(
        &server,
        "whisks",
        &[
            json!({"id": "guest|pkg|hello", "_clusterId": "east", "entityType": "action", "name": "hello"}),
            json!({"id": "guest|unstamped", "entityType": "trigger"}),
            json!({"id": "guest|gone", "_clusterId": "east", "_deleted": true, "ttl": 10}),
        ],
    );
    upsert(&server, "subjects", &[json!({"id": "alice", "subject": "alice", "_clusterId": "east"})]);
    // An update of a document invalidates again.
    upsert(&server, "whisks", &[json!({"id": "guest|pkg|hello", "_clusterId": "east", "version": "0.0.2"})]);

    let others = ["guest/pkg/hello", "guest/unstamped", "guest/gone", "alice"];
    let own_ids = ["guest/own-action", "west-subject"];

    let west_ids =
        not_probes(published(&brokers, WEST_TOPIC, |seen| others.iter().all(|i| seen.contains(*i))));
    let got: BTreeSet<&str> = west_ids.iter().map(String::as_str).collect();
    assert_eq!(got, others.into_iter().collect(), "west publishes the others' changes only: {west_ids:?}");
    let hello = west_ids.iter().filter(|i| *i == "guest/pkg/hello").count();
    assert!(hello >= 2, "both writes of guest|pkg|hello invalidate: {west_ids:?}");

    let any_ids = not_probes(published(&brokers, ANY_TOPIC, |seen| {
        others.iter().chain(&own_ids).all(|i| seen.contains(*i))
    }));
    let got: BTreeSet<&str> = any_ids.iter().map(String::as_str).collect();
    let everything: BTreeSet<&str> = others.iter().chain(&own_ids).copied().collect();
    assert_eq!(got, everything, "without a cluster id nothing is dropped: {any_ids:?}");

    for (name, mut process) in [("west", west), ("any", any)] {
        process.signal(15);
        let status = process.wait_timeout(Duration::from_secs(30));
        assert!(status.is_some_and(|s| s.success()), "{name} did not stop cleanly:\n{}", process.log());
        assert!(!process.log().contains("panicked"), "{}", process.log());
    }
}
