//! OpenTelemetry traces per pipeline stage. The model (documented for users in
//! `docs/observability.md`):
//!
//! - **Batch spans** — one `tracing` span per stage per batch: `source.<type>` (a batch handed
//!   downstream), `transform.<type>` (one transform over one batch), `sink.<type>` (one write
//!   attempt), `dead_letter` (one write attempt of the dead-letter sink) and `checkpoint.commit`
//!   (a hook sources call, [`crate::SourceContext::checkpoint_span`]). They carry pipeline,
//!   component id and type, batch size and outcome, are roots of their own traces and reach an
//!   exporter through whatever subscriber the binary installed (`tracing-opentelemetry`); log
//!   lines inside them (a retried write's warning) become span events.
//! - **Per-event spans** — for events whose trace context is sampled, one span per stage with the
//!   same names, created directly on the SDK tracer: a child of the event's context, whose
//!   `traceparent` header is then moved to the new span. One event's path is therefore a
//!   parent/child chain across stages and, through record headers, across processes. An event
//!   without a context gets a new trace at the source, decided by the configured sampler.
//!   Unsampled events cost one header check per stage (none at all when tracing is off).
//!
//! Where things live: [`propagation`] (W3C headers in event metadata), `event_spans` (the
//! per-event spans of each stage), [`export`] (a bounded, counting batch span processor and the
//! exporter's health metrics). The binary builds the exporter and hands [`Telemetry`] in.

mod event_spans;
pub mod export;
pub mod propagation;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, SdkTracer};

pub(crate) use event_spans::{
    sink_delivered, sink_failed, sink_retry, SinkSpans, SourceSpans, TransformSpans,
};

/// `tracing` target of the batch spans, for filters: `RUST_LOG=feedline::stage=off` hides them
/// from logs, and the binary's OpenTelemetry layer selects them by it.
pub const STAGE_TARGET: &str = "feedline::stage";

/// The process's tracing handle: off, or an SDK tracer whose provider the binary built.
/// Cheap to clone. `Default` is off.
#[derive(Clone, Default, Debug)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    root_ratio: Option<f64>,
}

impl Telemetry {
    /// Tracing off: no per-event work at all.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Per-event spans go to `tracer` (its provider's sampler decides which).
    pub fn new(tracer: SdkTracer) -> Self {
        Self { tracer: Some(tracer), root_ratio: None }
    }

    /// Declare that the provider's sampler samples a root span (no parent) exactly when its
    /// trace id passes OpenTelemetry's trace-id-ratio test at `ratio` (true of `always_on` = 1,
    /// `always_off` = 0, `traceidratio` and the `parentbased_*` forms of those), and that the
    /// provider draws trace ids with [`PresampledIds`]. Sources then draw a root's trace id
    /// themselves and build nothing for the events the sampler would drop — at 1% sampling
    /// most of the per-event cost of tracing.
    pub fn with_root_ratio(mut self, ratio: f64) -> Self {
        self.root_ratio = Some(ratio.clamp(0.0, 1.0));
        self
    }

    /// True when per-event spans are created.
    pub fn is_enabled(&self) -> bool {
        self.tracer.is_some()
    }
}

thread_local! {
    /// The trace id a source drew for the root span it is about to build on this thread.
    static PRESAMPLED_TRACE_ID: std::cell::Cell<Option<TraceId>> = const { std::cell::Cell::new(None) };
}

/// The provider's id generator when [`Telemetry::with_root_ratio`] is used: a root span gets
/// the trace id its source pre-sampled; everything else is random.
#[derive(Debug, Default)]
pub struct PresampledIds;

impl IdGenerator for PresampledIds {
    fn new_trace_id(&self) -> TraceId {
        PRESAMPLED_TRACE_ID.take().unwrap_or_else(event_spans::random_trace_id)
    }

    fn new_span_id(&self) -> SpanId {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return SpanId::from(id);
            }
        }
    }
}

/// What a stage is, for span names, kinds and attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `source.<type>`.
    Source,
    /// `transform.<type>`.
    Transform,
    /// `sink.<type>`.
    Sink,
    /// `dead_letter`.
    DeadLetter,
}

/// Names and tracer of one stage of one pipeline. `Default` is an anonymous stage with tracing
/// off (offline tests).
#[derive(Clone, Debug, Default)]
pub struct StageTelemetry {
    info: Arc<StageInfo>,
    tracer: Option<SdkTracer>,
    root_ratio: Option<f64>,
}

#[derive(Debug)]
pub(crate) struct StageInfo {
    /// Span name: `source.kafka`, `transform.remap`, `dead_letter`, ...
    pub name: &'static str,
    pub pipeline: Arc<str>,
    pub id: Arc<str>,
    pub type_name: Arc<str>,
    pub role: Role,
    pub kind: SpanKind,
    /// Kafka source or sink: add `messaging.*` attributes.
    pub kafka: bool,
}

