//! `invalidate_cache`: turn a document change into an OpenWhisk cache-invalidation message.
//!
//! OpenWhisk controllers cache entities (actions, packages, triggers, rules, subjects) and drop a
//! cached entry when a `cacheInvalidation` message names it (DESIGN.md §8):
//!
//! ```json
//! {"instanceId":"cache-invalidator","key":{"mainId":"guest/hello"}}
//! ```
//!
//! Each change becomes one such message with record key `messages` and operation upsert (it is a
//! message, not a document). Soft-deleted documents (`_deleted: true`) and delete events still
//! produce a message: the cached entity is gone. Cosmos DB ids store `/` as `|`, so `guest|pkg|a`
//! is unescaped to `guest/pkg/a`. A change without a usable string id is rejected.

use bytes::Bytes;
use feedline_engine::{
    lookup, BuildContext, CheckContext, ComponentError, ConfigProblem, Event, Operation, Output, Transform,
    TransformConfig,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Turns each document change into `{"instanceId": .., "key": {"mainId": <document id>}}`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InvalidateCacheConfig {
    /// Sent as `instanceId`. Controllers ignore messages carrying their own instance id, so this
    /// must differ from every controller's (`controller0`, ...).
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
    /// Field holding the document id: a top-level name or a JSON pointer. Cosmos DB documents use
    /// `id`, CouchDB documents `_id`. When it holds no non-empty string, `_id` and then `id` are
    /// tried; a document with none of them is rejected.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Turn every `|` in the id into `/` (Cosmos DB ids store `guest/pkg/a` as `guest|pkg|a`).
    #[serde(default = "default_unescape_pipes")]
    pub unescape_pipes: bool,
    /// Record key of every message; OpenWhisk's consumers expect `messages`.
    #[serde(default = "default_key")]
    pub key: String,
}

fn default_instance_id() -> String {
    "cache-invalidator".into()
}
fn default_id_field() -> String {
    "id".into()
}
fn default_unescape_pipes() -> bool {
    true
}
fn default_key() -> String {
    "messages".into()
}

impl TransformConfig for InvalidateCacheConfig {
    const TYPE: &'static str = "invalidate_cache";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        if self.id_field.is_empty() {
            return Err(ConfigProblem::field("id_field", "`id_field` must not be empty")
                .with_hint("Cosmos DB documents use `id`, CouchDB documents `_id`"));
        }
        if self.instance_id.is_empty() {
            return Err(ConfigProblem::field("instance_id", "`instance_id` must not be empty").with_hint(
                "controllers skip messages with their own id; the usual value is `cache-invalidator`",
            ));
        }
        Ok(())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        Ok(Box::new(InvalidateCache::new(self)))
    }
}

struct InvalidateCache {
    instance_id: Value,
    id_fields: Vec<String>,
    unescape_pipes: bool,
    key: Bytes,
    missing_id: String,
}

impl InvalidateCache {
    fn new(cfg: &InvalidateCacheConfig) -> Self {
        let mut id_fields = vec![cfg.id_field.clone()];
        for fallback in ["_id", "id"] {
            if !id_fields.iter().any(|f| f == fallback) {
                id_fields.push(fallback.to_owned());
            }
        }
        Self {
            instance_id: Value::String(cfg.instance_id.clone()),
            id_fields,
            unescape_pipes: cfg.unescape_pipes,
            key: Bytes::from(cfg.key.clone().into_bytes()),
            missing_id: format!("document has no string `{}`", cfg.id_field),
        }
    }

    /// Index of the first id field holding a non-empty string.
    fn id_field(&self, value: &Value) -> Option<usize> {
        self.id_fields
            .iter()
            .position(|f| matches!(lookup(value, f), Some(Value::String(s)) if !s.is_empty()))
    }

    /// Move the id out of the document (no copy), unescaping `|` in place.
    fn take_id(&self, value: &mut Value, field: usize) -> String {
        let path = self.id_fields.get(field).map_or("", String::as_str);
        let slot = if path.starts_with('/') { value.pointer_mut(path) } else { value.get_mut(path) };
        let id = match slot {
            Some(Value::String(s)) => std::mem::take(s),
            _ => String::new(),
        };
        if self.unescape_pipes && id.contains('|') {
            unescape_pipes(id)
        } else {
            id
        }
    }
}

