//! The explicit list of component types a process knows, and the typed-config boundary.
//!
//! Each component has a config struct (serde, `deny_unknown_fields`, `///` docs) implementing
//! [`SourceConfig`], [`TransformConfig`] or [`SinkConfig`]. Registering it is one line:
//! `registry.add_sink::<KafkaSinkConfig>()`. The registry turns the struct into a parser for
//! pipeline files and a JSON Schema for editors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::component::{ComponentError, Sink, Source, Transform};
use crate::metrics::Metrics;

/// What a config's own `check` can see: no network, local files only.
#[derive(Debug, Clone)]
pub struct CheckContext {
    /// Directory of the pipeline file; relative paths resolve against it.
    pub base_dir: PathBuf,
}

impl CheckContext {
    /// Resolve a path written in the pipeline file.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// What building a component can use.
#[derive(Clone)]
pub struct BuildContext {
    /// Pipeline name.
    pub pipeline: Arc<str>,
    /// Component id.
    pub component_id: Arc<str>,
    /// Directory of the pipeline file.
    pub base_dir: PathBuf,
    /// The process's data directory (checkpoints, default dead-letter files).
    pub data_dir: PathBuf,
    /// Process metrics.
    pub metrics: Metrics,
}

impl BuildContext {
    /// Resolve a path written in the pipeline file.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}

/// A cross-field or semantic problem found by a config's `check`.
#[derive(Debug, Clone)]
pub struct ConfigProblem {
    /// The field to point at (top level of the component table); `None` points at the table.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ConfigProblem {
    /// A problem with `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self { field: Some(field.to_owned()), message: message.into(), hint: None }
    }
    /// Add a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A source's configuration.
pub trait SourceConfig: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The `type = "..."` name.
    const TYPE: &'static str;
    /// Cross-field rules; no network.
    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        Ok(())
    }
    /// Build the running source (no I/O needed yet: connect in `run`).
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError>;
}

/// A transform's configuration.
pub trait TransformConfig: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The `type = "..."` name.
    const TYPE: &'static str;
    /// Cross-field rules; no network.
    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        Ok(())
    }
    /// Build a transform instance.
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError>;
}

/// A sink's configuration.
pub trait SinkConfig: DeserializeOwned + JsonSchema + Send + Sync + 'static {
    /// The `type = "..."` name.
    const TYPE: &'static str;
    /// Cross-field rules; no network.
    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        Ok(())
    }
    /// Build the sink.
    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError>;
}

/// A validated source config, ready to build.
pub trait BuildSource: Send + Sync {
    /// See [`SourceConfig::build`].
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError>;
}
/// A validated transform config, ready to build.
pub trait BuildTransform: Send + Sync {
    /// See [`TransformConfig::build`].
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError>;
}
/// A validated sink config, ready to build.
pub trait BuildSink: Send + Sync {
    /// See [`SinkConfig::build`].
    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError>;
}

impl<T: SourceConfig> BuildSource for T {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        SourceConfig::build(self, ctx)
    }
}
impl<T: TransformConfig> BuildTransform for T {
    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        TransformConfig::build(self, ctx)
    }
}
impl<T: SinkConfig> BuildSink for T {
    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        SinkConfig::build(self, ctx)
    }
}

/// Why a component table did not parse.
#[derive(Debug)]
pub enum ParseFailure {
    /// Serde rejected it at `path` (keys and indexes below the component table).
    Serde {
        /// Where.
        path: Vec<String>,
        /// Serde's message.
        message: String,
    },
    /// The config's own `check` rejected it.
    Problem(ConfigProblem),
}

/// Deserialize `value` into `T`, keeping the path of the first error.
pub fn parse_typed<T: DeserializeOwned>(value: Value) -> Result<T, ParseFailure> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        ParseFailure::Serde { path, message: e.into_inner().to_string() }
    })
}

type ParseFn<B> = fn(Value, &CheckContext) -> Result<Box<B>, ParseFailure>;

/// One registered component type.
pub struct Entry<B: ?Sized> {
    /// `type` name.
    pub type_name: &'static str,
    /// Parse and check a component table (without `type` and the engine's common keys).
    pub parse: ParseFn<B>,
    /// JSON Schema of the config struct.
    pub schema: fn() -> Value,
}

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null)
}

fn parse_source<T: SourceConfig>(v: Value, ctx: &CheckContext) -> Result<Box<dyn BuildSource>, ParseFailure> {
    let cfg: T = parse_typed(v)?;
    cfg.check(ctx).map_err(ParseFailure::Problem)?;
    Ok(Box::new(cfg))
}
fn parse_transform<T: TransformConfig>(
    v: Value,
    ctx: &CheckContext,
) -> Result<Box<dyn BuildTransform>, ParseFailure> {
    let cfg: T = parse_typed(v)?;
    cfg.check(ctx).map_err(ParseFailure::Problem)?;
    Ok(Box::new(cfg))
}
fn parse_sink<T: SinkConfig>(v: Value, ctx: &CheckContext) -> Result<Box<dyn BuildSink>, ParseFailure> {
    let cfg: T = parse_typed(v)?;
    cfg.check(ctx).map_err(ParseFailure::Problem)?;
    Ok(Box::new(cfg))
}

/// Every component type this process can build.
#[derive(Default)]
pub struct Registry {
    pub(crate) sources: BTreeMap<&'static str, Entry<dyn BuildSource>>,
    pub(crate) transforms: BTreeMap<&'static str, Entry<dyn BuildTransform>>,
    pub(crate) sinks: BTreeMap<&'static str, Entry<dyn BuildSink>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }
    /// Register a source type.
    pub fn add_source<T: SourceConfig>(&mut self) -> &mut Self {
        self.sources
            .insert(T::TYPE, Entry { type_name: T::TYPE, parse: parse_source::<T>, schema: schema_of::<T> });
        self
    }
    /// Register a transform type.
    pub fn add_transform<T: TransformConfig>(&mut self) -> &mut Self {
        self.transforms.insert(
            T::TYPE,
            Entry { type_name: T::TYPE, parse: parse_transform::<T>, schema: schema_of::<T> },
        );
        self
    }
    /// Register a sink type.
    pub fn add_sink<T: SinkConfig>(&mut self) -> &mut Self {
        self.sinks
            .insert(T::TYPE, Entry { type_name: T::TYPE, parse: parse_sink::<T>, schema: schema_of::<T> });
        self
    }
    /// Registered source types.
    pub fn source_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.sources.keys().copied()
    }
    /// Registered transform types.
    pub fn transform_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.transforms.keys().copied()
    }
    /// Registered sink types.
    pub fn sink_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.sinks.keys().copied()
    }
}
