//! The three component traits (source, transform, sink) and the contexts the engine hands them.
//!
//! Components never see ack tokens except sources, which create them: transforms map events to
//! events and sinks report one outcome per event; the runtime resolves the tokens from that.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::AckToken;
use crate::checkpoint::CheckpointStore;
use crate::event::Event;
use crate::health::ComponentHealth;
use crate::metrics::ComponentMetrics;
use crate::telemetry::{SourceSpans, StageTelemetry};

/// What the engine should do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (network, 5xx, throttling): retry with backoff.
    Retriable,
    /// Permanent for this event (bad payload, 4xx): send it to the dead-letter sink.
    Reject,
    /// The pipeline cannot go on (bad credentials, missing resource): stop it.
    Fatal,
}

/// A classified component failure. The message must never contain secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ComponentError {
    /// Retry, reject or stop.
    pub class: ErrorClass,
    /// Human-readable reason; lands in logs and dead-letter records.
    pub message: String,
}

impl ComponentError {
    /// A transient failure worth retrying.
    pub fn retriable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Retriable, message: message.into() }
    }
    /// A permanent failure for this one event.
    pub fn reject(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Reject, message: message.into() }
    }
    /// A failure that stops the pipeline.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Fatal, message: message.into() }
    }
}

/// Events travelling together, each with the ack token for its source position.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events, in source order.
    pub events: Vec<Event>,
    /// `acks[i]` belongs to `events[i]`.
    pub acks: Vec<AckToken>,
}

impl Batch {
    /// An empty batch with room for `n` events.
    pub fn with_capacity(n: usize) -> Self {
        Self { events: Vec::with_capacity(n), acks: Vec::with_capacity(n) }
    }
    /// Append one event and its token.
    pub fn push(&mut self, event: Event, ack: AckToken) {
        self.events.push(event);
        self.acks.push(ack);
    }
    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// True when there are no events.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// A record the engine could not process, on its way to the dead-letter sink.
#[derive(Debug)]
pub struct Rejected {
    /// Stage that rejected it, e.g. `source.file`, `transform.invalidate_cache`, `sink.kafka`.
    pub stage: String,
    /// Why.
    pub error: String,
    /// The event as it was when rejected (for input that never became a value: key and
    /// metadata only, the bytes are in `original`).
    pub event: Event,
    /// The bytes as read, for input that never became an event value (not JSON, not UTF-8,
    /// too long); the envelope carries them as text or base64 instead of the event's value.
    pub original: Option<bytes::Bytes>,
    /// Its source position's token; acked once the dead-letter sink has it.
    pub ack: AckToken,
}

/// The channel ends and services the runtime gives a running source.
pub struct SourceContext {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// This source's component id.
    pub component_id: Arc<str>,
    /// Cancelled when the source must stop reading (shutdown); drain and commit after it.
    pub shutdown: CancellationToken,
    /// How long the source may wait for in-flight events after `shutdown` before it gives up.
    pub drain_timeout: Duration,
    /// Durable key/value store for positions, scoped to this pipeline and component.
    pub checkpoints: CheckpointStore,
    /// Counters for this component.
    pub metrics: ComponentMetrics,
    /// Directory of the pipeline file, for relative paths.
    pub base_dir: PathBuf,
    /// Where the source says whether it reaches its server: [`ComponentHealth::failed`] after
    /// each retriable failure to connect or read, [`ComponentHealth::succeeded`] when it answers.
    /// Failing for [`crate::health::DEFAULT_DEGRADED_AFTER`] makes the pipeline `degraded`.
    pub health: ComponentHealth,
    pub(crate) out: crate::runtime::downstream::Downstream,
    pub(crate) dead_letter: mpsc::Sender<Rejected>,
    pub(crate) telemetry: StageTelemetry,
}

/// The downstream stages are gone (the pipeline is stopping).
#[derive(Debug, thiserror::Error)]
#[error("pipeline is shutting down")]
pub struct Closed;

impl SourceContext {
    /// Hand a batch downstream: to the transform chain (run right here or on its own task, per
    /// [`Source::chain_placement`]) and then to every sink; waits while the next stage is full
    /// (backpressure).
    ///
    /// This is also where tracing starts: a `source.<type>` batch span covers the hand-off, and
    /// each event whose context the sampler keeps gets a per-event span (see
    /// [`crate::telemetry`]) whose `traceparent` it carries on.
    pub async fn send(&self, mut batch: Batch) -> Result<(), Closed> {
        use tracing::Instrument as _;
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len();
        self.metrics.events_in.inc_by(n as u64);
        self.metrics.events_out.inc_by(n as u64);
        let spans = SourceSpans::start(&self.telemetry, &mut batch.events);
        let span = self.telemetry.batch_span(n);
        let result = self.out.send(batch).instrument(span.clone()).await;
        let outcome = if result.is_ok() { "sent" } else { "closed" };
        span.record("feedline.outcome", outcome);
        if let Some(spans) = spans {
            spans.end(outcome);
        }
        result
    }

    /// A `checkpoint.commit` span for committing `position` of `partition`: enter it around the
    /// commit (`let _span = ctx.checkpoint_span("0", &offset).entered();`). Purely additive:
    /// sources that do not call it lose nothing but the span.
    pub fn checkpoint_span(&self, partition: &str, position: &dyn std::fmt::Display) -> tracing::Span {
        self.telemetry.checkpoint_span(partition, position)
    }

