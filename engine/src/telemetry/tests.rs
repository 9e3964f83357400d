//! Unit tests of the telemetry module: per-event spans through the chain and the sink spans'
//! header hand-off, sampling at the source, and the export queue's accounting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor};

use super::export::{BatchConfig, BoundedBatchProcessor, ExportHealth};
use super::propagation::{self, TRACEPARENT};
use super::{Role, SinkSpans, SourceSpans, StageTelemetry, Telemetry};
use crate::ack::AckToken;
use crate::component::{Batch, Output, Transform};
use crate::event::{Event, Metadata};
use crate::runtime::{run_chain, ChainStage};

/// Keeps every finished span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collect {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn telemetry(sampler: Sampler) -> (Telemetry, Collect) {
    let collect = Collect::default();
    let provider =
        SdkTracerProvider::builder().with_span_processor(collect.clone()).with_sampler(sampler).build();
    (Telemetry::new(provider.tracer("test")), collect)
}

fn sampled_parent(trace: u128, span: u64) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

fn event(i: u64, parent: Option<(SpanContext, bool)>) -> Event {
    let mut meta = Metadata::from_source("src");
    if let Some((cx, sampled)) = parent {
        let flags = if sampled { "01" } else { "00" };
        let tp = format!("00-{}-{}-{flags}", cx.trace_id(), cx.span_id());
        meta.headers.push((TRACEPARENT.into(), Bytes::from(tp)));
    }
    Event::new(serde_json::json!({ "id": format!("doc-{i}") }), meta)
}

/// Emits a brand-new event (fresh metadata) for each input but the ones it rejects or drops.
struct Rebuild;

impl Transform for Rebuild {
    fn transform(&mut self, event: Event, out: &mut Output) {
        match event.value["id"].as_str() {
            Some("doc-1") => {} // dropped
            Some("doc-2") => out.reject(event, "no good"),
            _ => out.emit(Event::new(serde_json::json!({"rebuilt": true}), Metadata::default())),
        }
    }
}

#[test]
fn chain_spans_follow_sampled_events_and_move_their_headers() {
    let (t, collect) = telemetry(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let parent = sampled_parent(7, 9);
    let events = vec![
        event(0, Some((parent.clone(), true))),
        event(1, Some((parent.clone(), true))),
        event(2, Some((parent.clone(), true))),
        event(3, Some((sampled_parent(8, 10), false))),
        event(4, None),
    ];
    let mut batch = Batch::with_capacity(events.len());
    for e in events {
        batch.push(e, AckToken::untracked());
    }
    let mut stages = vec![ChainStage {
        id: "rebuild".into(),
        type_name: "rebuild".into(),
        transform: Box::new(Rebuild),
        metrics: None,
        telemetry: StageTelemetry::new(&t, "p", "rebuild", "rebuild", Role::Transform),
    }];
    let (out, rejected) = run_chain(&mut stages, batch).unwrap();

    let spans = collect.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 3, "one span per sampled input: {spans:#?}");
    assert!(spans.iter().all(|s| s.name == "transform.rebuild" && s.parent_span_id == parent.span_id()));
    let outcome = |s: &SpanData| {
        s.attributes.iter().find(|kv| kv.key.as_str() == "feedline.outcome").map(|kv| kv.value.to_string())
    };
    let mut outcomes: Vec<String> = spans.iter().filter_map(outcome).collect();
    outcomes.sort();
    assert_eq!(outcomes, ["dropped", "emitted", "rejected"]);

    // The rebuilt output of doc-0 carries its transform span; unsampled inputs' outputs carry
    // whatever they had (here: nothing, the transform dropped the metadata).
    assert_eq!(out.events.len(), 3);
    let traced = propagation::extract(&out.events[0].meta).expect("header moved to the output");
    assert_eq!(traced.trace_id(), parent.trace_id());
    assert!(spans.iter().any(|s| s.span_context.span_id() == traced.span_id()));
    assert!(propagation::extract(&out.events[1].meta).is_none());
    assert!(propagation::extract(&out.events[2].meta).is_none());
    let rejected_cx = propagation::extract(&rejected[0].event.meta).unwrap();
    assert!(
        spans.iter().any(|s| s.span_context.span_id() == rejected_cx.span_id()),
        "dead-letter continues it"
    );
}

