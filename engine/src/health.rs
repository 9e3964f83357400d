//! Pipeline states behind `/health` and `/ready`.
//!
//! A pipeline's state is its lifecycle (starting, running, stopped, failed, restarting), set by
//! the runtime, combined with the outages its components report through a [`ComponentHealth`]:
//! once every attempt of a component to reach the outside world has failed for longer than its
//! threshold (a sink's `degraded_after_ms`), a starting or running pipeline is `degraded`, until
//! one attempt succeeds. Retries go on regardless; `degraded` only tells the probes.
//!
//! Outages are judged when the state is read, not when a failure is reported, so a probe sees
//! `degraded` on time even while the component sleeps in a long backoff or a write hangs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long a component may fail before its pipeline is degraded, unless configured otherwise
/// (sinks: `degraded_after_ms`; sources report with this one).
pub const DEFAULT_DEGRADED_AFTER: Duration = Duration::from_secs(30);

/// A pipeline's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum PipelineState {
    /// Building components, starting sinks.
    Starting,
    /// Reading and delivering.
    Running,
    /// Starting or running, but a component has failed to reach the outside world for longer
    /// than its threshold; the reason names each such component and its last error.
    Degraded(String),
    /// Stopped after a shutdown request.
    Stopped,
    /// Stopped by a fatal error.
    Failed(String),
    /// Stopped by a fatal error; it will be started again after a backoff.
    Restarting(String),
}

/// One component's unbroken run of failed attempts.
#[derive(Debug)]
struct Outage {
    since: Instant,
    after: Duration,
    /// Secret-free: a `ComponentError` message.
    last_error: String,
    /// The warning for crossing `after` was logged.
    logged: bool,
}

impl Outage {
    fn degraded(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.after
    }
}

#[derive(Debug)]
struct Entry {
    /// The lifecycle state the runtime set.
    state: PipelineState,
    /// Counts starts, so a straggling component of an earlier run cannot degrade this one.
    run: u64,
    /// By component stage (`sink.out`, `source.kafka`).
    outages: BTreeMap<Arc<str>, Outage>,
}

impl Entry {
    fn state_at(&self, now: Instant) -> PipelineState {
        if !matches!(self.state, PipelineState::Starting | PipelineState::Running) {
            return self.state.clone();
        }
        let reasons: Vec<String> = self
            .outages
            .iter()
            .filter(|(_, o)| o.degraded(now))
            .map(|(component, o)| {
                let secs = now.saturating_duration_since(o.since).as_secs();
                format!("{component}: every attempt failed for {secs} s; last error: {}", o.last_error)
            })
            .collect();
        if reasons.is_empty() {
            self.state.clone()
        } else {
            PipelineState::Degraded(reasons.join("; "))
        }
    }
}

/// Shared table of pipeline states. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pipelines: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl Health {
    fn set(&self, name: &str, state: PipelineState) {
        let Ok(mut pipelines) = self.pipelines.lock() else { return };
        let entry = pipelines.entry(name.to_owned()).or_insert_with(|| Entry {
            state: PipelineState::Starting,
            run: 0,
            outages: BTreeMap::new(),
        });
        // Outages belong to one run's components; whatever else happens, they are over.
        if state != PipelineState::Running {
            entry.outages.clear();
        }
        if state == PipelineState::Starting {
            entry.run += 1;
        }
        entry.state = state;
    }
    /// Mark a pipeline as starting (expected, not yet ready): a new run, without outages.
    pub fn starting(&self, name: &str) {
        self.set(name, PipelineState::Starting)
    }
    /// Mark a pipeline as running.
    pub fn running(&self, name: &str) {
        self.set(name, PipelineState::Running)
    }
    /// Mark a pipeline as stopped.
    pub fn stopped(&self, name: &str) {
        self.set(name, PipelineState::Stopped)
    }
    /// Mark a pipeline as failed.
    pub fn failed(&self, name: &str, reason: &str) {
        self.set(name, PipelineState::Failed(reason.to_owned()))
    }
    /// Mark a failed pipeline as waiting for its restart.
    pub fn restarting(&self, name: &str, reason: &str) {
        self.set(name, PipelineState::Restarting(reason.to_owned()))
    }

    /// A handle for `component` (its stage name, e.g. `sink.out`) of the current run of
    /// `pipeline` to report its outages with; it degrades the pipeline after `after` of failures.
    pub fn component(&self, pipeline: &str, component: &str, after: Duration) -> ComponentHealth {
        let run = self.pipelines.lock().ok().and_then(|p| p.get(pipeline).map(|e| e.run)).unwrap_or(0);
        ComponentHealth {
            target: Some(Arc::new(Target {
                health: self.clone(),
                pipeline: pipeline.to_owned(),
                component: component.into(),
                after,
                run,
                failing: AtomicBool::new(false),
            })),
        }
    }

    /// False once a pipeline has failed for good (`/health` answers 503, so an orchestrator
    /// restarts the process); a pipeline waiting for its own restart, or degraded, keeps the
    /// process healthy (restarting it would not bring a broker back).
    pub fn healthy(&self) -> bool {
        self.pipelines
            .lock()
            .map(|s| !s.values().any(|e| matches!(e.state, PipelineState::Failed(_))))
            .unwrap_or(false)
    }
    /// True when every known pipeline is running and none is degraded.
    pub fn ready(&self) -> bool {
        self.ready_at(Instant::now())
    }
    fn ready_at(&self, now: Instant) -> bool {
        all_running(&self.snapshot_at(now))
    }
    /// Every pipeline's state.
    pub fn snapshot(&self) -> BTreeMap<String, PipelineState> {
        self.snapshot_at(Instant::now())
    }
    fn snapshot_at(&self, now: Instant) -> BTreeMap<String, PipelineState> {
        self.pipelines
            .lock()
            .map(|s| s.iter().map(|(name, e)| (name.clone(), e.state_at(now))).collect())
            .unwrap_or_default()
    }
}

