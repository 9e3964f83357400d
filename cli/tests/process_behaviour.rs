//! What operators rely on from the process: closed pipes exit quietly, one process per data
//! directory, SIGHUP does not kill, one pipeline's failure does not stop the others.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use feedline_testkit::pipeline::{http_get, listen_addr, read_jsonl, run_pipeline, Workdir};
use feedline_testkit::wait_until;

const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;

fn follow_pipeline(w: &Workdir, name: &str) -> std::path::PathBuf {
    let input = w.path(&format!("{name}.in.jsonl"));
    std::fs::write(&input, "{\"n\":1}\n").unwrap();
    w.write(
        &format!("{name}.toml"),
        &format!(
            "name = \"{name}\"\n[source]\ntype = \"file\"\npath = \"{}\"\nfollow = true\npoll_interval_ms = 20\n\
             [[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            input.display(),
            w.path(&format!("{name}.out.jsonl")).display()
        ),
    )
}

fn append(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(line.as_bytes()).unwrap();
}

#[test]
fn a_closed_stdout_pipe_exits_quietly() {
    for args in [&["schema"][..], &["schema", "--format", "markdown"]] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_feedline"));
        feedline_testkit::process::clean_env(&mut cmd);
        let mut child = cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take()); // the reader is gone before the first write
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_second_process_on_one_data_dir_exits_naming_the_holder() {
    let w = Workdir::new();
    let pipeline = follow_pipeline(&w, "locked");
    let data = w.path("data");
    let first = run_pipeline(&pipeline, &data, &w.path("first.log"), &[], &[]);
    listen_addr(&first, Duration::from_secs(30));
    let mut second = run_pipeline(&pipeline, &data, &w.path("second.log"), &[], &[]);
    let status = second.wait_timeout(Duration::from_secs(30)).expect("the second process exits");
    assert!(!status.success());
    let log = second.log();
    assert!(log.contains(&format!("in use by another feedline process (pid {})", first.pid())), "{log}");
    assert!(!log.contains("listening on"), "the second process must not start: {log}");
}

#[test]
fn sighup_is_logged_and_ignored() {
    let w = Workdir::new();
    let pipeline = follow_pipeline(&w, "hup");
    let mut p = run_pipeline(&pipeline, &w.path("data"), &w.path("log"), &[], &[]);
    listen_addr(&p, Duration::from_secs(30));
    let output = w.path("hup.out.jsonl");
    assert!(wait_until(Duration::from_secs(30), || read_jsonl(&output).len() == 1), "{}", p.log());
    p.signal(SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || p.log().contains("SIGHUP ignored")), "{}", p.log());
    append(&w.path("hup.in.jsonl"), "{\"n\":2}\n");
    assert!(wait_until(Duration::from_secs(30), || read_jsonl(&output).len() == 2), "{}", p.log());
    assert!(p.running());
    p.signal(SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "{}", p.log());
}

#[test]
fn a_failed_pipeline_leaves_the_others_running_and_health_says_so() {
    let w = Workdir::new();
    follow_pipeline(&w, "healthy");
    // A missing input without `follow` fails that pipeline's source at once.
    w.write(
        "broken.toml",
        &format!(
            "name = \"broken\"\n[source]\ntype = \"file\"\npath = \"{}\"\n[[sinks]]\ntype = \"blackhole\"\n",
            w.path("missing.jsonl").display()
        ),
    );
    let dir = w.dir.path().to_path_buf();
    let mut p = run_pipeline(&dir, &w.path("data"), &w.path("log"), &[], &[]);
    let addr = listen_addr(&p, Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(30), || p.log().contains("the others keep running")),
        "{}",
        p.log()
    );
    let output = w.path("healthy.out.jsonl");
    append(&w.path("healthy.in.jsonl"), "{\"n\":2}\n");
    assert!(wait_until(Duration::from_secs(30), || read_jsonl(&output).len() == 2), "{}", p.log());
    let health = http_get(&addr, "/health");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "failed", "{health}");
    assert_eq!(health["pipelines"]["broken"]["state"], "failed", "{health}");
    assert_eq!(health["pipelines"]["healthy"]["state"], "running", "{health}");
    p.signal(SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(!status.success(), "a failed pipeline makes the exit non-zero: {}", p.log());
}
