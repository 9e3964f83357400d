//! `file` source: reads a JSON-lines file, one event per line.
//!
//! The byte offset after the last *done* line is checkpointed in the embedded store, so a
//! restart (even after SIGKILL) resumes there: lines in flight at the crash are read again
//! (at-least-once), nothing is skipped. The checkpoint also records which file the offset counts
//! into (see [`super::identity`]): a file replaced while Feedline was stopped, or a `path` pointed
//! at another file, is read as a new file instead of being resumed at a foreign offset. With
//! `follow = true` the file is tailed; when the path leads to another file (rotated) or the file
//! shrinks below what was read (truncated), the old lines are delivered first and the new content
//! is then read from the start.

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

use super::identity::{self, FileId, FileIdentity, Prefix, Verdict, FINGERPRINT_MAX};
use crate::lines::{read_lines, send_lines, Line, LineBuffer, LineDecoding};

/// Reads a JSON-lines file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file (relative paths resolve against the pipeline file's directory). The checkpoint
    /// records which file it was (device, inode and a fingerprint of its first bytes), so a
    /// different file found at this path is read as a new one (see `start_at`), never resumed
    /// at the old file's offset.
    pub path: PathBuf,
    /// Keep reading as the file grows, like `tail -F`: when another file takes the path
    /// (rotation) or the file is truncated, the lines read so far are delivered and the new
    /// content is read from its start. Without it the pipeline stops once the whole file is
    /// delivered.
    #[serde(default)]
    pub follow: bool,
    /// Where to start when there is no checkpoint yet, or when the checkpoint belongs to another
    /// file (the file was replaced while Feedline was stopped, or `path` now names another file).
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

/// A checkpoint as stored: the offset after the last delivered line, the path it was read from,
/// and the identity of that file (absent in checkpoints written before identities). Unknown
/// keys are ignored so that a rolled-back binary still reads a newer checkpoint.
#[derive(Debug, Deserialize)]
struct Saved {
    offset: u64,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    identity: Option<FileIdentity>,
}

/// The file just opened, before reading.
struct Opened {
    file: tokio::fs::File,
    id: FileId,
    len: u64,
    prefix: Prefix,
}

/// Where reading starts, and why.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// No checkpoint: `start_at` decides.
    Fresh(u64),
    /// The checkpoint's offset, in the same file.
    Resume(u64),
    /// The checkpoint's offset, trusted: the checkpoint predates file identities.
    Unverified(u64),
    /// The checkpoint belongs to another file (or this one rewritten): `start_at` decides.
    Replaced { offset: u64, why: String },
    /// The same file, now shorter than the checkpoint's offset: from the start.
    Truncated { checkpoint: u64, len: u64 },
}

impl Start {
    fn offset(&self) -> u64 {
        match self {
            Start::Fresh(o) | Start::Resume(o) | Start::Unverified(o) => *o,
            Start::Replaced { offset, .. } => *offset,
            Start::Truncated { .. } => 0,
        }
    }
}

/// Decide where to read the file `id` of length `len` starting with `prefix` from, given what was
/// checkpointed.
fn decide(saved: Option<&Saved>, id: FileId, len: u64, prefix: &Prefix, start_at: StartAt) -> Start {
    let fresh = if start_at == StartAt::End { len } else { 0 };
    let Some(saved) = saved else { return Start::Fresh(fresh) };
    let start = match identity::compare(saved.identity.as_ref(), id, prefix) {
        Verdict::Different(why) => return Start::Replaced { offset: fresh, why },
        Verdict::Same => Start::Resume(saved.offset),
        Verdict::Unknown => Start::Unverified(saved.offset),
    };
    if saved.offset > len {
        return Start::Truncated { checkpoint: saved.offset, len };
    }
    start
}

/// The file being read: where reading is, what identifies the file, and the positions read
/// from it (a new file gets a new tracker, so no offset of the old one is ever checkpointed
/// with the new one's identity).
struct Reading {
    reader: BufReader<tokio::fs::File>,
    offset: u64,
    partial: LineBuffer,
    id: FileId,
    prefix: Prefix,
    tracker: Tracker<u64>,
}

impl Reading {
    /// `lines` (with their newlines) were read at the current offset. Of an oversized line
    /// only its head is known: the fingerprint then covers fewer bytes (its stored length
    /// says how many).
    fn advance(&mut self, lines: &[Line]) {
        for line in lines {
            if self.offset < FINGERPRINT_MAX as u64 {
                let bytes = match line {
                    Line::Complete(bytes) => bytes,
                    Line::Oversized { head, .. } => head,
                };
                self.prefix.extend(self.offset, bytes);
            }
            self.offset += line.len();
        }
    }
}

fn io_error(path: &std::path::Path) -> impl Fn(std::io::Error) -> ComponentError + '_ {
    move |e| ComponentError::retriable(format!("{}: {e}", path.display()))
}

