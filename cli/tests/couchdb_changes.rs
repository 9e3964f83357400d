//! The `couchdb` changes source against a real CouchDB-protocol server (pouchdb-server): creates,
//! updates and deletes are delivered at least once across SIGKILLs of `feedline`, and a restart
//! resumes from the `_local/feedline-<pipeline>` checkpoint, not from zero.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod couchdb_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use couchdb_support::{read_jsonl, run, Workdir};
use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::wait_until;
use serde_json::{json, Value};

fn pipeline(url: &str, out: &str) -> String {
    format!(
        r#"name = "whisk-changes"
[source]
type = "couchdb"
url = "{url}"
database = "whisks"
heartbeat_ms = 500
read_timeout_ms = 2000
commit_interval_ms = 200
batch_size = 100

[[sinks]]
type = "file"
path = "{out}"
format = "envelope"
"#
    )
}

/// Per document id: the revisions delivered, and whether a delete was.
#[derive(Default, Debug)]
struct Seen {
    revs: HashMap<String, Vec<String>>,
    deleted: HashSet<String>,
    lines: usize,
}

fn seen(out: &std::path::Path) -> Seen {
    let mut s = Seen::default();
    for line in read_jsonl(out) {
        s.lines += 1;
        let id = line["key"].as_str().unwrap().to_owned();
        if line["operation"] == "delete" {
            assert_eq!(line["value"]["_deleted"], true, "{line}");
            s.deleted.insert(id.clone());
        }
        s.revs.entry(id).or_default().push(line["value"]["_rev"].as_str().unwrap().to_owned());
    }
    s
}

fn checkpoint_seq(db: &CouchDb) -> Option<u64> {
    match db.try_request("GET", "/whisks/_local/feedline-whisk-changes", None) {
        Ok((200, doc)) => doc["seq"].as_u64(),
        _ => None,
    }
}

/// Write `docs` (at their current revisions), remembering the new ones.
fn write(db: &CouchDb, revs: &mut HashMap<String, String>, docs: Vec<Value>) {
    let docs: Vec<Value> = docs
        .into_iter()
        .map(|mut d| {
            if let Some(rev) = revs.get(d["_id"].as_str().unwrap()) {
                d["_rev"] = json!(rev);
            }
            d
        })
        .collect();
    for r in db.bulk_docs("whisks", &docs) {
        revs.insert(r["id"].as_str().unwrap().to_owned(), r["rev"].as_str().expect("written").to_owned());
    }
}

fn docs(range: std::ops::Range<u64>) -> Vec<Value> {
    range.map(|i| json!({"_id": format!("guest/action{i}"), "entityType": "action", "n": i})).collect()
}