#[test]
fn the_source_asks_the_sampler_and_leaves_unsampled_events_alone() {
    let (t, collect) = telemetry(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
    let stage = StageTelemetry::new(&t, "p", "in", "kafka", Role::Source);
    let parent = sampled_parent(7, 9);
    let mut events = vec![
        event(0, None),
        event(1, Some((parent.clone(), true))),
        event(2, Some((sampled_parent(8, 10), false))),
    ];
    let before = events.clone();
    let spans = SourceSpans::start(&stage, &mut events).expect("the sampled parent is followed");
    spans.end("sent");
    assert_eq!(events[0], before[0], "no context, root not sampled: untouched");
    assert_eq!(events[2], before[2], "unsampled parent: untouched");
    let moved = propagation::extract(&events[1].meta).unwrap();
    assert_eq!(moved.trace_id(), parent.trace_id());
    let spans = collect.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "source.kafka");
    assert_eq!(spans[0].span_kind, opentelemetry::trace::SpanKind::Consumer);
    assert_eq!(spans[0].span_context.span_id(), moved.span_id());

    // Tracing off: nothing at all.
    let off = StageTelemetry::new(&Telemetry::disabled(), "p", "in", "file", Role::Source);
    let mut events = vec![event(0, Some((parent, true)))];
    assert!(SourceSpans::start(&off, &mut events).is_none());
    assert!(SinkSpans::start(&off, &mut events).is_empty());
}

#[test]
fn roots_start_at_the_source_when_the_sampler_says_so() {
    let (t, collect) = telemetry(Sampler::AlwaysOn);
    let stage = StageTelemetry::new(&t, "p", "in", "file", Role::Source);
    let mut events = vec![event(0, None), event(1, None)];
    SourceSpans::start(&stage, &mut events).unwrap().end("sent");
    let spans = collect.0.lock().unwrap().clone();
    assert_eq!(spans.len(), 2);
    assert!(spans.iter().all(|s| s.parent_span_id == SpanId::INVALID));
    assert_ne!(spans[0].span_context.trace_id(), spans[1].span_context.trace_id(), "one trace per event");
    let doc = spans[0].attributes.iter().find(|kv| kv.key.as_str() == "feedline.document.id").unwrap();
    assert_eq!(doc.value.to_string(), "doc-0");
    assert!(events.iter().all(|e| propagation::is_sampled(&e.meta)));
}

#[test]
fn presampled_roots_are_sampled_as_the_sdk_would_and_only_those_are_built() {
    let collect = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collect.clone())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.05))))
        .with_id_generator(super::PresampledIds)
        .build();
    let t = Telemetry::new(provider.tracer("test")).with_root_ratio(0.05);
    let stage = StageTelemetry::new(&t, "p", "in", "file", Role::Source);
    let mut events: Vec<Event> = (0..20_000).map(|i| event(i, None)).collect();
    SourceSpans::start(&stage, &mut events).expect("some of 20,000 are sampled").end("sent");
    let spans = collect.0.lock().unwrap().clone();
    let traced = events.iter().filter(|e| propagation::is_sampled(&e.meta)).count();
    assert_eq!(spans.len(), traced, "every pre-sampled root was sampled by the SDK too");
    assert!((700..=1300).contains(&traced), "5% of 20,000 roots, got {traced}");
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(ids.len(), spans.len(), "one trace per event");
    // Events with a parent keep following it.
    let mut child = vec![event(0, Some((sampled_parent(7, 9), true)))];
    SourceSpans::start(&stage, &mut child).expect("followed").end("sent");
    assert_eq!(collect.0.lock().unwrap().last().unwrap().span_context.trace_id(), TraceId::from(7u128));
}

/// Counts exported spans; optionally fails or stalls.
#[derive(Debug, Clone, Default)]
struct Exporter {
    exported: Arc<Mutex<usize>>,
    fail: bool,
    stall: Option<Duration>,
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Some(d) = self.stall {
            tokio::time::sleep(d).await;
        }
        if self.fail {
            return Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure("down".into()));
        }
        *self.exported.lock().unwrap() += batch.len();
        Ok(())
    }
}

fn provider_with(exporter: Exporter, config: BatchConfig) -> (SdkTracerProvider, ExportHealth) {
    let health = ExportHealth::new();
    let processor = BoundedBatchProcessor::spawn(config, health.clone(), move || Ok(exporter)).unwrap();
    (SdkTracerProvider::builder().with_span_processor(processor).build(), health)
}

