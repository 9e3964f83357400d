//! A JSON-lines file sink: the `file` sink connector and the default dead-letter sink share it.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::component::{same_result, ComponentError, Sink, WriteResult};
use crate::event::Event;

/// What a line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The event's JSON value.
    #[default]
    Value,
    /// `{"key":..,"value":..,"operation":..,"route":..}`.
    Envelope,
}

/// Appends one JSON document per line; a write is durable (fsync) before it is reported done.
pub struct JsonLinesSink {
    path: PathBuf,
    format: LineFormat,
    fsync: bool,
    file: Mutex<Option<tokio::fs::File>>,
}

impl JsonLinesSink {
    /// A sink appending to `path` (created with its parent directories on first write).
    pub fn new(path: &Path, format: LineFormat, fsync: bool) -> Self {
        Self { path: path.to_path_buf(), format, fsync, file: Mutex::new(None) }
    }

    fn line(&self, event: &Event, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        match self.format {
            LineFormat::Value => match event.value.raw() {
                // One line per record: unchanged text is written as is unless it spans lines.
                Some(raw) if !raw.contains(&b'\n') => buf.extend_from_slice(raw),
                _ => serde_json::to_writer(&mut *buf, &event.value)?,
            },
            LineFormat::Envelope => serde_json::to_writer(
                &mut *buf,
                &serde_json::json!({
                    "key": event.key_str(),
                    "value": event.value,
                    "operation": event.operation,
                    "route": event.meta.route,
                }),
            )?,
        }
        buf.push(b'\n');
        Ok(())
    }
}

#[async_trait]
impl Sink for JsonLinesSink {
    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let mut buf = Vec::with_capacity(events.len() * 128);
        let mut results = Vec::with_capacity(events.len());
        for e in events {
            let mark = buf.len();
            match self.line(e, &mut buf) {
                Ok(()) => results.push(Ok(())),
                Err(err) => {
                    buf.truncate(mark);
                    results.push(Err(ComponentError::reject(format!("cannot serialize event: {err}"))));
                }
            }
        }
        let mut guard = self.file.lock().await;
        let outcome = async {
            if guard.is_none() {
                if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent).await?;
                }
                *guard = Some(open_repaired(&self.path).await?);
            }
            let Some(file) = guard.as_mut() else { return Ok(()) };
            file.write_all(&buf).await?;
            file.flush().await?;
            if self.fsync {
                file.sync_data().await?;
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        match outcome {
            Ok(()) => results,
            Err(e) => {
                *guard = None; // reopen on the next attempt
                same_result(
                    events.len(),
                    Err(ComponentError::retriable(format!("{}: {e}", self.path.display()))),
                )
            }
        }
    }
}

/// Open `path` for appending, first cutting off a torn last line.
///
/// A process killed in the middle of a write leaves a line without its newline; appending after
/// it would glue the next record to the fragment, and both would be unreadable. The fragment's
/// events were never acknowledged (a write is reported done only once it is complete), so they
/// are delivered again: cutting it loses nothing.
async fn open_repaired(path: &Path) -> std::io::Result<tokio::fs::File> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::OpenOptions::new().create(true).read(true).append(true).open(path).await?;
    let len = file.metadata().await?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start)).await?;
        file.read_exact(part).await?;
        if let Some(i) = part.iter().rposition(|b| *b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    if keep < len {
        tracing::warn!(path = %path.display(), removed_bytes = len - keep, "cut a torn last line left by an interrupted write; its events are delivered again");
        file.set_len(keep).await?;
    }
    Ok(file)
}

/// Parse a JSON-lines file, strictly (for tests and tools): every complete line must be one JSON
/// document, or the whole read fails naming the line. A last line without its newline is a
/// write still in progress and is left out. A missing file reads as empty.
pub fn read_json_lines(path: &Path) -> std::io::Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    let mut out = Vec::new();
    for (n, line) in complete.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value = serde_json::from_str(line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: not one JSON document: {e}", path.display(), n + 1),
            )
        })?;
        out.push(value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(n: u64) -> Event {
        Event::new(serde_json::json!({ "n": n }), Default::default())
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3, \"pad\": \"xx").unwrap();
        let sink = JsonLinesSink::new(&path, LineFormat::Value, false);
        assert!(sink.write(&[event(4)]).await.iter().all(Result::is_ok));
        let lines: Vec<u64> =
            read_json_lines(&path).unwrap().iter().map(|v| v["n"].as_u64().unwrap()).collect();
        assert_eq!(lines, [1, 2, 4]);
    }

    #[tokio::test]
    async fn a_file_that_is_one_fragment_is_emptied_and_a_clean_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("torn.jsonl");
        std::fs::write(&torn, "x".repeat(200_000)).unwrap();
        let sink = JsonLinesSink::new(&torn, LineFormat::Value, false);
        assert!(sink.write(&[event(1)]).await.iter().all(Result::is_ok));
        assert_eq!(std::fs::read_to_string(&torn).unwrap(), "{\"n\":1}\n");

        let clean = dir.path().join("clean.jsonl");
        std::fs::write(&clean, "{\"n\":7}\n").unwrap();
        let sink = JsonLinesSink::new(&clean, LineFormat::Value, false);
        assert!(sink.write(&[event(8)]).await.iter().all(Result::is_ok));
        assert_eq!(std::fs::read_to_string(&clean).unwrap(), "{\"n\":7}\n{\"n\":8}\n");
    }

    #[test]
    fn the_strict_reader_fails_on_a_bad_complete_line_and_skips_an_unfinished_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":").unwrap();
        assert_eq!(read_json_lines(&path).unwrap().len(), 1);
        std::fs::write(&path, "{\"a\":1}\n{\"a\":{\"a\":2}\n").unwrap();
        let err = read_json_lines(&path).unwrap_err().to_string();
        assert!(err.contains("x.jsonl:2: not one JSON document"), "{err}");
        assert!(read_json_lines(&dir.path().join("missing")).unwrap().is_empty());
    }
}
