//! One sandboxed guest instance: its store (memory cap, time budget), the calls across the
//! boundary, how failures are classified, and the pool instances return to.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use wasmtime::{Memory, ResourceLimiter, Store, Trap, TypedFunc};

use super::abi::ABI_VERSION;
use super::config::WasmKind;
use super::runtime::{engine, Prepared, TICK};

/// What the host keeps in each store.
pub struct HostState {
    limiter: Limiter,
    /// Set by `feedline::abort` (the SDK's panic hook) before it traps.
    pub abort_message: Option<String>,
}

struct Limiter {
    max_memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
    fn instances(&self) -> usize {
        1
    }
    fn memories(&self) -> usize {
        1
    }
    fn tables(&self) -> usize {
        4
    }
}

/// The sandbox limits of one transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Budget of one call.
    pub time: Duration,
    /// Linear memory cap in bytes.
    pub memory: usize,
}

/// Why a call did not produce an answer. Every variant discards the instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The epoch deadline passed.
    #[error("exceeded its time limit of {0} ms")]
    Timeout(u128),
    /// Memory growth was refused and the guest then trapped.
    #[error("exceeded its memory limit of {0} MiB")]
    Memory(usize),
    /// The guest called `feedline::abort` (a Rust panic).
    #[error("{0}")]
    Aborted(String),
    /// Any other trap.
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest returned a negative status or a malformed answer.
    #[error("broke the ABI: {0}")]
    Protocol(String),
    /// A fresh instance could not be made (instantiation or `init` failed).
    #[error("could not be started: {0}")]
    Start(String),
}

impl Failure {
    /// The `reason` label of the traps counter.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::Memory(_) => "memory",
            Self::Aborted(_) => "panic",
            Self::Trap(_) => "trap",
            Self::Protocol(_) => "protocol",
            Self::Start(_) => "start",
        }
    }
}

/// Why a guest refused to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// `feedline_abi_version` returned another version.
    #[error("`{module}` speaks ABI version {found}; this Feedline speaks version {ABI_VERSION}")]
    Version {
        /// Module name.
        module: String,
        /// What it returned.
        found: i32,
    },
    /// `init` rejected the config.
    #[error("`{module}` rejected its config: {message}")]
    Config {
        /// Module name.
        module: String,
        /// The guest's message.
        message: String,
    },
    /// Instantiation or a call failed.
    #[error("`{module}` {failure}")]
    Failed {
        /// Module name.
        module: String,
        /// What happened.
        failure: Failure,
    },
}

/// A live, initialised instance.
pub struct Guest {
    store: Store<HostState>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    dealloc: TypedFunc<(i32, i32), ()>,
    entry: TypedFunc<(i32, i32, i32), i64>,
    limits: Limits,
}

impl Guest {
    /// Instantiate `module`, check its ABI version and run `init` with `config` (JSON).
    pub fn start(
        module: &Prepared,
        kind: WasmKind,
        limits: Limits,
        config: &[u8],
    ) -> Result<Self, StartError> {
        let name = module.name.clone();
        let failed = |failure| StartError::Failed { module: name.clone(), failure };
        let engine = engine().map_err(|e| failed(Failure::Start(e.to_string())))?;
        let state =
            HostState { limiter: Limiter { max_memory: limits.memory, hit: false }, abort_message: None };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(limits.time));
        let instance =
            module.pre.instantiate(&mut store).map_err(|e| failed(classify(&mut store, &e, limits)))?;
        let missing = |what: &str| failed(Failure::Start(format!("export `{what}` unusable")));
        let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| missing("memory"))?;
        let version = instance
            .get_typed_func::<(), i32>(&mut store, "feedline_abi_version")
            .map_err(|_| missing("feedline_abi_version"))?;
        let alloc = instance.get_typed_func(&mut store, "alloc").map_err(|_| missing("alloc"))?;
        let dealloc = instance.get_typed_func(&mut store, "dealloc").map_err(|_| missing("dealloc"))?;
        let init = instance
            .get_typed_func::<(i32, i32, i32), i64>(&mut store, "init")
            .map_err(|_| missing("init"))?;
        let entry = instance.get_typed_func(&mut store, kind.export()).map_err(|_| missing(kind.export()))?;
        let found = version.call(&mut store, ()).map_err(|e| failed(classify(&mut store, &e, limits)))?;
        if found != ABI_VERSION {
            return Err(StartError::Version { module: name, found });
        }
        let mut guest = Self { store, memory, alloc, dealloc, entry: init, limits };
        match guest.call(config) {
            Ok(None) => {}
            Ok(Some(message)) => {
                let message = String::from_utf8_lossy(&message).into_owned();
                return Err(StartError::Config { module: name, message });
            }
            Err(failure) => return Err(failed(failure)),
        }
        guest.entry = entry;
        Ok(guest)
    }

    /// Write `parts` into guest memory, call the entry point, return its answer (`None` for a
    /// zero result, which only `init` gives), freed in the guest.
    pub fn call_parts(&mut self, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, Failure> {
        let limits = self.limits;
        self.store.set_epoch_deadline(deadline_ticks(limits.time));
        let result = self.call_inner(parts);
        result.map_err(|e| match e {
            CallError::Wasm(e) => classify(&mut self.store, &e, limits),
            CallError::Failure(f) => f,
        })
    }

    fn call(&mut self, input: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
        self.call_parts(&[input])
    }

    fn call_inner(&mut self, parts: &[&[u8]]) -> Result<Option<Vec<u8>>, CallError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = i32::try_from(len).map_err(|_| Failure::Protocol(format!("request of {len} bytes")))?;
        let ptr = self.alloc.call(&mut self.store, len32)?;
        if ptr == 0 && len > 0 {
            return Err(self.out_of_memory("`alloc` returned 0"));
        }
        let mut at = ptr as u32 as usize;
        for part in parts {
            self.memory
                .write(&mut self.store, at, part)
                .map_err(|_| Failure::Protocol("`alloc` returned memory outside the module".into()))?;
            at += part.len();
        }
        let r = self.entry.call(&mut self.store, (ptr, len32, ABI_VERSION))?;
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            return Err(Failure::Protocol(format!("status {r}{}", status_text(r))).into());
        }
        let (out_ptr, out_len) = ((r >> 32) as u32 as usize, (r & 0xffff_ffff) as usize);
        let answer = self
            .memory
            .data(&self.store)
            .get(out_ptr..out_ptr.saturating_add(out_len))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Failure::Protocol("answer outside the module's memory".into()))?;
        self.dealloc.call(&mut self.store, (out_ptr as i32, out_len as i32))?;
        Ok(Some(answer))
    }

    fn out_of_memory(&self, what: &str) -> CallError {
        if self.store.data().limiter.hit {
            return Failure::Memory(self.limits.memory >> 20).into();
        }
        Failure::Protocol(what.into()).into()
    }
}