impl FileSource {
    fn start_offset(&self, ctx: &SourceContext, file: &Opened) -> Result<u64, ComponentError> {
        let saved = ctx
            .checkpoints
            .load(CHECKPOINT_KEY)
            .map_err(|e| ComponentError::fatal(format!("checkpoint: {e}")))?
            .map(serde_json::from_value::<Saved>)
            .transpose()
            .map_err(|e| ComponentError::fatal(format!("checkpoint: {e}")))?;
        let start = decide(saved.as_ref(), file.id, file.len, &file.prefix, self.config.start_at);
        let path = self.path.display();
        let checkpointed = saved.as_ref().and_then(|s| s.path.as_deref()).unwrap_or("");
        let checkpoint = saved.as_ref().map_or(0, |s| s.offset);
        match &start {
            Start::Fresh(_) | Start::Resume(_) => {}
            Start::Unverified(offset) => {
                tracing::info!(%path, offset, "the checkpoint has no file identity (written by an older version); trusting its offset, the next checkpoint records the identity")
            }
            Start::Replaced { offset, why } => {
                tracing::warn!(%path, checkpoint_path = checkpointed, checkpoint_offset = checkpoint, start_offset = offset, why = %why, "the checkpoint belongs to another file; reading this one as a new file")
            }
            Start::Truncated { checkpoint, len } => {
                tracing::warn!(%path, checkpoint_offset = checkpoint, len, "file is shorter than its checkpoint; reading it from the start")
            }
        }
        Ok(start.offset())
    }

    fn commit(&self, ctx: &SourceContext, file: &Reading) -> Result<(), ComponentError> {
        if let Some(offset) = file.tracker.take_committable() {
            let value = json!({
                "offset": offset,
                "path": self.path.display().to_string(),
                "identity": file.prefix.identity(file.id, offset),
            });
            let _span = ctx.checkpoint_span("0", &offset).entered();
            ctx.checkpoints
                .store(CHECKPOINT_KEY, &value)
                .map_err(|e| ComponentError::retriable(format!("checkpoint: {e}")))?;
            ctx.metrics.checkpoint_commits.inc();
            ctx.metrics.set_checkpoint("0", offset as i64);
        }
        ctx.metrics.pending.set(file.tracker.pending() as i64);
        Ok(())
    }

    /// Open the file (with `follow`, wait for it to appear) and read its first bytes.
    async fn open(&self, ctx: &SourceContext) -> Result<Option<Opened>, ComponentError> {
        let io_err = io_error(&self.path);
        loop {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut file) => {
                    let meta = file.metadata().await.map_err(&io_err)?;
                    let prefix = Prefix::read(&mut file).await.map_err(&io_err)?;
                    return Ok(Some(Opened { file, id: FileId::of(&meta), len: meta.len(), prefix }));
                }
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

    async fn reading(&self, opened: Opened, offset: u64) -> Result<Reading, ComponentError> {
        let Opened { mut file, id, prefix, .. } = opened;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io_error(&self.path))?;
        Ok(Reading {
            reader: BufReader::with_capacity(256 * 1024, file),
            offset,
            partial: LineBuffer::new(self.config.max_line_bytes),
            id,
            prefix,
            tracker: Tracker::new(self.config.max_pending_batches),
        })
    }

    /// Why the path no longer leads to the file being read, if it does not. A path that is
    /// missing is mid-rotation (renamed, not yet created again): keep reading the old file.
    async fn replaced(&self, file: &Reading) -> Option<String> {
        let meta = tokio::fs::metadata(&self.path).await.ok()?;
        let id = FileId::of(&meta);
        if id.inode.is_some() && id != file.id {
            return Some(format!(
                "another file is at the path ({} was being read, {id} is there now)",
                file.id
            ));
        }
        (meta.len() < file.offset).then(|| {
            format!("truncated to {} bytes, below the {} bytes already read", meta.len(), file.offset)
        })
    }

