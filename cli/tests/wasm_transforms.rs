//! The `wasm` transform through the `feedline` binary: `validate` points at the pipeline file for
//! every module problem, `test` runs WASM transforms in [[test]] cases (the Rust and the C guest
//! pass the same cases), and `run` dead-letters the one record a guest traps on.
//!
//! Fixtures: the example guests built by scripts/build-wasm-examples.sh (run here once) and the
//! hand-written modules in transforms/src/wasm/testdata.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn examples() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash").arg(root().join("scripts/build-wasm-examples.sh")).output().unwrap();
        assert!(out.status.success(), "build-wasm-examples.sh:\n{}", String::from_utf8_lossy(&out.stderr));
        PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim())
    })
}

fn example(name: &str) -> String {
    let p = examples().join(name);
    assert!(p.is_file(), "{} missing (clang installed? scripts/install-system-deps.sh)", p.display());
    p.display().to_string()
}

fn testdata(name: &str) -> String {
    root().join("transforms/src/wasm/testdata").join(name).display().to_string()
}

fn feedline(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_feedline")).args(args).arg(file).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A pipeline with one `wasm` transform whose table is `transform`.
fn pipeline(transform: &str) -> String {
    format!(
        "name = \"w\"\n\n[source]\ntype = \"file\"\npath = \"in.jsonl\"\n\n[[transforms]]\ntype = \"wasm\"\n\
         {transform}\n\n[[sinks]]\ntype = \"blackhole\"\n"
    )
}

fn validate_fails(transform: &str, fragments: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(transform)).unwrap();
    let out = feedline(&["validate"], &file);
    let stderr = text(&out.stderr).replace(&dir.path().display().to_string(), "DIR");
    assert!(!out.status.success(), "validate passed:\n{stderr}");
    for f in fragments {
        assert!(stderr.contains(f), "missing {f:?} in:\n{stderr}");
    }
}

#[test]
fn wrong_abi_version_is_reported_at_the_module_line() {
    validate_fails(
        &format!("module = {:?}", testdata("wrong_abi.wat")),
        &[
            "error: transform `wasm`: `wrong_abi.wat` speaks ABI version 2; this Feedline speaks version 1",
            "--> DIR/p.toml:9:",
            "9 | module = ",
            "= hint: rebuild the module against the current feedline-guest",
        ],
    );
}

#[test]
fn a_module_importing_wasi_is_refused() {
    validate_fails(
        &format!("module = {:?}", testdata("wasi_import.wat")),
        &["imports WASI (`wasi_snapshot_preview1::fd_write`)", "--> DIR/p.toml:9:", "wasm32-unknown-unknown"],
    );
}

#[test]
fn a_missing_module_is_reported_relative_to_the_pipeline_file() {
    validate_fails(
        "module = \"guests/nope.wasm\"",
        &["cannot read `DIR/guests/nope.wasm`", "--> DIR/p.toml:9:"],
    );
}

#[test]
fn config_the_guest_rejects_is_reported_at_the_config_line() {
    validate_fails(
        &format!("module = {:?}\nconfig = {{ namespaces = [\"\"] }}", example("namespace_filter.wasm")),
        &["rejected its config: `namespaces` must not contain an empty name", "--> DIR/p.toml:10:"],
    );
}

const CASES: &str = r#"
[[test]]
name = "system namespaces are dropped"
input = [{ value = { namespace = "whisk.system", name = "a" } }, { value = { namespace = "whisk.system/utils" } }]
expect = []

[[test]]
name = "other namespaces and documents without one pass"
input = [{ value = { namespace = "guest", name = "b" } }, { value = { name = "c" } }, { key = "k", value = { namespace = "whisk.systemic" } }]
expect = [{ value = { namespace = "guest", name = "b" } }, { value = { name = "c" } }, { key = "k", value = { namespace = "whisk.systemic" } }]
"#;

#[test]
fn feedline_test_runs_rust_and_c_guests_on_the_same_cases() {
    let dir = tempfile::tempdir().unwrap();
    for (name, module) in [("rust", "namespace_filter.wasm"), ("c", "namespace_filter_c.wasm")] {
        let body = pipeline(&format!(
            "module = {:?}\nconfig = {{ namespaces = [\"whisk.system\"] }}",
            example(module)
        ))
        .replace("name = \"w\"", &format!("name = \"{name}\""));
        std::fs::write(dir.path().join(format!("{name}.toml")), format!("{body}{CASES}")).unwrap();
    }
    let router = pipeline(&format!(
        "module = {:?}\nconfig = {{ topics = {{ \"whisk.system\" = \"system\" }}, default = \"changes\" }}",
        example("topic_router.wasm")
    ))
    .replace("name = \"w\"", "name = \"router\"");
    let router_cases = r#"
[[test]]
name = "the namespace picks the topic"
input = [{ value = { namespace = "whisk.system" } }, { value = { namespace = "guest" } }]
expect = [{ route = "system" }, { route = "changes", value = { namespace = "guest" } }]
"#;
    std::fs::write(dir.path().join("router.toml"), format!("{router}{router_cases}")).unwrap();
    let out = feedline(&["test"], dir.path());
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("5 passed, 0 failed"), "{stdout}");
    assert!(stdout.contains("ok    c :: system namespaces are dropped"), "{stdout}");
}

#[test]
fn feedline_test_shows_a_diff_when_a_wasm_case_fails() {
    let dir = tempfile::tempdir().unwrap();
    let body = pipeline(&format!(
        "module = {:?}\nconfig = {{ namespaces = [\"guest\"] }}",
        example("namespace_filter.wasm")
    ));
    std::fs::write(dir.path().join("p.toml"), format!("{body}{CASES}")).unwrap();
    let out = feedline(&["test"], &dir.path().join("p.toml"));
    let stdout = text(&out.stdout);
    assert!(!out.status.success());
    assert!(stdout.contains("FAIL  w :: system namespaces are dropped"), "{stdout}");
    assert!(stdout.contains("expected 0 output event(s), got 2"), "{stdout}");
}

#[test]
fn run_dead_letters_the_record_a_guest_panics_on_and_delivers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..1000)
        .map(|i| if i == 321 { format!(r#"{{"i":{i},"poison":true}}"#) } else { format!(r#"{{"i":{i}}}"#) })
        .collect();
    std::fs::write(dir.path().join("in.jsonl"), lines.join("\n") + "\n").unwrap();
    let body =
        pipeline(&format!("module = {:?}\nconfig = {{ mode = \"panic\" }}", example("misbehave.wasm")))
            .replace("type = \"blackhole\"", "type = \"file\"\npath = \"out.jsonl\"");
    std::fs::write(dir.path().join("p.toml"), body).unwrap();
    let data = dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_feedline"))
        .args(["run", "--data-dir"])
        .arg(&data)
        .arg(dir.path().join("p.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let delivered = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(delivered.lines().count(), 999);
    assert!(!delivered.contains("poison"));
    let dead = std::fs::read_to_string(data.join("w/dead-letter.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(dead.contains("guest panicked at") && dead.contains("poisoned record"), "{dead}");
    assert!(dead.contains(r#""poison":true"#), "{dead}");
}
