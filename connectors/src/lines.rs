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

/// Decode one line (without its newline). `Err` carries the reason; the caller dead-letters the
/// line's original bytes. JSON is validated (exactly as a later parse would) and kept as text
/// (see [`Payload`]): a line no stage reads is written out unparsed.
pub fn decode(line: &[u8], decoding: LineDecoding) -> Result<Payload, String> {
    match decoding {
        LineDecoding::Json => {
            Payload::from_json_bytes(Bytes::copy_from_slice(line)).map_err(|e| format!("invalid JSON: {e}"))
        }
        LineDecoding::String => match std::str::from_utf8(line) {
            Ok(s) => Ok(Value::String(s.to_owned()).into()),
            Err(e) => Err(format!("invalid UTF-8: {e}")),
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

/// Default for `max_line_bytes`: Kafka's default record limit, so a line that fits is a record
/// a Kafka sink can take.
pub const DEFAULT_MAX_LINE_BYTES: usize = 1024 * 1024;

/// Serde default of `max_line_bytes`.
pub fn default_max_line_bytes() -> usize {
    DEFAULT_MAX_LINE_BYTES
}

/// How much of an oversized line its dead-letter record keeps.
const OVERSIZED_HEAD_BYTES: usize = 64 * 1024;

/// One line read from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, newline included.
    Complete(Vec<u8>),
    /// A line longer than the cap: its first bytes and its whole length (newline included).
    Oversized { head: Vec<u8>, len: u64 },
}

impl Line {
    /// Bytes of input the line took.
    pub fn len(&self) -> u64 {
        match self {
            Line::Complete(bytes) => bytes.len() as u64,
            Line::Oversized { len, .. } => *len,
        }
    }
}

/// The dead-letter reason of an oversized `what` (a line, a change line) of `len` bytes.
pub fn oversized_reason(what: &str, head: &[u8], len: u64) -> String {
    format!("{what} of {len} bytes is longer than max_line_bytes; its first {} bytes are kept", head.len())
}

/// Complete lines read in one go.
pub struct LineChunk {
    /// The lines, in input order.
    pub lines: Vec<Line>,
    /// Bytes consumed (complete lines only).
    pub consumed: u64,
    /// The reader had no more data.
    pub eof: bool,
}

/// A line being read, across reads: bytes of an unfinished line are kept up to
/// `max_line_bytes`; past that only its head and length are (memory stays bounded whatever the
/// input).
#[derive(Debug)]
pub struct LineBuffer {
    partial: Vec<u8>,
    /// Length so far of a line that went past the cap (its head is in `partial`).
    oversized: Option<u64>,
    max_line_bytes: usize,
}

impl LineBuffer {
    /// An empty buffer for lines of at most `max_line_bytes` (newline excluded).
    pub fn new(max_line_bytes: usize) -> Self {
        Self { partial: Vec::new(), oversized: None, max_line_bytes: max_line_bytes.max(1) }
    }

    /// Add `bytes` (ending in `\n` when `ends_line`) to the current line; the line, once ended.
    fn push(&mut self, bytes: &[u8], ends_line: bool) -> Option<Line> {
        match &mut self.oversized {
            Some(len) => *len += bytes.len() as u64,
            None => {
                self.partial.extend_from_slice(bytes);
                if trim_newline(&self.partial).len() > self.max_line_bytes {
                    self.oversized = Some(self.partial.len() as u64);
                    self.partial.truncate(OVERSIZED_HEAD_BYTES.min(self.max_line_bytes));
                    self.partial.shrink_to_fit();
                }
            }
        }
        ends_line.then(|| self.take())
    }

    /// Split a chunk of a stream (an HTTP body) into the lines it finishes, newlines included;
    /// the unfinished rest is kept for the next chunk.
    pub fn split(&mut self, mut chunk: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            lines.extend(self.push(&chunk[..=i], true));
            chunk = &chunk[i + 1..];
        }
        if !chunk.is_empty() {
            self.push(chunk, false);
        }
        lines
    }

    fn take(&mut self) -> Line {
        let bytes = std::mem::take(&mut self.partial);
        match self.oversized.take() {
            Some(len) => Line::Oversized { head: bytes, len },
            None => Line::Complete(bytes),
        }
    }

    fn is_empty(&self) -> bool {
        self.partial.is_empty() && self.oversized.is_none()
    }
}

/// Read up to `max` complete lines. A trailing line without a newline stays in `buffer` (a
/// writer may still be appending it) unless `take_partial` is set (the input has really ended).
pub async fn read_lines<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
    buffer: &mut LineBuffer,
    take_partial: bool,
) -> std::io::Result<LineChunk> {
    let mut chunk = LineChunk { lines: Vec::with_capacity(max.min(4096)), consumed: 0, eof: false };
    while chunk.lines.len() < max {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            chunk.eof = true;
            if take_partial && !buffer.is_empty() {
                let line = buffer.take();
                chunk.consumed += line.len();
                chunk.lines.push(line);
            }
            break;
        }
        let (used, ended) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if let Some(line) = buffer.push(&available[..used], ended) {
            chunk.consumed += line.len();
            chunk.lines.push(line);
        }
        reader.consume(used);
    }
    Ok(chunk)
}

