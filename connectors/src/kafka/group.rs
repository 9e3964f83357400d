//! Consumer-group state: one [`Tracker`] per assigned partition, and the rdkafka context whose
//! callbacks keep it in step with rebalances and commits.
//!
//! Callbacks run inside the source task's consumer polls (never concurrently with it), so they
//! share the state through a plain mutex that is never held across an `await` or a poll.
//!
//! - **Assign**: a fresh tracker per partition (paused at once while the source is paused).
//! - **Revoke**: wait (at most `revoke_drain_ms`) for the revoked partitions' in-flight events,
//!   commit their unbroken done run synchronously, then forget them; events still in flight after
//!   that are read again by the new owner (at-least-once).
//! - **Commits** (from the source's timer, see `source`): confirmed offsets are recorded; failed
//!   ones are committed again on the next tick, because the done position is kept until the
//!   broker confirms it.
//! - **Statistics**: consumer lag per assigned partition becomes the `feedline_source_lag` gauge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use feedline_engine::health::ComponentHealth;
use feedline_engine::metrics::ComponentMetrics;
use feedline_engine::Tracker;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::decode::Origin;

/// One assigned partition.
pub struct Part {
    /// Unique per assignment, so events read before a revoke are not confused with a re-assign.
    pub id: u64,
    /// Strings shared by this partition's events.
    pub origin: Origin,
    /// Offsets in flight, in read order.
    pub tracker: Tracker<i64>,
    /// Newest offset of the unbroken done run (taken from the tracker, maybe not committed yet).
    done: Option<i64>,
    /// Last offset the broker confirmed as committed (the next offset to read).
    committed: Option<i64>,
    /// `topic/partition`, the metric label.
    label: String,
}

impl Part {
    /// The offset to commit (next to read) when it moved past the confirmed one.
    fn next_commit(&mut self) -> Option<i64> {
        if let Some(o) = self.tracker.take_committable() {
            self.done = Some(o);
        }
        let next = self.done? + 1;
        (self.committed != Some(next)).then_some(next)
    }
}

impl Part {
    /// `topic/partition@committed` for logs.
    pub fn describe(&self) -> String {
        match self.committed {
            Some(next) => format!("{}@{next}", self.label),
            None => format!("{}@-", self.label),
        }
    }
}

/// Everything the source knows about its assignment.
#[derive(Default)]
pub struct Assignment {
    parts: HashMap<String, HashMap<i32, Part>>,
    next_id: u64,
    /// Every partition is paused for backpressure; newly assigned ones are paused too.
    pub paused: bool,
    /// Bumped on every rebalance.
    pub epoch: u64,
}

impl Assignment {
    /// The partition, if assigned.
    pub fn part(&self, topic: &str, partition: i32) -> Option<&Part> {
        self.parts.get(topic)?.get(&partition)
    }

    /// Every assigned partition.
    pub fn parts(&self) -> impl Iterator<Item = &Part> {
        self.parts.values().flat_map(|m| m.values())
    }

    /// Events read and not yet done, over all partitions.
    pub fn pending(&self) -> usize {
        self.parts().map(|p| p.tracker.pending()).sum()
    }

    /// True when every partition's events are done (or some were abandoned: they cannot finish).
    pub fn drained(&self) -> bool {
        self.parts().all(|p| p.tracker.pending() == 0 || p.tracker.abandoned() > 0)
    }

    /// Offsets to commit now, for every partition whose done run moved.
    pub fn commit_list(&mut self) -> Commit {
        let mut commit = Commit::default();
        for (topic, parts) in &mut self.parts {
            for (partition, part) in parts.iter_mut() {
                if let Some(next) = part.next_commit() {
                    commit.add(topic, *partition, part.id, next);
                }
            }
        }
        commit
    }

    /// The broker confirmed `commit`: record it (for partitions still held by the same
    /// assignment) so it is not sent again.
    pub fn confirm(&mut self, commit: &Commit, metrics: &ComponentMetrics) {
        for (topic, partition, id, next) in &commit.items {
            let Some(part) = self.parts.get_mut(topic).and_then(|m| m.get_mut(partition)) else { continue };
            if part.id == *id {
                part.committed = Some(*next);
                metrics.set_checkpoint(&part.label, *next);
            }
        }
        metrics.checkpoint_commits.inc();
    }

    fn assign(&mut self, tpl: &TopicPartitionList, source: &Arc<str>) {
        for e in tpl.elements() {
            self.next_id += 1;
            let origin = Origin {
                source: source.clone(),
                topic: e.topic().into(),
                partition: e.partition().to_string().into(),
            };
            let part = Part {
                id: self.next_id,
                origin,
                tracker: Tracker::new(usize::MAX / 2),
                done: None,
                committed: None,
                label: format!("{}/{}", e.topic(), e.partition()),
            };
            self.parts.entry(e.topic().to_owned()).or_default().insert(e.partition(), part);
        }
    }