/// The readiness rule on one snapshot: at least one pipeline, and every one `running`.
pub fn all_running(states: &BTreeMap<String, PipelineState>) -> bool {
    !states.is_empty() && states.values().all(|s| *s == PipelineState::Running)
}

/// Where a component reports whether it reaches the outside world (a sink its target, a source
/// its server). Cheap to clone; reporting a success while nothing is failing is one atomic load.
///
/// Call [`ComponentHealth::failed`] after each attempt that failed with a retriable error and
/// [`ComponentHealth::succeeded`] after each attempt that got through; attempts that end in a
/// per-event rejection report neither (the target answered).
#[derive(Debug, Clone, Default)]
pub struct ComponentHealth {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    health: Health,
    pipeline: String,
    component: Arc<str>,
    after: Duration,
    run: u64,
    /// Mirrors "this component has an outage", written under the table's lock.
    failing: AtomicBool,
}

impl ComponentHealth {
    /// A handle whose reports go nowhere (tests, benchmarks).
    pub fn detached() -> Self {
        Self::default()
    }

    /// An attempt failed with this retriable error (a `ComponentError` message: no secrets).
    pub fn failed(&self, error: &str) {
        let now = Instant::now();
        self.failed_at(error, now, now)
    }

    /// An attempt that began at `started` failed with this retriable error: an outage that starts
    /// here counts from `started` (a write that took its whole timeout to fail was failing all along).
    pub fn failed_since(&self, error: &str, started: Instant) {
        self.failed_at(error, started, Instant::now())
    }

    /// An attempt got through: the outage, if any, is over.
    pub fn succeeded(&self) {
        self.succeeded_at(Instant::now())
    }

    fn failed_at(&self, error: &str, started: Instant, now: Instant) {
        let Some(t) = &self.target else { return };
        t.with_outages(|outages| {
            let outage = outages.entry(t.component.clone()).or_insert_with(|| Outage {
                since: started.min(now),
                after: t.after,
                last_error: String::new(),
                logged: false,
            });
            error.clone_into(&mut outage.last_error);
            if !outage.logged && outage.degraded(now) {
                outage.logged = true;
                let failing_s = now.saturating_duration_since(outage.since).as_secs();
                tracing::warn!(pipeline = %t.pipeline, component = %t.component, failing_s, error, "every attempt has failed for longer than `degraded_after_ms`: the pipeline is degraded (still retrying)");
            }
            t.failing.store(true, Ordering::Release);
        });
    }

    fn succeeded_at(&self, now: Instant) {
        let Some(t) = &self.target else { return };
        if !t.failing.load(Ordering::Acquire) {
            return;
        }
        t.with_outages(|outages| {
            if let Some(outage) = outages.remove(&t.component) {
                if outage.degraded(now) {
                    let outage_s = now.saturating_duration_since(outage.since).as_secs();
                    tracing::info!(pipeline = %t.pipeline, component = %t.component, outage_s, "an attempt succeeded again: no longer degraded");
                }
            }
            t.failing.store(false, Ordering::Release);
        });
    }
}

