//! The `couchdb` sink: `_bulk_docs` writes with per-document results.
//!
//! One `write` is one `_bulk_docs` request for the whole batch (the engine batches, bounds
//! concurrency and rate, and retries). Each document's result is mapped to its event:
//!
//! - `ok` → delivered;
//! - `conflict` → `on_conflict`: delivered (`ignore`), re-read `_rev` and write again
//!   (`overwrite`), or dead-lettered (`reject`); a deletion that conflicts re-reads the `_rev`;
//! - an error the server may get over (`unknown_error`, timeouts) → retried; any other
//!   (`forbidden`, `bad_request`, ...) → rejected with the server's reason.
//!
//! A whole request answered 400 or 413 (one document the server cannot parse fails the batch)
//! is split in halves until the bad documents stand alone. 5xx, 429, timeouts and connection
//! errors are retried; 401/403 stop the pipeline; a missing database is created again with
//! `create_database`, and stops the pipeline otherwise.

use std::collections::HashMap;

use async_trait::async_trait;
use feedline_engine::{ComponentError, Event, Operation, Sink, WriteResult};
use reqwest::Method;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::client::{body, Client, CouchError};
use super::config::OnConflict;

/// Rounds of "re-read `_rev`, write again" inside one `write` before the engine retries.
const CONFLICT_ROUNDS: u32 = 3;

/// Per-document errors worth retrying.
const RETRIABLE_DOC_ERRORS: [&str; 5] =
    ["unknown_error", "timeout", "internal_server_error", "service_unavailable", "too_many_requests"];

/// The running sink.
pub struct CouchSink {
    client: Client,
    on_conflict: OnConflict,
    create_database: bool,
}

/// A document on its way to `_bulk_docs`, with the index of its event.
struct Pending {
    index: usize,
    doc: Map<String, Value>,
    delete: bool,
}

impl Pending {
    fn id(&self) -> Option<&str> {
        self.doc.get("_id").and_then(Value::as_str)
    }
}

#[derive(Serialize)]
struct BulkDocs<'a> {
    docs: Vec<&'a Map<String, Value>>,
}

impl CouchSink {
    /// A sink writing through `client`.
    pub fn new(client: Client, on_conflict: OnConflict, create_database: bool) -> Self {
        Self { client, on_conflict, create_database }
    }

    async fn create(&self) -> Result<(), CouchError> {
        let url = self.client.db_url(&[]);
        match self.client.json::<Value>(Method::PUT, url, "PUT database", None).await {
            Err(e) if e.status == Some(412) => Ok(()), // file_exists: someone else created it
            other => other.map(|_| tracing::info!(database = self.client.database(), "created database")),
        }
    }

    /// What a missing database means for the events being written.
    async fn missing_database(&self) -> ComponentError {
        let db = self.client.database();
        if !self.create_database {
            return ComponentError::fatal(format!(
                "database `{db}` does not exist (set `create_database = true` to create it)"
            ));
        }
        match self.create().await {
            Ok(()) => ComponentError::retriable(format!("database `{db}` was missing; created it again")),
            Err(e) => {
                ComponentError::retriable(format!("database `{db}` is missing and cannot be created: {e}"))
            }
        }
    }

    /// The live revision of each id (`None`: absent or deleted).
    async fn current_revs(&self, ids: Vec<&str>) -> Result<HashMap<String, Option<String>>, CouchError> {
        let url = self.client.db_url(&["_all_docs"]);
        let answer: Value = self
            .client
            .json(Method::POST, url, "POST _all_docs", Some(body(&json!({ "keys": ids }))))
            .await?;
        let rows = answer.get("rows").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(rows
            .iter()
            .filter_map(|row| {
                let key = row.get("key")?.as_str()?.to_owned();
                let value = row.get("value");
                let deleted = value.and_then(|v| v.get("deleted")).and_then(Value::as_bool).unwrap_or(false);
                let rev = value.and_then(|v| v.get("rev")).and_then(Value::as_str).filter(|_| !deleted);
                Some((key, rev.map(str::to_owned)))
            })
            .collect())
    }

    async fn bulk_docs(&self, docs: &[Pending]) -> Result<Vec<Value>, CouchError> {
        let payload = body(&BulkDocs { docs: docs.iter().map(|p| &p.doc).collect() });
        let url = self.client.db_url(&["_bulk_docs"]);
        self.client.json(Method::POST, url, "POST _bulk_docs", Some(payload)).await
    }

