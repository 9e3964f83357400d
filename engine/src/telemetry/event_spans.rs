//! Per-event spans: one per stage for each event whose trace context is sampled.
//!
//! The event's `traceparent` header names its latest span; each stage creates a child of it and
//! moves the header to the child. Nothing here runs when tracing is off, and an event with no
//! sampled context costs one look at its (usually empty) header list per stage.

use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceId, Tracer as _,
};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SdkTracer, ShouldSample, Span};

use super::propagation;
use super::{StageInfo, StageTelemetry};
use crate::event::Event;

/// Attributes every per-event span of `info` carries.
fn common(info: &StageInfo, batch_size: usize, extra: usize) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(6 + extra);
    attrs.push(KeyValue::new("feedline.span.scope", "event"));
    attrs.push(KeyValue::new("feedline.pipeline", Value::from(info.pipeline.clone())));
    attrs.push(KeyValue::new("feedline.component.id", Value::from(info.id.clone())));
    attrs.push(KeyValue::new("feedline.component.type", Value::from(info.type_name.clone())));
    attrs.push(KeyValue::new("feedline.batch.size", batch_size as i64));
    if info.kafka {
        attrs.push(KeyValue::new("messaging.system", "kafka"));
    }
    attrs
}

fn builder(info: &StageInfo) -> SpanBuilder {
    SpanBuilder::from_name(info.name).with_kind(info.kind.clone())
}

/// A random, valid (non-zero) trace id.
pub(super) fn random_trace_id() -> TraceId {
    loop {
        let id: u128 = rand::random();
        if id != 0 {
            return TraceId::from(id);
        }
    }
}

/// Whether the SDK's trace-id-ratio sampler keeps a root span with this id (asked, not
/// re-implemented, so the pre-sampling decision is the SDK's by construction).
fn ratio_samples(ratio: f64, trace_id: TraceId) -> bool {
    let result =
        Sampler::TraceIdRatioBased(ratio).should_sample(None, trace_id, "", &SpanKind::Internal, &[], &[]);
    result.decision == SamplingDecision::RecordAndSample
}

fn child(tracer: &SdkTracer, builder: SpanBuilder, parent: SpanContext) -> Span {
    tracer.build_with_context(builder, &Context::new().with_remote_span_context(parent))
}

/// The id of a document: the event key when it is text, else a top-level `_id` or `id`.
fn document_id(event: &Event) -> Option<String> {
    if let Some(k) = event.key_str() {
        return Some(k.to_owned());
    }
    ["_id", "id"].iter().find_map(|f| event.value.get(*f)).and_then(|v| v.as_str()).map(str::to_owned)
}

/// Attributes of a source span: where the event sits (OpenTelemetry messaging conventions for
/// Kafka: topic, partition, offset) and which document it is.
fn source_attributes(info: &StageInfo, event: &Event, batch_size: usize) -> Vec<KeyValue> {
    let mut attrs = common(info, batch_size, 6);
    let meta = &event.meta;
    if info.kafka {
        attrs.push(KeyValue::new("messaging.operation.type", "receive"));
        if let Some(topic) = &meta.stream {
            attrs.push(KeyValue::new("messaging.destination.name", Value::from(topic.clone())));
        }
        if let Some(p) = &meta.partition {
            attrs.push(KeyValue::new("messaging.destination.partition.id", Value::from(p.clone())));
        }
        if let Some(offset) = meta.position.as_ref().and_then(|p| p.as_i64()) {
            attrs.push(KeyValue::new("messaging.kafka.offset", offset));
        }
        if let Some(key) = event.key_str() {
            attrs.push(KeyValue::new("messaging.kafka.message.key", key.to_owned()));
        }
    } else {
        if let Some(stream) = &meta.stream {
            attrs.push(KeyValue::new("feedline.source.stream", Value::from(stream.clone())));
        }
        if let Some(p) = &meta.partition {
            attrs.push(KeyValue::new("feedline.source.partition", Value::from(p.clone())));
        }
        if let Some(id) = document_id(event) {
            attrs.push(KeyValue::new("feedline.document.id", id));
        }
    }
    if let Some(position) = &meta.position {
        let text = match position {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        attrs.push(KeyValue::new("feedline.source.position", text));
    }
    attrs
}

fn finish(mut span: Span, outcome: &'static str, error: Option<&str>, end: Option<SystemTime>) {
    span.set_attribute(KeyValue::new("feedline.outcome", outcome));
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.message", e.to_owned()));
        span.set_status(Status::error(e.to_owned()));
    }
    match end {
        Some(t) => span.end_with_timestamp(t),
        None => span.end(),
    }
}

