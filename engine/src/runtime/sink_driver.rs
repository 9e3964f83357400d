//! Drives one sink: batching, bounded concurrency, rate cap, retries with backoff and jitter,
//! and the resolution of every event's ack token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::ack::AckToken;
use crate::component::{Batch, ErrorClass, Rejected, Sink, WriteResult};
use crate::config::{RetryOptions, SinkOptions};
use crate::event::Event;
use crate::health::ComponentHealth;
use crate::metrics::ComponentMetrics;
use crate::telemetry::{record_error, sink_delivered, sink_failed, sink_retry, SinkSpans, StageTelemetry};

/// Where a driver sends what it cannot deliver.
pub(crate) enum Fallback {
    /// Rejected events go to the dead-letter channel.
    DeadLetter(mpsc::Sender<Rejected>),
    /// This is the dead-letter sink: a rejection abandons the event (never lost, never acked).
    Abandon,
}

pub(crate) struct SinkDriver {
    pub stage: String,
    pub sink: Arc<dyn Sink>,
    pub options: SinkOptions,
    pub metrics: ComponentMetrics,
    pub fallback: Fallback,
    /// Cancelled on a fatal error; the pipeline stops.
    pub fatal: CancellationToken,
    pub fatal_reason: Arc<std::sync::Mutex<Option<String>>>,
    /// Span names and tracer: `sink.<type>` or `dead_letter`, per attempt and per traced event.
    pub telemetry: StageTelemetry,
    /// Told after every attempt whether anything got through (`degraded_after_ms`).
    pub health: ComponentHealth,
}

/// How one write attempt went, and what is left to retry.
#[derive(Default)]
struct Attempt {
    delivered: usize,
    rejected: usize,
    retry_events: Vec<Event>,
    retry_acks: Vec<AckToken>,
    retry_traced: SinkSpans,
    last_error: String,
}

struct RateLimiter {
    per_event: Duration,
    next: Instant,
}

impl RateLimiter {
    async fn wait(&mut self, n: usize) {
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep(self.next - now).await;
        }
        self.next = self.next.max(now) + self.per_event * n as u32;
    }
}

impl SinkDriver {
    /// Largest write: a rate cap keeps bursts to ~100 ms worth of events.
    fn max_events(&self) -> usize {
        let cap = self.options.batch.max_events;
        match self.options.rate_limit {
            Some(rate) => cap.min(((rate / 10.0).ceil() as usize).max(1)),
            None => cap,
        }
    }

