//! A deliberately bad guest, for the sandbox tests: on records whose `field` is `true` it panics,
//! traps, loops forever, allocates without bound or returns an error, as `mode` says. Every
//! other record is kept. Not an example to follow.

use feedline_guest::{export_filter, Error, Event, Filter, Result, Value};
use serde::Deserialize;

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum Mode {
    /// `panic!` (the SDK reports the message, then the guest traps).
    Panic,
    /// A bare `unreachable` trap, no message.
    Trap,
    /// Never return.
    Loop,
    /// Allocate 1 MiB blocks until memory runs out.
    Bomb,
    /// Return a per-record error.
    Error,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
    #[serde(default = "default_field")]
    field: String,
}

fn default_field() -> String {
    "poison".into()
}

struct Misbehave(Config);

impl Filter for Misbehave {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        Ok(Self(config))
    }

    fn keep(&mut self, event: &Event) -> Result<bool> {
        if event.value()?.get(&self.0.field) != Some(&Value::Bool(true)) {
            return Ok(true);
        }
        match self.0.mode {
            Mode::Panic => panic!("poisoned record {}", event.value()?),
            Mode::Trap => trap(),
            Mode::Loop => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Bomb => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            Mode::Error => Err(Error::new("poisoned record refused")),
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}

export_filter!(Misbehave);
