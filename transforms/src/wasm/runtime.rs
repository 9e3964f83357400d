//! The process-wide WebAssembly machinery: one engine with an epoch ticker, a cache of compiled
//! modules (by path, modification time and size) and the checks a module must pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use wasmtime::{
    Caller, Config, Engine, ExternType, FuncType, InstancePre, Linker, Module, OptLevel, ValType,
};

use super::config::WasmKind;
use super::guest::HostState;

/// How often the engine's epoch advances; time limits are rounded up to whole ticks.
pub const TICK: Duration = Duration::from_millis(5);

/// Why a module cannot be used. The message is for the pipeline author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The file is missing or unreadable.
    #[error("cannot read `{path}`: {reason}")]
    Unreadable {
        /// The resolved path.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// Not valid WebAssembly (or WAT).
    #[error("`{path}` is not a valid WebAssembly module: {reason}")]
    Invalid {
        /// The resolved path.
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },
    /// It imports something the sandbox does not provide (WASI included).
    #[error("{0}")]
    Import(String),
    /// An export is missing or has the wrong signature.
    #[error("{0}")]
    Export(String),
    /// The WebAssembly engine could not be set up.
    #[error("the WebAssembly engine is unavailable: {0}")]
    Engine(String),
}

struct Shared {
    engine: Engine,
    linker: Linker<HostState>,
    modules: Mutex<HashMap<PathBuf, Arc<Prepared>>>,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

fn shared() -> Result<&'static Shared, LoadError> {
    SHARED.get_or_init(setup).as_ref().map_err(|e| LoadError::Engine(e.clone()))
}

fn setup() -> Result<Shared, String> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    // Deep recursion in a guest traps instead of overflowing the host thread.
    config.max_wasm_stack(512 * 1024);
    let engine = Engine::new(&config).map_err(|e| e.to_string())?;
    let ticker = engine.clone();
    std::thread::Builder::new()
        .name("feedline-wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(TICK);
            ticker.increment_epoch();
        })
        .map_err(|e| format!("cannot start the epoch thread: {e}"))?;
    let mut linker = Linker::new(&engine);
    linker
        .func_wrap("feedline", "abort", abort)
        .map_err(|e| format!("cannot define `feedline::abort`: {e}"))?;
    Ok(Shared { engine, linker, modules: Mutex::new(HashMap::new()) })
}

