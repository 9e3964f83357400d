//! Shared by the CouchDB integration tests (`couchdb_*.rs`): scratch directories, running
//! `feedline` on a pipeline text, `/metrics` scraping, activation messages. Bounded in time.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use feedline_testkit::Feedline;
use serde_json::{json, Value};

/// A scratch directory with pipeline files, inputs and a data directory.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir { dir: tempfile::tempdir().unwrap() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// `feedline run <pipeline> --listen 127.0.0.1:0` with stderr in `log`.
pub fn run(pipeline: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Feedline {
    let args = [
        "run",
        pipeline.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "20",
    ];
    let mut env = env.to_vec();
    if std::env::var("RUST_LOG").is_err() {
        env.push(("RUST_LOG", "info"));
    }
    Feedline::spawn(Path::new(env!("CARGO_BIN_EXE_feedline")), &args, &env, log)
}

/// The address a `--listen 127.0.0.1:0` process printed.
pub fn listen_addr(f: &Feedline) -> String {
    let mut addr = None;
    feedline_testkit::wait_until(Duration::from_secs(30), || {
        addr = f.log().lines().find_map(|l| l.strip_prefix("feedline: listening on ").map(str::to_owned));
        addr.is_some()
    });
    addr.unwrap_or_else(|| panic!("no listen address in log:\n{}", f.log()))
}

/// GET `/metrics` (empty when the process is gone).
pub fn metrics(addr: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

/// Sum of a metric's samples whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every line of a JSON-lines file (none when it does not exist yet).
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A 32-hex-digit activation id.
pub fn activation_id(n: u64) -> String {
    format!("{n:032x}")
}

/// The activation object of number `n` in namespace `ns`.
pub fn activation(ns: &str, n: u64) -> Value {
    json!({
        "activationId": activation_id(n),
        "annotations": [{"key": "path", "value": format!("{ns}/hello")}],
        "duration": 100,
        "end": 1_571_600_000_200u64 + n,
        "logs": [format!("log line {n}")],
        "name": "hello",
        "namespace": ns,
        "publish": false,
        "response": {"result": {"payload": format!("hi {n}")}, "size": 16, "statusCode": 0, "extra": "dropped"},
        "start": 1_571_600_000_100u64 + n,
        "subject": ns,
        "version": "0.0.1"
    })
}

/// The four completion-message forms of DESIGN.md §8 for activation `n`.
pub fn result_message(ns: &str, n: u64) -> Value {
    json!({"response": activation(ns, n), "transid": ["tid", 1_571_600_000_000u64]})
}
pub fn combined_message(ns: &str, n: u64) -> Value {
    json!({"instance": {"instance": 0, "instanceType": "invoker"}, "isSystemError": false,
           "response": activation(ns, n), "transid": "malformed"})
}
pub fn shrunk_message(n: u64) -> Value {
    json!({"response": activation_id(n), "transid": ["tid", 1_571_600_000_000u64]})
}
pub fn completion_message(n: u64) -> Value {
    json!({"activationId": activation_id(n), "instance": {"instance": 0, "instanceType": "invoker", "userMemory": "1024 MB"},
           "isSystemError": false, "transid": ["tid", 1_571_600_000_000u64]})
}

/// The document the persister must store for activation `n` (without `_rev` and `updated`).
pub fn expected_document(ns: &str, n: u64) -> Value {
    let mut doc = activation(ns, n);
    doc["_id"] = json!(format!("{ns}/{}", activation_id(n)));
    doc["entityType"] = json!("activation");
    doc["response"] = json!({"result": {"payload": format!("hi {n}")}, "size": 16, "statusCode": 0});
    doc
}

/// A stored document without the fields the server and the clock add.
pub fn comparable(doc: &Value) -> Value {
    let mut d = doc.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("_rev");
        o.remove("updated");
    }
    d
}