/// Decode `lines` into a batch tracked by one token for `position` (the offset after the last
/// line); undecodable and oversized lines go to the dead-letter sink with their bytes (an
/// oversized one with its head) and that token. Each event's metadata position is the byte
/// offset where its own line starts.
pub async fn send_lines(
    ctx: &SourceContext,
    tracker: &Tracker<u64>,
    lines: Vec<Line>,
    position: u64,
    decoding: LineDecoding,
    stream: &Arc<str>,
) -> Result<(), Closed> {
    let token: AckToken = tracker.track(position);
    let mut batch = Batch::with_capacity(lines.len());
    let mut line_start = position.saturating_sub(lines.iter().map(Line::len).sum::<u64>());
    for line in lines {
        let start = line_start;
        line_start += line.len();
        let meta = Metadata {
            source: ctx.component_id.clone(),
            stream: Some(stream.clone()),
            partition: None,
            position: Some(serde_json::json!(start)),
            ..Metadata::default()
        };
        let line = match line {
            Line::Complete(line) => line,
            Line::Oversized { head, len } => {
                let reason = oversized_reason("line", &head, len);
                ctx.reject_raw(Bytes::from(head), Event::new(Value::Null, meta), reason, token.clone())
                    .await?;
                continue;
            }
        };
        let text = trim_newline(&line);
        if is_blank(text) {
            continue;
        }
        match decode(text, decoding) {
            Ok(value) => batch.push(Event::new(value, meta), token.clone()),
            Err(reason) => {
                let original = Bytes::copy_from_slice(text);
                ctx.reject_raw(original, Event::new(Value::Null, meta), reason, token.clone()).await?
            }
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
        let why = decode(b"{oops", LineDecoding::Json).unwrap_err();
        assert!(why.starts_with("invalid JSON"), "{why}");
        assert!(decode(b"\"\xff\"", LineDecoding::Json).is_err(), "invalid UTF-8 inside a string");
        assert_eq!(decode(b"plain", LineDecoding::String).unwrap(), Value::String("plain".into()));
        assert!(decode(&[0xff, 0xfe], LineDecoding::String).is_err());
        assert_eq!(trim_newline(b"x\r\n"), b"x");
        assert!(is_blank(b"  \t"));
    }

    async fn read_all(input: &[u8], max_line_bytes: usize, read_size: usize) -> Vec<Line> {
        let mut reader = tokio::io::BufReader::with_capacity(read_size, input);
        let mut buffer = LineBuffer::new(max_line_bytes);
        let mut lines = Vec::new();
        let mut consumed = 0;
        loop {
            let chunk = read_lines(&mut reader, 2, &mut buffer, true).await.unwrap();
            consumed += chunk.consumed;
            lines.extend(chunk.lines);
            if chunk.eof {
                break;
            }
        }
        assert_eq!(consumed, input.len() as u64, "every byte is accounted for");
        lines
    }

    #[tokio::test]
    async fn an_oversized_line_is_cut_to_its_head_and_the_next_line_still_reads() {
        let long = "x".repeat(100);
        let input = format!("{{\"a\":1}}\n{long}\n{{\"b\":2}}\r\ntail");
        for read_size in [1, 7, 64, 4096] {
            let lines = read_all(input.as_bytes(), 10, read_size).await;
            assert_eq!(
                lines,
                vec![
                    Line::Complete(b"{\"a\":1}\n".to_vec()),
                    Line::Oversized { head: b"xxxxxxxxxx".to_vec(), len: 101 },
                    Line::Complete(b"{\"b\":2}\r\n".to_vec()),
                    Line::Complete(b"tail".to_vec()),
                ],
                "read size {read_size}"
            );
        }
        let exact = read_all(b"0123456789\r\n", 10, 3).await;
        assert_eq!(exact, vec![Line::Complete(b"0123456789\r\n".to_vec())], "the cap excludes the newline");
    }

    #[test]
    fn split_streams_lines_across_chunks_with_the_same_cap() {
        let mut buffer = LineBuffer::new(4);
        assert_eq!(buffer.split(b"ab"), vec![]);
        assert_eq!(
            buffer.split(b"c\n\nxxxx"),
            vec![Line::Complete(b"abc\n".to_vec()), Line::Complete(b"\n".to_vec())]
        );
        assert_eq!(
            buffer.split(b"xx\nok\n"),
            vec![Line::Oversized { head: b"xxxx".to_vec(), len: 7 }, Line::Complete(b"ok\n".to_vec())]
        );
    }

    #[tokio::test]
    async fn an_unfinished_line_waits_unless_the_input_ended() {
        let mut reader = tokio::io::BufReader::new(&b"{\"a\":1}\n{\"b\""[..]);
        let mut buffer = LineBuffer::new(DEFAULT_MAX_LINE_BYTES);
        let chunk = read_lines(&mut reader, 10, &mut buffer, false).await.unwrap();
        assert_eq!((chunk.lines.len(), chunk.consumed, chunk.eof), (1, 8, true));
        assert!(!buffer.is_empty(), "the fragment is kept for the next read");
    }
}
