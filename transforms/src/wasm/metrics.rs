//! Per-module metrics, labelled by pipeline, component and module file name.
//!
//! Each transform registers its own collectors with constant labels. Building the same
//! component again against the same registry (e.g. `feedline test` builds per case) replaces
//! the previous collectors, so the registry never refuses and never double-counts.

use prometheus::core::Collector;
use prometheus::{Counter, IntCounter, IntCounterVec, Opts, Registry};

/// The counters of one `wasm` transform.
#[derive(Clone)]
pub struct WasmMetrics {
    /// Calls into the guest (batches and halves).
    pub calls: IntCounter,
    /// Records sent to the guest (retried records count again).
    pub records_in: IntCounter,
    /// Records the transform emitted.
    pub records_out: IntCounter,
    /// Records the guest returned an error for.
    pub errors: IntCounter,
    /// Calls that ended in a trap, by reason (`timeout`, `memory`, `panic`, `trap`, ...).
    pub traps: IntCounterVec,
    /// Fresh instances started to replace one that failed.
    pub restarts: IntCounter,
    /// Seconds spent inside guest calls.
    pub guest_seconds: Counter,
}

fn opts(name: &str, help: &str, labels: [(&str, &str); 3]) -> Opts {
    labels.iter().fold(Opts::new(name, help), |o, (k, v)| o.const_label(*k, *v))
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    if registry.register(Box::new(c.clone())).is_err() {
        // Same pipeline, component and module built again: the newest instance reports.
        let _ = registry.unregister(Box::new(c.clone()));
        if let Err(e) = registry.register(Box::new(c.clone())) {
            tracing::warn!(error = %e, "wasm metric not registered");
        }
    }
    c
}

impl WasmMetrics {
    /// Counters for `component` of `pipeline` running `module`, registered in `registry`.
    #[allow(clippy::expect_used)] // static names and label names: a failure is a programming error
    pub fn new(registry: &Registry, pipeline: &str, component: &str, module: &str) -> Self {
        let l = [("pipeline", pipeline), ("component", component), ("module", module)];
        let counter = |name: &str, help: &str| {
            register(registry, IntCounter::with_opts(opts(name, help, l)).expect("static metric definition"))
        };
        let traps = IntCounterVec::new(
            opts("feedline_wasm_traps_total", "Guest calls that trapped, by reason", l),
            &["reason"],
        )
        .expect("static metric definition");
        let seconds = Counter::with_opts(opts(
            "feedline_wasm_guest_seconds_total",
            "Seconds spent inside guest calls",
            l,
        ))
        .expect("static metric definition");
        Self {
            calls: counter("feedline_wasm_calls_total", "Calls into the guest (batches and halves)"),
            records_in: counter("feedline_wasm_records_in_total", "Records sent to the guest"),
            records_out: counter("feedline_wasm_records_out_total", "Records emitted after the guest"),
            errors: counter("feedline_wasm_record_errors_total", "Records the guest returned an error for"),
            restarts: counter(
                "feedline_wasm_restarts_total",
                "Guest instances started to replace one that failed",
            ),
            traps: register(registry, traps),
            guest_seconds: register(registry, seconds),
        }
    }
}
