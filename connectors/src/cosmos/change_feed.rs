//! Reading one leased feed range: pages → batches, continuation checkpoints, lag.
//!
//! A page of changes becomes one batch whose events share one tracked position: the SDK
//! continuation token *after* that page. An empty page (304) whose continuation moved (the
//! first poll from `now`) is tracked and marked done at once, so the start position is pinned
//! in the lease as soon as everything before it is done. The lease's continuation is written
//! only from [`Tracker::take_committable`], so it never passes a change that is not done.
//!
//! A full page is followed by another poll at once; otherwise the reader waits
//! `poll_interval_ms`. A failed poll is retried with backoff from the continuation after the
//! last page handed downstream (nothing skipped, nothing read twice). Splits are handled below
//! this loop by the SDK (a parent continuation resumes every child); the processor later
//! replaces the lease by its children.

use std::sync::Arc;
use std::time::Duration;

use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::{ChangeFeedPageIterator, ContinuationToken, FeedPage};
use azure_data_cosmos::models::ChangeFeedItem;
use azure_data_cosmos::options::{ChangeFeedOptions, MaxItemCountHint};
use azure_data_cosmos::FeedScope;
use bytes::Bytes;
use feedline_engine::{Batch, ComponentError, ErrorClass, Event, Metadata, SourceContext, Tracker};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::StartFrom;
use super::errors::classify;
use super::leases::{LeaseError, OwnedLease};

/// Settings every reader of a source shares.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    /// Where a lease without continuation starts.
    pub start_from: StartFrom,
    /// Most changes per page.
    pub max_items: u32,
    /// Pause after a partial or empty page.
    pub poll_interval: Duration,
    /// How often the continuation is written.
    pub commit_interval: Duration,
    /// Pages in flight before polling pauses.
    pub max_pending_pages: usize,
}

/// Why a reader stopped.
#[derive(Debug)]
pub enum ReaderExit {
    /// Told to stop (shutdown, rebalance, split): everything done was committed.
    Stopped,
    /// Another instance owns the lease now.
    Lost,
}

/// A document from the change feed, taken out of the SDK's envelope without a copy.
#[derive(Deserialize)]
#[serde(transparent)]
struct Doc(std::sync::Mutex<Option<Value>>);

impl Doc {
    fn take(&self) -> Option<Value> {
        self.0.lock().ok().and_then(|mut d| d.take())
    }
}

type Pages = ChangeFeedPageIterator<ChangeFeedItem<Doc>>;

/// A tracked page: its continuation and the `_lsn` of its last change.
#[derive(Debug, Clone)]
struct PagePos {
    token: String,
    lsn: Option<i64>,
}

/// The global LSN in a session token: `0:12345`, `0:-1#12345`, `0:-1#12345#Region1=1#Region2=2`;
/// the highest of a compound token (`0:..,1:..`).
pub fn session_lsn(token: &str) -> Option<i64> {
    token
        .split(',')
        .filter_map(|segment| {
            let value = segment.split_once(':').map_or(segment, |(_, v)| v);
            let mut parts = value.split('#');
            let first = parts.next()?;
            match parts.next() {
                Some(global) => global.parse::<i64>().ok(),
                None => first.parse::<i64>().ok(),
            }
        })
        .max()
}

/// Reads one lease's range until `stop` or the lease is lost. Returns after a final checkpoint.
pub struct Reader {
    /// The watched container.
    pub container: ContainerClient,
    /// Its name (event `stream`).
    pub name: Arc<str>,
    /// The lease.
    pub lease: Arc<OwnedLease>,
    /// Settings.
    pub settings: Arc<ReaderSettings>,
    /// The source's context (send, metrics, drain timeout).
    pub ctx: Arc<SourceContext>,
    /// Cancelled to make this reader stop.
    pub stop: CancellationToken,
}

struct Progress {
    tracker: Tracker<PagePos>,
    unwritten: Option<PagePos>,
    last_commit: Instant,
    session_lsn: Option<i64>,
}