enum CallError {
    Wasm(wasmtime::Error),
    Failure(Failure),
}

impl From<wasmtime::Error> for CallError {
    fn from(e: wasmtime::Error) -> Self {
        Self::Wasm(e)
    }
}

impl From<Failure> for CallError {
    fn from(f: Failure) -> Self {
        Self::Failure(f)
    }
}

fn status_text(r: i64) -> &'static str {
    match r {
        -1 => " (the module could not decode the batch)",
        -2 => " (the module speaks another ABI version)",
        -3 => " (the module was not initialised)",
        _ => "",
    }
}

fn deadline_ticks(budget: Duration) -> u64 {
    // One extra tick: the current tick may be about to end.
    (budget.as_nanos().div_ceil(TICK.as_nanos()) as u64).max(1) + 1
}

fn classify(store: &mut Store<HostState>, e: &wasmtime::Error, limits: Limits) -> Failure {
    let state = store.data_mut();
    if let Some(message) = state.abort_message.take() {
        return Failure::Aborted(message);
    }
    if state.limiter.hit {
        return Failure::Memory(limits.memory >> 20);
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Timeout(limits.time.as_millis()),
        Some(trap) => Failure::Trap(trap.to_string().trim_start_matches("wasm trap: ").to_owned()),
        None => Failure::Trap(format!("{e:#}")),
    }
}

/// What makes two guests interchangeable: same module contents, entry point, config, limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    path: std::path::PathBuf,
    stamp: (SystemTime, u64),
    kind: WasmKind,
    config: Vec<u8>,
    limits: Limits,
}

impl PoolKey {
    /// The key of guests of `module` started with these settings.
    pub fn new(module: &Prepared, kind: WasmKind, config: &[u8], limits: Limits) -> Self {
        Self { path: module.path.clone(), stamp: module.stamp, kind, config: config.to_vec(), limits }
    }
}

/// Idle, initialised instances kept per key.
const IDLE_PER_KEY: usize = 4;

static POOL: OnceLock<Mutex<HashMap<PoolKey, Vec<Guest>>>> = OnceLock::new();

fn pool() -> &'static Mutex<HashMap<PoolKey, Vec<Guest>>> {
    POOL.get_or_init(Default::default)
}

/// An idle instance for `key`, if one is pooled.
pub fn take_idle(key: &PoolKey) -> Option<Guest> {
    pool().lock().ok()?.get_mut(key)?.pop()
}

/// Return a healthy instance for reuse.
pub fn put_idle(key: PoolKey, guest: Guest) {
    if let Ok(mut pool) = pool().lock() {
        let idle = pool.entry(key).or_default();
        if idle.len() < IDLE_PER_KEY {
            idle.push(guest);
        }
    }
}

/// Time a closure, for the time-in-guest metric.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let started = Instant::now();
    let r = f();
    (r, started.elapsed())
}