/// The per-event spans of a source batch: started (and written into the events' headers) before
/// the hand-off, ended after it.
pub(crate) struct SourceSpans {
    spans: Vec<Span>,
}

impl SourceSpans {
    /// Ask the sampler about every event: a child of the event's own context when it has one
    /// (parent-based sampling), else a new root. `None` when tracing is off or nothing sampled.
    pub fn start(stage: &StageTelemetry, events: &mut [Event]) -> Option<Self> {
        let tracer = stage.tracer()?;
        let info = stage.info();
        let n = events.len();
        let mut spans = Vec::new();
        for event in events.iter_mut() {
            let parent = propagation::extract(&event.meta);
            let cx = match parent {
                Some(p) => Context::new().with_remote_span_context(p),
                None => {
                    if let Some(ratio) = stage.root_ratio() {
                        // Decide as the SDK's ratio sampler will, on a trace id drawn here, and
                        // build nothing for the events it would drop.
                        let trace_id = random_trace_id();
                        if !ratio_samples(ratio, trace_id) {
                            continue;
                        }
                        super::PRESAMPLED_TRACE_ID.set(Some(trace_id));
                    }
                    Context::new()
                }
            };
            let mut span = tracer.build_with_context(builder(info), &cx);
            super::PRESAMPLED_TRACE_ID.set(None);
            if !span.span_context().is_sampled() {
                continue; // unsampled: headers untouched, span dropped unrecorded
            }
            span.set_attributes(source_attributes(info, event, n));
            propagation::inject(&mut event.meta, span.span_context());
            spans.push(span);
        }
        (!spans.is_empty()).then_some(Self { spans })
    }

    /// End every span with the hand-off's outcome.
    pub fn end(self, outcome: &'static str) {
        let error = (outcome != "sent").then_some("the pipeline is shutting down");
        for span in self.spans {
            finish(span, outcome, error, None);
        }
    }
}

/// The sampled inputs of one transform over one batch, captured before it runs.
pub(crate) struct TransformSpans {
    /// `(input index, its context)`, ascending by index; only sampled inputs.
    parents: Vec<(usize, SpanContext)>,
    start: SystemTime,
}

impl TransformSpans {
    /// `None` when tracing is off or no input is sampled.
    pub fn before(stage: &StageTelemetry, events: &[Event]) -> Option<Self> {
        stage.tracer()?;
        let parents: Vec<(usize, SpanContext)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| propagation::is_sampled(&e.meta))
            .filter_map(|(i, e)| Some((i, propagation::extract(&e.meta)?)))
            .collect();
        (!parents.is_empty()).then(|| Self { parents, start: SystemTime::now() })
    }

    /// One span per sampled input (emitted n / dropped / rejected), and its outputs' and
    /// rejections' headers moved to it.
    pub fn after(
        self,
        stage: &StageTelemetry,
        batch_size: usize,
        emitted: &mut [(usize, Event)],
        rejected: &mut [(usize, Event, String)],
    ) {
        let Some(tracer) = stage.tracer() else { return };
        let info = stage.info();
        let end = SystemTime::now();
        let slot = |i: usize| self.parents.binary_search_by_key(&i, |(j, _)| *j).ok();
        let mut outputs = vec![0i64; self.parents.len()];
        for (i, _) in emitted.iter() {
            if let Some(k) = slot(*i) {
                outputs[k] += 1;
            }
        }
        let mut children: Vec<SpanContext> = Vec::with_capacity(self.parents.len());
        for (k, (i, parent)) in self.parents.iter().enumerate() {
            let mut attrs = common(info, batch_size, 2);
            attrs.push(KeyValue::new("feedline.events.out", outputs[k]));
            let b = builder(info).with_start_time(self.start).with_attributes(attrs);
            let span = child(tracer, b, parent.clone());
            children.push(span.span_context().clone());
            let error = rejected.iter().find(|(r, _, _)| r == i).map(|(_, _, e)| e.as_str());
            let outcome = match (error, outputs[k]) {
                (Some(_), _) => "rejected",
                (None, 0) => "dropped",
                (None, _) => "emitted",
            };
            finish(span, outcome, error, Some(end));
        }
        for (i, event) in emitted.iter_mut() {
            if let Some(k) = slot(*i) {
                propagation::inject(&mut event.meta, &children[k]);
            }
        }
        for (i, event, _) in rejected.iter_mut() {
            if let Some(k) = slot(*i) {
                propagation::inject(&mut event.meta, &children[k]);
            }
        }
    }
}

