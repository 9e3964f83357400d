//! Fault tests on librdkafka's mock cluster (in this process, real TCP on 127.0.0.1, fault
//! injection): every broker down for a while, request errors on produce, request errors on offset
//! commits. `feedline` (the real binary) moves every record anyway, recovers by itself, and its
//! committed offsets reach the end of the input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kafka_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use feedline_testkit::{wait_until, Feedline};
use kafka_support::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const RECORDS: u64 = 30_000;

struct Setup {
    mock: MockCluster<'static, DefaultProducerContext>,
    brokers: String,
    work: Workdir,
}

/// A 3-broker mock cluster with `in` and `out` (4 partitions, replication 3) and `RECORDS`
/// records in `in`; the sink's `message.timeout.ms` is short so that an outage also fails
/// deliveries and exercises the engine's retries, not only librdkafka's.
fn setup() -> Setup {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("in", 4, 3).unwrap();
    mock.create_topic("out", 4, 3).unwrap();
    let brokers = mock.bootstrap_servers();
    assert!(
        brokers.split(',').all(|b| b.starts_with("127.0.0.1:") || b.starts_with("localhost:")),
        "{brokers}"
    );
    produce(
        &brokers,
        "in",
        (0..RECORDS).map(|n| (Some(format!("k{n}")), Some(format!(r#"{{"seq":{n}}}"#).into_bytes()))),
    );
    Setup { mock, brokers, work: Workdir::new() }
}

fn start(s: &Setup, name: &str) -> Feedline {
    let text = format!(
        r#"name = "{name}"

[source]
type = "kafka"
brokers = "{b}"
group_id = "{name}"
topics = ["in"]
commit_interval_ms = 200

[source.librdkafka]
"fetch.wait.max.ms" = 10

[[sinks]]
type = "kafka"
brokers = "{b}"
topic = "out"
retry = {{ initial_backoff_ms = 50, max_backoff_ms = 1000 }}
# Slow enough (~8 s for the whole input) that every fault lands mid-run.
rate_limit = 4000

[sinks.librdkafka]
"message.timeout.ms" = 2000
"#,
        b = s.brokers
    );
    let file = s.work.write(&format!("{name}.toml"), &text);
    let f = run_feedline(&file, &s.work.path("data"), &s.work.path(&format!("{name}.log")), &[]);
    assert!(
        wait_until(Duration::from_secs(30), || f.log().contains("kafka partitions assigned")),
        "{}",
        f.log()
    );
    f
}

fn distinct(records: &[Record]) -> usize {
    records.iter().map(|r| r.json()["seq"].as_u64().unwrap()).collect::<HashSet<_>>().len()
}

/// Wait for `at_least` output records (a point mid-way through the run).
fn wait_for_output(brokers: &str, at_least: usize) {
    read_all(brokers, &["out"], Duration::ZERO, Duration::from_secs(60), |r| r.len() >= at_least);
}

/// Every input record arrives; the process is still running (it recovered by itself); SIGTERM
/// stops it cleanly with the group's offsets at the end of every partition.
fn finish(s: &Setup, mut f: Feedline, group: &str, started: Instant) {
    let out = read_all(&s.brokers, &["out"], Duration::from_secs(2), Duration::from_secs(120), |r| {
        distinct(r) as u64 >= RECORDS
    });
    assert_eq!(distinct(&out) as u64, RECORDS, "records lost; log:\n{}", f.log());
    assert!(f.running(), "feedline stopped instead of recovering; log:\n{}", f.log());
    f.signal(15);
    let status = f.wait_timeout(Duration::from_secs(40)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}; log:\n{}", f.log());
    let committed = committed(&s.brokers, group, "in", 4);
    let total: i64 = committed.values().sum();
    assert_eq!(total as u64, RECORDS, "committed offsets {committed:?} do not reach the end");
    eprintln!(
        "{group}: {} records out ({} duplicates), committed {committed:?}, {:?}",
        out.len(),
        out.len() - distinct(&out),
        started.elapsed()
    );
}

/// [`finish`], after checking the log shows the fault was noticed (`evidence`).
fn finish_with_evidence(s: &Setup, f: Feedline, group: &str, started: Instant, evidence: &str) {
    let noticed = wait_until(Duration::from_secs(30), || f.log().contains(evidence));
    assert!(noticed, "the fault did not show (`{evidence}` not logged); log:\n{}", f.log());
    finish(s, f, group, started);
}

#[test]
fn every_broker_down_for_a_while_then_back() {
    let started = Instant::now();
    let s = setup();
    let f = start(&s, "outage");
    wait_for_output(&s.brokers, 3_000);
    s.mock.broker_down(-1).unwrap();
    std::thread::sleep(Duration::from_secs(5)); // longer than the sink's message timeout
    s.mock.broker_up(-1).unwrap();
    finish_with_evidence(&s, f, "outage", started, "retrying write");
}

#[test]
fn request_errors_on_produce_are_retried() {
    let started = Instant::now();
    let s = setup();
    let f = start(&s, "produce-errors");
    wait_for_output(&s.brokers, 3_000);
    let errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        // Not retried by librdkafka: the delivery fails and the engine retries the event.
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION,
    ];
    let burst: Vec<RDKafkaRespErr> = errors.iter().cycle().take(40).copied().collect();
    s.mock.request_errors(RDKafkaApiKey::Produce, &burst);
    finish_with_evidence(&s, f, "produce-errors", started, "retrying write");
}

#[test]
fn request_errors_on_offset_commit_are_retried() {
    let started = Instant::now();
    let s = setup();
    let f = start(&s, "commit-errors");
    wait_for_output(&s.brokers, 3_000);
    let errors = [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
    ];
    let burst: Vec<RDKafkaRespErr> = errors.iter().cycle().take(30).copied().collect();
    s.mock.request_errors(RDKafkaApiKey::OffsetCommit, &burst);
    // Commits keep failing for a while; then they must catch up by themselves.
    finish_with_evidence(&s, f, "commit-errors", started, "offset commit failed");
}
