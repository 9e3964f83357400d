//! The `kafka` source: a consumer-group member that turns records into events and commits only
//! what is done.
//!
//! The loop reads records (one await for the first, then whatever is already fetched, up to
//! `batch_size`), registers each partition's newest offset in the batch with that partition's
//! [`Tracker`](feedline_engine::Tracker) and hands the batch downstream. When downstream does not
//! accept a batch for `pause_after_ms`, every partition is paused and the consumer keeps polling
//! (group membership, rebalances, commits) until it does: memory stays bounded and a long sink
//! outage never costs the group membership. On shutdown the source stops reading, waits for
//! in-flight events up to the drain timeout, commits synchronously and leaves the group.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use feedline_engine::{
    AckToken, Batch, ChainPlacement, Closed, ComponentError, Event, Source, SourceContext,
};
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaErrorCode;

use super::config::{redact_client_error, KafkaSourceConfig};
use super::decode::to_event;
use super::group::{describe, Commit, GroupContext, SharedAssignment};

type GroupConsumer = StreamConsumer<GroupContext>;

/// The running source.
pub struct KafkaSource {
    pub(super) config: KafkaSourceConfig,
}

#[async_trait]
impl Source for KafkaSource {
    /// Waits on librdkafka, not on CPU: transforming on this task saves a hop (the engine's
    /// `downstream` module has the figures).
    fn chain_placement(&self) -> ChainPlacement {
        ChainPlacement::SourceTask
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let state = SharedAssignment::default();
        let context = GroupContext {
            state: state.clone(),
            source: ctx.component_id.clone(),
            metrics: ctx.metrics.clone(),
            revoke_drain: Duration::from_millis(self.config.revoke_drain_ms),
            health: ctx.health.clone(),
        };
        let consumer = GroupConsumer::from_config_and_context(&self.config.client_config(), context)
            .map_err(|e| ComponentError::fatal(format!("kafka consumer: {}", redact_client_error(&e))))?;
        let consumer = Arc::new(consumer);
        let subscription = self.config.subscription();
        let topics: Vec<&str> = subscription.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ComponentError::fatal(format!("kafka subscribe {topics:?}: {e}")))?;
        tracing::info!(
            brokers = %self.config.brokers, group = %self.config.group_id, subscription = ?subscription,
            librdkafka = ?self.config.librdkafka, "kafka source started"
        );
        let result = {
            let mut reader = Reader::new(&self.config, &ctx, &consumer, state);
            let result = reader.read().await;
            reader.drain().await;
            reader.final_commit().await;
            result
        };
        // Leaving the group blocks until librdkafka is done; keep it off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(consumer)).await;
        tracing::info!(group = %self.config.group_id, "kafka source stopped");
        result
    }
}

/// A record read but not yet handed downstream.
struct Item {
    part_id: u64,
    offset: i64,
    event: Event,
    /// Why the value could not be decoded (the event then holds the raw text).
    undecodable: Option<super::decode::Undecodable>,
}

type CommitTask = tokio::task::JoinHandle<(Commit, KafkaResult<()>)>;

struct Reader<'a> {
    config: &'a KafkaSourceConfig,
    ctx: &'a SourceContext,
    /// Polled here: records borrow it, not the reader.
    consumer: &'a GroupConsumer,
    /// The same consumer, for commits on a blocking thread.
    shared: Arc<GroupConsumer>,
    state: SharedAssignment,
    pending: Vec<Item>,
    commit_tick: tokio::time::Interval,
    committing: Option<CommitTask>,
    warned: Option<Instant>,
}

impl<'a> Reader<'a> {
    fn new(
        config: &'a KafkaSourceConfig,
        ctx: &'a SourceContext,
        consumer: &'a Arc<GroupConsumer>,
        state: SharedAssignment,
    ) -> Self {
        let mut commit_tick = tokio::time::interval(Duration::from_millis(config.commit_interval_ms));
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Reader {
            config,
            ctx,
            consumer,
            shared: consumer.clone(),
            state,
            pending: Vec::new(),
            commit_tick,
            committing: None,
            warned: None,
        }
    }

