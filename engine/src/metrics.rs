//! Prometheus metrics, labelled by pipeline and component.

use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The process-wide metric families. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

struct Families {
    registry: Registry,
    events_in: IntCounterVec,
    events_out: IntCounterVec,
    dropped: IntCounterVec,
    rejected: IntCounterVec,
    retries: IntCounterVec,
    poison: IntCounterVec,
    batch_seconds: HistogramVec,
    checkpoint_commits: IntCounterVec,
    checkpoint_position: IntGaugeVec,
    lag: IntGaugeVec,
    pending: IntGaugeVec,
    restarts: IntCounterVec,
}

const LABELS: &[&str] = &["pipeline", "component", "kind"];
const PARTITION_LABELS: &[&str] = &["pipeline", "component", "partition"];

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), LABELS).expect("static metric definition");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with Feedline's families.
    #[allow(clippy::expect_used)] // static definitions: a failure is a programming error
    pub fn new() -> Self {
        let registry = Registry::new();
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "feedline_batch_duration_seconds",
                "Time to process one batch in a stage (sinks: until every event is resolved)",
            )
            .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            LABELS,
        )
        .expect("static metric definition");
        registry.register(Box::new(batch_seconds.clone())).expect("metric registered once");
        let inner = Families {
            events_in: counter(&registry, "feedline_events_in_total", "Events a component received"),
            events_out: counter(
                &registry,
                "feedline_events_out_total",
                "Events a component emitted or delivered",
            ),
            dropped: counter(
                &registry,
                "feedline_events_dropped_total",
                "Events dropped on purpose (filters)",
            ),
            rejected: counter(
                &registry,
                "feedline_events_rejected_total",
                "Events sent to the dead-letter sink",
            ),
            retries: counter(
                &registry,
                "feedline_sink_retries_total",
                "Event writes retried after a retriable error",
            ),
            poison: counter(
                &registry,
                "feedline_poison_records_total",
                "Records that could never be processed as they were (an unparseable change line or \
                 page, an envelope the dead-letter sink refused): each was dead-lettered in the \
                 form Feedline has of it and its position advanced",
            ),
            checkpoint_commits: counter(
                &registry,
                "feedline_checkpoint_commits_total",
                "Checkpoints committed",
            ),
            checkpoint_position: gauge(
                &registry,
                "feedline_checkpoint_position",
                "Last committed numeric position",
                PARTITION_LABELS,
            ),
            lag: gauge(
                &registry,
                "feedline_source_lag",
                "Records behind the end of the partition (consumer lag, estimated change-feed lag)",
                PARTITION_LABELS,
            ),
            pending: gauge(
                &registry,
                "feedline_source_pending_events",
                "Events read and not yet done",
                &["pipeline", "component"],
            ),
            restarts: {
                let c = IntCounterVec::new(
                    Opts::new(
                        "feedline_pipeline_restarts_total",
                        "Restarts of a pipeline after a fatal error",
                    ),
                    &["pipeline"],
                )
                .expect("static metric definition");
                registry.register(Box::new(c.clone())).expect("metric registered once");
                c
            },
            batch_seconds,
            registry,
        };
        Self { inner: Arc::new(inner) }
    }

    /// Count one restart of `pipeline` after a fatal error.
    pub fn pipeline_restarted(&self, pipeline: &str) {
        self.inner.restarts.with_label_values(&[pipeline]).inc();
    }

    /// Counters for one component.
    pub fn component(&self, pipeline: &str, component: &str, kind: &str) -> ComponentMetrics {
        let l = [pipeline, component, kind];
        let f = &self.inner;
        ComponentMetrics {
            events_in: f.events_in.with_label_values(&l),
            events_out: f.events_out.with_label_values(&l),
            dropped: f.dropped.with_label_values(&l),
            rejected: f.rejected.with_label_values(&l),
            retries: f.retries.with_label_values(&l),
            poison: f.poison.with_label_values(&l),
            batch_seconds: f.batch_seconds.with_label_values(&l),
            checkpoint_commits: f.checkpoint_commits.with_label_values(&l),
            pending: f.pending.with_label_values(&[pipeline, component]),
            partition_gauges: PartitionGauges {
                pipeline: pipeline.into(),
                component: component.into(),
                position: f.checkpoint_position.clone(),
                lag: f.lag.clone(),
            },
        }
    }

    /// The Prometheus registry, for components that add families of their own.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Everything in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.inner.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Pre-labelled counters of one component.
#[derive(Clone)]
pub struct ComponentMetrics {
    /// Events received.
    pub events_in: IntCounter,
    /// Events emitted (transforms) or delivered (sinks).
    pub events_out: IntCounter,
    /// Events dropped on purpose.
    pub dropped: IntCounter,
    /// Events sent to the dead-letter sink.
    pub rejected: IntCounter,
    /// Retried writes.
    pub retries: IntCounter,
    /// Records dead-lettered in a reduced form so their position could advance (see
    /// `feedline_poison_records_total`).
    pub poison: IntCounter,
    /// Batch latency.
    pub batch_seconds: Histogram,
    /// Checkpoint commits.
    pub checkpoint_commits: IntCounter,
    /// Events read and not yet done (sources).
    pub pending: IntGauge,
    partition_gauges: PartitionGauges,
}

#[derive(Clone)]
struct PartitionGauges {
    pipeline: String,
    component: String,
    position: IntGaugeVec,
    lag: IntGaugeVec,
}

impl ComponentMetrics {
    /// Record a committed numeric position for a partition.
    pub fn set_checkpoint(&self, partition: &str, position: i64) {
        let g = &self.partition_gauges;
        g.position.with_label_values(&[&g.pipeline, &g.component, partition]).set(position);
    }
    /// Record the lag of a partition.
    pub fn set_lag(&self, partition: &str, lag: i64) {
        let g = &self.partition_gauges;
        g.lag.with_label_values(&[&g.pipeline, &g.component, partition]).set(lag);
    }
}
