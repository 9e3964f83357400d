//! `feedline run` on a pipeline file in a scratch directory, and reading what it serves on
//! `--listen` (`/metrics`) and writes to JSON-lines files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{feedline_bin, wait_until, Feedline};

/// A scratch directory with pipeline files, inputs and data directories; removed on drop.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Default for Workdir {
    fn default() -> Self {
        Self::new()
    }
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

/// `feedline run <pipeline> --data-dir <data_dir> --listen 127.0.0.1:0 --drain-timeout 20
/// <extra>` with `env` (plus `RUST_LOG=info` unless the test run sets it), stderr to `log`.
pub fn run_pipeline(
    pipeline: &Path,
    data_dir: &Path,
    log: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> Feedline {
    let mut args = vec![
        "run",
        pipeline.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "20",
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    if std::env::var("RUST_LOG").is_err() {
        env.push(("RUST_LOG", "info"));
    }
    Feedline::spawn(&feedline_bin(), &args, &env, log)
}

/// The address a `--listen 127.0.0.1:0` process printed (panics after `timeout`).
pub fn listen_addr(f: &Feedline, timeout: Duration) -> String {
    let mut addr = None;
    wait_until(timeout, || {
        addr = f.log().lines().find_map(|l| l.strip_prefix("feedline: listening on ").map(str::to_owned));
        addr.is_some()
    });
    addr.unwrap_or_else(|| panic!("no listen address in log:\n{}", f.log()))
}

/// GET `path` from `addr` over HTTP/1.0: the body, or the connection error.
pub fn try_http_get(addr: &str, path: &str) -> std::io::Result<String> {
    try_http_get_status(addr, path).map(|(_, body)| body)
}

/// GET `path` from `addr` over HTTP/1.0: the status code (0 when the answer has no status line)
/// and the body, or the connection error.
pub fn try_http_get_status(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// [`try_http_get_status`] with the body parsed as JSON, panicking when the process does not
/// answer or the body is not JSON.
pub fn http_get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, body) =
        try_http_get_status(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"));
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body:?}"));
    (status, json)
}

/// [`try_http_get`], panicking when the process does not answer.
pub fn http_get(addr: &str, path: &str) -> String {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// Sum of a Prometheus metric's samples whose labels contain all of `labels`.
pub fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every complete line of a JSON-lines file (none when it does not exist yet). Strict: a complete
/// line that does not parse panics (it is a torn or corrupted record). An unterminated last line
/// is one being written while the test polls: left for the next read.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: a line that is not JSON ({e}): {l:?}", path.display()))
        })
        .collect()
}
