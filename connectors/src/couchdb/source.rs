//! The `couchdb` changes source: follow `_changes`, batch rows into events, checkpoint the last
//! done `seq`.
//!
//! One tracker position per batch: the `seq` of its last row (for longpoll, the response's
//! `last_seq`, which also covers rows a filter left out). Only the unbroken run of done batches
//! is checkpointed, so a restart re-reads what was in flight and skips nothing.
//!
//! The feed is reopened from the last row *read* (not the last checkpoint) when the connection
//! fails, the server ends it, or nothing — not even a heartbeat — arrived for `read_timeout_ms`
//! (servers that ignore `timeout` keep dead feeds open forever). Reopening backs off
//! exponentially from `initial_backoff_ms` to `max_backoff_ms`. While downstream is full the
//! source stops reading the response, so the server's writes block: the feed is paused, not
//! buffered. Every retriable failure to read the checkpoint or keep the feed open is reported to
//! `ctx.health`, every successful open clears it: a server unreachable for longer than the
//! engine's threshold makes the pipeline `degraded` (`/ready` 503).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use feedline_engine::{
    Batch, ChainPlacement, Closed, ComponentError, ErrorClass, Event, Metadata, Source, SourceContext,
    Tracker,
};
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::checkpoint::{classify, Checkpoint};
use super::client::{error_of, Client};
use super::config::{CouchdbSourceConfig, Feed, StartFrom};
use super::feed::{parse_line, request, row_event, row_seq, seq_number, FeedItem, Line, RowEvent};
use crate::lines::{is_blank, oversized_reason, trim_newline, Line as RawLine, LineBuffer};

/// The running source.
pub struct ChangesSource {
    /// Its configuration.
    pub config: CouchdbSourceConfig,
    /// Client for the followed database.
    pub client: Client,
    /// Where the checkpoint lives.
    pub checkpoint: Checkpoint,
}

/// Why a feed request ended without an error.
enum Ended {
    /// Shutdown: stop reading.
    Stop,
    /// The server ended the response normally; ask again at once.
    Reopen,
}

/// Mutable state of one run.
struct Run<'a> {
    ctx: &'a SourceContext,
    tracker: Tracker<Value>,
    database: Arc<str>,
    /// The `seq` after the last row read (handed downstream).
    since: Value,
    /// A committable position not yet stored (the last store failed).
    unsaved: Option<Value>,
    last_commit: Instant,
}

impl ChangesSource {
    fn cfg(&self) -> &CouchdbSourceConfig {
        &self.config
    }