    /// Forget the partitions in `tpl`, returning the offsets still to commit for them.
    fn revoke(&mut self, tpl: &TopicPartitionList) -> Commit {
        let mut commit = Commit::default();
        for e in tpl.elements() {
            let Some(parts) = self.parts.get_mut(e.topic()) else { continue };
            if let Some(mut part) = parts.remove(&e.partition()) {
                if let Some(next) = part.next_commit() {
                    commit.add(e.topic(), e.partition(), part.id, next);
                }
            }
            if parts.is_empty() {
                self.parts.remove(e.topic());
            }
        }
        commit
    }
}

/// Offsets to commit (the next offset to read per partition), with the assignment they belong to.
#[derive(Default)]
pub struct Commit {
    /// What librdkafka sends.
    pub tpl: TopicPartitionList,
    items: Vec<(String, i32, u64, i64)>,
}

impl Commit {
    fn add(&mut self, topic: &str, partition: i32, id: u64, next: i64) {
        let _ = self.tpl.add_partition_offset(topic, partition, Offset::Offset(next));
        self.items.push((topic.to_owned(), partition, id, next));
    }

    /// Nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Shared handle to the assignment.
#[derive(Clone, Default)]
pub struct SharedAssignment(Arc<Mutex<Assignment>>);

impl SharedAssignment {
    /// Lock it (never across an await or a consumer poll).
    pub fn lock(&self) -> MutexGuard<'_, Assignment> {
        // Plain data; a panic elsewhere cannot leave it half-updated in a way that loses offsets.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The rdkafka context of the source's consumer.
pub struct GroupContext {
    /// The assignment.
    pub state: SharedAssignment,
    /// Source component id (event metadata).
    pub source: Arc<str>,
    /// Counters and gauges of the source.
    pub metrics: ComponentMetrics,
    /// How long a revocation may wait for the revoked partitions' in-flight events.
    pub revoke_drain: Duration,
    /// Told by every statistics report whether any broker is up, and by librdkafka's
    /// "all brokers down" error at once: unreachable for long enough, the pipeline is degraded.
    pub health: ComponentHealth,
}

impl GroupContext {
    /// Let the revoked partitions' in-flight events finish (bounded) so their commit covers them
    /// and the new owner re-reads as little as possible. This blocks the polling thread, which is
    /// what a rebalance callback is for: the group waits for this member anyway.
    fn drain_revoked(&self, tpl: &TopicPartitionList) {
        if self.revoke_drain.is_zero() {
            return;
        }
        let trackers: Vec<Tracker<i64>> = {
            let st = self.state.lock();
            tpl.elements()
                .iter()
                .filter_map(|e| st.part(e.topic(), e.partition()))
                .map(|p| p.tracker.clone())
                .collect()
        };
        let busy = |t: &Tracker<i64>| t.pending() > 0 && t.abandoned() == 0;
        let deadline = Instant::now() + self.revoke_drain;
        while trackers.iter().any(busy) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.health.failed(NO_BROKER_UP);
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(stats) = serde_json::from_slice::<Stats>(statistics) else { return };
        if stats.any_broker_up() {
            self.health.succeeded();
        } else {
            self.health.failed(NO_BROKER_UP);
        }
        let st = self.state.lock();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                let Ok(partition) = partition.parse::<i32>() else { continue };
                if let (Some(part), true) = (st.part(topic, partition), p.consumer_lag >= 0) {
                    self.metrics.set_lag(&part.label, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut st = self.state.lock();
                st.assign(tpl, &self.source);
                st.epoch += 1;
                if tpl.count() > 0 {
                    tracing::info!(partitions = %describe(tpl), "kafka partitions assigned");
                }
            }
            Rebalance::Revoke(tpl) => {
                if !consumer.assignment_lost() {
                    self.drain_revoked(tpl);
                }
                let commit = {
                    let mut st = self.state.lock();
                    st.epoch += 1;
                    st.revoke(tpl)
                };
                if tpl.count() > 0 {
                    tracing::info!(partitions = %describe(tpl), "kafka partitions revoked");
                }
                if commit.is_empty() {
                    return;
                }
                if consumer.assignment_lost() {
                    tracing::warn!("assignment lost; done offsets of revoked partitions are not committed (their records will be read again)");
                    return;
                }
                match consumer.commit(&commit.tpl, CommitMode::Sync) {
                    Ok(()) => {
                        self.metrics.checkpoint_commits.inc();
                        tracing::info!(offsets = %describe(&commit.tpl), "committed revoked partitions");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "commit on revocation failed; the new owner re-reads from the previous commit")
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if self.state.lock().paused && tpl.count() > 0 {
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                }
            }
        }
    }
}

/// `topic/partition@offset, ...` for logs.
pub fn describe(tpl: &TopicPartitionList) -> String {
    let items: Vec<String> = tpl
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => format!("{}/{}@{o}", e.topic(), e.partition()),
            _ => format!("{}/{}", e.topic(), e.partition()),
        })
        .collect();
    items.join(", ")
}

/// librdkafka's own log lines, at matching tracing levels (it redacts secret properties itself).
pub fn log_librdkafka(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}

/// What the source reports while librdkafka reaches no broker (no addresses: they are in the
/// log lines librdkafka writes itself).
const NO_BROKER_UP: &str = "no Kafka broker is reachable";

/// The part of librdkafka's statistics JSON the source reads.
#[derive(Deserialize)]
struct Stats {
    #[serde(default)]
    topics: HashMap<String, TopicStats>,
    /// By broker name, the bootstrap entries included.
    #[serde(default)]
    brokers: HashMap<String, BrokerStats>,
}

impl Stats {
    fn any_broker_up(&self) -> bool {
        self.brokers.values().any(|b| b.state == "UP")
    }
}

#[derive(Deserialize)]
struct BrokerStats {
    #[serde(default)]
    state: String,
}

#[derive(Deserialize)]
struct TopicStats {
    #[serde(default)]
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Deserialize)]
struct PartitionStats {
    #[serde(default = "unknown")]
    consumer_lag: i64,
}

