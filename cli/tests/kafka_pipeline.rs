//! The shipped Kafka pipeline (`pipelines/kafka-activations.toml`) on a real broker (tansu):
//! 100k activation messages from `completed*` topics become 100k activation documents, none
//! lost; a topic created while it runs is picked up by the pattern; bad records reach the
//! dead-letter topic with their topic/partition/offset; SIGTERM drains and commits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kafka_support;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use feedline_connectors::generator::{render, Shape};
use feedline_testkit::tansu::Tansu;
use kafka_support::*;

const RECORDS: u64 = 100_000;
const LATE: u64 = 200;

fn activation(n: u64) -> (Option<String>, Option<Vec<u8>>) {
    (Some(format!("c{n}")), Some(render(Shape::Activation, n).into_bytes()))
}

fn activation_id(n: u64) -> String {
    format!("guest/{n:032x}")
}

#[test]
fn shipped_activation_pipeline_moves_100k_records_on_tansu_without_loss() {
    let started = Instant::now();
    let broker = Tansu::start();
    let brokers = broker.brokers();
    broker.create_topic("completed0", 4);
    broker.create_topic("completed-others", 2);
    broker.create_topic("xcompleted", 1); // does not match ^completed.*

    // One record per batch: tansu skips the rest of a batch when a fetch starts inside it, which
    // a rebalance (the late topic) or a paused partition does (see kafka_support::produce_unbatched).
    let ends0 = produce_unbatched(&brokers, "completed0", (0..70_000).map(activation));
    let mut others: Vec<_> = (70_000..RECORDS).map(activation).collect();
    others.push((Some("bad-json".into()), Some(b"{not json".to_vec())));
    others.push((Some("not-activation".into()), Some(br#"{"response":{"activationId":"x"}}"#.to_vec())));
    others.push((Some("tombstone".into()), None));
    others.push((Some("shrunk".into()), Some(br#"{"response":"0123","transid":["t",1]}"#.to_vec())));
    produce_unbatched(&brokers, "completed-others", others);
    produce(&brokers, "xcompleted", (900_000..900_010).map(activation));
    eprintln!("produced {RECORDS} records in {:?}", started.elapsed());

    let work = Workdir::new();
    let pipeline = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/kafka-activations.toml");
    let env = [
        ("KAFKA_HOSTS", brokers.as_str()),
        ("KAFKA_FETCH_WAIT_MS", "10"),
        ("ACTIVATIONS_GROUP", "it-activations"),
    ];
    let mut feedline = run_feedline(&pipeline, &work.path("data"), &work.path("feedline.log"), &env);
    let addr = listen_addr(&feedline, Duration::from_secs(30));
    let run_started = Instant::now();

    // A topic created while the pipeline runs is picked up by the pattern within seconds.
    assert!(
        feedline_testkit::wait_until(Duration::from_secs(30), || feedline
            .log()
            .contains("kafka partitions assigned")),
        "no assignment; log:\n{}",
        feedline.log()
    );
    broker.create_topic("completed-late", 1);
    produce(&brokers, "completed-late", (RECORDS..RECORDS + LATE).map(activation));

    let want: HashSet<String> = (0..RECORDS + LATE).map(activation_id).collect();
    let out = read_all(&brokers, &["activations"], Duration::from_secs(2), Duration::from_secs(150), |r| {
        r.len() as u64 >= RECORDS + LATE
            && r.iter().filter_map(|r| r.key.as_ref()).collect::<HashSet<_>>().len() as u64 >= RECORDS + LATE
    });
    let elapsed = run_started.elapsed();
    let seen: HashSet<String> = out.iter().filter_map(|r| r.key.clone()).collect();
    let missing: Vec<_> = want.difference(&seen).take(5).collect();
    if !missing.is_empty() {
        let m = http_get(&addr, "/metrics");
        let counters: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("feedline_events_") || l.starts_with("feedline_checkpoint_position"))
            .collect();
        let per_partition: std::collections::HashMap<(String, i32), usize> =
            out.iter().fold(Default::default(), |mut acc, r| {
                *acc.entry((r.topic.clone(), r.partition)).or_default() += 1;
                acc
            });
        panic!(
            "{} of {} activations missing (e.g. {missing:?}) after {elapsed:?}; read {} records {per_partition:?}\nmetrics:\n{}\nlog:\n{}",
            want.difference(&seen).count(),
            want.len(),
            out.len(),
            counters.join("\n"),
            feedline.log().lines().filter(|l| !l.contains("INFO")).collect::<Vec<_>>().join("\n")
        );
    }
    assert!(!seen.iter().any(|k| k == &activation_id(900_000)), "xcompleted must not match ^completed.*");
    let doc = out.iter().find(|r| r.key.as_deref() == Some(activation_id(7).as_str())).unwrap().json();
    assert_eq!(doc["_id"], activation_id(7));
    assert_eq!(doc["entityType"], "activation");
    eprintln!(
        "moved {} records ({} duplicates) in {elapsed:?}: {:.0} records/s",
        out.len(),
        out.len() - seen.len(),
        out.len() as f64 / elapsed.as_secs_f64()
    );

    // The bad record and the non-activation are dead-lettered with where they came from.
    let dead = read_all(
        &brokers,
        &["feedline-dead-letter"],
        Duration::from_millis(500),
        Duration::from_secs(30),
        |r| r.len() >= 2,
    );
    assert_eq!(dead.len(), 2, "{dead:?}");
    let bad =
        dead.iter().map(Record::json).find(|d| d["stage"] == "source.kafka").expect("undecodable record");
    assert_eq!(bad["origin"]["stream"], "completed-others");
    assert!(bad["origin"]["position"].as_i64().is_some(), "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("invalid JSON"), "{bad}");
    assert!(dead.iter().map(Record::json).any(|d| d["stage"].as_str().unwrap().starts_with("transform.")));

    // Lag and checkpoints are metrics.
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.contains(r#"partition="completed0/0""#), "{metrics}");
    assert!(
        metric_sum(&metrics, "feedline_checkpoint_commits_total", &[]) > 0.0,
        "{}",
        tail(&feedline.log())
    );
    assert!(feedline_testkit::wait_until(Duration::from_secs(15), || {
        http_get(&addr, "/metrics").contains("feedline_source_lag{")
    }));

    // SIGTERM: drain, commit, exit 0; the group's offsets are at the end of every partition.
    feedline.signal(15);
    let status = feedline.wait_timeout(Duration::from_secs(40)).expect("feedline exits after SIGTERM");
    assert!(status.success(), "exit {status:?}; log:\n{}", tail(&feedline.log()));
    let committed = committed(&brokers, "it-activations", "completed0", 4);
    for (p, end) in &ends0 {
        assert_eq!(committed.get(p), Some(end), "partition {p}: committed {committed:?}, ends {ends0:?}");
    }
    eprintln!("test took {:?}", started.elapsed());
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
