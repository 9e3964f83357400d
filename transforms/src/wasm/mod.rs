//! `wasm`: run a sandboxed WebAssembly module as a filter or a map.
//!
//! ```toml
//! [[transforms]]
//! type = "wasm"
//! module = "transforms/drop-system-namespaces.wasm"
//! config = { namespaces = ["whisk.system"] }   # handed to the guest's `init`
//! ```
//!
//! The guest is called once per batch across a small, versioned ABI (`docs/wasm-abi.md`;
//! guests in Rust use the `feedline-guest` crate). Where things live:
//!
//! - [`config`]: [`WasmConfig`] — module, guest config, time and memory limits.
//! - `runtime`: the process-wide engine, epoch ticker, module cache (compiled once per path,
//!   modification time and size) and the import/export checks.
//! - `guest`: one instance — store, memory cap ([`wasmtime::ResourceLimiter`]), time budget
//!   (epoch deadline), the call, failure classes, and the pool of idle initialised instances.
//! - `abi`: the batch envelope (encoded once per batch, sliced for retries) and answer decoding.
//! - `host`: the [`Transform`]: one call per batch; a failed call is retried in halves until
//!   the bad record is alone, which is dead-lettered with the reason.
//! - `metrics`: calls, records in/out, errors, traps, instances, time in guest — per module.
//!
//! Validation compiles the module, checks imports (no WASI) and exports, calls
//! `feedline_abi_version` and `init` with the config; the instance it started is pooled and
//! reused when the pipeline is built in the same process.

mod abi;
pub mod config;
mod guest;
mod host;
mod metrics;
mod runtime;

#[cfg(test)]
mod tests;

use std::time::Duration;

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Transform, TransformConfig,
};

pub use abi::ABI_VERSION;
pub use config::{WasmConfig, WasmKind};
use guest::{put_idle, take_idle, Guest, Limits, PoolKey, StartError};
use host::WasmTransform;
use runtime::LoadError;

const BUILD_HINT: &str =
    "paths are relative to the pipeline file; scripts/build-wasm-examples.sh builds the examples";
const ABI_HINT: &str = "build the module with the feedline-guest crate, or see docs/wasm-abi.md";

/// Everything `check` and `build` share: the loaded module and the settings of its guests.
struct Resolved {
    module: std::sync::Arc<runtime::Prepared>,
    kind: WasmKind,
    config: Vec<u8>,
    limits: Limits,
    key: PoolKey,
}

impl WasmConfig {
    fn resolve(&self, base: &CheckContext) -> Result<Resolved, ConfigProblem> {
        self.check_limits()?;
        let path = base.resolve(&self.module);
        let module = runtime::load(&path).map_err(|e| match e {
            LoadError::Unreadable { .. } => {
                ConfigProblem::field("module", e.to_string()).with_hint(BUILD_HINT)
            }
            LoadError::Import(_) => ConfigProblem::field("module", e.to_string()).with_hint(
                "build for wasm32-unknown-unknown (not wasm32-wasip1) and keep I/O out of the guest",
            ),
            _ => ConfigProblem::field("module", e.to_string()).with_hint(ABI_HINT),
        })?;
        let kind = module.kind(self.kind).map_err(|e| {
            let field = if self.kind.is_some() { "kind" } else { "module" };
            ConfigProblem::field(field, e.to_string()).with_hint(ABI_HINT)
        })?;
        let config = serde_json::to_vec(&self.config)
            .map_err(|e| ConfigProblem::field("config", format!("cannot encode `config`: {e}")))?;
        let limits = Limits {
            time: Duration::from_millis(self.time_limit_ms),
            memory: (self.memory_limit_mib as usize) << 20,
        };
        let key = PoolKey::new(&module, kind, &config, limits);
        Ok(Resolved { module, kind, config, limits, key })
    }
}

impl Resolved {
    fn guest(&self) -> Result<Guest, StartError> {
        match take_idle(&self.key) {
            Some(g) => Ok(g),
            None => Guest::start(&self.module, self.kind, self.limits, &self.config),
        }
    }
}

fn start_problem(e: StartError) -> ConfigProblem {
    match e {
        StartError::Config { .. } => ConfigProblem::field("config", e.to_string())
            .with_hint("the module's `init` decides what it accepts; see the module's documentation"),
        StartError::Version { .. } => ConfigProblem::field("module", e.to_string())
            .with_hint("rebuild the module against the current feedline-guest (docs/wasm-abi.md)"),
        StartError::Failed { .. } => ConfigProblem::field("module", e.to_string())
            .with_hint("`init` must finish within `time_limit_ms` and `memory_limit_mib`"),
    }
}

impl TransformConfig for WasmConfig {
    const TYPE: &'static str = "wasm";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        let r = self.resolve(ctx)?;
        let guest = r.guest().map_err(start_problem)?;
        put_idle(r.key, guest);
        Ok(())
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        let check = CheckContext { base_dir: ctx.base_dir.clone() };
        let r = self.resolve(&check).map_err(|p| ComponentError::fatal(p.message))?;
        let guest = r.guest().map_err(|e| ComponentError::fatal(e.to_string()))?;
        let metrics = metrics::WasmMetrics::new(
            ctx.metrics.registry(),
            &ctx.pipeline,
            &ctx.component_id,
            &r.module.name,
        );
        Ok(Box::new(WasmTransform {
            module: r.module,
            kind: r.kind,
            config: r.config,
            limits: r.limits,
            key: r.key,
            guest: Some(guest),
            metrics,
            encoded: Default::default(),
            max_outputs_per_event: self.max_outputs_per_event,
        }))
    }
}
