//! The Cosmos test server checked with an independent client: Microsoft's Python SDK
//! (`azure-cosmos`, installed by `scripts/install-python-tools.sh`). It provisions, writes,
//! reads, queries and reads the change feed through the front, and a wrong key gets 401. Then a
//! `feedline` process reads the change feed the Python client wrote to.
//!
//! The interpreter comes from `FEEDLINE_PYTHON` (set by `scripts/test.sh`) or the install
//! script's venv; a missing one fails with instructions — this test never skips silently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use feedline_testkit::cosmos::CosmosServer;
use feedline_testkit::{wait_until, Feedline};

const SCRIPT: &str = r#"
import sys
from azure.cosmos import CosmosClient, PartitionKey, exceptions

endpoint, key, wrong = sys.argv[1], sys.argv[2], sys.argv[3]
client = CosmosClient(endpoint, credential=key)
db = client.create_database_if_not_exists("pydb")
items = db.create_container_if_not_exists("items", partition_key=PartitionKey(path="/id"))
for i in range(20):
    items.upsert_item({"id": f"guest|py{i}", "n": i, "_clusterId": "east"})
assert items.read_item("guest|py7", partition_key="guest|py7")["n"] == 7
found = list(items.query_items("SELECT * FROM c WHERE c.n >= 15", enable_cross_partition_query=True))
assert sorted(d["id"] for d in found) == [f"guest|py{i}" for i in range(15, 20)], found
changes = list(items.query_items_change_feed(start_time="Beginning"))
assert len({d["id"] for d in changes}) == 20, len(changes)
try:
    list(CosmosClient(endpoint, credential=wrong).list_databases())
    print("wrong key accepted")
    sys.exit(1)
except exceptions.CosmosHttpResponseError as e:
    assert e.status_code == 401, e.status_code
print("python-sdk-ok")
"#;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("FEEDLINE_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = match std::env::var_os("FEEDLINE_CACHE") {
        Some(c) => PathBuf::from(c),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/feedline")
        }
    };
    let p = cache.join("pyenv/bin/python");
    assert!(
        p.is_file(),
        "Python with azure-cosmos not found at {} — run `scripts/install-python-tools.sh` (or set \
         FEEDLINE_PYTHON). This test needs the independent client and does not skip.",
        p.display()
    );
    p
}

#[test]
fn the_python_sdk_talks_to_the_test_server_and_feedline_reads_what_it_wrote() {
    let server = CosmosServer::start();
    let out = Command::new(python())
        .args(["-c", SCRIPT, &server.endpoint(), server.key(), "d3JvbmcgdGVzdCBrZXkgZm9yIHRoZSBzZXJ2ZXI="])
        .output()
        .expect("run python");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("python-sdk-ok"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("py.toml");
    std::fs::write(
        &file,
        format!(
            r#"[source]
type = "cosmos_change_feed"
endpoint = "{}"
key = "${{COSMOSDB_KEY}}"
database = "pydb"
containers = ["items"]
start_from = "beginning"

[[transforms]]
type = "invalidate_cache"

[[sinks]]
type = "file"
path = "out.jsonl"
"#,
            server.endpoint()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut f = Feedline::spawn(
        Path::new(env!("CARGO_BIN_EXE_feedline")),
        &["run", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        &[("COSMOSDB_KEY", server.key())],
        &dir.path().join("f.log"),
    );
    let lines = || std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap_or_default().lines().count();
    assert!(wait_until(Duration::from_secs(20), || lines() >= 20), "{}", f.log());
    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert!(text.contains(r#""mainId":"guest/py7""#), "{text}");
    f.signal(15);
    assert!(f.wait_timeout(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", f.log());
}
