//! Running `feedline` as a child process.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0").local_addr().expect("local addr").port()
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Path of the `feedline` binary built for these tests.
pub fn feedline_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CARGO_BIN_EXE_feedline") {
        return PathBuf::from(p);
    }
    // Integration tests of other crates: target/<profile>/feedline next to the test binary.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("feedline")
}

/// Variables a child may inherit from the test run. Everything else (`CLUSTER_ID`, `OTEL_*`,
/// `FEEDLINE_*`, proxies, …) is dropped, so a developer's shell cannot change what a test sees;
/// a test passes what its process needs explicitly.
const INHERITED: &[&str] = &["PATH", "HOME", "TMPDIR", "RUST_BACKTRACE", "RUST_LOG", "LD_LIBRARY_PATH"];

/// Clear `cmd`'s environment down to [`INHERITED`].
pub fn clean_env(cmd: &mut Command) {
    cmd.env_clear();
    for key in INHERITED {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
}

/// A running `feedline` process; killed on drop.
pub struct Feedline {
    child: Child,
    stderr_path: PathBuf,
}

impl Feedline {
    /// Spawn `feedline <args>` with `env`, stderr captured to `log` (read it with [`Feedline::log`]).
    pub fn spawn(bin: &Path, args: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        let stderr = std::fs::File::create(log).expect("create log file");
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        clean_env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn feedline");
        Self { child, stderr_path: log.to_path_buf() }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (SIGKILL, SIGTERM, ...).
    pub fn signal(&self, sig: i32) {
        kill(self.child.id() as i32, sig);
    }

    /// Wait for exit at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Resident set size in KiB (Linux), while running.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Feedline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kill(pid: i32, sig: i32) {
    // The workspace forbids `unsafe`; kill(1) does the same without it.
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}