impl Reader {
    /// Run until stopped; `Err` only for fatal failures.
    pub async fn run(self) -> Result<ReaderExit, ComponentError> {
        let label = self.lease.range.label();
        let partition: Arc<str> = label.as_str().into();
        let mut progress = Progress {
            tracker: Tracker::new(self.settings.max_pending_pages),
            unwritten: None,
            last_commit: Instant::now(),
            session_lsn: None,
        };
        let mut token = self.lease.continuation().await;
        let mut pages: Option<Pages> = None;
        let mut failures: u32 = 0;
        tracing::info!(lease = %self.lease.id, range = %label, resume = token.is_some(), "reading feed range");
        while !self.stopping() {
            if self.commit_if_due(&mut progress, &label).await.is_err() {
                return Ok(ReaderExit::Lost);
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.lease.lost.cancelled() => break,
                _ = progress.tracker.wait_for_room() => {}
            }
            let iter = match pages.as_mut() {
                Some(p) => p,
                None => match self.open(token.as_deref()).await {
                    Ok(p) => pages.insert(p),
                    Err(e) => {
                        self.failed(&e, &mut failures).await?;
                        continue;
                    }
                },
            };
            let next = tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.lease.lost.cancelled() => break,
                next = iter.next() => next,
            };
            let page = match next {
                Some(Ok(page)) => page,
                Some(Err(e)) => {
                    pages = None;
                    self.failed(&classify(&e, "change feed"), &mut failures).await?;
                    continue;
                }
                None => {
                    pages = None;
                    continue;
                }
            };
            failures = 0;
            let next_token = match iter.to_continuation_token() {
                Ok(t) => t.as_str().to_owned(),
                Err(e) => {
                    pages = None;
                    self.failed(&classify(&e, "continuation"), &mut failures).await?;
                    continue;
                }
            };
            let full = self.handle_page(page, &next_token, token.as_deref(), &partition, &mut progress).await;
            token = Some(next_token);
            match full {
                Err(()) => break, // downstream closed
                Ok(true) => {}
                Ok(false) => self.pause(self.settings.poll_interval).await,
            }
        }
        self.finish(progress, &label).await
    }

    fn stopping(&self) -> bool {
        self.stop.is_cancelled() || self.lease.lost.is_cancelled()
    }

    async fn open(&self, token: Option<&str>) -> Result<Pages, ComponentError> {
        let range = self.lease.range.to_range().map_err(|e| classify(&e, "feed range"))?;
        let mut options = ChangeFeedOptions::default();
        if let Some(n) = std::num::NonZeroU32::new(self.settings.max_items) {
            options = options.with_max_item_count(MaxItemCountHint::Limit(n));
        }
        if let Some(t) = token {
            options = options.with_continuation_token(ContinuationToken::from_string(t.to_owned()));
        }
        self.container
            .query_change_feed::<Doc>(
                FeedScope::range(range),
                self.settings.start_from.to_sdk(),
                Some(options),
            )
            .await
            .map_err(|e| classify(&e, "change feed"))
    }

    /// Log a failed poll and back off; fatal failures end the reader.
    async fn failed(&self, e: &ComponentError, failures: &mut u32) -> Result<(), ComponentError> {
        if e.class == ErrorClass::Fatal {
            return Err(e.clone());
        }
        *failures += 1;
        let wait = Duration::from_millis(100u64.saturating_mul(1 << (*failures).min(7)))
            .min(Duration::from_secs(10));
        tracing::warn!(lease = %self.lease.id, error = %e.message, attempt = *failures, backoff_ms = wait.as_millis() as u64, "change feed poll failed; retrying");
        self.pause(wait).await;
        Ok(())
    }

    async fn pause(&self, wait: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = self.lease.lost.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// Send a page downstream. `Ok(true)` when it was full (poll again at once).
    async fn handle_page(
        &self,
        page: FeedPage<ChangeFeedItem<Doc>>,
        next_token: &str,
        token: Option<&str>,
        partition: &Arc<str>,
        progress: &mut Progress,
    ) -> Result<bool, ()> {
        if let Some(lsn) = page.headers().session_token().and_then(|t| session_lsn(t.as_str())) {
            progress.session_lsn = Some(lsn);
        }
        let items = page.into_items();
        if items.is_empty() {
            if token != Some(next_token) {
                progress.tracker.track(PagePos { token: next_token.to_owned(), lsn: None }).ack();
            }
            if progress.tracker.pending() == 0 {
                self.ctx.metrics.set_lag(partition, 0);
            }
            return Ok(false);
        }
        let full = items.len() >= self.settings.max_items as usize;
        let mut batch = Batch::with_capacity(items.len());
        let mut last_lsn = None;
        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            let Some(doc) = item.current().and_then(Doc::take) else { continue };
            let lsn = doc
                .get("_lsn")
                .and_then(Value::as_i64)
                .or_else(|| item.metadata().and_then(|m| m.lsn()).map(|l| l.value()));
            last_lsn = lsn.or(last_lsn);
            pending.push(self.event(doc, lsn, partition));
        }
        let ack = progress.tracker.track(PagePos { token: next_token.to_owned(), lsn: last_lsn });
        for event in pending {
            batch.push(event, ack.clone());
        }
        let sent = self.ctx.send(batch).await;
        ack.ack();
        sent.map(|_| full).map_err(|_| ())
    }

    fn event(&self, doc: Value, lsn: Option<i64>, partition: &Arc<str>) -> Event {
        let mut meta = Metadata::from_source(self.ctx.component_id.clone());
        meta.stream = Some(self.name.clone());
        meta.partition = Some(partition.clone());
        meta.position = lsn.map(Value::from);
        meta.time_ms = doc.get("_ts").and_then(Value::as_i64).map(|s| s.saturating_mul(1000));
        if let Some(etag) = doc.get("_etag").and_then(Value::as_str) {
            meta.headers.push(("cosmos-etag".to_owned(), Bytes::copy_from_slice(etag.as_bytes())));
        }
        let key = doc.get("id").and_then(Value::as_str).map(|id| Bytes::copy_from_slice(id.as_bytes()));
        Event { key, ..Event::new(doc, meta) }
    }

    /// Write the newest done continuation when the commit interval passed. `Err` = lease lost.
    async fn commit_if_due(&self, progress: &mut Progress, label: &str) -> Result<(), ()> {
        if progress.last_commit.elapsed() < self.settings.commit_interval {
            return Ok(());
        }
        progress.last_commit = Instant::now();
        self.commit(progress, label).await
    }

    async fn commit(&self, progress: &mut Progress, label: &str) -> Result<(), ()> {
        if let Some(pos) = progress.tracker.take_committable() {
            progress.unwritten = Some(pos);
        }
        self.ctx.metrics.pending.set(progress.tracker.pending() as i64);
        let Some(pos) = progress.unwritten.clone() else { return Ok(()) };
        match self.lease.checkpoint(pos.token.clone()).await {
            Ok(()) => {
                progress.unwritten = None;
                self.ctx.metrics.checkpoint_commits.inc();
                if let Some(lsn) = pos.lsn {
                    self.ctx.metrics.set_checkpoint(label, lsn);
                    if let Some(session) = progress.session_lsn {
                        self.ctx.metrics.set_lag(label, session.saturating_sub(lsn).max(0));
                    }
                }
                Ok(())
            }
            Err(LeaseError::Lost) => {
                tracing::info!(lease = %self.lease.id, "lease taken by another instance; stopping its reader");
                Err(())
            }
            Err(LeaseError::Cosmos(e)) => {
                tracing::warn!(lease = %self.lease.id, error = %e, "checkpoint failed; will retry");
                Ok(())
            }
        }
    }

    /// Wait (bounded) for in-flight pages, then write the last checkpoint.
    async fn finish(&self, mut progress: Progress, label: &str) -> Result<ReaderExit, ComponentError> {
        if self.lease.lost.is_cancelled() {
            return Ok(ReaderExit::Lost);
        }
        if progress.tracker.pending() > 0 {
            tokio::select! {
                _ = tokio::time::timeout(self.ctx.drain_timeout, progress.tracker.wait_drained()) => {}
                _ = self.lease.lost.cancelled() => return Ok(ReaderExit::Lost),
            }
        }
        if self.commit(&mut progress, label).await.is_err() {
            return Ok(ReaderExit::Lost);
        }
        tracing::info!(lease = %self.lease.id, pending = progress.tracker.pending(), "feed range reader stopped");
        Ok(ReaderExit::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_token_forms() {
        assert_eq!(session_lsn("0:12345"), Some(12345));
        assert_eq!(session_lsn("0:-1#12345"), Some(12345));
        assert_eq!(session_lsn("0:-1#12345#Region1=1#Region2=2"), Some(12345));
        assert_eq!(session_lsn("0:-1#7,1:-1#9#Region1=3"), Some(9));
        assert_eq!(session_lsn("garbage"), None);
        assert_eq!(session_lsn(""), None);
    }
}
