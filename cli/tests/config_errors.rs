//! `feedline validate` on bad pipeline files: each kind of mistake gets its exact message,
//! file:line:column, the offending line and a hint, and exit code 1 — before any I/O.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn validate(dir: &Path, name: &str, text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_feedline"));
    cmd.arg("validate").arg(&file);
    feedline_testkit::process::clean_env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Assert the run failed and stderr contains every fragment.
fn expect_error(text: &str, env: &[(&str, &str)], fragments: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = validate(dir.path(), "p.toml", text, env);
    assert!(!ok, "expected failure, got success for:\n{text}");
    let stderr = stderr.replace(&dir.path().display().to_string(), "DIR");
    for f in fragments {
        assert!(stderr.contains(f), "missing {f:?} in:\n{stderr}");
    }
}

const GOOD_SOURCE: &str = "[source]\ntype = \"file\"\npath = \"in.jsonl\"\n";

#[test]
fn valid_file_passes() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\n");
    let (ok, stderr) = validate(dir.path(), "p.toml", &text, &[]);
    assert!(ok, "{stderr}");
}

#[test]
fn toml_syntax_error() {
    expect_error(
        "[source]\ntype = \"file\npath = \"x\"\n",
        &[],
        &["error: invalid TOML", "--> DIR/p.toml:2:"],
    );
}

#[test]
fn unknown_top_level_key_suggests_the_close_one() {
    expect_error(
        &format!("{GOOD_SOURCE}[[sink]]\ntype = \"blackhole\"\n"),
        &[],
        &[
            "error: unknown top-level key `sink`",
            "--> DIR/p.toml:4:3",
            "4 | [[sink]]",
            "= hint: did you mean `sinks`?",
        ],
    );
}

#[test]
fn unknown_component_type() {
    expect_error(
        "[source]\ntype = \"flie\"\npath = \"x\"\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &[
            "error: unknown source type `flie`",
            "--> DIR/p.toml:2:8",
            "2 | type = \"flie\"",
            "= hint: did you mean `file`?",
        ],
    );
}

#[test]
fn unknown_field_in_a_component() {
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"file\"\npath = \"o.jsonl\"\nfsink = false\n"),
        &[],
        &[
            "error: unknown field `fsink` in sink `file`",
            "--> DIR/p.toml:7:1",
            "7 | fsink = false",
            "  | ^^^^^",
            "= hint: did you mean `fsync`?",
        ],
    );
}

#[test]
fn wrong_type() {
    expect_error(
        "[source]\ntype = \"file\"\npath = \"x\"\nbatch_size = \"ten\"\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &["error: invalid value for `batch_size` in source `file`: invalid type: string \"ten\", expected usize", "--> DIR/p.toml:4:14"],
    );
}

#[test]
fn missing_required_field() {
    expect_error(
        "[source]\ntype = \"file\"\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &[
            "error: source `file` is missing the required field `path`",
            "--> DIR/p.toml:1:1",
            "= hint: add `path = ...`",
        ],
    );
}

#[test]
fn missing_environment_variable() {
    expect_error(
        "[source]\ntype = \"file\"\npath = \"${FEEDLINE_TEST_UNSET}\"\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &[
            "error: environment variable `FEEDLINE_TEST_UNSET` is not set",
            "--> DIR/p.toml:3:8",
            "= hint: export the variable, or give a default: ${NAME:-value}",
        ],
    );
}

#[test]
fn required_variable_with_author_message() {
    expect_error(
        "[source]\ntype = \"file\"\npath = \"${FEEDLINE_TEST_UNSET:?point it at the changes file}\"\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &["error: environment variable `FEEDLINE_TEST_UNSET` is required: point it at the changes file", "--> DIR/p.toml:3:8"],
    );
}

#[test]
fn contradictory_options() {
    expect_error(
        "[source]\ntype = \"file\"\npath = \"x\"\nstart_at = \"end\"\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &[
            "error: source `file`: `start_at = \"end\"` without `follow = true` reads nothing",
            "--> DIR/p.toml:4:12",
            "= hint: set `follow = true`",
        ],
    );
}

#[test]
fn invalid_enum_value_suggests_the_close_one() {
    expect_error(
        &format!("{GOOD_SOURCE}[[transforms]]\ntype = \"soft_delete\"\nmode = \"dorp\"\n[[sinks]]\ntype = \"blackhole\"\n"),
        &[],
        &["error: `dorp` is not a valid value for `mode` in transform `soft_delete`", "--> DIR/p.toml:6:8", "= hint: did you mean `drop`?"],
    );
}

#[test]
fn duplicate_component_ids() {
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\nid = \"out\"\n[[sinks]]\ntype = \"stdout\"\nid = \"out\"\n"),
        &[],
        &["error: component id `out` is used twice in this pipeline", "--> DIR/p.toml:9:6"],
    );
}

