//! The delivery contract with the real binary: SIGKILL at random points loses nothing, rejected
//! input lands in the dead-letter file with its reason while checkpoints advance, SIGTERM drains
//! and commits, and the operations endpoint reports it all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use feedline_testkit::{wait_until, Feedline};
use serde_json::Value;

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_feedline"))
}

fn pipeline(dir: &Path, name: &str, input: &Path, output: &Path, follow: bool) -> std::path::PathBuf {
    let text = format!(
        r#"name = "{name}"
[source]
type = "file"
path = "{input}"
follow = {follow}
commit_interval_ms = 200
poll_interval_ms = 50

[[transforms]]
type = "drop_own_cluster"
cluster_id = "west"

[[transforms]]
type = "invalidate_cache"

[[sinks]]
type = "file"
path = "{output}"
"#,
        input = input.display(),
        output = output.display(),
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

fn change(n: u64) -> String {
    let cluster = if n.is_multiple_of(10) { "west" } else { "east" };
    format!(
        "{{\"id\":\"guest|action{n}\",\"_clusterId\":\"{cluster}\",\"n\":{n},\"pad\":\"{}\"}}\n",
        "x".repeat(40)
    )
}

/// mainId → times seen in the output.
fn delivered(output: &Path) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    for v in feedline_engine::jsonl::read_json_lines(output).unwrap() {
        if let Some(id) = v.pointer("/key/mainId").and_then(Value::as_str) {
            *seen.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn sigkill_at_random_points_loses_nothing() {
    const EVENTS: u64 = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for n in 0..EVENTS {
        f.write_all(change(n).as_bytes()).unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let file = pipeline(dir.path(), "crash", &input, &output, false);
    let data = dir.path().join("data");
    let args = ["run", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()];

    // Kill when the output reaches random fractions of its final size (~90 bytes a line).
    let expected_bytes = EVENTS * 9 / 10 * 64;
    let mut seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut fractions: Vec<f64> = (0..4)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            0.1 + (seed % 800) as f64 / 1000.0
        })
        .collect();
    fractions.sort_by(f64::total_cmp);
    println!("kill points (fractions of output): {fractions:?}");
    let mut kills_mid_run = 0;
    // The next run may re-deliver only what was delivered past the checkpoint at the kill.
    let mut duplicate_bound = 0u64;
    let input_text = std::fs::read(&input).unwrap();
    let checkpoint = data.join("crash/file/position.json");
    for (i, fraction) in fractions.iter().enumerate() {
        let mut p = Feedline::spawn(bin(), &args, &[], &dir.path().join(format!("run{i}.log")));
        let target = (expected_bytes as f64 * fraction) as u64;
        wait_until(Duration::from_secs(60), || file_len(&output) >= target || !p.running());
        if p.running() {
            p.signal(SIGKILL);
            kills_mid_run += 1;
        }
        p.wait_timeout(Duration::from_secs(10)).expect("killed process exits");
        let offset = std::fs::read(&checkpoint)
            .ok()
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap()["offset"].as_u64().unwrap())
            .unwrap_or(0) as usize;
        // Events are numbered by line: those before the checkpointed offset are done.
        let checkpointed = input_text[..offset].iter().filter(|b| **b == b'\n').count() as u64;
        duplicate_bound += delivered(&output)
            .keys()
            .filter_map(|id| id.strip_prefix("guest/action")?.parse::<u64>().ok())
            .filter(|n| *n >= checkpointed)
            .count() as u64;
    }
    let mut last = Feedline::spawn(bin(), &args, &[], &dir.path().join("final.log"));
    let status = last.wait_timeout(Duration::from_secs(120)).expect("final run finishes");
    assert!(status.success(), "final run failed:\n{}", last.log());
    assert!(kills_mid_run >= 3, "only {kills_mid_run} kills landed mid-run");
    let end: Value = serde_json::from_slice(&std::fs::read(&checkpoint).unwrap()).unwrap();
    assert_eq!(end["offset"].as_u64(), Some(file_len(&input)), "the checkpoint reaches the end of the input");

    let seen = delivered(&output);
    let mut missing = 0;
    let mut duplicates = 0u64;
    for n in 0..EVENTS {
        let id = format!("guest/action{n}");
        match (n.is_multiple_of(10), seen.get(&id)) {
            (true, Some(_)) => panic!("{id} came from this cluster and must be dropped"),
            (true, None) => {}
            (false, None) => missing += 1,
            (false, Some(c)) => duplicates += u64::from(*c - 1),
        }
    }
    println!("crash test: {kills_mid_run} SIGKILLs mid-run, {} distinct delivered, {duplicates} duplicates, {missing} missing", seen.len());
    assert_eq!(missing, 0, "events lost across SIGKILL");
    println!("duplicate bound (delivered past the checkpoint at each kill): {duplicate_bound}");
    assert!(
        duplicates <= duplicate_bound,
        "{duplicates} duplicates, more than the {duplicate_bound} delivered past the checkpoints"
    );
    assert_eq!(seen.len() as u64, EVENTS * 9 / 10);
}

#[test]
fn rejected_input_goes_to_dead_letter_and_checkpoints_advance() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let mut text = String::new();
    for n in 1..=50u64 {
        text.push_str(&change(n));
        if n % 10 == 5 {
            text.push_str("{not json at all\n");
            text.push_str("{\"name\":\"no id here\",\"_clusterId\":\"east\"}\n");
        }
    }
    std::fs::write(&input, &text).unwrap();
    let file = pipeline(dir.path(), "dlq", &input, &output, false);
    let data = dir.path().join("data");
    let mut p = Feedline::spawn(
        bin(),
        &["run", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        &[],
        &dir.path().join("log"),
    );
    let status = p.wait_timeout(Duration::from_secs(60)).expect("pipeline finishes");
    assert!(status.success(), "{}", p.log());

    let seen = delivered(&output);
    assert_eq!(seen.len(), 45, "50 changes minus 5 from this cluster");
    let dead = feedline_engine::jsonl::read_json_lines(&data.join("dlq/dead-letter.jsonl")).unwrap();
    assert_eq!(dead.len(), 10, "{dead:#?}");
    let from_source: Vec<&Value> = dead.iter().filter(|d| d["stage"] == "source.file").collect();
    let from_transform: Vec<&Value> =
        dead.iter().filter(|d| d["stage"] == "transform.invalidate_cache").collect();
    assert_eq!(from_source.len(), 5);
    assert_eq!(from_transform.len(), 5);
    for d in &from_source {
        assert!(d["error"].as_str().unwrap().starts_with("invalid JSON"), "{d}");
        assert_eq!(d["event"], "{not json at all");
        let at = d["origin"]["position"].as_u64().unwrap() as usize;
        assert!(text[at..].starts_with("{not json at all\n"), "position {at} points at the bad line");
        assert_eq!(d["pipeline"], "dlq");
    }
    for d in &from_transform {
        assert!(d["error"].as_str().unwrap().contains("id"), "{d}");
        assert_eq!(d["event"]["name"], "no id here");
    }
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(data.join("dlq/file/position.json")).unwrap()).unwrap();
    assert_eq!(checkpoint["offset"].as_u64().unwrap(), text.len() as u64, "checkpoint covers the whole file");
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let code = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body)
}

