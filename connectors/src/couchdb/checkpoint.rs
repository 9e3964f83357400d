//! Where the changes source keeps its last done `seq`: a `_local/<id>` document in the followed
//! database (like CouchDB replication), or Feedline's embedded checkpoint store.

use std::time::{SystemTime, UNIX_EPOCH};

use feedline_engine::checkpoint::CheckpointStore;
use feedline_engine::{ComponentError, ErrorClass};
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{body, Client, CouchError};

const LOCAL_KEY: &str = "since";

/// A checkpoint location.
pub enum Checkpoint {
    /// `_local/<id>` in the database; `rev` is the document's last known revision.
    Database {
        /// Document id without the `_local/` prefix.
        id: String,
        /// Pipeline name, stored for humans reading the document.
        pipeline: String,
        /// Last known `_rev`.
        rev: Option<String>,
    },
    /// The embedded store.
    Local(CheckpointStore),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Checkpoint {
    /// Where it lives, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Database { id, .. } => format!("_local/{id}"),
            Self::Local(_) => "the embedded checkpoint store".into(),
        }
    }

    /// The stored `seq`, if any.
    pub async fn load(&mut self, client: &Client) -> Result<Option<Value>, ComponentError> {
        match self {
            Self::Local(store) => {
                let saved =
                    store.load(LOCAL_KEY).map_err(|e| ComponentError::fatal(format!("checkpoint: {e}")))?;
                Ok(saved.and_then(|v| v.get("seq").cloned()))
            }
            Self::Database { id, rev, .. } => match read(client, id).await? {
                Some(doc) => {
                    *rev = doc.get("_rev").and_then(Value::as_str).map(str::to_owned);
                    Ok(doc.get("seq").cloned())
                }
                None => Ok(None),
            },
        }
    }

    /// Store `seq` durably.
    pub async fn store(&mut self, client: &Client, seq: &Value) -> Result<(), ComponentError> {
        match self {
            Self::Local(store) => store
                .store(LOCAL_KEY, &json!({ "seq": seq, "database": client.database() }))
                .map_err(|e| ComponentError::retriable(format!("checkpoint: {e}"))),
            Self::Database { id, pipeline, rev } => {
                for _ in 0..2 {
                    let mut doc = json!({ "seq": seq, "pipeline": pipeline, "updated_ms": now_ms() });
                    if let Some(r) = rev.as_ref() {
                        doc["_rev"] = Value::String(r.clone());
                    }
                    let url = client.db_url(&["_local", id]);
                    match client.json::<Value>(Method::PUT, url, "PUT checkpoint", Some(body(&doc))).await {
                        Ok(answer) => {
                            *rev = answer.get("rev").and_then(Value::as_str).map(str::to_owned);
                            return Ok(());
                        }
                        Err(e) if e.status == Some(409) => {
                            // Someone (an earlier run we did not see) wrote it: take its revision.
                            *rev = read(client, id)
                                .await?
                                .and_then(|d| d.get("_rev").and_then(Value::as_str).map(str::to_owned));
                        }
                        Err(e) => return Err(classify(e)),
                    }
                }
                Err(ComponentError::retriable(format!("checkpoint _local/{id} keeps conflicting")))
            }
        }
    }
}

async fn read(client: &Client, id: &str) -> Result<Option<Value>, ComponentError> {
    let url = client.db_url(&["_local", id]);
    match client.json::<Value>(Method::GET, url, "GET checkpoint", None).await {
        Ok(doc) => Ok(Some(doc)),
        Err(e) if e.status == Some(404) && e.error == "not_found" && !missing_db(&e) => Ok(None),
        Err(e) => Err(classify(e)),
    }
}

/// CouchDB says `Database does not exist.`, pouchdb-server `no_db_file`.
fn missing_db(e: &CouchError) -> bool {
    e.message.contains("Database does not exist") || e.message.contains("no_db_file")
}

/// For a source, a request refused outright is a configuration problem: stop.
pub fn classify(e: CouchError) -> ComponentError {
    let class = if e.class == ErrorClass::Reject { ErrorClass::Fatal } else { e.class };
    ComponentError { class, message: e.message }
}