/// `feedline::abort(ptr, len)`: the guest stops with a message (the SDK's panic hook).
fn abort(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) -> wasmtime::Result<()> {
    let message = caller
        .get_export("memory")
        .and_then(|m| m.into_memory())
        .and_then(|m| {
            let data = m.data(&caller);
            let start = ptr as u32 as usize;
            let end = start.checked_add((len as u32 as usize).min(4096))?;
            data.get(start..end).map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .unwrap_or_else(|| "guest aborted (message unreadable)".into());
    caller.data_mut().abort_message = Some(message);
    Err(wasmtime::Error::msg("guest aborted"))
}

/// A compiled, checked module, ready to instantiate.
pub struct Prepared {
    /// Where it was loaded from (resolved).
    pub path: PathBuf,
    /// Identity for pooling: the same file contents compile to the same `Prepared`.
    pub stamp: (SystemTime, u64),
    /// The entry points it exports.
    pub kinds: Vec<WasmKind>,
    /// Instantiation with imports resolved.
    pub pre: InstancePre<HostState>,
    /// A short name for metrics and messages: the file name.
    pub name: String,
}

impl Prepared {
    /// The entry point to call: the configured one, or the only one exported.
    pub fn kind(&self, wanted: Option<WasmKind>) -> Result<WasmKind, LoadError> {
        match (wanted, self.kinds.as_slice()) {
            (Some(k), kinds) if kinds.contains(&k) => Ok(k),
            (Some(k), _) => Err(LoadError::Export(format!(
                "`{}` does not export `{}` (kind = \"{}\")",
                self.name,
                k.export(),
                k.export()
            ))),
            (None, [k]) => Ok(*k),
            (None, []) => {
                Err(LoadError::Export(format!("`{}` exports neither `filter` nor `map`", self.name)))
            }
            (None, _) => Err(LoadError::Export(format!(
                "`{}` exports both `filter` and `map`: say which with `kind`",
                self.name
            ))),
        }
    }
}

/// The engine every store must be made with.
pub fn engine() -> Result<&'static Engine, LoadError> {
    Ok(&shared()?.engine)
}

/// Compile (or fetch from the cache) and check the module at `path`.
pub fn load(path: &Path) -> Result<Arc<Prepared>, LoadError> {
    let shared = shared()?;
    let unreadable =
        |e: std::io::Error| LoadError::Unreadable { path: path.to_owned(), reason: e.to_string() };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    let stamp = (meta.modified().map_err(unreadable)?, meta.len());
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if let Some(p) = shared.modules.lock().ok().and_then(|m| m.get(&key).cloned()) {
        if p.stamp == stamp {
            return Ok(p);
        }
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    let module = Module::new(&shared.engine, &bytes)
        .map_err(|e| LoadError::Invalid { path: path.to_owned(), reason: format!("{e:#}") })?;
    let name =
        path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    check_imports(&module, &name)?;
    let kinds = check_exports(&module, &name)?;
    let pre = shared.linker.instantiate_pre(&module).map_err(|e| LoadError::Import(format!("{e:#}")))?;
    let prepared = Arc::new(Prepared { path: path.to_owned(), stamp, kinds, pre, name });
    if let Ok(mut m) = shared.modules.lock() {
        m.insert(key, prepared.clone());
    }
    Ok(prepared)
}

fn check_imports(module: &Module, name: &str) -> Result<(), LoadError> {
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        if m == "feedline" && n == "abort" {
            continue;
        }
        let message = if m.starts_with("wasi") {
            format!(
                "`{name}` imports WASI (`{m}::{n}`); WASM transforms get no WASI capabilities (no files, \
                 network, clock or environment)"
            )
        } else {
            format!("`{name}` imports `{m}::{n}`, which Feedline does not provide (only `feedline::abort`)")
        };
        return Err(LoadError::Import(message));
    }
    Ok(())
}

fn signature(ty: &FuncType) -> String {
    let list = |it: &mut dyn Iterator<Item = ValType>| {
        it.map(|t| {
            if t.is_i32() {
                "i32".to_owned()
            } else if t.is_i64() {
                "i64".to_owned()
            } else {
                format!("{t}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
    };
    format!("({}) -> ({})", list(&mut ty.params()), list(&mut ty.results()))
}

/// The exports ABI v1 requires, with their signatures.
const REQUIRED: &[(&str, &str)] = &[
    ("feedline_abi_version", "() -> (i32)"),
    ("alloc", "(i32) -> (i32)"),
    ("dealloc", "(i32, i32) -> ()"),
    ("init", "(i32, i32, i32) -> (i64)"),
];
const ENTRY: &str = "(i32, i32, i32) -> (i64)";

fn check_exports(module: &Module, name: &str) -> Result<Vec<WasmKind>, LoadError> {
    let mut funcs = HashMap::new();
    let mut memory = false;
    for export in module.exports() {
        match export.ty() {
            ExternType::Func(f) => {
                funcs.insert(export.name().to_owned(), signature(&f));
            }
            ExternType::Memory(_) if export.name() == "memory" => memory = true,
            _ => {}
        }
    }
    if !memory {
        return Err(LoadError::Export(format!("`{name}` does not export its `memory`")));
    }
    for (export, want) in REQUIRED {
        match funcs.get(*export) {
            None => return Err(LoadError::Export(format!("`{name}` does not export `{export}`"))),
            Some(got) if got != want => {
                return Err(LoadError::Export(format!(
                    "`{name}` exports `{export}` as {got}; ABI v1 expects {want}"
                )))
            }
            Some(_) => {}
        }
    }
    let mut kinds = Vec::new();
    for kind in [WasmKind::Filter, WasmKind::Map] {
        match funcs.get(kind.export()) {
            Some(got) if got != ENTRY => {
                return Err(LoadError::Export(format!(
                    "`{name}` exports `{}` as {got}; ABI v1 expects {ENTRY}",
                    kind.export()
                )))
            }
            Some(_) => kinds.push(kind),
            None => {}
        }
    }
    Ok(kinds)
}