    /// Where to start: the checkpoint, or `start_from`.
    async fn initial_since(&mut self, ctx: &SourceContext) -> Result<Option<Value>, ComponentError> {
        let mut backoff = Backoff::new(self.cfg());
        loop {
            let attempt = match self.checkpoint.load(&self.client).await {
                Ok(Some(seq)) => {
                    tracing::info!(database = self.client.database(), checkpoint = %self.checkpoint.describe(), since = %seq, "resuming the changes feed from the checkpoint");
                    return Ok(Some(seq));
                }
                Ok(None) => self.start_position().await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(seq) => return Ok(Some(seq)),
                Err(e) if e.class == ErrorClass::Retriable => {
                    ctx.health.failed(&e.message);
                    tracing::warn!(database = self.client.database(), error = %e.message, "cannot read the checkpoint yet; retrying");
                    if !backoff.sleep(ctx).await {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_position(&self) -> Result<Value, ComponentError> {
        match self.cfg().start_from {
            StartFrom::Beginning => Ok(Value::from(0)),
            StartFrom::Now => {
                // Resolve "now" once, so a reconnect before the first change misses nothing.
                let url = self.client.db_url(&[]);
                let info: Value =
                    self.client.json(Method::GET, url, "GET database", None).await.map_err(classify)?;
                Ok(info.get("update_seq").cloned().unwrap_or(Value::from(0)))
            }
        }
    }

    /// Store what became committable (and what failed to store before).
    async fn commit(&mut self, run: &mut Run<'_>) {
        if let Some(p) = run.tracker.take_committable() {
            run.unsaved = Some(p);
        }
        run.last_commit = Instant::now();
        run.ctx.metrics.pending.set(run.tracker.pending() as i64);
        let Some(seq) = run.unsaved.clone() else { return };
        match self.checkpoint.store(&self.client, &seq).await {
            Ok(()) => {
                run.unsaved = None;
                run.ctx.metrics.checkpoint_commits.inc();
                if let Some(n) = seq_number(&seq) {
                    run.ctx.metrics.set_checkpoint(&run.database, n);
                }
                tracing::debug!(seq = %seq, "checkpoint stored");
            }
            Err(e) => tracing::warn!(error = %e.message, "cannot store the checkpoint; will retry"),
        }
    }

    async fn commit_if_due(&mut self, run: &mut Run<'_>) {
        if run.last_commit.elapsed() >= Duration::from_millis(self.cfg().commit_interval_ms) {
            self.commit(run).await;
        }
    }

    /// Hand `rows` downstream as one batch positioned at `position` (the last row's `seq`, or a
    /// longpoll `last_seq`; for poison lines alone, the current position).
    async fn flush(
        &self,
        run: &mut Run<'_>,
        rows: &mut Vec<FeedItem>,
        position: Option<Value>,
    ) -> Result<(), Closed> {
        let last_seq = || {
            rows.iter().rev().find_map(|item| match item {
                FeedItem::Row(row) => row_seq(row).cloned(),
                FeedItem::Poison { .. } => None,
            })
        };
        let has_poison = || rows.iter().any(|item| matches!(item, FeedItem::Poison { .. }));
        let Some(position) = position.or_else(last_seq).or_else(|| has_poison().then(|| run.since.clone()))
        else {
            rows.clear();
            return Ok(());
        };
        tokio::select! {
            _ = run.ctx.cancelled() => return Err(Closed),
            _ = run.tracker.wait_for_room() => {}
        }
        let token = run.tracker.track(position.clone());
        let mut batch = Batch::with_capacity(rows.len());
        for item in rows.drain(..) {
            let row = match item {
                FeedItem::Row(row) => row,
                FeedItem::Poison { original, reason } => {
                    tracing::warn!(database = %run.database, %reason, "unreadable _changes line; dead-lettered, the feed goes on");
                    run.ctx.metrics.poison.inc();
                    let meta = Metadata {
                        source: run.ctx.component_id.clone(),
                        stream: Some(run.database.clone()),
                        ..Metadata::default()
                    };
                    run.ctx
                        .reject_raw(original, Event::new(Value::Null, meta), reason, token.clone())
                        .await?;
                    continue;
                }
            };
            match row_event(row, &run.ctx.component_id, &run.database, self.cfg().skip_design_docs) {
                RowEvent::Event(event) => batch.push(event, token.clone()),
                RowEvent::Skip => {}
                RowEvent::Bad(event, reason) => run.ctx.reject(event, reason, token.clone()).await?,
            }
        }
        run.ctx.send(batch).await?;
        token.ack();
        run.since = position;
        Ok(())
    }

    /// Open the feed after `run.since`; the response, or a classified error.
    async fn open(&self, run: &Run<'_>) -> Result<reqwest::Response, ComponentError> {
        let req = request(&self.client, self.cfg(), &run.since);
        let resp = self
            .client
            .send("_changes", |http| match &req.body {
                Some(b) => {
                    http.post(req.url.clone()).header(CONTENT_TYPE, "application/json").body(b.clone())
                }
                None => http.get(req.url.clone()),
            })
            .await
            .map_err(classify)?;
        if !resp.status().is_success() {
            return Err(classify(error_of("_changes", resp).await));
        }
        Ok(resp)
    }

    /// Read one continuous feed response until it ends, fails or shutdown.
    async fn stream(
        &mut self,
        run: &mut Run<'_>,
        mut resp: reqwest::Response,
    ) -> Result<Ended, ComponentError> {
        let cfg = self.cfg().clone();
        let read_timeout = Duration::from_millis(cfg.read_timeout_ms);
        let linger = Duration::from_millis(cfg.batch_timeout_ms);
        let commit_every = Duration::from_millis(cfg.commit_interval_ms);
        let mut lines = LineBuffer::new(cfg.max_line_bytes);
        let mut rows: Vec<FeedItem> = Vec::new();
        let mut last_data = Instant::now();
        let mut first_row: Option<Instant> = None;
        loop {
            let until_commit = commit_every.saturating_sub(run.last_commit.elapsed());
            let wait = match first_row {
                Some(t) => linger.saturating_sub(t.elapsed()),
                None => read_timeout.saturating_sub(last_data.elapsed()),
            }
            .min(until_commit)
            .max(Duration::from_millis(1));
            let next = tokio::select! {
                _ = run.ctx.cancelled() => return Ok(Ended::Stop),
                r = tokio::time::timeout(wait, resp.chunk()) => r,
            };
            let mut ended = None;
            match next {
                Err(_) => {}
                Ok(Ok(Some(chunk))) => {
                    last_data = Instant::now();
                    for line in lines.split(&chunk) {
                        ended = feed_line(line, &mut rows);
                        if ended.is_some() {
                            break;
                        }
                    }
                    if first_row.is_none() && !rows.is_empty() {
                        first_row = Some(Instant::now());
                    }
                }
                Ok(Ok(None)) => ended = Some(Ok(None)),
                Ok(Err(e)) => ended = Some(Err(e.to_string())),
            }
            let due = first_row.is_some_and(|t| t.elapsed() >= linger);
            if rows.len() >= cfg.batch_size || due || ended.is_some() {
                if self.flush(run, &mut rows, None).await.is_err() {
                    return Ok(Ended::Stop);
                }
                first_row = None;
            }
            self.commit_if_due(run).await;
            match ended {
                Some(Ok(Some(last_seq))) => {
                    run.since = last_seq;
                    return Ok(Ended::Reopen);
                }
                Some(Ok(None)) => {
                    return Err(ComponentError::retriable("the server closed the _changes feed"))
                }
                Some(Err(e)) => return Err(ComponentError::retriable(e)),
                None => {}
            }
            if first_row.is_none() && last_data.elapsed() >= read_timeout {
                return Err(ComponentError::retriable(format!(
                    "nothing (not even a heartbeat) for {} ms; reopening the _changes feed",
                    cfg.read_timeout_ms
                )));
            }
        }
    }

    /// One longpoll request: read the whole answer (heartbeats keep it alive), send its rows.
    /// Checkpoints keep being stored while the request waits for a change.
    async fn poll(
        &mut self,
        run: &mut Run<'_>,
        mut resp: reqwest::Response,
    ) -> Result<Ended, ComponentError> {
        let read_timeout = Duration::from_millis(self.cfg().read_timeout_ms);
        let commit_every = Duration::from_millis(self.cfg().commit_interval_ms);
        let mut body = Vec::new();
        let mut last_data = Instant::now();
        loop {
            let wait = read_timeout
                .saturating_sub(last_data.elapsed())
                .min(commit_every.saturating_sub(run.last_commit.elapsed()))
                .max(Duration::from_millis(1));
            let next = tokio::select! {
                _ = run.ctx.cancelled() => return Ok(Ended::Stop),
                r = tokio::time::timeout(wait, resp.chunk()) => r,
            };
            match next {
                Err(_) if last_data.elapsed() >= read_timeout => {
                    return Err(ComponentError::retriable(format!(
                        "nothing (not even a heartbeat) for {} ms; asking again",
                        self.cfg().read_timeout_ms
                    )))
                }
                Err(_) => {}
                Ok(Ok(Some(chunk))) => {
                    last_data = Instant::now();
                    body.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(ComponentError::retriable(format!("_changes: {e}"))),
            }
            self.commit_if_due(run).await;
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| ComponentError::retriable(format!("_changes: invalid answer: {e}")))?;
        let results = answer.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut rows: Vec<FeedItem> = results.into_iter().map(FeedItem::Row).collect();
        let last_seq = answer.get("last_seq").cloned();
        if rows.is_empty() {
            if let Some(seq) = last_seq {
                run.since = seq;
            }
        } else if self.flush(run, &mut rows, last_seq).await.is_err() {
            return Ok(Ended::Stop);
        }
        self.commit_if_due(run).await;
        Ok(Ended::Reopen)
    }

    async fn follow(&mut self, run: &mut Run<'_>) -> Result<(), ComponentError> {
        let mut backoff = Backoff::new(self.cfg());
        while !run.ctx.shutdown.is_cancelled() {
            let outcome = match self.open(run).await {
                Ok(resp) => {
                    // The server answers (the checkpoint read before this may have failed).
                    run.ctx.health.succeeded();
                    backoff.reset();
                    match self.cfg().feed {
                        Feed::Continuous => self.stream(run, resp).await,
                        Feed::Longpoll => self.poll(run, resp).await,
                    }
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(Ended::Stop) => break,
                Ok(Ended::Reopen) => {}
                Err(e) if e.class == ErrorClass::Retriable => {
                    run.ctx.health.failed(&e.message);
                    tracing::warn!(database = %run.database, error = %e.message, since = %run.since, "_changes feed interrupted; reopening");
                    self.commit(run).await;
                    if !backoff.sleep(run.ctx).await {
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Exponential backoff between reconnections.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(cfg: &CouchdbSourceConfig) -> Self {
        let initial = Duration::from_millis(cfg.initial_backoff_ms);
        Self { initial, max: Duration::from_millis(cfg.max_backoff_ms), next: initial }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Wait; false when shutdown came first.
    async fn sleep(&mut self, ctx: &SourceContext) -> bool {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        tokio::select! {
            _ = ctx.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// Sort one line of a continuous feed: a row (or poison) into `rows`, or how the feed ended.
fn feed_line(line: RawLine, rows: &mut Vec<FeedItem>) -> Option<Result<Option<Value>, String>> {
    let bytes = match line {
        RawLine::Complete(bytes) => bytes,
        RawLine::Oversized { head, len } => {
            let reason = oversized_reason("change line", &head, len);
            rows.push(FeedItem::Poison { original: Bytes::from(head), reason });
            return None;
        }
    };
    let text = trim_newline(&bytes);
    if is_blank(text) {
        return None; // a heartbeat
    }
    match parse_line(text) {
        Ok(Line::Change(row)) => rows.push(FeedItem::Row(row)),
        Ok(Line::End(last_seq)) => return Some(Ok(Some(last_seq))),
        Ok(Line::Error(e)) => return Some(Err(format!("_changes feed error: {e}"))),
        Err(reason) => rows.push(FeedItem::Poison { original: Bytes::copy_from_slice(text), reason }),
    }
    None
}

#[async_trait]
impl Source for ChangesSource {
    /// Waits on the `_changes` feed: transforms run on this task.
    fn chain_placement(&self) -> ChainPlacement {
        ChainPlacement::SourceTask
    }

    async fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let Some(since) = self.initial_since(&ctx).await? else { return Ok(()) };
        let mut run = Run {
            ctx: &ctx,
            tracker: Tracker::new(self.cfg().max_pending_batches),
            database: self.client.database().into(),
            since,
            unsaved: None,
            last_commit: Instant::now(),
        };
        tracing::info!(database = %run.database, since = %run.since, feed = ?self.cfg().feed, "following the _changes feed");
        let result = self.follow(&mut run).await;
        if run.tracker.pending() > 0 {
            let _ = tokio::time::timeout(ctx.drain_timeout, run.tracker.wait_drained()).await;
        }
        self.commit(&mut run).await;
        tracing::info!(database = %run.database, pending = run.tracker.pending(), "changes source stopped");
        result
    }
}