    pub async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(this.options.max_in_flight));
        let mut limiter = this
            .options
            .rate_limit
            .map(|r| RateLimiter { per_event: Duration::from_secs_f64(1.0 / r), next: Instant::now() });
        let max = this.max_events();
        let linger = Duration::from_millis(this.options.batch.timeout_ms);
        let mut tasks = JoinSet::new();
        let mut pending = Batch::with_capacity(max);
        let mut open = true;
        while open || !pending.is_empty() {
            // Fill up to `max`. Once something is pending, take what is already queued; then
            // write at once if a write slot is free (an idle sink adds no latency), else wait
            // for more input until `linger` passes or a slot frees up — so batches grow exactly
            // when the sink is the bottleneck.
            let deadline = tokio::time::Instant::now() + linger;
            while open && pending.len() < max {
                let next = if pending.is_empty() {
                    rx.recv().await
                } else {
                    match rx.try_recv() {
                        Ok(b) => Some(b),
                        Err(mpsc::error::TryRecvError::Disconnected) => None,
                        Err(mpsc::error::TryRecvError::Empty) if permits.available_permits() > 0 => break,
                        Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                            b = rx.recv() => b,
                            _ = tokio::time::sleep_until(deadline) => break,
                            _ = permits.acquire() => break,
                        },
                    }
                };
                match next {
                    Some(b) => {
                        pending.events.extend(b.events);
                        pending.acks.extend(b.acks);
                    }
                    None => open = false,
                }
            }
            // The fill loop stopped: full, lingered long enough, or input closed. Flush it all.
            while !pending.is_empty() {
                let take = pending.len().min(max);
                let events: Vec<Event> = pending.events.drain(..take).collect();
                let acks: Vec<AckToken> = pending.acks.drain(..take).collect();
                if let Some(l) = limiter.as_mut() {
                    l.wait(events.len()).await;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                while let Some(joined) = tasks.try_join_next() {
                    this.write_ended(joined);
                }
                let this = this.clone();
                tasks.spawn(async move {
                    this.deliver(events, acks).await;
                    drop(permit);
                });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            this.write_ended(joined);
        }
        this.sink.stop().await;
    }

    pub(crate) fn fail(&self, reason: String) {
        super::fail_pipeline(&self.fatal, &self.fatal_reason, reason);
    }

    /// A panicking sink is a bug, not bad input: its batch stays unacknowledged (re-read after a
    /// restart) and the pipeline fails with the panic's message.
    fn write_ended(&self, joined: Result<(), tokio::task::JoinError>) {
        if let Some(message) = super::panic_of(joined) {
            tracing::error!(stage = %self.stage, panic = %message, "sink panicked; stopping the pipeline");
            self.fail(format!("{} panicked: {message}", self.stage));
        }
    }

    /// Write until every event is delivered, rejected, or given up on.
    async fn deliver(&self, mut events: Vec<Event>, mut acks: Vec<AckToken>) {
        let mut traced = SinkSpans::start(&self.telemetry, &mut events);
        let mut attempt: u32 = 0;
        loop {
            self.metrics.events_in.inc_by(if attempt == 0 { events.len() as u64 } else { 0 });
            let span = self.telemetry.batch_span(events.len());
            span.record("feedline.attempt", attempt + 1);
            let started = Instant::now();
            let results = self.sink.write(&events).instrument(span.clone()).await;
            self.metrics.batch_seconds.observe(started.elapsed().as_secs_f64());
            let Attempt { delivered, rejected, retry_events, retry_acks, mut retry_traced, last_error } =
                self.settle(events, acks, results, &mut traced, attempt).await;
            // Anything delivered means the target answers; an all-rejected write says nothing.
            if delivered > 0 {
                self.health.succeeded();
            } else if !retry_events.is_empty() {
                self.health.failed_since(&last_error, started);
            }
            span.record("feedline.events.delivered", delivered);
            span.record("feedline.events.rejected", rejected);
            span.record("feedline.events.retried", retry_events.len());
            if retry_events.is_empty() {
                span.record("feedline.outcome", if rejected == 0 { "delivered" } else { "partly_rejected" });
                return;
            }
            record_error(&span, &last_error);
            attempt += 1;
            if self.options.retry.max_attempts.is_some_and(|max| attempt >= max) {
                span.record("feedline.outcome", "gave_up");
                let reason = format!("gave up after {attempt} attempts: {last_error}");
                for (i, (event, ack)) in retry_events.into_iter().zip(retry_acks).enumerate() {
                    sink_failed(retry_traced.take(i), "gave_up", &reason, attempt);
                    self.reject(event, ack, reason.clone()).await;
                }
                return;
            }
            span.record("feedline.outcome", "retrying");
            self.metrics.retries.inc_by(retry_events.len() as u64);
            let wait = backoff(&self.options.retry, attempt);
            span.in_scope(|| {
                tracing::warn!(stage = %self.stage, attempt, events = retry_events.len(), error = %last_error, backoff_ms = wait.as_millis() as u64, "retrying write");
            });
            drop(span);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.fatal.cancelled() => {
                    // tokens abandoned: re-read after restart
                    retry_traced.end_all("abandoned", "the pipeline stopped during a retry");
                    return;
                }
            }
            events = retry_events;
            acks = retry_acks;
            traced = retry_traced;
        }
    }

    /// Resolve each event of one attempt by its result: delivered and rejected events are done,
    /// retriable ones are kept for the next attempt, a fatal one stops the pipeline.
    async fn settle(
        &self,
        events: Vec<Event>,
        acks: Vec<AckToken>,
        results: Vec<WriteResult>,
        traced: &mut SinkSpans,
        attempt: u32,
    ) -> Attempt {
        let mut out = Attempt::default();
        let mut results = results.into_iter();
        for (i, (event, ack)) in events.into_iter().zip(acks).enumerate() {
            let result = results.next().unwrap_or_else(|| {
                Err(crate::component::ComponentError::retriable("sink returned fewer results than events"))
            });
            let mut event_span = traced.take(i);
            match result {
                Ok(()) => {
                    self.metrics.events_out.inc();
                    ack.ack();
                    out.delivered += 1;
                    sink_delivered(event_span, attempt + 1);
                }
                Err(e) => match e.class {
                    ErrorClass::Retriable => {
                        sink_retry(&mut event_span, attempt + 1, &e.message);
                        out.last_error = e.message;
                        out.retry_traced.keep(out.retry_events.len(), event_span);
                        out.retry_events.push(event);
                        out.retry_acks.push(ack);
                    }
                    ErrorClass::Reject => {
                        out.rejected += 1;
                        sink_failed(event_span, "rejected", &e.message, attempt + 1);
                        self.reject(event, ack, e.message).await
                    }
                    ErrorClass::Fatal => {
                        tracing::error!(stage = %self.stage, error = %e.message, "fatal sink error; stopping the pipeline");
                        sink_failed(event_span, "failed", &e.message, attempt + 1);
                        self.fail(format!("{}: {}", self.stage, e.message));
                        drop(ack); // abandoned: it will be read again after a restart
                    }
                },
            }
        }
        out
    }

    async fn reject(&self, event: Event, ack: AckToken, error: String) {
        self.metrics.rejected.inc();
        match &self.fallback {
            Fallback::DeadLetter(tx) => {
                let r = Rejected { stage: self.stage.clone(), error, event, original: None, ack };
                if let Err(mpsc::error::SendError(r)) = tx.send(r).await {
                    tracing::error!(stage = %self.stage, error = %r.error, "dead-letter channel closed; event will be re-read after restart");
                }
            }
            Fallback::Abandon => self.write_truncated(event, ack, &error).await,
        }
    }
}

