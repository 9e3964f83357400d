//! `cosmos_change_feed` replicas as real `feedline` processes sharing one Cosmos test server
//! (the SDK's in-memory emulator behind the testkit's signature-checking HTTP front): two
//! replicas split the four feed ranges 2/2; SIGKILL one and the survivor takes its leases once
//! they expire, losing no change; a restart resumes from the lease continuations; a split during
//! a run loses nothing; a wrong account key fails with 401.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feedline_connectors::cosmos::leases::{LeaseDoc, LeaseStore};
use feedline_testkit::cosmos::CosmosServer;
use feedline_testkit::{wait_until, Feedline};
use serde_json::{json, Value};

const DB: &str = "whisk";

fn pipeline(server: &CosmosServer, dir: &Path) -> PathBuf {
    let file = dir.join("replica.toml");
    let toml = format!(
        r#"name = "replica"
[source]
type = "cosmos_change_feed"
endpoint = "{endpoint}"
key = "${{COSMOSDB_KEY}}"
database = "{DB}"
containers = ["whisks"]
cluster_id = "west"
instance_name = "${{REPLICA}}"
start_from = "beginning"
poll_interval_ms = 20
commit_interval_ms = 100
lease_expiry_ms = 2000
lease_renew_ms = 400
lease_acquire_ms = 250

[[sinks]]
type = "file"
path = "out-${{REPLICA}}.jsonl"
"#,
        endpoint = server.endpoint()
    );
    std::fs::write(&file, toml).unwrap();
    file
}

fn replica(file: &Path, dir: &Path, name: &str, key: &str) -> Feedline {
    let data = dir.join(format!("data-{name}"));
    let log = dir.join(format!("{name}.log"));
    Feedline::spawn(
        Path::new(env!("CARGO_BIN_EXE_feedline")),
        &["run", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--drain-timeout", "5"],
        &[("COSMOSDB_KEY", key), ("REPLICA", name), ("RUST_LOG", "info")],
        &log,
    )
}

fn ids(dir: &Path, name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(format!("out-{name}.jsonl"))).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(String::from))
        .collect()
}

fn leases(server: &CosmosServer) -> Vec<LeaseDoc> {
    server.runtime().block_on(async {
        let client = server.client_with_key(server.key()).await.unwrap();
        let Ok(container) = client.database_client(DB).container_client("leases", None).await else {
            return Vec::new(); // the first replica has not created it yet
        };
        let store = LeaseStore::new(container, "west-whisks".into());
        store.list().await.unwrap().into_iter().map(|l| l.doc).collect()
    })
}

fn owned(leases: &[LeaseDoc], who: &str) -> usize {
    leases.iter().filter(|l| l.owner.as_deref() == Some(who)).count()
}

fn docs(prefix: &str, range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(|n| json!({"id": format!("guest|{prefix}{n}"), "n": n})).collect()
}

fn wait_leases(server: &CosmosServer, what: &str, timeout: Duration, cond: impl Fn(&[LeaseDoc]) -> bool) {
    assert!(wait_until(timeout, || cond(&leases(server))), "{what}: {:#?}", leases(server));
}

#[test]
fn replicas_share_ranges_survive_sigkill_resume_from_leases_and_lose_nothing_in_a_split() {
    let server = CosmosServer::start();
    server.create_database(DB);
    server.create_container(DB, "whisks", "/id", 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = pipeline(&server, d);
    let whisks = server.container(DB, "whisks");
    server.upsert(&whisks, &docs("pre", 0..100));

    let mut a = replica(&file, d, "a", server.key());
    let mut b = replica(&file, d, "b", server.key());
    wait_leases(&server, "two replicas share the four ranges 2/2", Duration::from_secs(30), |l| {
        l.len() == 4 && owned(l, "a") == 2 && owned(l, "b") == 2
    });
    assert!(a.running() && b.running());

    // Changes keep coming while one replica is SIGKILLed.
    server.upsert(&whisks, &docs("w", 0..200));
    a.signal(9);
    let killed = Instant::now();
    assert!(a.wait_timeout(Duration::from_secs(5)).is_some());
    server.upsert(&whisks, &docs("w", 200..400));
    wait_leases(&server, "the survivor takes the dead replica's leases", Duration::from_secs(20), |l| {
        owned(l, "b") == 4
    });
    let takeover = killed.elapsed();
    println!(
        "takeover after SIGKILL: {} ms (lease_expiry_ms = 2000, lease_acquire_ms = 250)",
        takeover.as_millis()
    );
    assert!(takeover >= Duration::from_millis(1000), "leases were taken before they expired");
    server.upsert(&whisks, &docs("w", 400..500));
    let expected: BTreeSet<String> = docs("pre", 0..100)
        .iter()
        .chain(&docs("w", 0..500))
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || {
            let seen: BTreeSet<String> = ids(d, "a").into_iter().chain(ids(d, "b")).collect();
            expected.is_subset(&seen)
        }),
        "changes lost after SIGKILL; b log:\n{}",
        b.log()
    );

    // Graceful stop releases the leases with their continuations; a new replica resumes there.
    b.signal(15);
    assert!(b.wait_timeout(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", b.log());
    let released = leases(&server);
    assert!(released.iter().all(|l| l.owner.is_none() && l.continuation.is_some()), "{released:#?}");
    server.upsert(&whisks, &docs("r", 0..50));
    let mut c = replica(&file, d, "c", server.key());
    assert!(wait_until(Duration::from_secs(20), || ids(d, "c").len() >= 50), "{}", c.log());
    std::thread::sleep(Duration::from_millis(300));
    let resumed: BTreeSet<String> = ids(d, "c").into_iter().collect();
    let new: BTreeSet<String> =
        docs("r", 0..50).iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(resumed, new, "the restart read from the lease continuations, not from the beginning");

    // A split while changes flow: nothing lost, the lease is replaced by its two children.
    server.upsert(&whisks, &docs("s", 0..150));
    server.split(DB, "whisks", 0);
    server.upsert(&whisks, &docs("s", 150..300));
    let split: BTreeSet<String> =
        docs("s", 0..300).iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    assert!(
        wait_until(Duration::from_secs(30), || split.is_subset(&ids(d, "c").into_iter().collect())),
        "changes lost across the split; log:\n{}",
        c.log()
    );
    wait_leases(&server, "the split lease is replaced by its children", Duration::from_secs(20), |l| {
        l.len() == 5 && owned(l, "c") == 5
    });
    c.signal(15);
    assert!(c.wait_timeout(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", c.log());
}

#[test]
fn a_wrong_account_key_is_refused() {
    let server = CosmosServer::start();
    server.create_database(DB);
    server.create_container(DB, "whisks", "/id", 4);
    let dir = tempfile::tempdir().unwrap();
    let file = pipeline(&server, dir.path());
    let wrong = "d3JvbmcgYWNjb3VudCBrZXkgZm9yIHRoZSB0ZXN0IHNlcnZlcg==";
    let mut f = replica(&file, dir.path(), "x", wrong);
    let status = f.wait_timeout(Duration::from_secs(30)).expect("a wrong key stops the pipeline");
    assert!(!status.success());
    assert!(f.log().contains("401"), "{}", f.log());
}
