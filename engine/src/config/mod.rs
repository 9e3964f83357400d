//! Pipeline files: the model, loading with precise diagnostics, and the JSON Schema.
//!
//! Loading is pure (no network): parse TOML keeping byte spans, interpolate `${VAR}` in string
//! values, split each component table into the engine's common keys and the component's own,
//! deserialize the component's typed config, run its `check`. Every failure becomes a
//! [`Diagnostic`] with file:line:column, the source line and a hint.

mod diagnostic;
mod interpolate;
mod load;
mod locate;
mod ranges;
mod reference;
mod schema;

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

pub use diagnostic::{did_you_mean, ConfigErrors, Diagnostic, SourceFile};
pub use interpolate::{interpolate, InterpolationError};
pub use load::{expand_paths, load_file, load_paths, EnvLookup};
pub use ranges::unbounded_numbers;
pub use reference::reference_markdown;
pub use schema::{pipeline_schema, schema_collisions};

use crate::event::Operation;
use crate::registry::{BuildSink, BuildSource, BuildTransform};

/// A validated pipeline, ready to run.
pub struct PipelineDef {
    /// Unique name (the `name` key, or the file stem).
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Directory relative paths resolve against.
    pub base_dir: PathBuf,
    /// The source.
    pub source: ComponentDef<dyn BuildSource>,
    /// The transforms, in order.
    pub transforms: Vec<ComponentDef<dyn BuildTransform>>,
    /// The sinks (fan-out), each with the engine's delivery options.
    pub sinks: Vec<SinkDef>,
    /// Where rejected events go; `None` means the default file under the data directory.
    pub dead_letter: Option<SinkDef>,
    /// Offline test cases.
    pub tests: Vec<TestCase>,
}

/// One configured component.
pub struct ComponentDef<B: ?Sized> {
    /// Unique id inside the pipeline (metrics label, dead-letter stage).
    pub id: String,
    /// The `type` name.
    pub type_name: String,
    /// The parsed, checked config.
    pub config: Box<B>,
}

/// A sink and how the engine delivers to it.
pub struct SinkDef {
    /// The sink.
    pub component: ComponentDef<dyn BuildSink>,
    /// Batching, concurrency, rate and retry options.
    pub options: SinkOptions,
}

/// Delivery options every sink accepts next to its own keys.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SinkOptions {
    /// Batches written concurrently.
    #[schemars(range(min = 1, max = 1024))]
    pub max_in_flight: usize,
    /// Most events per second this sink writes (unset: no cap).
    #[schemars(range(min = 0.001, max = 1e9))]
    pub rate_limit: Option<f64>,
    /// How events are grouped into writes.
    pub batch: BatchOptions,
    /// How retriable failures are retried.
    pub retry: RetryOptions,
    /// Batches queued in front of the sink before the pipeline waits.
    #[schemars(range(min = 1, max = 65536))]
    pub buffer: usize,
    /// How long every attempt to start the sink or write to it may fail with a retriable error
    /// before the pipeline reports `degraded`, in milliseconds: `/ready` answers 503 and the
    /// `/health` body names the sink and its last error. The first write that gets through
    /// makes the pipeline `running` again. Retrying goes on either way.
    #[schemars(range(min = 0, max = 86400000))]
    pub degraded_after_ms: u64,
}

/// The keys of [`SinkOptions`]: split from a sink table before its own keys are parsed.
pub(crate) const SINK_OPTION_KEYS: &[&str] =
    &["max_in_flight", "rate_limit", "batch", "retry", "buffer", "degraded_after_ms"];

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 4,
            rate_limit: None,
            batch: BatchOptions::default(),
            retry: RetryOptions::default(),
            buffer: 4,
            degraded_after_ms: 30_000,
        }
    }
}

/// Batching of writes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct BatchOptions {
    /// Most events in one write.
    #[schemars(range(min = 1, max = 1000000))]
    pub max_events: usize,
    /// Longest a partial batch waits for more events while every write slot (`max_in_flight`)
    /// is busy, in milliseconds. With a slot free it is written at once, so an idle sink adds
    /// no latency and batches grow only when the sink is the bottleneck.
    #[schemars(range(min = 0, max = 3600000))]
    pub timeout_ms: u64,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { max_events: 1000, timeout_ms: 20 }
    }
}

/// Exponential backoff with full jitter for retriable failures.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryOptions {
    /// First backoff, in milliseconds.
    #[schemars(range(min = 0, max = 3600000))]
    pub initial_backoff_ms: u64,
    /// Backoff cap, in milliseconds.
    #[schemars(range(min = 0, max = 86400000))]
    pub max_backoff_ms: u64,
    /// Attempts before the event is dead-lettered; unset retries until it succeeds (the
    /// at-least-once default: an outage pauses the pipeline instead of diverting events).
    #[schemars(range(min = 1, max = 1000000))]
    pub max_attempts: Option<u32>,
}

impl Default for RetryOptions {
    fn default() -> Self {
        Self { initial_backoff_ms: 100, max_backoff_ms: 30_000, max_attempts: None }
    }
}

/// One `[[test]]` case: inputs through the transform chain, compared with the expected outputs.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What the case shows.
    pub name: String,
    /// Events fed to the first transform.
    #[serde(default)]
    pub input: Vec<TestInput>,
    /// Events expected out of the last transform, in order.
    #[serde(default)]
    pub expect: Vec<TestExpect>,
    /// How many inputs the chain must reject (send to the dead-letter sink).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub expect_rejected: usize,
}

/// An input event of a test case.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestInput {
    /// The JSON value.
    pub value: Value,
    /// Record key (text).
    #[serde(default)]
    pub key: Option<String>,
    /// Upsert or delete.
    #[serde(default)]
    pub operation: Operation,
    /// Topic, database or container the event comes from.
    #[serde(default)]
    pub stream: Option<String>,
}

/// An expected output of a test case; fields left out are not compared.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestExpect {
    /// The JSON value (compared as parsed JSON).
    #[serde(default)]
    pub value: Option<Value>,
    /// Record key (text).
    #[serde(default)]
    pub key: Option<String>,
    /// Upsert or delete.
    #[serde(default)]
    pub operation: Option<Operation>,
    /// The route a transform set (e.g. the Kafka topic).
    #[serde(default)]
    pub route: Option<String>,
}
