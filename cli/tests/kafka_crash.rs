//! Crash test on a real broker (tansu): `feedline` moves 200k records topic → topic and is
//! SIGKILLed at random points; after restarts every input record is in the output topic at least
//! once, the group's committed offsets reach the end of every partition, and duplicates are at
//! most what each killed run had delivered past its committed offsets.
//! Set `FEEDLINE_TEST_SEED` to repeat a run's kill points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kafka_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use feedline_testkit::tansu::Tansu;
use feedline_testkit::wait_until;
use kafka_support::*;

const RECORDS: u64 = 200_000;
const KILLS: usize = 5;

fn seq_of(r: &Record) -> u64 {
    r.json()["seq"].as_u64().unwrap()
}

#[test]
fn sigkill_at_random_points_loses_no_record_on_tansu() {
    let started = Instant::now();
    let mut rng = Rng::from_time();
    let broker = Tansu::start();
    let brokers = broker.brokers();
    broker.create_topic("crash-in", 4);
    broker.create_topic("crash-out", 4);
    let work = Workdir::new();
    let file =
        work.write("crash.toml", &topic_to_topic("kafka-crash", &brokers, "crash", "crash-in", "crash-out"));

    // The input is produced while the pipeline runs and is killed (one record per batch: see
    // kafka_support::produce_unbatched — restarts resume inside what would be a batch).
    let producer = std::thread::spawn({
        let brokers = brokers.clone();
        move || {
            produce_unbatched(
                &brokers,
                "crash-in",
                (0..RECORDS).map(|n| {
                    (Some(format!("k{n}")), Some(format!(r#"{{"seq":{n},"pad":"{:060}"}}"#, n).into_bytes()))
                }),
            )
        }
    });

    let mut kills = Vec::new();
    let mut duplicate_bound = 0u64;
    for round in 0..KILLS {
        let log = work.path(&format!("run{round}.log"));
        let mut f = run_feedline(&file, &work.path("data"), &log, &[]);
        // Kill while it moves records: a random moment after it got its partitions.
        let assigned = wait_until(Duration::from_secs(60), || f.log().contains("kafka partitions assigned"));
        assert!(assigned, "round {round}: no assignment; log:\n{}", f.log());
        let after = Duration::from_millis(rng.range(200, 3000));
        std::thread::sleep(after);
        assert!(f.running(), "round {round}: feedline exited early; log:\n{}", f.log());
        f.signal(9);
        f.wait_timeout(Duration::from_secs(10)).expect("killed process exits");
        kills.push(after);
        // The next run may re-deliver only what this one delivered past its committed offsets
        // (everything before them was delivered: at-least-once). Nothing writes the output now.
        let distinct: std::collections::HashSet<u64> =
            read_all(&brokers, &["crash-out"], Duration::from_secs(2), Duration::from_secs(60), |_| false)
                .iter()
                .map(seq_of)
                .collect();
        let committed: i64 = committed(&brokers, "crash", "crash-in", 4).values().filter(|o| **o >= 0).sum();
        duplicate_bound += (distinct.len() as u64).saturating_sub(committed as u64);
        eprintln!(
            "round {round}: SIGKILL {after:?} after assignment ({:?} into the test)",
            started.elapsed()
        );
    }
    let ends = producer.join().unwrap();

    // The last run finishes the job; then it is stopped gracefully.
    let mut last = run_feedline(&file, &work.path("data"), &work.path("final.log"), &[]);
    let out = read_all(&brokers, &["crash-out"], Duration::from_secs(3), Duration::from_secs(180), |r| {
        let mut seen = vec![false; RECORDS as usize];
        r.iter().for_each(|r| seen[seq_of(r) as usize] = true);
        seen.iter().all(|s| *s)
    });
    last.signal(15);
    let status = last.wait_timeout(Duration::from_secs(40));

    let mut counts: HashMap<u64, u32> = HashMap::new();
    for r in &out {
        *counts.entry(seq_of(r)).or_default() += 1;
    }
    let missing: Vec<u64> = (0..RECORDS).filter(|n| !counts.contains_key(n)).collect();
    let duplicates = out.len() as u64 - counts.len() as u64;
    let max_copies = counts.values().max().copied().unwrap_or(0);
    eprintln!(
        "crash test: {RECORDS} records, {KILLS} SIGKILLs at {kills:?} after assignment; output {} records, \
         {} distinct, {} missing, {duplicates} duplicates ({:.2}%, at most {max_copies} copies of one record); {:?}",
        out.len(),
        counts.len(),
        missing.len(),
        duplicates as f64 * 100.0 / RECORDS as f64,
        started.elapsed()
    );
    assert!(
        missing.is_empty(),
        "{} records lost (e.g. {:?}); final log:\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        last.log()
    );
    assert!(status.is_some_and(|s| s.success()), "final run did not stop cleanly; log:\n{}", last.log());
    let committed = committed(&brokers, "crash", "crash-in", 4);
    for (partition, end) in &ends {
        assert_eq!(
            committed.get(partition),
            Some(end),
            "partition {partition}: committed offsets reach the end"
        );
    }
    eprintln!("duplicate bound (delivered past the committed offsets at each kill): {duplicate_bound}");
    assert!(duplicates <= duplicate_bound, "{duplicates} duplicates, more than the bound {duplicate_bound}");
}