fn unknown() -> i64 {
    -1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_say_whether_any_broker_is_up() {
        let down = br#"{"brokers":{"127.0.0.1:9/bootstrap":{"state":"CONNECT","nodeid":-1}},"topics":{}}"#;
        let up =
            br#"{"brokers":{"127.0.0.1:9/bootstrap":{"state":"DOWN"},"127.0.0.1:9092/1":{"state":"UP"}}}"#;
        assert!(!serde_json::from_slice::<Stats>(down).unwrap().any_broker_up());
        assert!(serde_json::from_slice::<Stats>(up).unwrap().any_broker_up());
        assert!(!serde_json::from_slice::<Stats>(b"{}").unwrap().any_broker_up());
    }

    fn tpl(parts: &[(&str, i32)]) -> TopicPartitionList {
        let mut t = TopicPartitionList::new();
        for (topic, p) in parts {
            t.add_partition(topic, *p);
        }
        t
    }

    fn offsets(c: &Commit) -> Vec<(String, i32, i64)> {
        let mut v: Vec<_> = c
            .tpl
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.topic().to_owned(), e.partition(), o)),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commits_the_next_offset_after_the_done_run_and_only_once_confirmed() {
        let metrics = feedline_engine::metrics::Metrics::new().component("p", "k", "source");
        let mut st = Assignment::default();
        st.assign(&tpl(&[("t", 0), ("t", 1)]), &"k".into());
        let p0 = st.part("t", 0).unwrap().tracker.clone();
        let a = p0.track(10);
        let b = p0.track(20);
        assert_eq!(offsets(&st.commit_list()), vec![], "nothing done yet");
        b.ack();
        assert_eq!(offsets(&st.commit_list()), vec![], "20 is done but 10 is not");
        a.ack();
        let list = st.commit_list();
        assert_eq!(offsets(&list), vec![("t".into(), 0, 21)]);
        assert_eq!(offsets(&st.commit_list()), vec![("t".into(), 0, 21)], "unconfirmed: commit again");
        st.confirm(&list, &metrics);
        assert_eq!(offsets(&st.commit_list()), vec![], "confirmed");
    }

    #[test]
    fn revoke_returns_pending_commits_and_forgets_the_partition() {
        let mut st = Assignment::default();
        st.assign(&tpl(&[("t", 0), ("t", 1)]), &"k".into());
        let first_id = st.part("t", 0).unwrap().id;
        st.part("t", 0).unwrap().tracker.track(5).ack();
        let in_flight = st.part("t", 1).unwrap().tracker.track(7);
        let commit = st.revoke(&tpl(&[("t", 0), ("t", 1)]));
        assert_eq!(offsets(&commit), vec![("t".into(), 0, 6)], "only the done partition");
        assert!(st.part("t", 0).is_none());
        assert!(st.drained());
        in_flight.ack(); // an old event finishing later touches nothing
        st.assign(&tpl(&[("t", 0)]), &"k".into());
        assert_ne!(st.part("t", 0).unwrap().id, first_id);
    }

    #[test]
    fn lag_comes_from_statistics_of_assigned_partitions() {
        let metrics = feedline_engine::metrics::Metrics::new();
        let ctx = GroupContext {
            state: SharedAssignment::default(),
            source: "k".into(),
            metrics: metrics.component("p", "k", "source"),
            revoke_drain: Duration::ZERO,
            health: ComponentHealth::detached(),
        };
        ctx.state.lock().assign(&tpl(&[("t", 0)]), &"k".into());
        ctx.stats_raw(br#"{"topics":{"t":{"partitions":{"0":{"consumer_lag":42},"1":{"consumer_lag":7},"-1":{"consumer_lag":-1}}}}}"#);
        let text = metrics.render();
        assert!(
            text.contains(r#"feedline_source_lag{component="k",partition="t/0",pipeline="p"} 42"#),
            "{text}"
        );
        assert!(!text.contains(r#"partition="t/1""#), "unassigned partitions are not reported");
    }
}
