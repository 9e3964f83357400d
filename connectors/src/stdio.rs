//! `stdin` source (JSON lines until end of input) and `stdout` sink (JSON lines).

use std::sync::Arc;

use async_trait::async_trait;
use feedline_engine::jsonl::LineFormat;
use feedline_engine::{
    same_result, BuildContext, ComponentError, Event, Sink, SinkConfig, Source, SourceConfig, SourceContext,
    Tracker, WriteResult,
};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::io::{AsyncWriteExt, BufReader};

use crate::lines::{read_lines, send_lines, LineBuffer, LineDecoding};

/// Reads JSON lines from standard input until it closes. No checkpoint: input is not replayable.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinSourceConfig {
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
}

fn default_batch_size() -> usize {
    500
}

impl SourceConfig for StdinSourceConfig {
    const TYPE: &'static str = "stdin";

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        Ok(Box::new(StdinSource { config: self.clone() }))
    }
}

struct StdinSource {
    config: StdinSourceConfig,
}

#[async_trait]
impl Source for StdinSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let mut reader = BufReader::new(tokio::io::stdin());
        let tracker: Tracker<u64> = Tracker::new(64);
        let stream: Arc<str> = "stdin".into();
        let mut partial = LineBuffer::new(self.config.max_line_bytes);
        let mut offset = 0u64;
        loop {
            let chunk = tokio::select! {
                _ = ctx.cancelled() => break,
                c = read_lines(&mut reader, self.config.batch_size.max(1), &mut partial, true) => {
                    c.map_err(|e| ComponentError::fatal(format!("stdin: {e}")))?
                }
            };
            offset += chunk.consumed;
            if !chunk.lines.is_empty()
                && send_lines(&ctx, &tracker, chunk.lines, offset, self.config.decoding, &stream)
                    .await
                    .is_err()
            {
                break;
            }
            if chunk.eof {
                tokio::select! {
                    _ = tracker.wait_drained() => {}
                    _ = ctx.cancelled() => {}
                }
                break;
            }
        }
        let _ = tokio::time::timeout(ctx.drain_timeout, tracker.wait_drained()).await;
        Ok(())
    }
}

/// Prints one JSON document per line to standard output.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// `value` prints the event's JSON; `envelope` prints `{"key","value","operation","route"}`.
    #[serde(default)]
    pub format: LineFormat,
}

impl SinkConfig for StdoutSinkConfig {
    const TYPE: &'static str = "stdout";

    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(StdoutSink { format: self.format, out: tokio::sync::Mutex::new(tokio::io::stdout()) }))
    }
}

struct StdoutSink {
    format: LineFormat,
    out: tokio::sync::Mutex<tokio::io::Stdout>,
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let mut buf = Vec::with_capacity(events.len() * 128);
        for e in events {
            let line = match self.format {
                LineFormat::Value => serde_json::to_writer(&mut buf, &e.value),
                LineFormat::Envelope => serde_json::to_writer(
                    &mut buf,
                    &serde_json::json!({"key": e.key_str(), "value": e.value, "operation": e.operation, "route": e.meta.route}),
                ),
            };
            if line.is_ok() {
                buf.push(b'\n');
            }
        }
        let mut out = self.out.lock().await;
        match async {
            out.write_all(&buf).await?;
            out.flush().await
        }
        .await
        {
            Ok(()) => same_result(events.len(), Ok(())),
            // A closed stdout (the reader went away) will not come back: stop the pipeline.
            Err(e) => same_result(events.len(), Err(ComponentError::fatal(format!("stdout: {e}")))),
        }
    }
}
