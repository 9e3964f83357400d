//! The benchmarks that need no external server run end to end on a few events (figures are not
//! checked, only that each run completes and reports them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_feedline-bench")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "feedline-bench {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn engine() {
    let out = bench(&["engine", "--events", "2000"]);
    assert!(out.contains("feedline-bench engine: 2000 Cosmos-style change events"), "{out}");
    assert!(out.contains("ratio engine/baseline"), "{out}");
}

/// Three child processes (`tracing-child`), one per setting; spans reach the counting receiver.
#[test]
fn tracing() {
    let out = bench(&["tracing", "--events", "2000", "--rounds", "1"]);
    for setting in ["off", "on, 1% sampled", "on, 100% sampled"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(setting)), "no {setting:?} row in:\n{out}");
    }
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("receiver: ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no receiver line in:\n{out}"));
    assert!(requests > 0, "no export request reached the receiver:\n{out}");
}
