//! `soft_delete`: recognise soft-deleted documents and drop them, mark them as deletes, or pass them.
//!
//! OpenWhisk's Cosmos DB store never deletes a document outright: it rewrites it with
//! `_deleted: true` and a TTL. Downstream of a change feed such a write is really a delete. This
//! transform recognises it (the configured field is exactly `true`, or the event already is a
//! delete) and, by `mode`:
//!
//! - `mark` (default): sets the event's operation to delete so document sinks write a tombstone
//!   or delete the target; the value is unchanged.
//! - `drop`: drops soft-deleted events (e.g. when replicating only live documents).
//! - `pass`: leaves everything unchanged, so a deployment can switch the stage off through an
//!   environment variable (`mode = "${SOFT_DELETE_MODE:-mark}"`) without editing the chain.
//!
//! Other events always pass untouched. Cache invalidation must *not* drop soft deletes (the cached
//! entity is gone): `invalidate_cache` handles them itself.

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Event, Operation, Output, Transform,
    TransformConfig,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Recognises soft-deleted documents (`_deleted: true`) and drops them, marks them as deletes, or
/// passes them unchanged.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SoftDeleteConfig {
    /// Field that flags a soft-deleted document when it is exactly `true`: a top-level name or a
    /// JSON pointer (`/meta/deleted`). For CouchDB `_changes` rows read without `include_docs`,
    /// use `deleted`.
    #[serde(default = "default_field")]
    pub field: String,
    /// What to do with a soft-deleted event (or one that already is a delete): `mark` sets its
    /// operation to delete, `drop` drops it, `pass` leaves it unchanged.
    #[serde(default)]
    pub mode: SoftDeleteMode,
}

/// What `soft_delete` does with a soft-deleted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SoftDeleteMode {
    /// Drop the event.
    Drop,
    /// Set the event's operation to `delete`; keep the value.
    #[default]
    Mark,
    /// Leave the event unchanged.
    Pass,
}

fn default_field() -> String {
    "_deleted".into()
}

impl TransformConfig for SoftDeleteConfig {
    const TYPE: &'static str = "soft_delete";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        if self.field.is_empty() {
            return Err(ConfigProblem::field("field", "`field` must not be empty")
                .with_hint("OpenWhisk's soft-delete flag is `_deleted`"));
        }
        Ok(())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        Ok(Box::new(SoftDelete { field: self.field.clone(), mode: self.mode }))
    }
}

struct SoftDelete {
    field: String,
    mode: SoftDeleteMode,
}

impl SoftDelete {
    fn is_deleted(&self, event: &Event) -> bool {
        event.operation == Operation::Delete || matches!(event.field(&self.field), Some(Value::Bool(true)))
    }
}

impl Transform for SoftDelete {
    fn transform(&mut self, mut event: Event, out: &mut Output) {
        match self.mode {
            SoftDeleteMode::Pass => out.emit(event),
            SoftDeleteMode::Drop => {
                if !self.is_deleted(&event) {
                    out.emit(event);
                }
            }
            SoftDeleteMode::Mark => {
                if self.is_deleted(&event) {
                    event.operation = Operation::Delete;
                }
                out.emit(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::{registry::parse_typed, Metadata};
    use serde_json::json;

    fn config(v: Value) -> SoftDeleteConfig {
        match parse_typed(v) {
            Ok(c) => c,
            Err(e) => panic!("config did not parse: {e:?}"),
        }
    }

    fn transform(cfg: &SoftDeleteConfig) -> SoftDelete {
        SoftDelete { field: cfg.field.clone(), mode: cfg.mode }
    }

    fn run(cfg: Value, events: Vec<Event>) -> Vec<Event> {
        let mut t = transform(&config(cfg));
        let mut out = Output::default();
        t.transform_batch(events, &mut out);
        assert_eq!(out.rejections().count(), 0, "soft_delete never rejects");
        out.emitted().cloned().collect()
    }

    fn ev(v: Value) -> Event {
        Event::new(v, Metadata::from_source("t"))
    }

    fn delete(v: Value) -> Event {
        Event { operation: Operation::Delete, ..ev(v) }
    }

    fn samples() -> Vec<Event> {
        vec![
            ev(json!({"id": "guest|a", "_deleted": true, "ttl": 36000})),
            ev(json!({"id": "guest|b", "_deleted": false})),
            ev(json!({"id": "guest|c"})),
            ev(json!({"id": "guest|d", "_deleted": "true"})),
            delete(json!({"_id": "guest/e"})),
        ]
    }

    #[test]
    fn defaults_are_mark_on_deleted() {
        let cfg = config(json!({}));
        assert_eq!(cfg.field, "_deleted");
        assert_eq!(cfg.mode, SoftDeleteMode::Mark);
    }

    #[test]
    fn mark_sets_delete_and_keeps_value() {
        let out = run(json!({}), samples());
        let ops: Vec<_> = out.iter().map(|e| e.operation).collect();
        use Operation::{Delete as D, Upsert as U};
        assert_eq!(ops, vec![D, U, U, U, D]);
        assert_eq!(out[0].value, json!({"id": "guest|a", "_deleted": true, "ttl": 36000}));
    }

    #[test]
    fn drop_drops_soft_and_real_deletes() {
        let out = run(json!({"mode": "drop"}), samples());
        let ids: Vec<_> = out.iter().map(|e| e.value["id"].clone()).collect();
        assert_eq!(ids, vec![json!("guest|b"), json!("guest|c"), json!("guest|d")]);
    }

    #[test]
    fn pass_changes_nothing() {
        let input = samples();
        assert_eq!(run(json!({"mode": "pass"}), input.clone()), input);
    }

    #[test]
    fn pointer_and_custom_field() {
        let events =
            vec![ev(json!({"meta": {"gone": true}})), ev(json!({"meta": 1})), ev(json!({"deleted": true}))];
        let out = run(json!({"field": "/meta/gone", "mode": "drop"}), events.clone());
        assert_eq!(out.len(), 2);
        let out = run(json!({"field": "deleted", "mode": "drop"}), events);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].value, json!({"meta": 1}));
    }

    #[test]
    fn any_json_value_is_safe() {
        let odd = vec![json!(null), json!(42), json!("x"), json!([true]), json!({"_deleted": null})];
        let out = run(json!({}), odd.into_iter().map(ev).collect());
        assert!(out.iter().all(|e| e.operation == Operation::Upsert));
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn key_and_metadata_are_kept() {
        let mut e = ev(json!({"_deleted": true}));
        e.key = Some(bytes::Bytes::from_static(b"k"));
        e.meta.route = Some("r".into());
        let out = run(json!({}), vec![e]);
        assert_eq!(out[0].key_str(), Some("k"));
        assert_eq!(out[0].meta.route.as_deref(), Some("r"));
    }

    #[test]
    fn config_errors() {
        let ctx = CheckContext { base_dir: ".".into() };
        let problem = config(json!({"field": ""})).check(&ctx).err().map(|p| p.field);
        assert_eq!(problem, Some(Some("field".to_owned())));
        assert!(parse_typed::<SoftDeleteConfig>(json!({"mode": "erase"})).is_err());
        assert!(parse_typed::<SoftDeleteConfig>(json!({"feild": "x"})).is_err());
    }

    #[test]
    fn schema_documents_fields() {
        let schema = serde_json::to_value(schemars::schema_for!(SoftDeleteConfig)).unwrap_or_default();
        assert!(schema["properties"]["mode"].is_object());
        assert!(schema["properties"]["field"]["description"].is_string());
    }
}
