//! Pipeline states behind `/health` and `/ready`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A pipeline's lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum PipelineState {
    /// Building components, starting sinks.
    Starting,
    /// Reading and delivering.
    Running,
    /// Stopped after a shutdown request.
    Stopped,
    /// Stopped by a fatal error.
    Failed(String),
    /// Stopped by a fatal error; it will be started again after a backoff.
    Restarting(String),
}

/// Shared table of pipeline states. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    states: Arc<Mutex<BTreeMap<String, PipelineState>>>,
}

impl Health {
    fn set(&self, name: &str, state: PipelineState) {
        if let Ok(mut s) = self.states.lock() {
            s.insert(name.to_owned(), state);
        }
    }
    /// Mark a pipeline as starting (expected, not yet ready).
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
    /// False once a pipeline has failed for good (`/health` answers 503, so an orchestrator
    /// restarts the process); a pipeline waiting for its own restart keeps the process healthy.
    pub fn healthy(&self) -> bool {
        self.states
            .lock()
            .map(|s| !s.values().any(|v| matches!(v, PipelineState::Failed(_))))
            .unwrap_or(false)
    }
    /// True when every known pipeline is running.
    pub fn ready(&self) -> bool {
        self.states
            .lock()
            .map(|s| !s.is_empty() && s.values().all(|v| *v == PipelineState::Running))
            .unwrap_or(false)
    }
    /// Every pipeline's state.
    pub fn snapshot(&self) -> BTreeMap<String, PipelineState> {
        self.states.lock().map(|s| s.clone()).unwrap_or_default()
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
}
