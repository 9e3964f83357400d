//! Shared by the CouchDB integration tests (`couchdb_*.rs`): scratch directories, running
//! `feedline` on a pipeline text, `/metrics` scraping, activation messages. Bounded in time.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use feedline_testkit::{pipeline, Feedline};
use serde_json::{json, Value};

pub use feedline_testkit::pipeline::{metric_sum as metric, read_jsonl, Workdir};

/// `feedline run <pipeline> --listen 127.0.0.1:0` with stderr in `log`.
pub fn run(pipeline: &Path, data_dir: &Path, log: &Path, env: &[(&str, &str)]) -> Feedline {
    pipeline::run_pipeline(pipeline, data_dir, log, env, &[])
}

/// The address a `--listen 127.0.0.1:0` process printed.
pub fn listen_addr(f: &Feedline) -> String {
    pipeline::listen_addr(f, Duration::from_secs(30))
}

/// GET `/metrics` (empty when the process is gone).
pub fn metrics(addr: &str) -> String {
    pipeline::try_http_get(addr, "/metrics").unwrap_or_default()
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