fn make_spans(provider: &SdkTracerProvider, n: usize) {
    use opentelemetry::trace::Tracer as _;
    let tracer = provider.tracer("t");
    for _ in 0..n {
        drop(tracer.start("s"));
    }
}

#[test]
fn exported_spans_are_counted_and_flushed_at_shutdown() {
    let exporter = Exporter::default();
    let config = BatchConfig { scheduled_delay: Duration::from_secs(60), ..BatchConfig::default() };
    let (provider, health) = provider_with(exporter.clone(), config);
    make_spans(&provider, 100);
    provider.shutdown().unwrap();
    assert_eq!(*exporter.exported.lock().unwrap(), 100);
    assert_eq!((health.exported(), health.dropped()), (100, 0));
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let exporter = Exporter { stall: Some(Duration::from_secs(30)), ..Exporter::default() };
    let config = BatchConfig {
        max_queue_size: 10,
        max_export_batch_size: 5,
        scheduled_delay: Duration::from_millis(10),
        export_timeout: Duration::from_millis(300),
    };
    let (provider, health) = provider_with(exporter, config);
    let started = std::time::Instant::now();
    make_spans(&provider, 1000);
    assert!(started.elapsed() < Duration::from_secs(1), "span creation never waits for the exporter");
    assert!(health.dropped() >= 1000 - 20, "dropped {}", health.dropped());
    let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
    assert_eq!(health.exported(), 0);
    assert_eq!(health.dropped(), 1000, "every span accounted for once the stalled exports time out");
}

#[test]
fn failed_exports_are_counted_as_dropped() {
    let exporter = Exporter { fail: true, ..Exporter::default() };
    let (provider, health) = provider_with(exporter, BatchConfig::default());
    make_spans(&provider, 42);
    provider.shutdown().unwrap();
    assert_eq!((health.exported(), health.dropped()), (0, 42));
    let registry = prometheus::Registry::new();
    health.register(&registry).unwrap();
    let text = {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(text.contains("feedline_otel_spans_dropped_total{reason=\"export_failed\"} 42"), "{text}");
}

/// Per-event cost of the tracing hooks at 1% sampling, without export (`cargo test --release -p
/// feedline-engine --lib hook_cost -- --ignored --nocapture`). A measurement, not a check.
#[test]
#[ignore]
fn hook_cost_at_one_percent() {
    let (t, _collect) = telemetry(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01))));
    let source = StageTelemetry::new(&t, "p", "gen", "generator", Role::Source);
    let transform = StageTelemetry::new(&t, "p", "x", "x", Role::Transform);
    let sink = StageTelemetry::new(&t, "p", "out", "blackhole", Role::Sink);
    let batch: Vec<Event> = (0..1000).map(|i| event(i, None)).collect();
    let rounds = 200;
    let mut best = [f64::MAX; 3];
    for _ in 0..5 {
        let mut spent = [Duration::ZERO; 3];
        for _ in 0..rounds {
            let mut events = batch.clone();
            let t0 = std::time::Instant::now();
            if let Some(s) = SourceSpans::start(&source, &mut events) {
                s.end("sent");
            }
            let t1 = std::time::Instant::now();
            let traced = super::TransformSpans::before(&transform, &events);
            let mut emitted: Vec<(usize, Event)> = events.iter().cloned().enumerate().collect();
            let t2 = std::time::Instant::now();
            if let Some(tr) = traced {
                tr.after(&transform, emitted.len(), &mut emitted, &mut []);
            }
            let t3 = std::time::Instant::now();
            let mut out: Vec<Event> = emitted.into_iter().map(|(_, e)| e).collect();
            let t4 = std::time::Instant::now();
            let mut spans = SinkSpans::start(&sink, &mut out);
            for i in 0..out.len() {
                super::sink_delivered(spans.take(i), 1);
            }
            let t5 = std::time::Instant::now();
            spent[0] += t1 - t0;
            spent[1] += (t2 - t1) + (t3 - t2);
            spent[2] += t5 - t4;
        }
        for k in 0..3 {
            best[k] = best[k].min(spent[k].as_nanos() as f64 / (rounds as f64 * 1000.0));
        }
    }
    eprintln!(
        "ns/event at 1%: source {:.0}, transform {:.0}, sink {:.0} (includes the sampled 1%'s spans)",
        best[0], best[1], best[2]
    );
}