    /// Wait until everything read from `file` is delivered, committing on the way; `false` if
    /// told to stop first.
    async fn drain(&self, ctx: &SourceContext, file: &Reading) -> Result<bool, ComponentError> {
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.commit_interval_ms));
        loop {
            tokio::select! {
                _ = file.tracker.wait_drained() => break,
                _ = ctx.cancelled() => return Ok(false),
                _ = tick.tick() => self.commit(ctx, file)?,
            }
        }
        self.commit(ctx, file)?;
        Ok(true)
    }
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let Some(opened) = self.open(&ctx).await? else { return Ok(()) };
        let offset = self.start_offset(&ctx, &opened)?;
        let mut file = self.reading(opened, offset).await?;
        let stream: Arc<str> = self.path.display().to_string().into();
        let commit_every = Duration::from_millis(self.config.commit_interval_ms);
        let mut last_commit = tokio::time::Instant::now();
        let mut finished = false;
        while !ctx.shutdown.is_cancelled() {
            if last_commit.elapsed() >= commit_every {
                self.commit(&ctx, &file)?;
                last_commit = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = file.tracker.wait_for_room() => {}
            }
            let take_partial = !self.config.follow;
            let chunk = read_lines(&mut file.reader, self.config.batch_size, &mut file.partial, take_partial)
                .await
                .map_err(io_error(&self.path))?;
            if !chunk.lines.is_empty() {
                file.advance(&chunk.lines);
                let sent =
                    send_lines(&ctx, &file.tracker, chunk.lines, file.offset, self.config.decoding, &stream);
                if sent.await.is_err() {
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
            if let Some(why) = self.replaced(&file).await {
                // Deliver (and checkpoint) the old file's lines before any of the new one's.
                tracing::warn!(path = %self.path.display(), why = %why, "file rotated or truncated; reading the new content from the start");
                if !self.drain(&ctx, &file).await? {
                    break;
                }
                let Some(opened) = self.open(&ctx).await? else { break };
                file = self.reading(opened, 0).await?;
                continue;
            }
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(self.config.poll_interval_ms)) => {}
            }
        }
        // Whole file read: wait for everything to be delivered (until told to stop), then stop.
        if finished {
            self.drain(&ctx, &file).await?;
        }
        if file.tracker.pending() > 0 {
            let _ = tokio::time::timeout(ctx.drain_timeout, file.tracker.wait_drained()).await;
        }
        self.commit(&ctx, &file)?;
        tracing::info!(path = %self.path.display(), pending = file.tracker.pending(), "file source stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: FileId = FileId { dev: Some(1), inode: Some(7) };
    const A: &[u8] = b"{\"file\":\"a\",\"n\":1}\n{\"file\":\"a\",\"n\":2}\n";

    fn saved(offset: u64, identity: Option<FileIdentity>) -> Saved {
        Saved { offset, path: Some("in.jsonl".into()), identity }
    }

    fn start(saved: Option<&Saved>, id: FileId, content: &[u8], start_at: StartAt) -> Start {
        decide(saved, id, content.len() as u64, &Prefix::from_bytes(content), start_at)
    }

    #[test]
    fn the_same_file_resumes_even_after_it_grew() {
        let at = A.len() as u64;
        let s = saved(at, Some(Prefix::from_bytes(A).identity(ID, at)));
        let grown = [A, b"{\"file\":\"a\",\"n\":3}\n"].concat();
        assert_eq!(start(Some(&s), ID, &grown, StartAt::Beginning), Start::Resume(at));
        assert_eq!(start(None, ID, &grown, StartAt::Beginning), Start::Fresh(0));
        assert_eq!(start(None, ID, &grown, StartAt::End), Start::Fresh(grown.len() as u64));
    }

    #[test]
    fn another_file_at_the_path_starts_where_start_at_says() {
        let at = A.len() as u64;
        let s = saved(at, Some(Prefix::from_bytes(A).identity(ID, at)));
        let b = b"{\"file\":\"b\",\"n\":1}\n{\"file\":\"b\",\"n\":2}\n{\"file\":\"b\",\"n\":3}\n";
        let renamed_over = FileId { dev: Some(1), inode: Some(8) };
        let r = start(Some(&s), renamed_over, b, StartAt::Beginning);
        assert!(matches!(&r, Start::Replaced { offset: 0, why } if why.contains("inode 8")), "{r:?}");
        let r = start(Some(&s), ID, b, StartAt::Beginning);
        assert!(
            matches!(&r, Start::Replaced { offset: 0, why } if why.contains("changed")),
            "rewritten in place: {r:?}"
        );
        let r = start(Some(&s), ID, b, StartAt::End);
        assert_eq!(r.offset(), b.len() as u64);
    }

    #[test]
    fn a_truncated_file_and_an_old_checkpoint() {
        let s = saved(A.len() as u64, None);
        assert_eq!(start(Some(&s), ID, A, StartAt::Beginning), Start::Unverified(A.len() as u64));
        let s = saved(10_000, None);
        assert_eq!(
            start(Some(&s), ID, A, StartAt::Beginning),
            Start::Truncated { checkpoint: 10_000, len: A.len() as u64 }
        );
        assert_eq!(start(Some(&s), ID, A, StartAt::End).offset(), 0);
    }

    #[test]
    fn old_and_new_checkpoints_parse() {
        let old: Saved = serde_json::from_value(json!({"offset": 5, "path": "x"})).unwrap();
        assert_eq!((old.offset, old.identity), (5, None));
        let id = Prefix::from_bytes(A).identity(ID, 5);
        let new: Saved = serde_json::from_value(json!({"offset": 5, "path": "x", "identity": id})).unwrap();
        assert_eq!(new.identity, Some(id));
    }
}
