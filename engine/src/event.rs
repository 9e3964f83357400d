//! The unit of data that flows through a pipeline.
//!
//! An [`Event`] is what transforms and sinks see: a key, a JSON value (parsed at most once, see
//! [`Payload`]) and [`Metadata`] about where it came from. Delivery tracking ([`crate::AckToken`]) travels
//! beside the event inside the engine, never inside it, so no component can forget to ack.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::payload::Payload;

/// What a change means for the target: write the document, or delete it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Create or replace the document/record.
    #[default]
    Upsert,
    /// Remove it (a tombstone, a CouchDB deletion, a Kafka null value).
    Delete,
}

/// Where an event came from and where it sits in its source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// Id of the source component that read the event.
    pub source: Arc<str>,
    /// Topic, database, container or file the event was read from.
    pub stream: Option<Arc<str>>,
    /// Partition or feed range inside the stream.
    pub partition: Option<Arc<str>>,
    /// Position inside the partition: Kafka offset, CouchDB `seq`, Cosmos LSN, file offset.
    pub position: Option<Value>,
    /// Event time, milliseconds since the Unix epoch.
    pub time_ms: Option<i64>,
    /// Record headers (Kafka headers, W3C `traceparent`, ...).
    pub headers: Vec<(String, Bytes)>,
    /// Set by transforms to steer sinks (e.g. a Kafka topic); `None` means the sink's default.
    pub route: Option<String>,
}

impl Metadata {
    /// Metadata for an event read by `source` with no further detail.
    pub fn from_source(source: impl Into<Arc<str>>) -> Self {
        Self { source: source.into(), ..Self::default() }
    }

    /// First header with this name, if any.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The position as JSON for dead-letter records and diagnostics.
    pub fn position_json(&self) -> Value {
        serde_json::json!({
            "source": &*self.source,
            "stream": self.stream.as_deref(),
            "partition": self.partition.as_deref(),
            "position": self.position,
        })
    }
}

/// One record flowing through a pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// Record key (Kafka key, document id bytes); `None` when the source has none.
    pub key: Option<Bytes>,
    /// The payload: JSON text kept as read until a stage needs its structure (then parsed once),
    /// or a value built in memory. Reads and writes go through `Deref`/`DerefMut` to a
    /// `serde_json::Value`; see [`Payload`].
    pub value: Payload,
    /// Upsert or delete.
    pub operation: Operation,
    /// Where it came from.
    pub meta: Metadata,
}

impl Event {
    /// An upsert event with this value and no key.
    pub fn new(value: impl Into<Payload>, meta: Metadata) -> Self {
        Self { key: None, value: value.into(), operation: Operation::Upsert, meta }
    }

    /// The key as UTF-8 text, when it is text.
    pub fn key_str(&self) -> Option<&str> {
        self.key.as_deref().and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Look a value up by JSON pointer (`/a/b`) or plain top-level field name.
    pub fn field(&self, path: &str) -> Option<&Value> {
        lookup(&self.value, path)
    }
}

/// Look a value up by JSON pointer (`/a/b/0`) or, without a leading `/`, a top-level field name.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.starts_with('/') || path.is_empty() {
        value.pointer(path)
    } else {
        value.get(path)
    }
}

/// A value's JSON type with its article, for error messages ("got an array").
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
