//! The generic bodies of the exports that [`export_filter!`](crate::export_filter) and
//! [`export_map!`](crate::export_map) generate. Not for direct use.

use std::any::Any;
use std::cell::RefCell;

use serde::de::DeserializeOwned;

use crate::event::{Event, Result};
use crate::mem::{abort_with, give, with_input};
use crate::wire::{self, RecordError, ABI_VERSION};
use crate::{Filter, Map};

/// Negative results: the request could not be served at all (see docs/wasm-abi.md).
pub const MALFORMED_INPUT: i64 = -1;
/// The host speaks another ABI version.
pub const VERSION_MISMATCH: i64 = -2;
/// `init` has not succeeded yet.
pub const NOT_INITIALISED: i64 = -3;

thread_local! {
    static STATE: RefCell<Option<Box<dyn Any>>> = RefCell::new(None);
}

fn with_state<T: 'static, R>(f: impl FnOnce(&mut T) -> R) -> Option<R> {
    STATE.with(|s| s.borrow_mut().as_mut()?.downcast_mut::<T>().map(f))
}

/// `init(ptr, len, version)`: parse the config, build the transform, keep it for later calls.
/// Returns 0, or an error message for the host.
pub fn init<T: 'static, C: DeserializeOwned>(
    ptr: i32,
    len: i32,
    version: i32,
    new: fn(C) -> Result<T>,
) -> i64 {
    std::panic::set_hook(Box::new(|info| abort_with(&format!("guest {info}"))));
    with_input(ptr, len, |bytes| {
        if version != ABI_VERSION {
            let message = format!("the host speaks ABI version {version}, this module {ABI_VERSION}");
            return give(message.into_bytes());
        }
        let config: C = match serde_json::from_slice(bytes) {
            Ok(c) => c,
            Err(e) => return give(format!("invalid config: {e}").into_bytes()),
        };
        match new(config) {
            Ok(t) => {
                STATE.with(|s| *s.borrow_mut() = Some(Box::new(t)));
                0
            }
            Err(e) => give(e.message().as_bytes().to_vec()),
        }
    })
}

/// `filter(ptr, len, version)`: one verdict per record, plus per-record errors.
pub fn filter<T: Filter>(ptr: i32, len: i32, version: i32) -> i64 {
    with_input(ptr, len, |bytes| {
        if version != ABI_VERSION {
            return VERSION_MISMATCH;
        }
        let Ok(events) = wire::decode_batch(bytes) else { return MALFORMED_INPUT };
        let out = with_state::<T, _>(|t| {
            let mut verdicts = Vec::with_capacity(events.len());
            let mut errors: Vec<RecordError> = Vec::new();
            for event in &events {
                match t.keep(event) {
                    Ok(keep) => verdicts.push(keep),
                    Err(e) => {
                        verdicts.push(false);
                        errors.push((event.index, e.message().to_owned()));
                    }
                }
            }
            wire::encode_filter(&verdicts, &errors)
        });
        out.map_or(NOT_INITIALISED, give)
    })
}

/// Where a [`Map`] puts its outputs for the current input.
pub struct Emit {
    writer: wire::MapWriter,
    current: u32,
    failed: Option<String>,
}

impl Emit {
    /// Emit `event` as an output of the current input. Only what changed crosses back to the
    /// host: emitting the input untouched costs a few bytes.
    pub fn emit(&mut self, event: Event<'_>) {
        if let Err(e) = self.writer.push(self.current, &event) {
            self.failed.get_or_insert_with(|| format!("cannot encode output: {e}"));
        }
    }
}

/// `map(ptr, len, version)`: zero or more outputs per record, plus per-record errors.
pub fn map<T: Map>(ptr: i32, len: i32, version: i32) -> i64 {
    with_input(ptr, len, |bytes| {
        if version != ABI_VERSION {
            return VERSION_MISMATCH;
        }
        let Ok(events) = wire::decode_batch(bytes) else { return MALFORMED_INPUT };
        let out = with_state::<T, _>(|t| {
            let mut emit = Emit { writer: wire::MapWriter::new(events.len()), current: 0, failed: None };
            let mut errors: Vec<RecordError> = Vec::new();
            for event in events {
                let index = event.index;
                emit.current = index;
                let result = t.map(event, &mut emit);
                if let Some(e) = result.err().map(|e| e.message().to_owned()).or_else(|| emit.failed.take()) {
                    errors.push((index, e));
                }
            }
            emit.writer.finish(&errors)
        });
        out.map_or(NOT_INITIALISED, give)
    })
}