/// `|` → `/` reusing the allocation: both are one ASCII byte, so UTF-8 stays valid.
fn unescape_pipes(id: String) -> String {
    let mut bytes = id.into_bytes();
    for b in bytes.iter_mut().filter(|b| **b == b'|') {
        *b = b'/';
    }
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

impl Transform for InvalidateCache {
    fn transform(&mut self, mut event: Event, out: &mut Output) {
        if !event.value.is_object() {
            out.reject(event, "document is not a JSON object");
            return;
        }
        let Some(field) = self.id_field(&event.value) else {
            out.reject(event, self.missing_id.as_str());
            return;
        };
        let main_id = self.take_id(&mut event.value, field);
        let mut key = Map::new();
        key.insert("mainId".to_owned(), Value::String(main_id));
        let mut message = Map::new();
        message.insert("instanceId".to_owned(), self.instance_id.clone());
        message.insert("key".to_owned(), Value::Object(key));
        event.value = Value::Object(message).into();
        event.key = Some(self.key.clone());
        event.operation = Operation::Upsert;
        out.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::{registry::parse_typed, Metadata};
    use serde_json::json;

    fn config(v: Value) -> InvalidateCacheConfig {
        match parse_typed(v) {
            Ok(c) => c,
            Err(e) => panic!("config did not parse: {e:?}"),
        }
    }

    fn ev(v: Value) -> Event {
        Event::new(v, Metadata::from_source("t"))
    }

    fn run(cfg: Value, events: Vec<Event>) -> Output {
        let mut t = InvalidateCache::new(&config(cfg));
        let mut out = Output::default();
        t.transform_batch(events, &mut out);
        out
    }

    fn values(out: &Output) -> Vec<Value> {
        out.emitted().map(|e| Value::clone(&e.value)).collect()
    }

    fn msg(id: &str) -> Value {
        json!({"instanceId": "cache-invalidator", "key": {"mainId": id}})
    }

    #[test]
    fn cosmos_change_becomes_message_with_unescaped_id() {
        let sample = json!({"id":"guest|hello","_clusterId":"west","_deleted":true,"ttl":36000,
            "namespace":"guest","name":"hello","entityType":"action","_lsn":42,"_ts":1571600000});
        let out = run(json!({}), vec![ev(sample)]);
        assert_eq!(values(&out), vec![msg("guest/hello")]);
        let e = out.emitted().next().cloned().unwrap_or_default();
        assert_eq!(e.key_str(), Some("messages"));
        assert_eq!(e.operation, Operation::Upsert);
    }

    #[test]
    fn couchdb_ids_and_fallbacks() {
        let events = vec![
            ev(json!({"_id": "guest/pkg/a", "_rev": "1-x"})),
            ev(json!({"_id": "guest/b", "_rev": "3-y", "_deleted": true})),
            ev(json!({"seq": "4-g1AA", "id": "guest/c", "changes": [{"rev": "3-73"}], "deleted": true})),
        ];
        let out = run(json!({"id_field": "_id"}), events.clone());
        assert_eq!(values(&out), vec![msg("guest/pkg/a"), msg("guest/b"), msg("guest/c")]);
        // `id` configured but missing: `_id` is tried.
        assert_eq!(values(&run(json!({}), events)).len(), 3);
    }

    #[test]
    fn delete_events_still_invalidate() {
        let e = Event { operation: Operation::Delete, ..ev(json!({"_id": "guest/gone"})) };
        let out = run(json!({"id_field": "_id"}), vec![e]);
        let got: Vec<_> = out.emitted().map(|e| (Value::clone(&e.value), e.operation)).collect();
        assert_eq!(got, vec![(msg("guest/gone"), Operation::Upsert)]);
    }

    #[test]
    fn configured_instance_key_and_no_unescape() {
        let cfg =
            json!({"instance_id": "inv-west", "key": "k2", "unescape_pipes": false, "id_field": "/doc/id"});
        let mut e = ev(json!({"doc": {"id": "a|b"}}));
        e.meta.stream = Some("whisks".into());
        let out = run(cfg, vec![e]);
        let got = out.emitted().next().cloned().unwrap_or_default();
        assert_eq!(got.value, json!({"instanceId": "inv-west", "key": {"mainId": "a|b"}}));
        assert_eq!(got.key_str(), Some("k2"));
        assert_eq!(got.meta.stream.as_deref(), Some("whisks"), "metadata is kept");
    }

    #[test]
    fn non_string_id_falls_back_then_rejects() {
        let out = run(json!({}), vec![ev(json!({"id": 7, "_id": "guest/x"}))]);
        assert_eq!(values(&out), vec![msg("guest/x")]);
        let bad = vec![
            ev(json!({"id": 7})),
            ev(json!({"id": ""})),
            ev(json!({"name": "x"})),
            ev(json!({"id": null})),
        ];
        let out = run(json!({}), bad.clone());
        assert_eq!(out.emitted().count(), 0);
        let rejected: Vec<_> =
            out.rejections().map(|(e, r)| (Value::clone(&e.value), r.to_owned())).collect();
        assert_eq!(rejected.len(), 4);
        assert!(rejected.iter().all(|(_, r)| r == "document has no string `id`"));
        assert_eq!(rejected[0].0, json!({"id": 7}), "rejected events are unchanged");
    }

    #[test]
    fn non_objects_are_rejected_not_panicked() {
        let odd = [json!(null), json!("guest|a"), json!([{"id": "a"}]), json!(1.5), json!(true)];
        let out = run(json!({}), odd.into_iter().map(ev).collect());
        assert_eq!(out.emitted().count(), 0);
        assert_eq!(out.rejections().filter(|(_, r)| r.contains("not a JSON object")).count(), 5);
    }

    #[test]
    fn unescape_handles_multibyte_text() {
        assert_eq!(unescape_pipes("ü|ñ|€".into()), "ü/ñ/€");
        assert_eq!(unescape_pipes("plain".into()), "plain");
    }

    #[test]
    fn config_defaults_and_errors() {
        let cfg = config(json!({}));
        assert_eq!(
            (cfg.instance_id.as_str(), cfg.id_field.as_str(), cfg.unescape_pipes, cfg.key.as_str()),
            ("cache-invalidator", "id", true, "messages")
        );
        let ctx = CheckContext { base_dir: ".".into() };
        let field = |v| config(v).check(&ctx).err().and_then(|p| p.field);
        assert_eq!(field(json!({"id_field": ""})).as_deref(), Some("id_field"));
        assert_eq!(field(json!({"instance_id": ""})).as_deref(), Some("instance_id"));
        assert!(parse_typed::<InvalidateCacheConfig>(json!({"instanceId": "x"})).is_err());
    }
}