/// The per-event spans of one sink delivery (all attempts), by event index. Empty — and free —
/// when nothing in the batch is sampled.
#[derive(Default)]
pub(crate) struct SinkSpans {
    /// `(event index, span)`, ascending by index.
    spans: Vec<(usize, Option<Span>)>,
}

impl SinkSpans {
    /// Start a span for every sampled event and point its header at it, so a sink that writes
    /// headers (Kafka) hands the context on to the next process.
    pub fn start(stage: &StageTelemetry, events: &mut [Event]) -> Self {
        let Some(tracer) = stage.tracer() else { return Self::default() };
        let info = stage.info();
        let n = events.len();
        let mut spans = Vec::new();
        for (i, event) in events.iter_mut().enumerate() {
            if !propagation::is_sampled(&event.meta) {
                continue;
            }
            let Some(parent) = propagation::extract(&event.meta) else { continue };
            let mut attrs = common(info, n, 2);
            if info.kafka {
                attrs.push(KeyValue::new("messaging.operation.type", "send"));
                if let Some(route) = &event.meta.route {
                    attrs.push(KeyValue::new("messaging.destination.name", route.clone()));
                }
            }
            let span = child(tracer, builder(info).with_attributes(attrs), parent);
            propagation::inject(&mut event.meta, span.span_context());
            spans.push((i, Some(span)));
        }
        Self { spans }
    }

    /// The span of event `i`, if it is traced.
    pub fn take(&mut self, i: usize) -> Option<Span> {
        let k = self.spans.binary_search_by_key(&i, |(j, _)| *j).ok()?;
        self.spans[k].1.take()
    }

    /// Keep `span` as the span of event `i` of the next attempt (ascending `i`).
    pub fn keep(&mut self, i: usize, span: Option<Span>) {
        if span.is_some() {
            self.spans.push((i, span));
        }
    }

    /// True when no event of the delivery is traced.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// End every remaining span with `outcome`.
    pub fn end_all(&mut self, outcome: &'static str, error: &str) {
        for (_, span) in self.spans.drain(..) {
            if let Some(span) = span {
                finish(span, outcome, Some(error), None);
            }
        }
    }
}

/// Event `i` was written.
pub(crate) fn sink_delivered(span: Option<Span>, attempts: u32) {
    if let Some(mut s) = span {
        s.set_attribute(KeyValue::new("feedline.attempts", attempts as i64));
        finish(s, "delivered", None, None);
    }
}

/// Event `i` failed for good (`outcome`: rejected, failed, given_up).
pub(crate) fn sink_failed(span: Option<Span>, outcome: &'static str, error: &str, attempts: u32) {
    if let Some(mut s) = span {
        s.set_attribute(KeyValue::new("feedline.attempts", attempts as i64));
        finish(s, outcome, Some(error), None);
    }
}

/// A retriable failure of attempt `attempt`: a `retry` event with the error on the span.
pub(crate) fn sink_retry(span: &mut Option<Span>, attempt: u32, error: &str) {
    if let Some(s) = span {
        s.add_event(
            "retry",
            vec![
                KeyValue::new("feedline.attempt", attempt as i64),
                KeyValue::new("error.message", error.to_owned()),
            ],
        );
    }
}