    /// Send a decoded record the source cannot use (a change without an id, say) to the
    /// dead-letter sink.
    pub async fn reject(&self, event: Event, error: String, ack: AckToken) -> Result<(), Closed> {
        self.send_rejected(event, None, error, ack).await
    }

    /// Send input that could not be decoded to the dead-letter sink with its original bytes
    /// (`event` carries the key and metadata; its value is ignored).
    pub async fn reject_raw(
        &self,
        original: bytes::Bytes,
        event: Event,
        error: String,
        ack: AckToken,
    ) -> Result<(), Closed> {
        self.send_rejected(event, Some(original), error, ack).await
    }

    async fn send_rejected(
        &self,
        event: Event,
        original: Option<bytes::Bytes>,
        error: String,
        ack: AckToken,
    ) -> Result<(), Closed> {
        self.metrics.events_in.inc();
        self.metrics.rejected.inc();
        let stage = format!("source.{}", self.component_id);
        self.dead_letter.send(Rejected { stage, error, event, original, ack }).await.map_err(|_| Closed)
    }

    /// Wait for shutdown, returning early is never needed: a helper for `select!`.
    pub async fn cancelled(&self) {
        self.shutdown.cancelled().await
    }
}

/// Reads from the outside world until shutdown.
#[async_trait]
pub trait Source: Send {
    /// Read, send batches, commit positions that became committable; on `ctx.shutdown`, stop
    /// reading, wait (at most `ctx.drain_timeout`) for in-flight events, commit, return.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError>;

    /// Where the transform chain should run for this source (see [`ChainPlacement`]).
    fn chain_placement(&self) -> ChainPlacement {
        ChainPlacement::OwnTask
    }
}

/// Where a pipeline's transform chain runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainPlacement {
    /// On a task of its own, fed through a channel: a source that is busy reading and parsing
    /// (a file, the generator) gets a second core for the transforms.
    OwnTask,
    /// Inside `SourceContext::send`, on the source's task: for sources that mostly wait on the
    /// network (Kafka, CouchDB, Cosmos DB), where one hop less and hot caches beat pipelining.
    SourceTask,
}

/// Where a transform puts its results.
#[derive(Debug, Default)]
pub struct Output {
    current: usize,
    pub(crate) emitted: Vec<(usize, Event)>,
    pub(crate) rejected: Vec<(usize, Event, String)>,
    pub(crate) failure: Option<String>,
}

impl Output {
    /// Emit an event derived from the current input.
    pub fn emit(&mut self, event: Event) {
        self.emitted.push((self.current, event));
    }
    /// Emit an event derived from input number `index` of the batch (batch transforms).
    pub fn emit_from(&mut self, index: usize, event: Event) {
        self.emitted.push((index, event));
    }
    /// The current input cannot be processed: send it to the dead-letter sink.
    pub fn reject(&mut self, event: Event, reason: impl Into<String>) {
        self.rejected.push((self.current, event, reason.into()));
    }
    /// Reject input number `index` of the batch (batch transforms).
    pub fn reject_from(&mut self, index: usize, event: Event, reason: impl Into<String>) {
        self.rejected.push((index, event, reason.into()));
    }
    /// The transform cannot go on at all (its runtime will not start, say): no input is at
    /// fault, so nothing is dead-lettered. The pipeline fails with `reason` (and is restarted
    /// per `--on-failure`); the batch stays unacknowledged and is read again.
    pub fn fail(&mut self, reason: impl Into<String>) {
        self.failure.get_or_insert_with(|| reason.into());
    }
    /// Select which input `emit`/`reject` refer to (used by the default batch loop).
    pub fn set_current(&mut self, index: usize) {
        self.current = index;
    }
    /// Events emitted so far (for tests of transforms).
    pub fn emitted(&self) -> impl Iterator<Item = &Event> {
        self.emitted.iter().map(|(_, e)| e)
    }
    /// Why the transform said it cannot go on, if it did (for tests of transforms).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }
    /// Rejections so far with their reasons (for tests of transforms).
    pub fn rejections(&self) -> impl Iterator<Item = (&Event, &str)> {
        self.rejected.iter().map(|(_, e, r)| (e, r.as_str()))
    }
}

/// Maps events to zero or more events, synchronously. An input that is neither emitted from nor
/// rejected is dropped on purpose (and counts as done).
pub trait Transform: Send {
    /// Process one event.
    fn transform(&mut self, event: Event, out: &mut Output);

    /// Process a batch; override to amortise per-call cost (WASM does).
    fn transform_batch(&mut self, events: Vec<Event>, out: &mut Output) {
        for (i, event) in events.into_iter().enumerate() {
            out.set_current(i);
            self.transform(event, out);
        }
    }
}

/// Outcome of writing one event.
pub type WriteResult = Result<(), ComponentError>;

/// Writes batches to the outside world.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Prepare the target (create a topic or database when configured). Called once before the
    /// source starts; a retriable error is retried with backoff.
    async fn start(&self) -> Result<(), ComponentError> {
        Ok(())
    }

    /// Write `events` durably; return one result per event, in order. May be called
    /// concurrently (up to the sink's `max_in_flight`).
    async fn write(&self, events: &[Event]) -> Vec<WriteResult>;

    /// Flush buffers before the pipeline stops.
    async fn stop(&self) {}
}

/// One result per event, all the same.
pub fn same_result(n: usize, result: WriteResult) -> Vec<WriteResult> {
    vec![result; n]
}
