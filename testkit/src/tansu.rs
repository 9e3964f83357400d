//! A real Kafka-protocol broker for tests: tansu 0.6.0, in memory, on a free 127.0.0.1 port.
//!
//! The binary comes from `FEEDLINE_TANSU`, or from where `scripts/install-tansu.sh` puts it:
//! `${FEEDLINE_CACHE:-$HOME/.cache/feedline}/tansu-0.6.0/bin/tansu`. A missing binary fails the
//! test with instructions — Kafka tests never skip silently.
//!
//! Three tansu quirks tests must allow for (measured on 0.6.0): it holds every fetch for the full
//! `fetch.wait.max.ms` (use ~10 ms, see [`TEST_FETCH_WAIT_MS`]); its high-water marks are wrong,
//! so count records by reading them; and a fetch from an offset *inside* a record batch returns
//! the next batch, skipping the rest of that one — so input topics that are re-read from
//! committed offsets (restarts, rebalances, paused partitions) must be produced one record per
//! batch (`batch.num.messages=1`). Apache Kafka has none of these.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;

/// `fetch.wait.max.ms` for clients talking to tansu: it always waits this long per fetch.
pub const TEST_FETCH_WAIT_MS: u32 = 10;

/// Where the tansu binary is expected: `FEEDLINE_TANSU`, else the install script's location.
pub fn tansu_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FEEDLINE_TANSU") {
        return PathBuf::from(p);
    }
    let cache = match std::env::var_os("FEEDLINE_CACHE") {
        Some(c) => PathBuf::from(c),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".cache/feedline")
        }
    };
    cache.join("tansu-0.6.0/bin/tansu")
}

/// The tansu binary; panics with install instructions when it is missing.
pub fn tansu_bin() -> PathBuf {
    let path = tansu_path();
    assert!(
        path.is_file(),
        "tansu broker not found at {} — install it with `scripts/install-tansu.sh` (or set FEEDLINE_TANSU \
         to the binary). Kafka tests need a real broker and do not skip.",
        path.display()
    );
    path
}

/// A running tansu broker with in-memory storage; killed when dropped.
pub struct Tansu {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tansu {
    /// Start a broker on a free port and wait (at most 30 s) until it accepts connections.
    pub fn start() -> Self {
        let bin = tansu_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("tansu.log");
        for _attempt in 0..3 {
            let port = free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let stderr = std::fs::File::create(&log).expect("create tansu log");
            let mut child = Command::new(&bin)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            if wait_ready(&mut child, port, Duration::from_secs(30)) {
                return Tansu { child, port, log, _dir: dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "tansu did not come up on port {port}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("tansu did not start after 3 attempts");
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Create a topic with `partitions` partitions (tansu does not auto-create topics).
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", name, "--partitions", &partitions.to_string()])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Everything the broker wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn wait_ready(child: &mut Child, port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited (e.g. the port was taken meanwhile)
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
