//! The transform chain: events through each transform in order, tokens carried along.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::ack::AckToken;
use crate::component::{Batch, Output, Rejected, Transform};
use crate::metrics::ComponentMetrics;
use crate::telemetry::{record_error, StageTelemetry, TransformSpans};

/// A built transform with its id and counters.
pub struct ChainStage {
    /// Component id.
    pub id: String,
    /// Component type.
    pub type_name: String,
    /// The transform.
    pub transform: Box<dyn Transform>,
    /// Its counters.
    pub metrics: Option<ComponentMetrics>,
    /// Its span names and tracer (`StageTelemetry::default()`: untraced).
    pub telemetry: StageTelemetry,
}

/// A transform panicked (a bug, never an input problem) or declared it cannot go on
/// ([`Output::fail`]). The batch stays unacknowledged.
#[derive(Debug, thiserror::Error)]
#[error("transform `{id}` {}: {message}", if *.panicked { "panicked" } else { "failed" })]
pub struct TransformPanic {
    /// Which transform.
    pub id: String,
    /// The panic payload (if it was text) or the transform's reason.
    pub message: String,
    /// A panic, rather than [`Output::fail`].
    pub panicked: bool,
}

/// Run `batch` through every stage. Returns the surviving events and the rejections.
pub fn run_chain(
    stages: &mut [ChainStage],
    mut batch: Batch,
) -> Result<(Batch, Vec<Rejected>), TransformPanic> {
    let mut rejected = Vec::new();
    for stage in stages.iter_mut() {
        if batch.is_empty() {
            break;
        }
        let n = batch.len();
        let started = std::time::Instant::now();
        let mut out = Output::default();
        let events = std::mem::take(&mut batch.events);
        let traced = TransformSpans::before(&stage.telemetry, &events);
        let span = stage.telemetry.batch_span(n);
        let result = span.in_scope(|| {
            catch_unwind(AssertUnwindSafe(|| stage.transform.transform_batch(events, &mut out)))
        });
        if let Err(payload) = result {
            let message = super::panic_text(payload.as_ref());
            span.record("feedline.outcome", "panicked");
            record_error(&span, &message);
            return Err(TransformPanic { id: stage.id.clone(), message, panicked: true });
        }
        if let Some(message) = out.failure.take() {
            span.record("feedline.outcome", "failed");
            record_error(&span, &message);
            return Err(TransformPanic { id: stage.id.clone(), message, panicked: false });
        }
        if let Some(traced) = traced {
            traced.after(&stage.telemetry, n, &mut out.emitted, &mut out.rejected);
        }
        let acks = std::mem::take(&mut batch.acks);
        let mut touched = vec![false; n];
        let mut next = Batch::with_capacity(out.emitted.len());
        for (i, event) in out.emitted {
            if let Some(ack) = acks.get(i) {
                touched[i] = true;
                next.push(event, ack.clone());
            } else {
                tracing::error!(transform = %stage.id, index = i, "transform emitted from an input index outside the batch; output ignored");
            }
        }
        let stage_name = format!("transform.{}", stage.id);
        for (i, event, error) in out.rejected {
            if let Some(ack) = acks.get(i) {
                touched[i] = true;
                rejected.push(Rejected {
                    stage: stage_name.clone(),
                    error,
                    event,
                    original: None,
                    ack: ack.clone(),
                });
            }
        }
        let dropped = touched.iter().filter(|t| !**t).count();
        let stage_rejected = rejected.iter().filter(|r| r.stage == stage_name).count();
        span.record("feedline.outcome", "ok");
        span.record("feedline.events.out", next.len());
        span.record("feedline.events.dropped", dropped);
        span.record("feedline.events.rejected", stage_rejected);
        // Each input's own share is done: its outputs and rejections hold clones.
        acks.into_iter().for_each(AckToken::ack);
        if let Some(m) = &stage.metrics {
            m.events_in.inc_by(n as u64);
            m.events_out.inc_by(next.len() as u64);
            m.dropped.inc_by(dropped as u64);
            m.rejected.inc_by(stage_rejected as u64);
            m.batch_seconds.observe(started.elapsed().as_secs_f64());
        }
        batch = next;
    }
    Ok((batch, rejected))
}
