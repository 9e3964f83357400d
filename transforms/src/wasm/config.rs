//! The `wasm` transform's configuration: the module, its config and the sandbox limits.

use std::path::PathBuf;

use feedline_engine::ConfigProblem;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Runs a sandboxed WebAssembly module as a filter or a map, one call per batch (ABI v1, see
/// `docs/wasm-abi.md`). The module gets no WASI: no files, network, clock or environment.
/// A record on which the guest traps, runs out of time or exhausts its memory is isolated by
/// retrying the batch in halves and goes to the dead-letter sink with the reason.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmConfig {
    /// The module: a `.wasm` file (or `.wat` text), relative to the pipeline file. It must
    /// export `memory`, `feedline_abi_version`, `alloc`, `dealloc`, `init` and `filter` or `map`.
    pub module: PathBuf,
    /// Handed to the guest's `init` as JSON, e.g. `{ namespaces = ["whisk.system"] }`; the
    /// guest decides what it accepts, and `feedline validate` asks it.
    #[serde(default = "empty_object")]
    #[schemars(with = "Value")]
    pub config: Value,
    /// Which entry point to call. Default: the one the module exports (`filter` or `map`).
    #[serde(default)]
    pub kind: Option<WasmKind>,
    /// Wall-clock budget of one call into the guest (a batch, or a half during isolation), in
    /// milliseconds; the call traps when it runs out.
    #[serde(default = "default_time_limit_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub time_limit_ms: u64,
    /// Cap on the guest's linear memory, in MiB; growing past it fails inside the guest.
    #[serde(default = "default_memory_limit_mib")]
    #[schemars(range(min = 1, max = 65536))]
    pub memory_limit_mib: u32,
    /// Most outputs a `map` guest may emit for one input event. The host copies the event for
    /// each, so a guest within its memory cap could otherwise make it allocate without bound;
    /// an input over the limit goes to the dead-letter sink and none of its outputs is made.
    #[serde(default = "default_max_outputs_per_event")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_outputs_per_event: usize,
}

/// The entry point a `wasm` transform calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "WasmKind")]
pub enum WasmKind {
    /// `filter`: keep or drop each event.
    Filter,
    /// `map`: zero or more output events per input event.
    Map,
}

impl WasmKind {
    /// The export name.
    pub fn export(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Map => "map",
        }
    }
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// Default per-call budget: generous for a 1,000-record batch, short enough to notice a hang.
pub const DEFAULT_TIME_LIMIT_MS: u64 = 500;
/// Default memory cap.
pub const DEFAULT_MEMORY_LIMIT_MIB: u32 = 64;
const MAX_TIME_LIMIT_MS: u64 = 60_000;
const MAX_MEMORY_LIMIT_MIB: u32 = 4096;

fn default_time_limit_ms() -> u64 {
    DEFAULT_TIME_LIMIT_MS
}

/// Default fan-out bound of a `map` guest.
pub const DEFAULT_MAX_OUTPUTS_PER_EVENT: usize = 100;

fn default_max_outputs_per_event() -> usize {
    DEFAULT_MAX_OUTPUTS_PER_EVENT
}

fn default_memory_limit_mib() -> u32 {
    DEFAULT_MEMORY_LIMIT_MIB
}

impl WasmConfig {
    /// A config with defaults for everything but the module and its config.
    pub fn new(module: impl Into<PathBuf>, config: Value) -> Self {
        Self {
            module: module.into(),
            config,
            kind: None,
            time_limit_ms: DEFAULT_TIME_LIMIT_MS,
            memory_limit_mib: DEFAULT_MEMORY_LIMIT_MIB,
            max_outputs_per_event: DEFAULT_MAX_OUTPUTS_PER_EVENT,
        }
    }

    /// The limits that need no module to check.
    pub(crate) fn check_limits(&self) -> Result<(), ConfigProblem> {
        if !(1..=MAX_TIME_LIMIT_MS).contains(&self.time_limit_ms) {
            return Err(ConfigProblem::field(
                "time_limit_ms",
                format!("`time_limit_ms` must be between 1 and {MAX_TIME_LIMIT_MS}"),
            )
            .with_hint(format!("the default, {DEFAULT_TIME_LIMIT_MS}, suits batches of 1,000 events")));
        }
        if !(1..=MAX_MEMORY_LIMIT_MIB).contains(&self.memory_limit_mib) {
            return Err(ConfigProblem::field(
                "memory_limit_mib",
                format!("`memory_limit_mib` must be between 1 and {MAX_MEMORY_LIMIT_MIB}"),
            )
            .with_hint(format!("the default is {DEFAULT_MEMORY_LIMIT_MIB}")));
        }
        if self.module.as_os_str().is_empty() {
            return Err(ConfigProblem::field("module", "`module` must not be empty")
                .with_hint("name a .wasm file, relative to the pipeline file"));
        }
        Ok(())
    }
}