    /// Turn delete events into `_deleted` stubs with the live `_rev`; absent documents are done.
    async fn deletion_stubs(
        &self,
        deletes: Vec<(usize, String)>,
        results: &mut [Option<WriteResult>],
    ) -> Vec<Pending> {
        if deletes.is_empty() {
            return Vec::new();
        }
        let revs = match self.current_revs(deletes.iter().map(|(_, id)| id.as_str()).collect()).await {
            Ok(revs) => revs,
            Err(e) => {
                let err = self.request_error(&e).await;
                for (i, _) in deletes {
                    results[i] = Some(Err(err.clone()));
                }
                return Vec::new();
            }
        };
        let mut stubs = Vec::new();
        for (index, id) in deletes {
            match revs.get(&id).cloned().flatten() {
                Some(rev) => {
                    let mut doc = Map::new();
                    doc.insert("_id".into(), Value::String(id));
                    doc.insert("_rev".into(), Value::String(rev));
                    doc.insert("_deleted".into(), Value::Bool(true));
                    stubs.push(Pending { index, doc, delete: true });
                }
                None => results[index] = Some(Ok(())), // already gone
            }
        }
        stubs
    }

    async fn request_error(&self, e: &CouchError) -> ComponentError {
        if e.is_missing_database() {
            self.missing_database().await
        } else {
            e.component()
        }
    }