#[test]
fn changes_are_delivered_at_least_once_across_kills_and_resume_from_the_checkpoint() {
    let started = Instant::now();
    let db = CouchDb::start();
    db.create_db("whisks");
    let w = Workdir::new();
    let out = w.path("out.jsonl");
    let file = w.write("changes.toml", &pipeline(&db.url(), out.to_str().unwrap()));
    let data = w.path("data");
    let mut revs: HashMap<String, String> = HashMap::new();

    // 1. 100 creations, read by a first run that checkpoints them.
    write(&db, &mut revs, docs(0..100));
    let mut a = run(&file, &data, &w.path("a.log"), &[]);
    assert!(
        wait_until(Duration::from_secs(30), || seen(&out).revs.len() == 100
            && checkpoint_seq(&db) >= Some(100)),
        "first run: {} ids, checkpoint {:?}\n{}",
        seen(&out).revs.len(),
        checkpoint_seq(&db),
        a.log()
    );
    a.signal(9);
    a.wait_timeout(Duration::from_secs(10)).expect("killed");
    let lines_before = seen(&out).lines;

    // 2. While feedline is down: 30 updates, 20 deletions, 50 creations.
    let mut updated = docs(0..30);
    for d in &mut updated {
        d["n"] = json!(-1);
    }
    write(&db, &mut revs, updated);
    let deletions: Vec<Value> =
        (30..50).map(|i| json!({"_id": format!("guest/action{i}"), "_deleted": true})).collect();
    write(&db, &mut revs, deletions);
    write(&db, &mut revs, docs(100..150));
    let mut b = run(&file, &data, &w.path("b.log"), &[]);
    let current = revs.clone();
    let complete = |range: std::ops::Range<u64>| {
        let s = seen(&out);
        range.clone().all(|i| {
            let id = format!("guest/action{i}");
            s.revs.get(&id).is_some_and(|r| r.contains(&current[&id]))
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || complete(0..150) && seen(&out).deleted.len() == 20),
        "second run missed changes: {:?}\n{}",
        seen(&out).deleted.len(),
        b.log()
    );
    assert!(b.log().contains("resuming the changes feed from the checkpoint"), "{}", b.log());
    let s = seen(&out);
    // Resumed, not restarted: the untouched documents were not delivered again.
    for i in 50..100 {
        assert_eq!(s.revs[&format!("guest/action{i}")].len(), 1, "guest/action{i} re-delivered");
    }
    assert!(s.lines - lines_before < 150, "{} lines after the restart", s.lines - lines_before);
    assert_eq!(s.deleted, (30..50).map(|i| format!("guest/action{i}")).collect::<HashSet<_>>());

    // 3. A burst of 3000 creations, feedline SIGKILLed mid-way: nothing is lost.
    let burst_from = seen(&out).lines;
    for chunk in (1000..4000).collect::<Vec<u64>>().chunks(500) {
        write(&db, &mut revs, docs(chunk[0]..chunk[chunk.len() - 1] + 1));
    }
    assert!(wait_until(Duration::from_secs(30), || seen(&out).lines > burst_from + 200), "{}", b.log());
    b.signal(9);
    b.wait_timeout(Duration::from_secs(10)).expect("killed");
    let killed_at = seen(&out).lines - burst_from;
    let mut c = run(&file, &data, &w.path("c.log"), &[]);
    let current = revs.clone();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let s = seen(&out);
            (1000..4000).all(|i| {
                let id = format!("guest/action{i}");
                s.revs.get(&id).is_some_and(|r| r.contains(&current[&id]))
            })
        }),
        "burst not delivered after the crash\n{}",
        c.log()
    );
    c.signal(15);
    assert!(c.wait_timeout(Duration::from_secs(30)).is_some_and(|s| s.success()), "{}", c.log());
    let s = seen(&out);
    let duplicates = s.lines - burst_from - 3000;
    eprintln!(
        "burst: {killed_at} of 3000 delivered before SIGKILL, {duplicates} delivered twice; test took {:?}",
        started.elapsed()
    );
    assert!(duplicates <= killed_at, "only what was in flight may come twice");
}

#[test]
fn longpoll_feed_with_a_doc_ids_filter_and_the_embedded_checkpoint() {
    let db = CouchDb::start();
    db.create_db("whisks");
    let w = Workdir::new();
    let out = w.path("out.jsonl");
    let text = format!(
        r#"name = "longpoll"
[source]
type = "couchdb"
url = "{url}"
database = "whisks"
feed = "longpoll"
checkpoint = "local"
doc_ids = ["guest/a", "guest/b"]
heartbeat_ms = 500
read_timeout_ms = 2000
commit_interval_ms = 100

[[transforms]]
type = "invalidate_cache"
id_field = "_id"

[[sinks]]
type = "file"
path = "{out}"
format = "envelope"
"#,
        url = db.url(),
        out = out.to_str().unwrap()
    );
    let file = w.write("longpoll.toml", &text);
    let rev_a = db.put_doc("whisks", &json!({"_id": "guest/a"}));
    db.put_doc("whisks", &json!({"_id": "guest/other"}));
    let data = w.path("data");
    let mut f = run(&file, &data, &w.path("f.log"), &[]);
    assert!(wait_until(Duration::from_secs(20), || read_jsonl(&out).len() == 1), "{}", f.log());
    db.delete_doc("whisks", "guest/a", &rev_a);
    db.put_doc("whisks", &json!({"_id": "guest/b"}));
    let ids = || -> Vec<String> {
        read_jsonl(&out).iter().map(|l| l["value"]["key"]["mainId"].as_str().unwrap().to_owned()).collect()
    };
    assert!(wait_until(Duration::from_secs(20), || ids().len() == 3), "{:?}\n{}", ids(), f.log());
    assert_eq!(
        ids(),
        ["guest/a", "guest/a", "guest/b"],
        "the deletion invalidates too; other ids filtered out"
    );
    f.signal(15);
    assert!(f.wait_timeout(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", f.log());
    let saved =
        std::fs::read_to_string(data.join("longpoll/couchdb/since.json")).expect("embedded checkpoint");
    assert!(saved.contains("\"seq\""), "{saved}");
    let (status, _) = db.request("GET", "/whisks/_local/feedline-longpoll", None);
    assert_eq!(status, 404, "checkpoint = local writes nothing to the database");
}