#[test]
fn sigterm_drains_commits_and_exits_zero_with_ops_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    std::fs::write(&input, (1..=100).map(change).collect::<String>()).unwrap();
    let file = pipeline(dir.path(), "follow", &input, &output, true);
    let data = dir.path().join("data");
    let args =
        ["run", file.to_str().unwrap(), "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let mut p = Feedline::spawn(bin(), &args, &[], &dir.path().join("log"));
    assert!(wait_until(Duration::from_secs(20), || p.log().contains("listening on")), "{}", p.log());
    let log = p.log();
    let addr = log.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();

    assert!(wait_until(Duration::from_secs(20), || delivered(&output).len() == 90));
    // Appended lines are picked up while following.
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    f.write_all((101..=200).map(change).collect::<String>().as_bytes()).unwrap();
    assert!(wait_until(Duration::from_secs(20), || delivered(&output).len() == 180), "{}", p.log());

    let (code, body) = http_get(&addr, "/ready");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&addr, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"follow\":{\"state\":\"running\"}"), "{body}");
    // The sink counts an event once its write returned, a moment after the line is in the file.
    let sink_line = "feedline_events_out_total{component=\"file\",kind=\"sink\",pipeline=\"follow\"} 180";
    assert!(wait_until(Duration::from_secs(5), || http_get(&addr, "/metrics").1.contains(sink_line)));
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    for line in [
        "feedline_events_in_total{component=\"file\",kind=\"source\",pipeline=\"follow\"} 200",
        "feedline_events_dropped_total{component=\"drop_own_cluster\",kind=\"transform\",pipeline=\"follow\"} 20",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert!(metrics.contains("feedline_batch_duration_seconds_bucket"), "{metrics}");

    let started = Instant::now();
    p.signal(SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(30)).expect("exits after SIGTERM");
    assert!(status.success(), "{}", p.log());
    println!("SIGTERM to exit: {:?}", started.elapsed());
    let checkpoint: Value =
        serde_json::from_slice(&std::fs::read(data.join("follow/file/position.json")).unwrap()).unwrap();
    assert_eq!(checkpoint["offset"].as_u64().unwrap(), file_len(&input));

    // A restart resumes from the checkpoint: nothing is delivered twice.
    // Positive evidence that the restarted process has read past everything before it: one new
    // line, appended after the checkpointed end, arrives.
    let mut again = Feedline::spawn(bin(), &args, &[], &dir.path().join("log2"));
    let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
    f.write_all(change(201).as_bytes()).unwrap();
    assert!(wait_until(Duration::from_secs(20), || delivered(&output).len() == 181), "{}", again.log());
    again.signal(SIGTERM);
    again.wait_timeout(Duration::from_secs(30)).expect("exits");
    let seen = delivered(&output);
    assert_eq!(seen.len(), 181);
    assert!(seen.values().all(|c| *c == 1), "a restart re-delivered events");
}
