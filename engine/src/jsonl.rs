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
                let f = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await?;
                *guard = Some(f);
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

/// Parse a JSON-lines file (for tests and tools).
pub fn read_json_lines(path: &Path) -> std::io::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect())
}
