//! `file` sink: appends one JSON document per line, fsynced before events count as delivered.

use std::path::PathBuf;
use std::sync::Arc;

use feedline_engine::jsonl::{JsonLinesSink, LineFormat};
use feedline_engine::{BuildContext, CheckContext, ComponentError, ConfigProblem, Sink, SinkConfig};
use schemars::JsonSchema;
use serde::Deserialize;

/// Writes events to a JSON-lines file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// File to append to (relative paths resolve against the pipeline file's directory);
    /// created with its parent directories when missing.
    pub path: PathBuf,
    /// `value` writes the event's JSON; `envelope` writes `{"key","value","operation","route"}`.
    #[serde(default)]
    pub format: LineFormat,
    /// fsync after each batch before acknowledging it (turn off only for scratch output).
    #[serde(default = "default_true")]
    pub fsync: bool,
}

fn default_true() -> bool {
    true
}

impl SinkConfig for FileSinkConfig {
    const TYPE: &'static str = "file";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        if self.path.as_os_str().is_empty() {
            return Err(ConfigProblem::field("path", "`path` must not be empty"));
        }
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(JsonLinesSink::new(&ctx.resolve(&self.path), self.format, self.fsync)))
    }
}
