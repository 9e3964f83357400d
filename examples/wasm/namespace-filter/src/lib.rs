//! Drop the changes of some namespaces (e.g. OpenWhisk's `whisk.system`).
//!
//! ```toml
//! [[transforms]]
//! type = "wasm"
//! module = "namespace_filter.wasm"
//! config = { namespaces = ["whisk.system"] }      # field = "namespace" by default
//! ```
//!
//! A namespace matches itself and its packages: `whisk.system` also drops `whisk.system/utils`.
//! Events without the field (or with a non-string value) are kept.

use feedline_guest::{export_filter, Error, Event, Filter, Result};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Namespaces whose changes are dropped.
    namespaces: Vec<String>,
    /// Top-level field holding the namespace.
    #[serde(default = "default_field")]
    field: String,
}

fn default_field() -> String {
    "namespace".into()
}

struct DropNamespaces(Config);

impl Filter for DropNamespaces {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        if config.namespaces.iter().any(String::is_empty) {
            return Err(Error::new("`namespaces` must not contain an empty name"));
        }
        Ok(Self(config))
    }

    fn keep(&mut self, event: &Event) -> Result<bool> {
        let Some(ns) = event.field_str(&self.0.field)? else { return Ok(true) };
        let dropped = self.0.namespaces.iter().any(|n| {
            ns.strip_prefix(n.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        Ok(!dropped)
    }
}

export_filter!(DropNamespaces);