impl SinkDriver {
    /// The dead-letter sink refused an envelope (too large, most often): write it once more cut
    /// down to what identifies the event, so the source position still advances. Only if that
    /// is refused too does the event stay unacknowledged (re-read after a restart).
    async fn write_truncated(&self, envelope: Event, ack: AckToken, error: &str) {
        let Some(cut) = super::dead_letter::truncated(&envelope, error) else {
            tracing::error!(stage = %self.stage, %error, "the dead-letter sink rejected a record; it stays unacknowledged and will be re-read after restart");
            return drop(ack);
        };
        match self.sink.write(std::slice::from_ref(&cut)).await.pop() {
            Some(Ok(())) => {
                tracing::warn!(stage = %self.stage, %error, "the dead-letter sink refused an envelope; wrote it truncated (origin, error, size and sha256 kept)");
                self.metrics.poison.inc();
                ack.ack();
            }
            Some(Err(e)) => {
                tracing::error!(stage = %self.stage, %error, truncated_error = %e.message, "the dead-letter sink refused an envelope even truncated; it stays unacknowledged and will be re-read after restart");
                drop(ack);
            }
            None => drop(ack),
        }
    }
}

/// Exponential backoff with full jitter: uniform in [base/2, base], base doubling to the cap.
pub(crate) fn backoff(retry: &RetryOptions, attempt: u32) -> Duration {
    let base = retry.initial_backoff_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let capped = base.min(retry.max_backoff_ms).max(1);
    let ms = rand::rng().random_range(capped / 2..=capped);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let r = RetryOptions { initial_backoff_ms: 100, max_backoff_ms: 1000, max_attempts: None };
        for _ in 0..50 {
            let b1 = backoff(&r, 1).as_millis();
            let b3 = backoff(&r, 3).as_millis();
            let b10 = backoff(&r, 10).as_millis();
            assert!((50..=100).contains(&b1), "{b1}");
            assert!((200..=400).contains(&b3), "{b3}");
            assert!((500..=1000).contains(&b10), "{b10}");
        }
    }
}
