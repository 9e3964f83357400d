//! Decoding of text lines shared by the `file` and `stdin` sources.

use std::sync::Arc;

use bytes::Bytes;
use feedline_engine::{AckToken, Batch, Closed, Event, Metadata, Payload, SourceContext, Tracker};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// How a line becomes an event value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineDecoding {
    /// Each line is one JSON document; a line that is not JSON is dead-lettered.
    #[default]
    Json,
    /// Each line becomes a JSON string.
    String,
}

/// Decode one line (without its newline). `Err` carries the reason and the raw text. JSON is
/// validated and kept as text (see [`Payload`]): a line no stage reads is written out unparsed.
pub fn decode(line: &[u8], decoding: LineDecoding) -> Result<Payload, (String, Value)> {
    let raw = || Value::String(String::from_utf8_lossy(line).into_owned());
    match decoding {
        LineDecoding::Json => Payload::from_json_bytes(Bytes::copy_from_slice(line))
            .map_err(|e| (format!("invalid JSON: {e}"), raw())),
        LineDecoding::String => match std::str::from_utf8(line) {
            Ok(s) => Ok(Value::String(s.to_owned()).into()),
            Err(e) => Err((format!("invalid UTF-8: {e}"), raw())),
        },
    }
}

/// Strip a trailing `\n` / `\r\n`.
pub fn trim_newline(mut line: &[u8]) -> &[u8] {
    if let Some(l) = line.strip_suffix(b"\n") {
        line = l;
    }
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// True for lines with nothing but whitespace (skipped, not dead-lettered).
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Complete lines read in one go.
pub struct LineChunk {
    /// The lines, without newlines.
    pub lines: Vec<Vec<u8>>,
    /// Bytes consumed (complete lines only).
    pub consumed: u64,
    /// The reader had no more data.
    pub eof: bool,
}

/// Read up to `max` complete lines. A trailing line without a newline stays in `partial` (a
/// writer may still be appending it) unless `take_partial` is set (the input has really ended).
pub async fn read_lines<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    partial: &mut Vec<u8>,
    take_partial: bool,
) -> std::io::Result<LineChunk> {
    let mut chunk = LineChunk { lines: Vec::with_capacity(max.min(4096)), consumed: 0, eof: false };
    while chunk.lines.len() < max {
        let n = reader.read_until(b'\n', partial).await?;
        if n == 0 {
            chunk.eof = true;
            if take_partial && !partial.is_empty() {
                chunk.consumed += partial.len() as u64;
                chunk.lines.push(std::mem::take(partial));
            }
            break;
        }
        if partial.last() != Some(&b'\n') {
            continue; // partial line at EOF: the next read_until returns 0 and decides
        }
        chunk.consumed += partial.len() as u64;
        chunk.lines.push(std::mem::take(partial));
    }
    Ok(chunk)
}

/// Decode `lines` into a batch tracked by one token for `position` (the offset after the last
/// line); undecodable lines go to the dead-letter sink with that token. Each event's metadata
/// position is the byte offset where its own line starts.
pub async fn send_lines(
    ctx: &SourceContext,
    tracker: &Tracker<u64>,
    lines: Vec<Vec<u8>>,
    position: u64,
    decoding: LineDecoding,
    stream: &Arc<str>,
) -> Result<(), Closed> {
    let token: AckToken = tracker.track(position);
    let mut batch = Batch::with_capacity(lines.len());
    let mut line_start = position.saturating_sub(lines.iter().map(|l| l.len() as u64).sum::<u64>());
    for line in lines {
        let start = line_start;
        line_start += line.len() as u64;
        let line = trim_newline(&line);
        if is_blank(line) {
            continue;
        }
        let meta = Metadata {
            source: ctx.component_id.clone(),
            stream: Some(stream.clone()),
            partition: None,
            position: Some(serde_json::json!(start)),
            ..Metadata::default()
        };
        match decode(line, decoding) {
            Ok(value) => batch.push(Event::new(value, meta), token.clone()),
            Err((reason, raw)) => ctx.reject(Event::new(raw, meta), reason, token.clone()).await?,
        }
    }
    ctx.send(batch).await?;
    token.ack();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_json_and_reports_garbage_with_raw_text() {
        assert_eq!(decode(br#"{"a":1}"#, LineDecoding::Json).unwrap(), serde_json::json!({"a": 1}));
        assert!(
            !decode(br#"{"a":1}"#, LineDecoding::Json).unwrap().is_parsed(),
            "JSON stays text until read"
        );
        let (why, raw) = decode(b"{oops", LineDecoding::Json).unwrap_err();
        assert!(why.starts_with("invalid JSON"), "{why}");
        assert_eq!(raw, Value::String("{oops".into()));
        assert_eq!(decode(b"plain", LineDecoding::String).unwrap(), Value::String("plain".into()));
        assert!(decode(&[0xff, 0xfe], LineDecoding::String).is_err());
        assert_eq!(trim_newline(b"x\r\n"), b"x");
        assert!(is_blank(b"  \t"));
    }
}
