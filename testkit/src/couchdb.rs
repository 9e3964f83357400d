//! A real CouchDB-protocol server for tests: pouchdb-server 4.2.0 (npm) on a free 127.0.0.1 port,
//! plus a tiny blocking HTTP client to set up and inspect databases.
//!
//! The executable comes from `FEEDLINE_POUCHDB`, or from where `scripts/install-pouchdb.sh` puts
//! it: `${FEEDLINE_CACHE:-$HOME/.cache/feedline}/pouchdb-server/node_modules/.bin/pouchdb-server`.
//! A missing server FAILS the test with instructions — CouchDB tests never skip.
//!
//! [`CouchDb::start`] keeps data in memory (lost on [`CouchDb::restart`]);
//! [`CouchDb::start_persistent`] keeps it in a scratch directory (LevelDB), so an outage test can
//! stop the server and restart it with its data. Both run from a scratch directory, where
//! pouchdb-server writes `config.json` and `log.txt`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::process::free_port;

/// Where the pouchdb-server executable is expected: `FEEDLINE_POUCHDB`, else the install
/// script's location.
pub fn pouchdb_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FEEDLINE_POUCHDB") {
        return PathBuf::from(p);
    }
    let cache = match std::env::var_os("FEEDLINE_CACHE") {
        Some(c) => PathBuf::from(c),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/feedline")
        }
    };
    cache.join("pouchdb-server/node_modules/.bin/pouchdb-server")
}

/// The pouchdb-server executable; panics with install instructions when it is missing.
pub fn pouchdb_bin() -> PathBuf {
    let path = pouchdb_path();
    assert!(
        path.is_file(),
        "pouchdb-server not found at {} — install it with `scripts/install-pouchdb.sh` (needs node and npm), \
         or set FEEDLINE_POUCHDB to the executable. CouchDB tests need a real server and do not skip.",
        path.display()
    );
    path
}

/// A running pouchdb-server; killed when dropped.
pub struct CouchDb {
    child: Option<Child>,
    port: u16,
    persistent: bool,
    dir: tempfile::TempDir,
    /// `Authorization` header value once an admin exists.
    auth: Option<String>,
}

impl CouchDb {
    /// Start an in-memory server on a free port; waits (at most 30 s) until it answers.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// Start a server that keeps its databases on disk (in a scratch directory), so a
    /// [`CouchDb::restart`] finds them again.
    pub fn start_persistent() -> Self {
        Self::launch(true)
    }

    fn launch(persistent: bool) -> Self {
        let mut dir = tempfile::tempdir().expect("temp dir");
        for _attempt in 0..3 {
            let mut db = CouchDb { child: None, port: free_port(), persistent, dir, auth: None };
            if db.spawn() {
                return db;
            }
            dir = db.into_dir();
        }
        panic!("pouchdb-server did not start after 3 attempts");
    }

    fn into_dir(mut self) -> tempfile::TempDir {
        self.kill();
        let placeholder = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, placeholder)
    }

    /// Spawn on `self.port` and wait until it answers; false when it did not come up.
    fn spawn(&mut self) -> bool {
        let bin = pouchdb_bin();
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("stdout.txt"))
            .expect("pouchdb stdout file");
        let mut cmd = Command::new(&bin);
        cmd.current_dir(self.dir.path()).args(["-o", "127.0.0.1", "-p", &self.port.to_string(), "-n"]);
        if self.persistent {
            cmd.args(["-d", data.to_str().expect("utf-8 path")]);
        } else {
            cmd.arg("--in-memory");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                eprintln!("pouchdb-server exited on port {}:\n{}", self.port, self.log());
                self.child = None;
                return false;
            }
            if matches!(self.try_request("GET", "/", None), Ok((200, _))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("pouchdb-server did not answer on port {}:\n{}", self.port, self.log());
        self.kill();
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill the server (SIGKILL): the port stops answering. In-memory data is gone.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Start it again on the same port (after [`CouchDb::stop`], or kill it first).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "pouchdb-server did not restart on port {}", self.port);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log (its stdout, stderr and `log.txt`).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.txt"), read("log.txt"))
    }

    /// One HTTP request; `(status, JSON body)` (non-JSON bodies come back as a string).
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        http(self.port, self.auth.as_deref(), method, path, body)
    }

    /// One HTTP request that must get an answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_request(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Make `user` a server admin: from then on credentials must be right (anonymous reads stay
    /// allowed on pouchdb-server), and this handle's own requests use them.
    pub fn add_admin(&mut self, user: &str, password: &str) {
        let (status, body) =
            self.request("PUT", &format!("/_config/admins/{}", encode(user)), Some(&json!(password)));
        assert_eq!(status, 200, "add admin: {body}");
        self.auth = Some(format!("Basic {}", base64(format!("{user}:{password}").as_bytes())));
    }

    /// Create a database (fine if it exists).
    pub fn create_db(&self, db: &str) {
        let (status, body) = self.request("PUT", &format!("/{db}"), None);
        assert!(status == 201 || status == 412, "create {db}: {status} {body}");
    }

    /// Write documents with `_bulk_docs`; returns the per-document results.
    pub fn bulk_docs(&self, db: &str, docs: &[Value]) -> Vec<Value> {
        let (status, body) =
            self.request("POST", &format!("/{db}/_bulk_docs"), Some(&json!({ "docs": docs })));
        assert!(status == 201 || status == 200, "_bulk_docs {db}: {status} {body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// Create or update one document; returns its new `_rev`.
    pub fn put_doc(&self, db: &str, doc: &Value) -> String {
        let results = self.bulk_docs(db, std::slice::from_ref(doc));
        let r = &results[0];
        r["rev"].as_str().unwrap_or_else(|| panic!("write {doc}: {r}")).to_owned()
    }

    /// Delete a document at `rev`.
    pub fn delete_doc(&self, db: &str, id: &str, rev: &str) {
        self.put_doc(db, &json!({ "_id": id, "_rev": rev, "_deleted": true }));
    }

    /// Every live document (with bodies), by id.
    pub fn all_docs(&self, db: &str) -> Vec<Value> {
        let (status, body) = self.request("GET", &format!("/{db}/_all_docs?include_docs=true"), None);
        assert_eq!(status, 200, "_all_docs {db}: {body}");
        body["rows"]
            .as_array()
            .map(|rows| rows.iter().map(|r| r["doc"].clone()).collect())
            .unwrap_or_default()
    }

    /// Number of live documents (`doc_count`), or `None` while the database is unreachable.
    pub fn doc_count(&self, db: &str) -> Option<u64> {
        match self.try_request("GET", &format!("/{db}"), None) {
            Ok((200, info)) => info["doc_count"].as_u64(),
            _ => None,
        }
    }

    /// One document, if it exists.
    pub fn get(&self, db: &str, id: &str) -> Option<Value> {
        let path = format!("/{db}/{}", encode(id));
        match self.request("GET", &path, None) {
            (200, doc) => Some(doc),
            _ => None,
        }
    }
}

impl Drop for CouchDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Percent-encode a document id for a URL path (`guest/a` → `guest%2Fa`).
pub fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A blocking HTTP/1.0 request to 127.0.0.1:`port` (the answer is read to its end).
fn http(
    port: u16,
    auth: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n");
    if let Some(auth) = auth {
        req.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if body.is_some() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", payload.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(payload.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Ok((status, value))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
