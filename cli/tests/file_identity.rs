//! The `file` source's checkpoint knows which file it counts into: a file replaced while Feedline
//! was stopped (renamed over, removed and created again, or rewritten in place) is read from its
//! first line, while the same file, grown or not, resumes where it stopped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use feedline_testkit::pipeline::{read_jsonl, run_pipeline, Workdir};
use feedline_testkit::wait_until;
use serde_json::{json, Value};

fn lines(file: &str, range: std::ops::Range<u64>) -> String {
    range.map(|n| format!("{}\n", json!({ "file": file, "n": n, "pad": "x".repeat(20) }))).collect()
}

fn pipeline(w: &Workdir) -> PathBuf {
    pipeline_with(w, "")
}

fn pipeline_with(w: &Workdir, source_keys: &str) -> PathBuf {
    w.write(
        "identity.toml",
        &format!(
            "name = \"identity\"\n[source]\ntype = \"file\"\npath = \"{}\"\ncommit_interval_ms = 50\n{source_keys}\
             [[sinks]]\ntype = \"file\"\npath = \"{}\"\n",
            w.path("in.jsonl").display(),
            w.path("out.jsonl").display()
        ),
    )
}

/// One `feedline run` over the whole input, to its end; returns its log.
fn run_to_end(w: &Workdir, pipeline: &Path, run: &str) -> String {
    let mut p = run_pipeline(pipeline, &w.path("data"), &w.path(&format!("{run}.log")), &[], &[]);
    let status = p.wait_timeout(Duration::from_secs(60)).expect("a run without `follow` ends");
    assert!(status.success(), "{run}: {status:?}\n{}", p.log());
    p.log()
}

/// (file, n) of every delivered line, in order.
fn delivered(w: &Workdir) -> Vec<(String, u64)> {
    read_jsonl(&w.path("out.jsonl"))
        .iter()
        .map(|v| (v["file"].as_str().unwrap().to_owned(), v["n"].as_u64().unwrap()))
        .collect()
}

fn expected(file: &str, range: std::ops::Range<u64>) -> Vec<(String, u64)> {
    range.map(|n| (file.to_owned(), n)).collect()
}

fn inode(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// How a test replaces the input file with new text.
type Replace = fn(&Path, &str);

#[test]
fn a_file_replaced_while_stopped_is_read_from_its_first_line() {
    let replacements: [(&str, Replace); 3] = [
        ("renamed over", |input, text| {
            let next = input.with_extension("next");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, input).unwrap();
        }),
        ("removed and created again", |input, text| {
            std::fs::remove_file(input).unwrap();
            std::fs::write(input, text).unwrap(); // the file system may hand out the old inode
        }),
        ("rewritten in place", |input, text| std::fs::write(input, text).unwrap()),
    ];
    for (how, replace) in replacements {
        let w = Workdir::new();
        let input = w.path("in.jsonl");
        let pipeline = pipeline(&w);
        std::fs::write(&input, lines("a", 0..5)).unwrap();
        run_to_end(&w, &pipeline, "first");
        assert_eq!(delivered(&w), expected("a", 0..5), "{how}: first run");

        // Longer than A, so an offset into A is inside B and would skip its first lines.
        let before = inode(&input);
        replace(&input, &lines("b", 0..12));
        match how {
            "renamed over" => assert_ne!(inode(&input), before, "{how}"),
            "rewritten in place" => assert_eq!(inode(&input), before, "{how}"),
            _ => {}
        }
        let log = run_to_end(&w, &pipeline, "second");
        let got = delivered(&w);
        assert_eq!(got[5..], expected("b", 0..12), "{how}: every line of the new file, once\n{log}");
        assert!(log.contains("the checkpoint belongs to another file"), "{how}: the log says why\n{log}");
    }
}

#[test]
fn the_same_file_resumes_where_it_stopped_with_or_without_a_recorded_identity() {
    let w = Workdir::new();
    let input = w.path("in.jsonl");
    let pipeline = pipeline(&w);
    std::fs::write(&input, lines("a", 0..5)).unwrap();
    run_to_end(&w, &pipeline, "first");
    let checkpoint = w.path("data/identity/file/position.json");
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert_eq!(saved["identity"]["inode"], inode(&input), "{saved}");

    // Appended to: only the new lines are delivered.
    std::fs::write(&input, lines("a", 0..5) + &lines("a", 5..8)).unwrap();
    let log = run_to_end(&w, &pipeline, "grown");
    assert_eq!(delivered(&w), expected("a", 0..8), "{log}");
    assert!(!log.contains("belongs to another file"), "{log}");

    // A checkpoint written before identities is trusted, and says so.
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    let old = json!({ "offset": saved["offset"], "path": saved["path"] });
    std::fs::write(&checkpoint, old.to_string()).unwrap();
    std::fs::write(&input, lines("a", 0..8) + &lines("a", 8..10)).unwrap();
    let log = run_to_end(&w, &pipeline, "old checkpoint");
    assert_eq!(delivered(&w), expected("a", 0..10), "{log}");
    assert!(log.contains("the checkpoint has no file identity"), "{log}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert!(saved["identity"]["fingerprint"].is_string(), "the next checkpoint records it: {saved}");
}

#[test]
fn a_followed_file_rotated_under_a_longer_one_is_read_from_its_first_line() {
    const SIGTERM: i32 = 15;
    let w = Workdir::new();
    let input = w.path("in.jsonl");
    let pipeline = pipeline_with(&w, "follow = true\npoll_interval_ms = 20\n");
    std::fs::write(&input, lines("a", 0..5)).unwrap();
    let mut p = run_pipeline(&pipeline, &w.path("data"), &w.path("follow.log"), &[], &[]);
    assert!(wait_until(Duration::from_secs(30), || delivered(&w).len() == 5), "{}", p.log());

    // logrotate's `create`: the new file takes the path. It is longer than what was read, so
    // its size alone does not give the rotation away.
    let next = w.path("in.next");
    std::fs::write(&next, lines("b", 0..12)).unwrap();
    std::fs::rename(&next, &input).unwrap();
    let all = [expected("a", 0..5), expected("b", 0..12)].concat();
    assert!(wait_until(Duration::from_secs(30), || delivered(&w) == all), "{:?}\n{}", delivered(&w), p.log());
    assert!(p.log().contains("file rotated or truncated"), "{}", p.log());
    p.signal(SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "{}", p.log());
}
