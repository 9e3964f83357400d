//! The `couchdb` sink against a real CouchDB-protocol server (pouchdb-server): conflicts,
//! documents the server refuses, deletions and overwrites (a database mirrored through the
//! changes source), and a database outage that pauses the source and loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod couchdb_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use couchdb_support::{listen_addr, metric, metrics, read_jsonl, run, Workdir};
use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::wait_until;
use serde_json::{json, Value};

/// Documents of a database by id, without `_rev`.
fn contents(db: &CouchDb, name: &str) -> BTreeMap<String, Value> {
    db.all_docs(name)
        .into_iter()
        .map(|mut d| {
            d.as_object_mut().unwrap().remove("_rev");
            (d["_id"].as_str().unwrap().to_owned(), d)
        })
        .collect()
}

#[test]
fn conflicts_count_as_delivered_refused_documents_are_dead_lettered_and_a_mirror_follows_deletes() {
    let db = CouchDb::start();
    let w = Workdir::new();
    // 1. file → couchdb: 300 documents, a duplicate id, and three things CouchDB cannot store.
    let mut lines = vec![
        json!({"_id": "guest/dup", "v": 1}).to_string(),
        json!({"_id": "guest/dup", "v": 2}).to_string(),
    ];
    lines.push("\"not an object\"".into());
    lines.push(json!({"_id": "_reserved", "v": 0}).to_string());
    lines.push(json!({"_id": 42}).to_string());
    lines.extend((0..300).map(|i| json!({"_id": format!("guest/doc{i}"), "v": i}).to_string()));
    w.write("in.jsonl", &(lines.join("\n") + "\n"));
    let load = w.write(
        "load.toml",
        &format!(
            r#"name = "load"
[source]
type = "file"
path = "in.jsonl"

[[sinks]]
type = "couchdb"
url = "{url}"
database = "docs"
create_database = true
batch = {{ max_events = 50 }}
"#,
            url = db.url()
        ),
    );
    let mut f = run(&load, &w.path("data"), &w.path("load.log"), &[]);
    let status = f.wait_timeout(Duration::from_secs(60)).expect("a file source without follow finishes");
    assert!(status.success(), "{}", f.log());
    let docs = contents(&db, "docs");
    assert_eq!(docs.len(), 301, "300 documents and the first guest/dup");
    assert_eq!(docs["guest/dup"]["v"], 1, "the conflicting second write was ignored");
    let dead = read_jsonl(&w.path("data/load/dead-letter.jsonl"));
    let mut reasons: Vec<String> = dead.iter().map(|d| d["error"].as_str().unwrap().to_owned()).collect();
    reasons.sort();
    assert_eq!(dead.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("HTTP 400") && reasons[0].contains("underscore"), "{reasons:?}");
    assert!(reasons[1].contains("`_id` must be a string"), "{reasons:?}");
    assert!(reasons[2].contains("must be a JSON object"), "{reasons:?}");
    assert!(dead.iter().all(|d| d["stage"] == "sink.couchdb"));

    // 2. couchdb `docs` → couchdb `mirror`: updates overwrite, deletions delete.
    let mirror = w.write(
        "mirror.toml",
        &format!(
            r#"name = "mirror"
[source]
type = "couchdb"
url = "{url}"
database = "docs"
heartbeat_ms = 500
read_timeout_ms = 2000

[[sinks]]
type = "couchdb"
url = "{url}"
database = "mirror"
create_database = true
on_conflict = "overwrite"
"#,
            url = db.url()
        ),
    );
    let mut m = run(&mirror, &w.path("data"), &w.path("mirror.log"), &[]);
    assert!(wait_until(Duration::from_secs(30), || db.doc_count("mirror") == Some(301)), "{}", m.log());
    let mut changes = Vec::new();
    for i in 0..50 {
        let mut doc = db.get("docs", &format!("guest/doc{i}")).unwrap();
        doc["v"] = json!(-1);
        changes.push(doc);
    }
    for i in 50..80 {
        let doc = db.get("docs", &format!("guest/doc{i}")).unwrap();
        changes.push(json!({"_id": doc["_id"], "_rev": doc["_rev"], "_deleted": true}));
    }
    db.bulk_docs("docs", &changes);
    let expected = contents(&db, "docs");
    assert_eq!(expected.len(), 271);
    assert!(
        wait_until(Duration::from_secs(30), || contents(&db, "mirror") == expected),
        "mirror differs: {} docs\n{}",
        contents(&db, "mirror").len(),
        m.log()
    );
    m.signal(15);
    assert!(m.wait_timeout(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", m.log());
    assert!(!w.path("data/mirror/dead-letter.jsonl").exists(), "nothing dead-lettered");
}

#[test]
fn a_database_outage_pauses_the_source_and_loses_nothing() {
    const N: u64 = 20_000;
    let started = Instant::now();
    let mut db = CouchDb::start_persistent();
    let w = Workdir::new();
    let lines: Vec<String> =
        (0..N).map(|i| json!({"_id": format!("doc{i:06}"), "n": i}).to_string()).collect();
    w.write("in.jsonl", &(lines.join("\n") + "\n"));
    let file = w.write(
        "outage.toml",
        &format!(
            r#"name = "outage"
[source]
type = "file"
path = "in.jsonl"
follow = true
batch_size = 200
max_pending_batches = 4

[[sinks]]
type = "couchdb"
url = "{url}"
database = "outage"
create_database = true
request_timeout_ms = 2000
batch = {{ max_events = 200 }}
max_in_flight = 2
retry = {{ initial_backoff_ms = 100, max_backoff_ms = 500 }}
"#,
            url = db.url()
        ),
    );
    let mut f = run(&file, &w.path("data"), &w.path("f.log"), &[]);
    let addr = listen_addr(&f);
    assert!(
        wait_until(Duration::from_secs(60), || db.doc_count("outage").is_some_and(|n| n >= 3000)),
        "{}",
        f.log()
    );
    db.stop();
    let before = db.doc_count("outage");
    assert_eq!(before, None, "the server is down");
    std::thread::sleep(Duration::from_millis(1500));
    let read = |addr: &str| metric(&metrics(addr), "feedline_events_in_total", &[r#"kind="source""#]);
    let read_1 = read(&addr);
    std::thread::sleep(Duration::from_secs(2));
    let read_2 = read(&addr);
    assert_eq!(read_1, read_2, "the source kept reading during the outage");
    assert!(read_2 < N as f64, "the source was paused before the end of the input ({read_2})");
    let retries = metric(&metrics(&addr), "feedline_sink_retries_total", &[]);
    assert!(retries > 0.0, "writes were retried during the outage");
    db.restart();
    assert!(
        wait_until(Duration::from_secs(90), || db.doc_count("outage") == Some(N)),
        "after the outage: {:?} of {N}\n{}",
        db.doc_count("outage"),
        f.log()
    );
    let ids: Vec<String> =
        db.all_docs("outage").iter().map(|d| d["_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, (0..N).map(|i| format!("doc{i:06}")).collect::<Vec<_>>());
    f.signal(15);
    assert!(f.wait_timeout(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", f.log());
    assert!(!w.path("data/outage/dead-letter.jsonl").exists(), "nothing dead-lettered");
    eprintln!(
        "outage: source held at {read_2} of {N} events while the server was down; {retries} retries; test took {:?}",
        started.elapsed()
    );
}

#[test]
fn basic_and_cookie_auth_work_and_a_wrong_password_stops_the_pipeline_unlogged() {
    let mut db = CouchDb::start();
    db.add_admin("admin", "s3cret-pw");
    let w = Workdir::new();
    w.write(
        "in.jsonl",
        &((0..10).map(|i| json!({"_id": format!("d{i}")}).to_string()).collect::<Vec<_>>().join("\n") + "\n"),
    );
    let pipeline = |name: &str, source: &str, sink_db: &str, auth: &str| {
        format!(
            "name = \"{name}\"\n{source}\n[[sinks]]\ntype = \"couchdb\"\nurl = \"{url}\"\ndatabase = \"{sink_db}\"\ncreate_database = true\nauth = {auth}\n",
            url = db.url()
        )
    };
    let file_source = "[source]\ntype = \"file\"\npath = \"in.jsonl\"\n";
    // Basic auth: the database is created and written.
    let basic = w.write(
        "basic.toml",
        &pipeline("basic", file_source, "authdb", r#"{ username = "admin", password = "s3cret-pw" }"#),
    );
    let mut f = run(&basic, &w.path("data"), &w.path("basic.log"), &[]);
    assert!(f.wait_timeout(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", f.log());
    assert_eq!(db.doc_count("authdb"), Some(10));
    // Cookie auth on both ends: the changes source (and its _local checkpoint) and the sink.
    // (pouchdb-server keeps continuous feeds silent once an admin exists; longpoll works.)
    let source = format!(
        "[source]\ntype = \"couchdb\"\nurl = \"{url}\"\ndatabase = \"authdb\"\nfeed = \"longpoll\"\nheartbeat_ms = 500\nread_timeout_ms = 2000\nauth = {{ username = \"admin\", password = \"s3cret-pw\", method = \"cookie\" }}\n",
        url = db.url()
    );
    let cookie = w.write(
        "cookie.toml",
        &pipeline(
            "cookie",
            &source,
            "copydb",
            r#"{ username = "admin", password = "s3cret-pw", method = "cookie" }"#,
        ),
    );
    let mut c = run(&cookie, &w.path("data"), &w.path("cookie.log"), &[]);
    assert!(wait_until(Duration::from_secs(30), || db.doc_count("copydb") == Some(10)), "{}", c.log());
    c.signal(15);
    assert!(c.wait_timeout(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", c.log());
    let (status, checkpoint) = db.request("GET", "/authdb/_local/feedline-cookie", None);
    assert_eq!(status, 200, "{checkpoint}");
    // A wrong password stops the pipeline (401 is fatal) and is never logged.
    let wrong = w.write(
        "wrong.toml",
        &pipeline("wrong", file_source, "authdb", r#"{ username = "admin", password = "wrong-pw-123" }"#),
    );
    let mut x = run(&wrong, &w.path("data"), &w.path("wrong.log"), &[("RUST_LOG", "debug")]);
    let status = x.wait_timeout(Duration::from_secs(30)).expect("a fatal error ends the process");
    assert!(!status.success(), "{}", x.log());
    assert!(x.log().contains("401"), "{}", x.log());
    for log in [x.log(), f.log(), c.log()] {
        assert!(!log.contains("wrong-pw-123") && !log.contains("s3cret-pw"), "a password was logged:\n{log}");
    }
}
