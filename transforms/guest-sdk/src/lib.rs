//! # feedline-guest
//!
//! Write a Feedline WASM transform in safe Rust. A filter is a config struct, a type, and one
//! macro call:
//!
//! ```
//! use feedline_guest::{export_filter, Event, Filter, Result};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     namespaces: Vec<String>,
//! }
//!
//! #[derive(Deserialize)]
//! struct Doc<'a> {
//!     namespace: Option<&'a str>,
//! }
//!
//! struct DropNamespaces(Config);
//!
//! impl Filter for DropNamespaces {
//!     type Config = Config;
//!     fn new(config: Config) -> Result<Self> {
//!         Ok(Self(config))
//!     }
//!     fn keep(&mut self, event: &Event) -> Result<bool> {
//!         let doc: Doc = event.parse()?;
//!         Ok(!doc.namespace.is_some_and(|ns| self.0.namespaces.iter().any(|n| n == ns)))
//!     }
//! }
//!
//! export_filter!(DropNamespaces);
//! # fn main() {}
//! ```
//!
//! The guest crate needs `crate-type = ["cdylib"]` and `serde` (with `derive`) beside this
//! crate. Build it for `wasm32-unknown-unknown` and name the `.wasm` in a pipeline
//! (`type = "wasm"`, `module = "..."`, `config = {...}`). `examples/wasm/` has complete guests.
//!
//! A map implements [`Map`] and calls [`export_map!`]: it gets each [`Event`] by value, may
//! change its value, key, route or operation, and emits it (or nothing, or several).
//!
//! Where things live:
//! - `event`: [`Event`] (lazy JSON value, typed views, change tracking), [`Error`].
//! - `wire`: the ABI v1 envelopes (`docs/wasm-abi.md`).
//! - `mem`: the exports `alloc`, `dealloc`, `feedline_abi_version` and the `unsafe` they need —
//!   the only `unsafe` in Feedline.
//! - `__rt`: the bodies of the generated `init`/`filter`/`map` exports.
//!
//! Returning `Err` from `keep` or `map` sends that one record to the dead-letter sink with the
//! message. A panic stops the whole call; the host then isolates the record by retrying the
//! batch in halves and dead-letters it with the panic message.

mod event;
mod mem;
#[doc(hidden)]
pub mod rt;
mod wire;

/// Implementation details of the export macros.
#[doc(hidden)]
pub use rt as __rt;

pub use event::{Error, Event, Operation, Result};
pub use rt::Emit;
pub use serde;
pub use serde_json::{self, json, Map as JsonMap, Value};
pub use wire::ABI_VERSION;

/// Keep or drop each event.
pub trait Filter: Sized + 'static {
    /// The `config = {...}` table of the pipeline file, as JSON.
    type Config: serde::de::DeserializeOwned;
    /// Called once per instance with the config; an `Err` fails `feedline validate`.
    fn new(config: Self::Config) -> Result<Self>;
    /// `true` keeps the event, `false` drops it, `Err` dead-letters it.
    fn keep(&mut self, event: &Event<'_>) -> Result<bool>;
}

/// Turn each event into zero or more events.
pub trait Map: Sized + 'static {
    /// The `config = {...}` table of the pipeline file, as JSON.
    type Config: serde::de::DeserializeOwned;
    /// Called once per instance with the config; an `Err` fails `feedline validate`.
    fn new(config: Self::Config) -> Result<Self>;
    /// Emit outputs for `event` with `out.emit(...)`; none drops it; `Err` dead-letters it
    /// (and discards what was emitted for it).
    fn map(&mut self, event: Event<'_>, out: &mut Emit) -> Result<()>;
}

/// Export a [`Filter`] implementation as this module's `init` and `filter`.
#[macro_export]
macro_rules! export_filter {
    ($t:ty) => {
        const _: () = {
            #[no_mangle]
            pub extern "C" fn init(ptr: i32, len: i32, version: i32) -> i64 {
                $crate::__rt::init::<$t, _>(ptr, len, version, <$t as $crate::Filter>::new)
            }
            #[no_mangle]
            pub extern "C" fn filter(ptr: i32, len: i32, version: i32) -> i64 {
                $crate::__rt::filter::<$t>(ptr, len, version)
            }
        };
    };
}

/// Export a [`Map`] implementation as this module's `init` and `map`.
#[macro_export]
macro_rules! export_map {
    ($t:ty) => {
        const _: () = {
            #[no_mangle]
            pub extern "C" fn init(ptr: i32, len: i32, version: i32) -> i64 {
                $crate::__rt::init::<$t, _>(ptr, len, version, <$t as $crate::Map>::new)
            }
            #[no_mangle]
            pub extern "C" fn map(ptr: i32, len: i32, version: i32) -> i64 {
                $crate::__rt::map::<$t>(ptr, len, version)
            }
        };
    };
}