    /// Read and forward until shutdown (or downstream is gone).
    async fn read(&mut self) -> Result<(), ComponentError> {
        loop {
            if self.pending.is_empty() {
                tokio::select! {
                    biased;
                    _ = self.ctx.cancelled() => return Ok(()),
                    _ = self.commit_tick.tick() => {
                        self.commit();
                        continue;
                    }
                    m = self.consumer.recv() => self.take(m)?,
                }
            }
            while self.pending.len() < self.config.batch_size {
                match poll_once(self.consumer.recv()) {
                    Some(m) => self.take(m)?,
                    None => break,
                }
            }
            if self.flush().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Accept one record (or consumer error) from a poll.
    fn take(&mut self, message: KafkaResult<BorrowedMessage<'_>>) -> Result<(), ComponentError> {
        let msg = match message {
            Ok(msg) => msg,
            Err(e) => return self.consumer_error(e),
        };
        let found = {
            let st = self.state.lock();
            st.part(msg.topic(), msg.partition()).map(|p| (p.id, p.origin.clone()))
        };
        // A record of a partition that is no longer ours: its new owner reads it.
        let Some((part_id, origin)) = found else { return Ok(()) };
        let (event, undecodable) = to_event(&msg, self.config.decoding, &origin);
        self.pending.push(Item { part_id, offset: msg.offset(), event, undecodable });
        Ok(())
    }

    fn consumer_error(&mut self, e: KafkaError) -> Result<(), ComponentError> {
        let fatal = match &e {
            KafkaError::MessageConsumptionFatal(_) => true,
            KafkaError::MessageConsumption(code) => matches!(
                code,
                RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::Authentication
            ),
            _ => false,
        };
        if fatal {
            return Err(ComponentError::fatal(format!("kafka consumer: {e}")));
        }
        if self.warned.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
            self.warned = Some(Instant::now());
            tracing::warn!(error = %e, "kafka consumer error (librdkafka retries by itself)");
        }
        Ok(())
    }

    /// Hand the pending records downstream: one tracked position per partition in the batch.
    async fn flush(&mut self) -> Result<(), Closed> {
        let items = std::mem::take(&mut self.pending);
        let (batch, rejects, owners) = self.assemble(items);
        for (event, undecodable, ack) in rejects {
            self.ctx.reject_raw(undecodable.original, event, undecodable.reason, ack).await?;
        }
        if !batch.is_empty() {
            self.send(batch).await?;
        }
        // Each partition's own share is done once its events are downstream.
        owners.into_iter().for_each(AckToken::ack);
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn assemble(
        &self,
        items: Vec<Item>,
    ) -> (Batch, Vec<(Event, super::decode::Undecodable, AckToken)>, Vec<AckToken>) {
        // Newest offset per partition instance in this batch (records arrive in offset order).
        let mut newest: Vec<(u64, i64)> = Vec::new();
        for item in &items {
            match newest.iter_mut().find(|(id, _)| *id == item.part_id) {
                Some(n) => n.1 = n.1.max(item.offset),
                None => newest.push((item.part_id, item.offset)),
            }
        }
        let mut tokens: Vec<(u64, AckToken)> = Vec::with_capacity(newest.len());
        {
            let st = self.state.lock();
            for (id, offset) in newest {
                // Revoked meanwhile (a rebalance ran during the batch): drop; the owner re-reads.
                if let Some(part) = st.parts().find(|p| p.id == id) {
                    tokens.push((id, part.tracker.track(offset)));
                }
            }
        }
        let mut batch = Batch::with_capacity(items.len());
        let mut rejects = Vec::new();
        for item in items {
            let Some((_, token)) = tokens.iter().find(|(id, _)| *id == item.part_id) else { continue };
            match item.undecodable {
                None => batch.push(item.event, token.clone()),
                Some(undecodable) => rejects.push((item.event, undecodable, token.clone())),
            }
        }
        (batch, rejects, tokens.into_iter().map(|(_, t)| t).collect())
    }

    /// Send a batch; pause every partition while downstream stalls, keep polling meanwhile.
    async fn send(&mut self, batch: Batch) -> Result<(), Closed> {
        let ctx = self.ctx;
        let mut send = pin!(ctx.send(batch));
        let mut stall = pin!(tokio::time::sleep(Duration::from_millis(self.config.pause_after_ms)));
        let mut paused = false;
        let mut give_up: Option<tokio::time::Instant> = None;
        loop {
            let deadline = give_up.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                sent = &mut send => {
                    if paused {
                        self.set_paused(false);
                    }
                    return sent;
                }
                _ = &mut stall, if !paused => {
                    paused = true;
                    self.set_paused(true);
                }
                _ = self.commit_tick.tick() => self.commit(),
                m = self.consumer.recv(), if paused => {
                    // Serves rebalances and commit results; records fetched before the pause
                    // took effect wait for the next batch.
                    let _ = self.take(m);
                }
                _ = ctx.cancelled(), if give_up.is_none() => {
                    give_up = Some(tokio::time::Instant::now() + ctx.drain_timeout);
                }
                _ = tokio::time::sleep_until(deadline), if give_up.is_some() => {
                    tracing::warn!("downstream did not accept a batch before the drain deadline; it will be read again");
                    return Err(Closed);
                }
            }
        }
    }

    fn set_paused(&self, paused: bool) {
        let assignment = match self.consumer.assignment() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the assignment to pause/resume it");
                return;
            }
        };
        self.state.lock().paused = paused;
        let result =
            if paused { self.consumer.pause(&assignment) } else { self.consumer.resume(&assignment) };
        match result {
            Ok(()) if paused => {
                tracing::info!(partitions = %describe(&assignment), "downstream is full; partitions paused")
            }
            Ok(()) => tracing::info!("downstream has room; partitions resumed"),
            Err(e) => tracing::warn!(error = %e, paused, "cannot pause/resume partitions"),
        }
    }

    /// Commit every partition's done run on a blocking thread (librdkafka only reports the
    /// result of a synchronous commit), at most one commit in flight; its result is collected
    /// on the next tick.
    fn commit(&mut self) {
        if let Some(task) = self.committing.take() {
            if !task.is_finished() {
                self.committing = Some(task);
                return;
            }
            match poll_once(task) {
                Some(Ok((commit, result))) => self.committed(&commit, result),
                Some(Err(e)) => tracing::warn!(error = %e, "offset commit task failed"),
                None => {}
            }
        }
        let (commit, pending) = {
            let mut st = self.state.lock();
            (st.commit_list(), st.pending())
        };
        self.ctx.metrics.pending.set(pending as i64);
        if commit.is_empty() {
            return;
        }
        let consumer = self.shared.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || {
            let result = consumer.commit(&commit.tpl, CommitMode::Sync);
            (commit, result)
        }));
    }

    fn committed(&mut self, commit: &Commit, result: KafkaResult<()>) {
        match result {
            Ok(()) => {
                self.state.lock().confirm(commit, &self.ctx.metrics);
                tracing::debug!(offsets = %describe(&commit.tpl), "offsets committed");
            }
            Err(e) => {
                if self.warned.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    self.warned = Some(Instant::now());
                    tracing::warn!(error = %e, "offset commit failed; retrying on the next tick");
                }
            }
        }
    }

    /// The last commit before leaving the group: wait for the one in flight, then commit what
    /// is done (each bounded: a broker that is down cannot hold the shutdown forever).
    async fn final_commit(&mut self) {
        self.await_commit().await; // the one in flight
        self.commit(); // everything done since
        self.await_commit().await;
        let parts: Vec<String> = self.state.lock().parts().map(|p| p.describe()).collect();
        tracing::info!(partitions = %parts.join(", "), "kafka source committed");
    }

    async fn await_commit(&mut self) {
        let Some(task) = self.committing.take() else { return };
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok((commit, result))) => self.committed(&commit, result),
            Ok(Err(e)) => tracing::warn!(error = %e, "offset commit task failed"),
            Err(_) => tracing::warn!(
                "offset commit did not finish in time; records after the last commit will be read again"
            ),
        }
    }

    /// Stop fetching, wait for in-flight events (bounded by the drain timeout), commit.
    async fn drain(&mut self) {
        self.pending.clear(); // never sent, never tracked: read again after a restart
        self.set_paused(true);
        let deadline = tokio::time::Instant::now() + self.ctx.drain_timeout;
        while !self.state.lock().drained() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(pending = self.state.lock().pending(), "drain deadline passed; in-flight records will be read again");
                    break;
                }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = self.commit_tick.tick() => self.commit(),
                _ = self.consumer.recv() => {} // serve callbacks; nothing new is read now
            }
        }
    }
}

/// Poll a future once without waiting: records librdkafka has already fetched.
fn poll_once<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_once_returns_ready_values_and_none_for_pending() {
        assert_eq!(poll_once(async { 5 }), Some(5));
        assert_eq!(poll_once(std::future::pending::<u8>()), None);
    }

    #[test]
    fn origins_are_cheap_to_clone() {
        use super::super::decode::Origin;
        let o = Origin { source: "k".into(), topic: "t".into(), partition: "0".into() };
        let c = o.clone();
        assert!(std::sync::Arc::ptr_eq(&o.topic, &c.topic));
    }
}