    /// Write `docs`, splitting requests the server refuses as a whole, re-reading `_rev`s for
    /// overwrites and deletions; fills `results`.
    async fn write_docs(&self, docs: Vec<Pending>, results: &mut [Option<WriteResult>]) {
        let mut work = vec![(docs, 0u32)];
        while let Some((mut chunk, round)) = work.pop() {
            if chunk.is_empty() {
                continue;
            }
            let rows = match self.bulk_docs(&chunk).await {
                Ok(rows) => rows,
                Err(e) if matches!(e.status, Some(400 | 413)) && chunk.len() > 1 => {
                    let second = chunk.split_off(chunk.len() / 2);
                    work.push((second, round));
                    work.push((chunk, round));
                    continue;
                }
                Err(e) => {
                    let err = self.request_error(&e).await;
                    for p in chunk {
                        results[p.index] = Some(Err(err.clone()));
                    }
                    continue;
                }
            };
            let mut again = Vec::new();
            let mut rows = rows.into_iter();
            for p in chunk {
                let Some(row) = rows.next() else {
                    results[p.index] =
                        Some(Err(ComponentError::retriable("_bulk_docs answered fewer rows than documents")));
                    continue;
                };
                match self.outcome(&p, &row) {
                    Some(result) => results[p.index] = Some(result),
                    None => again.push(p),
                }
            }
            if again.is_empty() {
                continue;
            }
            if round + 1 >= CONFLICT_ROUNDS {
                for p in again {
                    let id = p.id().unwrap_or_default().to_owned();
                    results[p.index] =
                        Some(Err(ComponentError::retriable(format!("document `{id}` kept conflicting"))));
                }
                continue;
            }
            match self.current_revs(again.iter().filter_map(Pending::id).collect()).await {
                Ok(revs) => {
                    let mut next = Vec::new();
                    for mut p in again {
                        let rev = p.id().and_then(|id| revs.get(id).cloned().flatten());
                        match (rev, p.delete) {
                            (None, true) => results[p.index] = Some(Ok(())), // deleted meanwhile
                            (Some(rev), _) => {
                                p.doc.insert("_rev".into(), Value::String(rev));
                                next.push(p);
                            }
                            (None, false) => {
                                p.doc.remove("_rev");
                                next.push(p);
                            }
                        }
                    }
                    work.push((next, round + 1));
                }
                Err(e) => {
                    let err = self.request_error(&e).await;
                    for p in again {
                        results[p.index] = Some(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// The result of one `_bulk_docs` row; `None` means "re-read the `_rev` and write again".
    fn outcome(&self, p: &Pending, row: &Value) -> Option<WriteResult> {
        let Some(error) = row.get("error").and_then(Value::as_str) else { return Some(Ok(())) };
        let reason = row.get("reason").and_then(Value::as_str).unwrap_or_default();
        let id = p.id().unwrap_or_default();
        if error == "conflict" {
            return match (p.delete, self.on_conflict) {
                (true, _) | (false, OnConflict::Overwrite) => None,
                (false, OnConflict::Ignore) => Some(Ok(())),
                (false, OnConflict::Reject) => {
                    Some(Err(ComponentError::reject(format!("conflict: document `{id}` already exists"))))
                }
            };
        }
        let message = format!("document `{id}`: {error}: {reason}");
        Some(Err(if RETRIABLE_DOC_ERRORS.contains(&error) {
            ComponentError::retriable(message)
        } else {
            ComponentError::reject(message)
        }))
    }
}

/// The id of an event's document: the value's `_id`, else the event key.
fn event_id(event: &Event) -> Option<String> {
    match event.value.get("_id") {
        Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
        _ => event.key_str().filter(|k| !k.is_empty()).map(str::to_owned),
    }
}

/// The document to write for an upsert event: the value without `_rev` (a revision read from
/// another database means nothing here), with `_id` from the key when it has none.
fn document(event: &Event) -> Result<Map<String, Value>, ComponentError> {
    let Value::Object(doc) = &*event.value else {
        return Err(ComponentError::reject("a CouchDB document must be a JSON object"));
    };
    let mut doc = doc.clone();
    // Revisions belong to the target: `on_conflict` decides about an existing document.
    doc.remove("_rev");
    doc.remove("_revisions");
    match doc.get("_id") {
        Some(Value::String(id)) if !id.is_empty() => {}
        Some(Value::String(_)) | None => {
            doc.remove("_id");
            if let Some(key) = event.key_str().filter(|k| !k.is_empty()) {
                doc.insert("_id".into(), Value::String(key.to_owned()));
            }
        }
        Some(other) => {
            return Err(ComponentError::reject(format!("`_id` must be a string, got {other}")));
        }
    }
    Ok(doc)
}

#[async_trait]
impl Sink for CouchSink {
    async fn start(&self) -> Result<(), ComponentError> {
        let url = self.client.db_url(&[]);
        match self.client.json::<Value>(Method::GET, url, "GET database", None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_missing_database() && self.create_database => {
                self.create().await.map_err(|e| e.component())
            }
            Err(e) if e.is_missing_database() => Err(self.missing_database().await),
            Err(e) => Err(e.component()),
        }
    }

    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let mut results: Vec<Option<WriteResult>> = vec![None; events.len()];
        let mut docs = Vec::with_capacity(events.len());
        let mut deletes = Vec::new();
        for (index, event) in events.iter().enumerate() {
            match event.operation {
                Operation::Delete => match event_id(event) {
                    Some(id) => deletes.push((index, id)),
                    None => {
                        results[index] =
                            Some(Err(ComponentError::reject("delete event without a document id")))
                    }
                },
                Operation::Upsert => match document(event) {
                    Ok(doc) => docs.push(Pending { index, doc, delete: false }),
                    Err(e) => results[index] = Some(Err(e)),
                },
            }
        }
        docs.extend(self.deletion_stubs(deletes, &mut results).await);
        self.write_docs(docs, &mut results).await;
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ComponentError::retriable("no result for this document"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::Metadata;

    fn event(value: Value, key: Option<&str>) -> Event {
        Event {
            key: key.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
            value: value.into(),
            operation: Operation::Upsert,
            meta: Metadata::default(),
        }
    }

    #[test]
    fn the_document_id_comes_from_the_value_then_the_key() {
        let doc = document(&event(json!({"_id": "a/1", "_rev": "3-x", "x": 1}), Some("other"))).unwrap();
        assert_eq!(doc["_id"], "a/1");
        assert!(!doc.contains_key("_rev"), "revisions belong to the target");
        let doc = document(&event(json!({"x": 1}), Some("guest/abc"))).unwrap();
        assert_eq!(doc["_id"], "guest/abc");
        let doc = document(&event(json!({"x": 1}), None)).unwrap();
        assert!(!doc.contains_key("_id"), "the server assigns one");
        assert!(document(&event(json!("text"), None)).is_err());
        assert!(document(&event(json!({"_id": 5}), None)).is_err());
        assert_eq!(event_id(&event(json!({}), Some("k"))).as_deref(), Some("k"));
    }

    fn sink(on_conflict: OnConflict) -> CouchSink {
        CouchSink::new(
            Client::new("http://127.0.0.1:1", "db", None, std::time::Duration::from_secs(1)).unwrap(),
            on_conflict,
            false,
        )
    }

    #[test]
    fn conflicts_follow_on_conflict_and_other_errors_reject_or_retry() {
        let p = Pending { index: 0, doc: json!({"_id": "a"}).as_object().unwrap().clone(), delete: false };
        let conflict = json!({"id": "a", "error": "conflict", "reason": "Document update conflict"});
        assert!(matches!(sink(OnConflict::Ignore).outcome(&p, &conflict), Some(Ok(()))));
        assert!(sink(OnConflict::Overwrite).outcome(&p, &conflict).is_none());
        let rejected = sink(OnConflict::Reject).outcome(&p, &conflict).unwrap().unwrap_err();
        assert_eq!(rejected.class, feedline_engine::ErrorClass::Reject);
        let forbidden = json!({"id": "a", "error": "forbidden", "reason": "only admins"});
        let e = sink(OnConflict::Ignore).outcome(&p, &forbidden).unwrap().unwrap_err();
        assert_eq!(e.class, feedline_engine::ErrorClass::Reject);
        assert!(e.message.contains("only admins"), "{}", e.message);
        let busy = json!({"id": "a", "error": "unknown_error", "reason": "?"});
        let e = sink(OnConflict::Ignore).outcome(&p, &busy).unwrap().unwrap_err();
        assert_eq!(e.class, feedline_engine::ErrorClass::Retriable);
        let stub = Pending { delete: true, ..p };
        assert!(sink(OnConflict::Ignore).outcome(&stub, &conflict).is_none(), "a deletion re-reads the rev");
        assert!(matches!(sink(OnConflict::Ignore).outcome(&stub, &json!({"ok": true})), Some(Ok(()))));
    }
}
