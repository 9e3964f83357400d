//! Rebalance test on a real broker (tansu): two `feedline` processes in one consumer group share
//! a 4-partition topic (cooperative-sticky), one is stopped, the other takes over its partitions,
//! and no record is lost while records keep arriving throughout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kafka_support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use feedline_testkit::tansu::Tansu;
use feedline_testkit::{wait_until, Feedline};
use kafka_support::*;

const RECORDS: u64 = 40_000;

/// The partitions a process holds according to its log (assignments minus revocations).
fn held(f: &Feedline) -> HashSet<String> {
    let log = f.log();
    let mut held = HashSet::new();
    for line in log.lines() {
        let Some((_, parts)) = line.split_once("partitions=") else { continue };
        let parts = parts.split(", ").map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
        if line.contains("kafka partitions assigned") {
            held.extend(parts);
        } else if line.contains("kafka partitions revoked") {
            parts.for_each(|p| {
                held.remove(&p);
            });
        }
    }
    held
}

fn source_events(addr: &str) -> f64 {
    metric_sum(&http_get(addr, "/metrics"), "feedline_events_out_total", &[r#"kind="source""#])
}

#[test]
fn two_processes_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    let started = Instant::now();
    let broker = Tansu::start();
    let brokers = broker.brokers();
    broker.create_topic("rb-in", 4);
    broker.create_topic("rb-out", 4);
    let work = Workdir::new();
    let file = work.write(
        "rebalance.toml",
        &topic_to_topic("kafka-rebalance", &brokers, "rebalance", "rb-in", "rb-out"),
    );

    // Records keep arriving during the whole test (one per batch: the new owner of a partition
    // resumes at a committed offset, see kafka_support::produce_unbatched).
    let producer = std::thread::spawn({
        let brokers = brokers.clone();
        move || {
            produce_unbatched(
                &brokers,
                "rb-in",
                (0..RECORDS).map(|n| (Some(format!("k{n}")), Some(format!(r#"{{"seq":{n}}}"#).into_bytes()))),
            )
        }
    });

    let mut a = run_feedline(&file, &work.path("a-data"), &work.path("a.log"), &[]);
    assert!(wait_until(Duration::from_secs(30), || held(&a).len() == 4), "a: {:?}\n{}", held(&a), a.log());
    let b = run_feedline(&file, &work.path("b-data"), &work.path("b.log"), &[]);
    let shared = wait_until(Duration::from_secs(60), || {
        let (ha, hb) = (held(&a), held(&b));
        ha.len() + hb.len() == 4 && !ha.is_empty() && !hb.is_empty() && ha.is_disjoint(&hb)
    });
    assert!(shared, "no sharing: a {:?} b {:?}\na:\n{}\nb:\n{}", held(&a), held(&b), a.log(), b.log());
    eprintln!("shared after {:?}: a {:?}, b {:?}", started.elapsed(), held(&a), held(&b));

    // Both do work.
    let (addr_a, addr_b) = (listen_addr(&a, Duration::from_secs(5)), listen_addr(&b, Duration::from_secs(5)));
    let (base_a, base_b) = (source_events(&addr_a), source_events(&addr_b));
    let both_work = wait_until(Duration::from_secs(30), || {
        source_events(&addr_a) > base_a && source_events(&addr_b) > base_b
    });
    assert!(both_work, "a read {} b read {}", source_events(&addr_a), source_events(&addr_b));

    // Stop one: the other takes all four partitions.
    let a_had = held(&a);
    a.signal(15);
    let status = a.wait_timeout(Duration::from_secs(40)).expect("a exits after SIGTERM");
    assert!(status.success(), "a: {status:?}\n{}", a.log());
    let took_over = wait_until(Duration::from_secs(60), || held(&b).len() == 4);
    assert!(took_over, "b holds {:?} after a stopped; b:\n{}", held(&b), b.log());
    eprintln!("b took over {a_had:?} after {:?}", started.elapsed());

    let ends = producer.join().unwrap();
    let out = read_all(&brokers, &["rb-out"], Duration::from_secs(2), Duration::from_secs(120), |r| {
        r.iter().map(|r| r.json()["seq"].as_u64().unwrap()).collect::<HashSet<_>>().len() as u64 >= RECORDS
    });
    let mut counts: HashMap<u64, u32> = HashMap::new();
    out.iter().for_each(|r| *counts.entry(r.json()["seq"].as_u64().unwrap()).or_default() += 1);
    let missing = (0..RECORDS).filter(|n| !counts.contains_key(n)).count();
    eprintln!(
        "rebalance: {RECORDS} records in, {} out, {} distinct, {missing} missing, {} duplicates, {:?}",
        out.len(),
        counts.len(),
        out.len() - counts.len(),
        started.elapsed()
    );
    assert_eq!(missing, 0, "records lost; b:\n{}", b.log());
    let total: i64 = ends.values().sum();
    assert_eq!(total as u64, RECORDS);
    drop(b);
}
