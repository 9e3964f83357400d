//! `file` source: reads a JSON-lines file, one event per line.
//!
//! The byte offset after the last *done* line is checkpointed in the embedded store, so a
//! restart (even after SIGKILL) resumes there: lines in flight at the crash are read again
//! (at-least-once), nothing is skipped. With `follow = true` the file is tailed; a file that
//! shrinks below the checkpoint (truncated or replaced) is read again from the start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Source, SourceConfig, SourceContext, Tracker,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncSeekExt, BufReader};

use crate::lines::{read_lines, send_lines, LineBuffer, LineDecoding};

/// Reads a JSON-lines file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file (relative paths resolve against the pipeline file's directory).
    pub path: PathBuf,
    /// Keep reading as the file grows, like `tail -f`. Without it the pipeline stops once the
    /// whole file is delivered.
    #[serde(default)]
    pub follow: bool,
    /// Where to start when there is no checkpoint yet.
    #[serde(default)]
    pub start_at: StartAt,
    /// How a line becomes an event value.
    #[serde(default)]
    pub decoding: LineDecoding,
    /// Most lines per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: usize,
    /// Longest line accepted, in bytes (newline excluded). A longer line goes to the dead-letter
    /// sink with its first bytes and its length, and reading goes on with the next line.
    #[serde(default = "crate::lines::default_max_line_bytes")]
    #[schemars(range(min = 1, max = 1073741824))]
    pub max_line_bytes: usize,
    /// How often the position is checkpointed, in milliseconds (and always at shutdown).
    #[serde(default = "default_commit_interval_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub commit_interval_ms: u64,
    /// How often a followed file is checked for new lines, in milliseconds.
    #[serde(default = "default_poll_interval_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub poll_interval_ms: u64,
    /// Most batches read but not yet delivered before reading pauses (backpressure).
    #[serde(default = "default_max_pending_batches")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_pending_batches: usize,
}

/// Where a source starts without a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From the first line.
    #[default]
    Beginning,
    /// From the current end (only lines appended later).
    End,
}

fn default_batch_size() -> usize {
    1000
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_poll_interval_ms() -> u64 {
    200
}
fn default_max_pending_batches() -> usize {
    64
}

impl SourceConfig for FileSourceConfig {
    const TYPE: &'static str = "file";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        if self.batch_size == 0 {
            return Err(ConfigProblem::field("batch_size", "`batch_size` must be at least 1"));
        }
        if self.max_pending_batches == 0 {
            return Err(ConfigProblem::field(
                "max_pending_batches",
                "`max_pending_batches` must be at least 1",
            ));
        }
        if self.start_at == StartAt::End && !self.follow {
            return Err(ConfigProblem::field(
                "start_at",
                "`start_at = \"end\"` without `follow = true` reads nothing",
            )
            .with_hint("set `follow = true` to tail the file, or remove `start_at`"));
        }
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        Ok(Box::new(FileSource { path: ctx.resolve(&self.path), config: self.clone() }))
    }
}

struct FileSource {
    path: PathBuf,
    config: FileSourceConfig,
}

const CHECKPOINT_KEY: &str = "position";

impl FileSource {
    fn initial_offset(&self, ctx: &SourceContext, len: u64) -> Result<u64, ComponentError> {
        let saved = ctx
            .checkpoints
            .load(CHECKPOINT_KEY)
            .map_err(|e| ComponentError::fatal(format!("checkpoint: {e}")))?;
        let offset = match saved.as_ref().and_then(|v| v.get("offset")).and_then(|v| v.as_u64()) {
            Some(o) => o,
            None if self.config.start_at == StartAt::End => len,
            None => 0,
        };
        if offset > len {
            tracing::warn!(path = %self.path.display(), offset, len, "file is shorter than its checkpoint; reading it from the start");
            return Ok(0);
        }
        Ok(offset)
    }

    fn commit(&self, ctx: &SourceContext, tracker: &Tracker<u64>) -> Result<(), ComponentError> {
        if let Some(offset) = tracker.take_committable() {
            let value = json!({ "offset": offset, "path": self.path.display().to_string() });
            let _span = ctx.checkpoint_span("0", &offset).entered();
            ctx.checkpoints
                .store(CHECKPOINT_KEY, &value)
                .map_err(|e| ComponentError::retriable(format!("checkpoint: {e}")))?;
            ctx.metrics.checkpoint_commits.inc();
            ctx.metrics.set_checkpoint("0", offset as i64);
        }
        ctx.metrics.pending.set(tracker.pending() as i64);
        Ok(())
    }

    async fn open(&self, ctx: &SourceContext) -> Result<Option<tokio::fs::File>, ComponentError> {
        loop {
            match tokio::fs::File::open(&self.path).await {
                Ok(f) => return Ok(Some(f)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.config.follow => {
                    tokio::select! {
                        _ = ctx.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(Duration::from_millis(self.config.poll_interval_ms)) => {}
                    }
                }
                Err(e) => {
                    return Err(ComponentError::fatal(format!("cannot open {}: {e}", self.path.display())))
                }
            }
        }
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let io_err = |e: std::io::Error| ComponentError::retriable(format!("{}: {e}", self.path.display()));
        let Some(mut file) = self.open(&ctx).await? else { return Ok(()) };
        let len = file.metadata().await.map_err(io_err)?.len();
        let mut offset = self.initial_offset(&ctx, len)?;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_err)?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let tracker: Tracker<u64> = Tracker::new(self.config.max_pending_batches);
        let stream: Arc<str> = self.path.display().to_string().into();
        let commit_every = Duration::from_millis(self.config.commit_interval_ms);
        let mut last_commit = tokio::time::Instant::now();
        let mut partial = LineBuffer::new(self.config.max_line_bytes);
        let mut finished = false;
        while !ctx.shutdown.is_cancelled() {
            if last_commit.elapsed() >= commit_every {
                self.commit(&ctx, &tracker)?;
                last_commit = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = tracker.wait_for_room() => {}
            }
            let chunk = read_lines(&mut reader, self.config.batch_size, &mut partial, !self.config.follow)
                .await
                .map_err(io_err)?;
            if !chunk.lines.is_empty() {
                offset += chunk.consumed;
                if send_lines(&ctx, &tracker, chunk.lines, offset, self.config.decoding, &stream)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if !chunk.eof {
                continue;
            }
            if !self.config.follow {
                finished = true;
                break;
            }
            let current_len = tokio::fs::metadata(&self.path).await.map(|m| m.len()).unwrap_or(offset);
            if current_len < offset {
                tracing::warn!(path = %self.path.display(), "file truncated or replaced; reading it from the start");
                let Some(f) = self.open(&ctx).await? else { break };
                reader = BufReader::with_capacity(256 * 1024, f);
                partial.clear();
                offset = 0;
                continue;
            }
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_interval_ms)) => {}
            }
        }
        // Whole file read: wait for everything to be delivered (until told to stop), then stop.
        if finished {
            let mut tick = tokio::time::interval(commit_every);
            loop {
                tokio::select! {
                    _ = tracker.wait_drained() => break,
                    _ = ctx.cancelled() => break,
                    _ = tick.tick() => self.commit(&ctx, &tracker)?,
                }
            }
        }
        if tracker.pending() > 0 {
            let _ = tokio::time::timeout(ctx.drain_timeout, tracker.wait_drained()).await;
        }
        self.commit(&ctx, &tracker)?;
        tracing::info!(path = %self.path.display(), pending = tracker.pending(), "file source stopped");
        Ok(())
    }
}