impl Default for StageInfo {
    fn default() -> Self {
        Self {
            name: "stage",
            pipeline: "".into(),
            id: "".into(),
            type_name: "".into(),
            role: Role::Transform,
            kind: SpanKind::Internal,
            kafka: false,
        }
    }
}

impl StageTelemetry {
    /// The stage `id` (of component type `type_name`) of `pipeline`.
    pub fn new(telemetry: &Telemetry, pipeline: &str, id: &str, type_name: &str, role: Role) -> Self {
        let kafka = type_name == "kafka";
        let (name, kind) = match role {
            Role::Source => {
                (format!("source.{type_name}"), if kafka { SpanKind::Consumer } else { SpanKind::Internal })
            }
            Role::Transform => (format!("transform.{type_name}"), SpanKind::Internal),
            Role::Sink => {
                (format!("sink.{type_name}"), if kafka { SpanKind::Producer } else { SpanKind::Internal })
            }
            Role::DeadLetter => {
                ("dead_letter".to_owned(), if kafka { SpanKind::Producer } else { SpanKind::Internal })
            }
        };
        let info = StageInfo {
            name: intern(name),
            pipeline: pipeline.into(),
            id: id.into(),
            type_name: type_name.into(),
            role,
            kind,
            kafka,
        };
        Self { info: Arc::new(info), tracer: telemetry.tracer.clone(), root_ratio: telemetry.root_ratio }
    }

    /// The span name of this stage.
    pub fn name(&self) -> &'static str {
        self.info.name
    }

    /// True when per-event spans are created.
    pub fn is_enabled(&self) -> bool {
        self.tracer.is_some()
    }

    pub(crate) fn info(&self) -> &StageInfo {
        &self.info
    }

    pub(crate) fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    pub(crate) fn root_ratio(&self) -> Option<f64> {
        self.root_ratio
    }

    /// A batch span for this stage over `size` events; `feedline.outcome` (and for sinks
    /// `feedline.attempt`, `error.message`) are recorded by the caller.
    pub(crate) fn batch_span(&self, size: usize) -> tracing::Span {
        let i = &*self.info;
        let kind = kind_str(&i.kind);
        macro_rules! span {
            ($name:literal) => {
                tracing::info_span!(
                    target: STAGE_TARGET,
                    parent: None,
                    $name,
                    otel.name = i.name,
                    otel.kind = kind,
                    otel.status_code = tracing::field::Empty,
                    otel.status_message = tracing::field::Empty,
                    feedline.span.scope = "batch",
                    feedline.pipeline = &*i.pipeline,
                    feedline.component.id = &*i.id,
                    "feedline.component.type" = &*i.type_name,
                    feedline.batch.size = size,
                    feedline.outcome = tracing::field::Empty,
                    feedline.attempt = tracing::field::Empty,
                    feedline.events.delivered = tracing::field::Empty,
                    feedline.events.retried = tracing::field::Empty,
                    feedline.events.rejected = tracing::field::Empty,
                    feedline.events.dropped = tracing::field::Empty,
                    feedline.events.out = tracing::field::Empty,
                    messaging.system = if i.kafka { Some("kafka") } else { None },
                    error.message = tracing::field::Empty,
                )
            };
        }
        match i.role {
            Role::Source => span!("source"),
            Role::Transform => span!("transform"),
            Role::Sink => span!("sink"),
            Role::DeadLetter => span!("dead_letter"),
        }
    }

    /// A `checkpoint.commit` span for this (source) stage.
    pub(crate) fn checkpoint_span(&self, partition: &str, position: &dyn std::fmt::Display) -> tracing::Span {
        let i = &*self.info;
        tracing::info_span!(
            target: STAGE_TARGET,
            parent: None,
            "checkpoint.commit",
            feedline.span.scope = "batch",
            feedline.pipeline = &*i.pipeline,
            feedline.component.id = &*i.id,
            "feedline.component.type" = &*i.type_name,
            feedline.checkpoint.partition = partition,
            feedline.checkpoint.position = %position,
        )
    }
}

/// Mark `span` failed with `message` (OpenTelemetry status ERROR).
pub(crate) fn record_error(span: &tracing::Span, message: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", message);
    span.record("error.message", message);
}

fn kind_str(kind: &SpanKind) -> &'static str {
    match kind {
        SpanKind::Consumer => "consumer",
        SpanKind::Producer => "producer",
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Internal => "internal",
    }
}

/// Span names are `&'static str` so that building a span for a sampling decision allocates
/// nothing. Each distinct name is leaked once per process (a handful: one per component type).
fn intern(name: String) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let mut names = match names.lock() {
        Ok(n) => n,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(existing) = names.get(name.as_str()) {
        return existing;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests;