#[test]
fn no_sinks() {
    expect_error(
        GOOD_SOURCE,
        &[],
        &["error: a pipeline needs at least one [[sinks]] entry", "--> DIR/p.toml:1:1"],
    );
}

#[test]
fn bad_delivery_option() {
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\nrate_limit = -5\n"),
        &[],
        &["error: `rate_limit` must be a positive number of events per second", "--> DIR/p.toml:6:14"],
    );
}

#[test]
fn numbers_outside_their_declared_range_are_located() {
    // Each of these validated before and then panicked or misbehaved at run time: a zero
    // interval (tokio panics), a rate whose inverse overflows a Duration, absurd concurrency.
    expect_error(
        "[source]\ntype = \"file\"\npath = \"in.jsonl\"\ncommit_interval_ms = 0\n[[sinks]]\ntype = \"blackhole\"\n",
        &[],
        &[
            "error: invalid value for `commit_interval_ms` in source `file`: 0 is too small",
            "--> DIR/p.toml:4:22",
            "= hint: valid range: 1 to 3600000",
        ],
    );
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\nrate_limit = 1e-300\n"),
        &[],
        &[
            "error: invalid value for `rate_limit` in sink `blackhole`: 1e-300 is too small",
            "--> DIR/p.toml:6:14",
        ],
    );
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\nmax_in_flight = 100000000\nbatch = {{ max_events = 0 }}\n"),
        &[],
        &[
            "error: invalid value for `max_events` in sink `blackhole`: 0 is too small",
            "--> DIR/p.toml:7:24",
            "= hint: valid range: 1 to 1000000",
        ],
    );
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\nmax_in_flight = 100000000\nbatch = {{ max_events = 100000000 }}\n"),
        &[],
        &[
            "error: invalid value for `max_in_flight` in sink `blackhole`: 100000000 is too large",
            "--> DIR/p.toml:6:17",
            "error: invalid value for `max_events` in sink `blackhole`: 100000000 is too large",
            "--> DIR/p.toml:7:24",
        ],
    );
}

#[test]
fn every_numeric_option_declares_its_range() {
    let out = Command::new(env!("CARGO_BIN_EXE_feedline")).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let defs = schema["$defs"].as_object().unwrap();
    assert!(defs.len() > 10, "the schema lists the components");
    let unbounded = feedline_engine::config::unbounded_numbers(&schema);
    assert!(
        unbounded.is_empty(),
        "numeric options without #[schemars(range(min = .., max = ..))]: {unbounded:?}"
    );
}

#[test]
fn unknown_key_in_a_test_case() {
    expect_error(
        &format!("{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\n[[test]]\nname = \"t\"\nexpected = []\n"),
        &[],
        &[
            "error: unknown field `expected` in test case",
            "--> DIR/p.toml:8:1",
            "= hint: did you mean `expect`?",
        ],
    );
}

#[test]
fn secrets_from_the_environment_never_appear_in_errors() {
    for secret in ["hunter2-very-secret", "k7"] {
        let text = "[source]\ntype = \"file\"\npath = \"x\"\nbatch_size = \"${FEEDLINE_TEST_SECRET}\"\n[[sinks]]\ntype = \"blackhole\"\n";
        let dir = tempfile::tempdir().unwrap();
        let (ok, stderr) = validate(dir.path(), "p.toml", text, &[("FEEDLINE_TEST_SECRET", secret)]);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains("invalid type: string \"***\"") && stderr.contains("p.toml:4:14"),
            "{stderr}"
        );
        let stderr = stderr.replace(&dir.path().display().to_string(), "DIR");
        assert!(!stderr.contains(secret), "the secret {secret:?} reached the error:\n{stderr}");
    }
}

#[test]
fn duplicate_pipeline_names_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("name = \"same\"\n{GOOD_SOURCE}[[sinks]]\ntype = \"blackhole\"\n");
    std::fs::write(dir.path().join("a.toml"), &text).unwrap();
    std::fs::write(dir.path().join("b.toml"), &text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_feedline")).arg("validate").arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pipeline name `same` is already used by"), "{stderr}");
    assert!(stderr.contains("b.toml:1:1"), "{stderr}");
}

#[test]
fn validate_never_touches_the_network() {
    // A sink pointing at an address nothing listens on still validates: no connection is made.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{GOOD_SOURCE}[[sinks]]\ntype = \"file\"\npath = \"/nonexistent-dir/out.jsonl\"\n");
    let (ok, stderr) = validate(dir.path(), "p.toml", &text, &[]);
    assert!(ok, "{stderr}");
}
