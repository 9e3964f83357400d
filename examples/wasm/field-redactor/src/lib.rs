//! Replace sensitive fields with a fixed text before events leave the pipeline.
//!
//! ```toml
//! [[transforms]]
//! type = "wasm"
//! module = "field_redactor.wasm"
//! config = { fields = ["password", "/auth/token"], replacement = "[redacted]" }
//! ```
//!
//! Fields are top-level names or JSON pointers. Only the replacements cross back to the host
//! (`Event::replace_field`); events with none of the fields pass unchanged.

use feedline_guest::{export_map, Emit, Error, Event, Map, Result, Value};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Top-level names or JSON pointers (`/a/b`) of the fields to redact.
    fields: Vec<String>,
    /// What a redacted field becomes.
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "[redacted]".into()
}

struct Redact {
    pointers: Vec<String>,
    replacement: Value,
}

impl Map for Redact {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        if config.fields.is_empty() {
            return Err(Error::new("`fields` must name at least one field"));
        }
        let pointers =
            config
                .fields
                .into_iter()
                .map(|f| {
                    if f.starts_with('/') {
                        f
                    } else {
                        format!("/{}", f.replace('~', "~0").replace('/', "~1"))
                    }
                })
                .collect();
        Ok(Self { pointers, replacement: Value::String(config.replacement) })
    }

    fn map(&mut self, mut event: Event, out: &mut Emit) -> Result<()> {
        // Field patches: the guest never parses the value, the host replaces what is present.
        for p in &self.pointers {
            event.replace_field(p, self.replacement.clone())?;
        }
        out.emit(event);
        Ok(())
    }
}

export_map!(Redact);
