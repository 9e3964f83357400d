//! # feedline-engine
//!
//! The engine every Feedline connector and transform stands on. A map:
//!
//! - [`event`]: [`Event`] (key, JSON value, operation, [`Metadata`]).
//! - [`ack`]: [`AckToken`] and [`Tracker`] — the delivery contract: a source commits only the
//!   unbroken run of positions whose events are done.
//! - [`component`]: the [`Source`], [`Transform`] and [`Sink`] traits, error classes, contexts.
//! - [`registry`]: typed configs (`SourceConfig`, `TransformConfig`, `SinkConfig`) and the explicit
//!   list of known component types.
//! - [`config`]: pipeline files — loading, `${VAR}` interpolation, located diagnostics, schema.
//! - [`runtime`]: running a pipeline: chain, sink drivers (batching, concurrency, rate, retries),
//!   dead-letter path, graceful drain.
//! - [`checkpoint`]: the embedded, atomically written checkpoint store.
//! - [`metrics`], [`health`], [`ops`]: Prometheus metrics and the `/metrics` `/health` `/ready` endpoint.
//! - [`telemetry`]: OpenTelemetry traces per stage and per sampled event, W3C trace context in
//!   event headers, a bounded exporting span processor with Prometheus health counters.
//! - [`testing`]: offline `[[test]]` cases; [`graph`]: Mermaid/DOT output.
//! - [`jsonl`]: the JSON-lines file sink shared by the `file` sink and the default dead-letter sink.

pub mod ack;
pub mod checkpoint;
pub mod component;
pub mod config;
pub mod event;
pub mod graph;
pub mod health;
pub mod jsonl;
pub mod metrics;
pub mod ops;
pub mod payload;
pub mod registry;
pub mod runtime;
pub mod telemetry;
pub mod testing;

pub use ack::{AckToken, Tracker};
pub use component::{
    same_result, Batch, ChainPlacement, Closed, ComponentError, ErrorClass, Output, Sink, Source,
    SourceContext, Transform, WriteResult,
};
pub use event::{kind_of, lookup, Event, Metadata, Operation};
pub use payload::Payload;
pub use registry::{
    BuildContext, CheckContext, ConfigProblem, Registry, SinkConfig, SourceConfig, TransformConfig,
};
