//! Input a stage could never read goes to the dead-letter sink *at the source*, with its
//! original bytes, and reading goes on: JSON that `IgnoredAny` accepts but the value parse
//! refuses (invalid UTF-8 in a string, a lone surrogate, a number out of range, nesting deeper
//! than 128), a line longer than `max_line_bytes`, and a CouchDB change line serde_json cannot
//! read (which used to reopen the feed at the same `since` for ever).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod couchdb_support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use couchdb_support::{run, Workdir};
use feedline_testkit::couchdb::CouchDb;
use feedline_testkit::{wait_until, Feedline};
use serde_json::{json, Value};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_feedline"))
}

/// The bytes a dead-letter envelope kept, decoded per its `encoding`.
fn original_bytes(envelope: &Value) -> Vec<u8> {
    let event = envelope["event"].as_str().expect("source rejections keep the input as a string");
    match envelope["encoding"].as_str() {
        Some("text") => event.as_bytes().to_vec(),
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(event).expect("base64"),
        other => panic!("unexpected encoding {other:?} in {envelope}"),
    }
}

/// Strict: a complete line that does not parse fails the test (a torn last line is not complete).
fn read_jsonl(path: &Path) -> Vec<Value> {
    feedline_engine::jsonl::read_json_lines(path).unwrap()
}

fn change(n: usize) -> Vec<u8> {
    format!("{{\"id\":\"guest|action{n}\",\"_clusterId\":\"east\",\"n\":{n}}}\n").into_bytes()
}

#[test]
fn input_the_value_parse_refuses_is_dead_lettered_at_the_source_with_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!("{{\"id\":\"guest|deep\",\"x\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (b"{\"id\":\"guest|utf8\",\"s\":\"\xff\xfe\"}".to_vec(), "invalid JSON"),
        (br#"{"id":"guest|surrogate","s":"\ud800"}"#.to_vec(), "invalid JSON"),
        (br#"{"id":"guest|huge","n":1e400}"#.to_vec(), "invalid JSON"),
        (deep.into_bytes(), "invalid JSON"),
        (
            format!("{{\"id\":\"guest|long\",\"pad\":\"{}\"}}", "x".repeat(5000)).into_bytes(),
            "max_line_bytes",
        ),
    ];
    let mut input = Vec::new();
    let mut n = 0;
    for (line, _) in &bad {
        for _ in 0..3 {
            input.extend(change(n));
            n += 1;
        }
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    input.extend(change(n));
    n += 1;
    let input_path = dir.path().join("in.jsonl");
    std::fs::write(&input_path, &input).unwrap();
    let out = dir.path().join("out.jsonl");
    let file = dir.path().join("poison.toml");
    std::fs::write(
        &file,
        format!(
            r#"name = "poison"
[source]
type = "file"
path = "{input}"
max_line_bytes = 4096

[[transforms]]
type = "drop_own_cluster"
cluster_id = "west"

[[transforms]]
type = "invalidate_cache"

[[sinks]]
type = "file"
path = "{out}"
"#,
            input = input_path.display(),
            out = out.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut p = Feedline::spawn(
        bin(),
        &["run", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        &[],
        &dir.path().join("log"),
    );
    let status = p.wait_timeout(Duration::from_secs(60)).expect("pipeline finishes");
    assert!(status.success(), "{}", p.log());

    let delivered = read_jsonl(&out);
    assert_eq!(delivered.len(), n, "every good line, including the ones right after a bad one");
    let dead = read_jsonl(&data.join("poison/dead-letter.jsonl"));
    assert_eq!(dead.len(), bad.len(), "{dead:#?}");
    for (envelope, (line, reason)) in dead.iter().zip(&bad) {
        assert_eq!(envelope["stage"], "source.file", "rejected where it entered: {envelope}");
        assert!(envelope["error"].as_str().unwrap().contains(reason), "{envelope}");
        let kept = original_bytes(envelope);
        if *reason == "max_line_bytes" {
            assert_eq!(kept, line[..4096], "an oversized line keeps its head");
        } else {
            assert_eq!(kept, *line, "the original bytes, not a re-serialisation");
            assert_eq!(envelope["size"], line.len());
        }
        let at = envelope["origin"]["position"].as_u64().unwrap() as usize;
        assert!(input[at..].starts_with(&kept), "position {at} points at the line");
    }
    assert_eq!(dead[0]["encoding"], "base64", "not UTF-8, so base64");
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(data.join("poison/file/position.json")).unwrap()).unwrap();
    assert_eq!(
        checkpoint["offset"].as_u64().unwrap(),
        input.len() as u64,
        "checkpoint covers the whole file"
    );
}

fn couchdb_pipeline(url: &str, out: &Path) -> String {
    format!(
        r#"name = "deep-docs"
[source]
type = "couchdb"
url = "{url}"
database = "whisks"
heartbeat_ms = 500
read_timeout_ms = 2000
commit_interval_ms = 200

[[sinks]]
type = "file"
path = "{out}"
format = "envelope"
"#,
        out = out.display()
    )
}

#[test]
fn a_change_line_serde_json_refuses_is_dead_lettered_and_the_feed_goes_on() {
    let db = CouchDb::start();
    db.create_db("whisks");
    let mut nested = json!(1);
    for _ in 0..200 {
        nested = json!([nested]);
    }
    let docs: Vec<Value> = (0..5)
        .map(|i| json!({"_id": format!("a{i}"), "n": i}))
        .chain([json!({"_id": "deep", "x": nested})])
        .chain((5..10).map(|i| json!({"_id": format!("a{i}"), "n": i})))
        .collect();
    let written = db.bulk_docs("whisks", &docs);
    assert!(written.iter().all(|r| r["ok"] == true), "{written:?}");

    let w = Workdir::new();
    let out = w.path("out.jsonl");
    let file = w.write("deep.toml", &couchdb_pipeline(&db.url(), &out));
    let data = w.path("data");
    let dead_letter = data.join("deep-docs/dead-letter.jsonl");
    let mut f = run(&file, &data, &w.path("log"), &[]);
    let checkpoint = || match db.try_request("GET", "/whisks/_local/feedline-deep-docs", None) {
        Ok((200, doc)) => doc["seq"].as_u64(),
        _ => None,
    };
    let done = wait_until(Duration::from_secs(30), || {
        read_jsonl(&out).len() == 10 && read_jsonl(&dead_letter).len() == 1 && checkpoint() >= Some(11)
    });
    assert!(
        done,
        "delivered {}, dead-lettered {}, checkpoint {:?}\n{}",
        read_jsonl(&out).len(),
        read_jsonl(&dead_letter).len(),
        checkpoint(),
        f.log()
    );
    let envelope = &read_jsonl(&dead_letter)[0];
    assert_eq!(envelope["stage"], "source.couchdb", "{envelope}");
    assert!(envelope["error"].as_str().unwrap().contains("recursion limit"), "{envelope}");
    let line: Value = serde_json::from_str(envelope["event"].as_str().unwrap()).unwrap_or(Value::Null);
    assert!(line.is_null(), "too deep for serde_json on our side too");
    assert!(envelope["event"].as_str().unwrap().contains(r#""id":"deep""#), "{envelope}");
    assert!(f.log().contains("unreadable _changes line"), "the operator is told:\n{}", f.log());
    f.signal(15);
    f.wait_timeout(Duration::from_secs(15)).expect("stops on SIGTERM");
}
