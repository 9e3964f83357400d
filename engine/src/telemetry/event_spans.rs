//! Per-event spans: one per stage for each event whose trace context is sampled.
//!
//! The event's `traceparent` header names its latest span; each stage creates a child of it and
//! moves the header to the child. Nothing here runs when tracing is off, and an event with no
//! sampled context costs one look at its (usually empty) header list per stage.

use std::time::SystemTime;

use opentelemetry::trace::{Span as _, SpanBuilder, SpanContext, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, Span};

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
                None => Context::new(),
            };
            let mut span = tracer.build_with_context(builder(info), &cx);
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
    parents: Vec<Option<SpanContext>>,
    start: SystemTime,
}

impl TransformSpans {
    /// `None` when tracing is off or no input is sampled.
    pub fn before(stage: &StageTelemetry, events: &[Event]) -> Option<Self> {
        stage.tracer()?;
        if !events.iter().any(|e| propagation::is_sampled(&e.meta)) {
            return None;
        }
        let parents =
            events.iter().map(|e| propagation::extract(&e.meta).filter(SpanContext::is_sampled)).collect();
        Some(Self { parents, start: SystemTime::now() })
    }

    /// One span per sampled input (emitted n / dropped / rejected), and its outputs' and
    /// rejections' headers moved to it.
    pub fn after(
        self,
        stage: &StageTelemetry,
        emitted: &mut [(usize, Event)],
        rejected: &mut [(usize, Event, String)],
    ) {
        let Some(tracer) = stage.tracer() else { return };
        let info = stage.info();
        let end = SystemTime::now();
        let n = self.parents.len();
        let mut outputs = vec![0i64; n];
        for (i, _) in emitted.iter() {
            if let Some(c) = outputs.get_mut(*i) {
                *c += 1;
            }
        }
        let mut children: Vec<Option<SpanContext>> = vec![None; n];
        for (i, parent) in self.parents.into_iter().enumerate() {
            let Some(parent) = parent else { continue };
            let mut attrs = common(info, n, 2);
            attrs.push(KeyValue::new("feedline.events.out", outputs[i]));
            let b = builder(info).with_start_time(self.start).with_attributes(attrs);
            let span = child(tracer, b, parent);
            children[i] = Some(span.span_context().clone());
            let error = rejected.iter().find(|(r, _, _)| *r == i).map(|(_, _, e)| e.as_str());
            let outcome = match (error, outputs[i]) {
                (Some(_), _) => "rejected",
                (None, 0) => "dropped",
                (None, _) => "emitted",
            };
            finish(span, outcome, error, Some(end));
        }
        for (i, event) in emitted.iter_mut() {
            if let Some(Some(cx)) = children.get(*i) {
                propagation::inject(&mut event.meta, cx);
            }
        }
        for (i, event, _) in rejected.iter_mut() {
            if let Some(Some(cx)) = children.get(*i) {
                propagation::inject(&mut event.meta, cx);
            }
        }
    }
}

/// The per-event spans of one sink delivery (all attempts), aligned with its events. Empty —
/// and free — when nothing in the batch is sampled.
#[derive(Default)]
pub(crate) struct SinkSpans {
    spans: Vec<Option<Span>>,
}

impl SinkSpans {
    /// Start a span for every sampled event and point its header at it, so a sink that writes
    /// headers (Kafka) hands the context on to the next process.
    pub fn start(stage: &StageTelemetry, events: &mut [Event]) -> Self {
        let Some(tracer) = stage.tracer() else { return Self::default() };
        if !events.iter().any(|e| propagation::is_sampled(&e.meta)) {
            return Self::default();
        }
        let info = stage.info();
        let n = events.len();
        let spans = events
            .iter_mut()
            .map(|event| {
                let parent = propagation::extract(&event.meta).filter(SpanContext::is_sampled)?;
                let mut attrs = common(info, n, 2);
                if info.kafka {
                    attrs.push(KeyValue::new("messaging.operation.type", "send"));
                    if let Some(route) = &event.meta.route {
                        attrs.push(KeyValue::new("messaging.destination.name", route.clone()));
                    }
                }
                let span = child(tracer, builder(info).with_attributes(attrs), parent);
                propagation::inject(&mut event.meta, span.span_context());
                Some(span)
            })
            .collect();
        Self { spans }
    }

    /// True when no event of the delivery is traced.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The span of event `i`, if it is traced.
    pub fn take(&mut self, i: usize) -> Option<Span> {
        self.spans.get_mut(i).and_then(Option::take)
    }

    /// Keep `span` for the next attempt (call once per retried event, in order).
    pub fn keep(&mut self, span: Option<Span>) {
        self.spans.push(span);
    }

    /// End every remaining span with `outcome`.
    pub fn end_all(&mut self, outcome: &'static str, error: &str) {
        for span in self.spans.drain(..).flatten() {
            finish(span, outcome, Some(error), None);
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
