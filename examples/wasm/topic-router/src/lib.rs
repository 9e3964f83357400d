//! Route each event to a Kafka topic chosen by a field (e.g. one topic per tenant).
//!
//! ```toml
//! [[transforms]]
//! type = "wasm"
//! module = "topic_router.wasm"
//! config = { field = "namespace", topics = { "whisk.system" = "system-changes" }, default = "changes" }
//! ```
//!
//! The topic is the `topics` entry for the field's value, else `prefix` + the value when a
//! prefix is set, else `default`; with none of them the event keeps the sink's topic. Sinks
//! that support routes (Kafka) write the event to its route.

use std::collections::HashMap;

use feedline_guest::{export_map, Emit, Event, Map, Result};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Top-level field whose string value picks the topic.
    #[serde(default = "default_field")]
    field: String,
    /// Value → topic.
    #[serde(default)]
    topics: HashMap<String, String>,
    /// Topic = prefix + value, for values not in `topics`.
    #[serde(default)]
    prefix: Option<String>,
    /// Topic for the rest (and for events without the field).
    #[serde(default)]
    default: Option<String>,
}

fn default_field() -> String {
    "namespace".into()
}

struct Route(Config);

impl Map for Route {
    type Config = Config;

    fn new(config: Config) -> Result<Self> {
        Ok(Self(config))
    }

    fn map(&mut self, mut event: Event, out: &mut Emit) -> Result<()> {
        let c = &self.0;
        let value = event.field_str(&c.field)?;
        let topic = match value.as_deref() {
            Some(v) => c
                .topics
                .get(v)
                .cloned()
                .or_else(|| c.prefix.as_ref().map(|p| format!("{p}{}", v.replace('/', "."))))
                .or_else(|| c.default.clone()),
            None => c.default.clone(),
        };
        if let Some(topic) = topic {
            event.set_route(topic);
        }
        out.emit(event);
        Ok(())
    }
}

export_map!(Route);