impl Target {
    /// Run `f` on this run's outages; a report from an earlier run of the pipeline is dropped.
    fn with_outages(&self, f: impl FnOnce(&mut BTreeMap<Arc<str>, Outage>)) {
        let Ok(mut pipelines) = self.health.pipelines.lock() else { return };
        match pipelines.get_mut(&self.pipeline) {
            Some(entry) if entry.run == self.run => f(&mut entry.outages),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_pipeline_is_unhealthy_a_restarting_one_only_unready() {
        let h = Health::default();
        h.running("a");
        h.running("b");
        assert!(h.healthy() && h.ready());
        h.restarting("b", "sink down");
        assert!(h.healthy() && !h.ready());
        h.failed("b", "sink down");
        assert!(!h.healthy() && !h.ready());
        h.running("b");
        assert!(h.healthy() && h.ready());
    }

    fn degraded_reason(h: &Health, name: &str, now: Instant) -> Option<String> {
        match h.snapshot_at(now).remove(name) {
            Some(PipelineState::Degraded(reason)) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn failing_longer_than_the_threshold_degrades_and_one_success_recovers() {
        let h = Health::default();
        h.starting("p");
        let sink = h.component("p", "sink.out", Duration::from_secs(30));
        h.running("p");
        let t0 = Instant::now();
        sink.failed_at("connection refused", t0, t0);
        sink.failed_at("timed out", t0 + Duration::from_secs(20), t0 + Duration::from_secs(20));
        assert_eq!(h.snapshot_at(t0 + Duration::from_secs(29))["p"], PipelineState::Running);
        assert!(h.ready_at(t0 + Duration::from_secs(29)));
        // No new report needed: the probe judges the outage when it asks.
        let reason = degraded_reason(&h, "p", t0 + Duration::from_secs(31)).expect("degraded");
        assert!(reason.starts_with("sink.out: ") && reason.ends_with("last error: timed out"), "{reason}");
        assert!(!h.ready_at(t0 + Duration::from_secs(31)));
        assert!(h.healthy(), "degraded is not a reason to restart the process");
        sink.succeeded_at(t0 + Duration::from_secs(32));
        assert_eq!(h.snapshot_at(t0 + Duration::from_secs(40))["p"], PipelineState::Running);
        // A new outage counts from its own first failure.
        sink.failed_at("refused", t0 + Duration::from_secs(50), t0 + Duration::from_secs(50));
        assert!(h.ready_at(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn an_outage_counts_from_the_start_of_the_attempt_that_failed() {
        let h = Health::default();
        h.starting("p");
        let sink = h.component("p", "sink.out", Duration::from_secs(30));
        h.running("p");
        let t0 = Instant::now();
        // One write that hung for its whole 30 s timeout before failing.
        sink.failed_at("timed out", t0, t0 + Duration::from_secs(30));
        assert!(degraded_reason(&h, "p", t0 + Duration::from_secs(30)).is_some());
    }

    #[test]
    fn each_component_is_judged_on_its_own_and_named() {
        let h = Health::default();
        h.starting("p");
        let (a, b) = (
            h.component("p", "sink.a", Duration::from_secs(1)),
            h.component("p", "source.kafka", Duration::from_secs(10)),
        );
        h.running("p");
        let t0 = Instant::now();
        a.failed_at("a down", t0, t0);
        b.failed_at("b down", t0, t0);
        let reason = degraded_reason(&h, "p", t0 + Duration::from_secs(2)).unwrap();
        assert!(reason.contains("sink.a") && !reason.contains("source.kafka"), "{reason}");
        let reason = degraded_reason(&h, "p", t0 + Duration::from_secs(11)).unwrap();
        assert!(reason.contains("a down") && reason.contains("b down"), "{reason}");
        a.succeeded_at(t0 + Duration::from_secs(11));
        let reason = degraded_reason(&h, "p", t0 + Duration::from_secs(12)).unwrap();
        assert!(!reason.contains("sink.a"), "{reason}");
    }

    #[test]
    fn a_sink_that_cannot_start_degrades_a_starting_pipeline_and_lifecycle_states_win() {
        let h = Health::default();
        h.starting("p");
        let sink = h.component("p", "sink.out", Duration::ZERO);
        let now = Instant::now();
        sink.failed_at("refused", now, now);
        assert!(degraded_reason(&h, "p", now).is_some());
        h.failed("p", "fatal");
        assert_eq!(h.snapshot_at(now)["p"], PipelineState::Failed("fatal".into()));
        assert!(!h.healthy());
    }

    #[test]
    fn reports_of_an_earlier_run_or_a_detached_handle_change_nothing() {
        let h = Health::default();
        h.starting("p");
        let old = h.component("p", "sink.out", Duration::ZERO);
        h.restarting("p", "crashed");
        h.starting("p");
        h.running("p");
        let now = Instant::now();
        old.failed_at("refused", now, now);
        ComponentHealth::detached().failed_at("refused", now, now);
        assert_eq!(h.snapshot_at(now)["p"], PipelineState::Running);
        let json = serde_json::to_value(PipelineState::Degraded("sink.out: x".into())).unwrap();
        assert_eq!(json, serde_json::json!({"state": "degraded", "reason": "sink.out: x"}));
    }
}
