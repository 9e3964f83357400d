//! `feedline --help` lists the operator commands and nothing else (benchmarks are
//! `feedline-bench`'s).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn help_lists_only_operator_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_feedline")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "validate", "test", "graph", "schema"] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(command)), "no `{command}` in:\n{help}");
    }
    assert!(!help.contains("bench"), "benchmarks in `feedline --help`:\n{help}");
    let out = Command::new(env!("CARGO_BIN_EXE_feedline")).args(["bench", "engine"]).output().unwrap();
    assert!(!out.status.success(), "`feedline bench` still runs");
}
