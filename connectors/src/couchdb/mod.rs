//! The `couchdb` source (`_changes`) and sink (`_bulk_docs`), over reqwest.
//!
//! - [`config`]: [`CouchdbSourceConfig`] and [`CouchdbSinkConfig`] — every key documented, pure
//!   validation, password-redacting `Debug`.
//! - `client`: URLs, basic and cookie auth, JSON requests, error classification.
//! - `feed`: the `_changes` wire format — requests, line splitting, rows to events.
//! - `source`: the feed loop — batches, tracker, reconnection with backoff, read timeout.
//! - `checkpoint`: the last done `seq` in `_local/feedline-<pipeline>` or the embedded store.
//! - `sink`: `_bulk_docs` writes with per-document results and conflict policies.
//!
//! Written for CouchDB 3; tested against pouchdb-server. Reference and server differences:
//! `docs/connectors-couchdb.md`.

mod checkpoint;
mod client;
pub mod config;
mod feed;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Sink, SinkConfig, Source, SourceConfig,
};

pub use config::{
    AuthConfig, AuthMethod, CheckpointLocation, CouchdbSinkConfig, CouchdbSourceConfig, Feed, OnConflict,
    StartFrom,
};

/// Bound on the source's non-streaming requests (checkpoint reads and writes, database info).
const SOURCE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl SourceConfig for CouchdbSourceConfig {
    const TYPE: &'static str = "couchdb";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        CouchdbSourceConfig::check(self, ctx)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        let client =
            client::Client::new(&self.url, &self.database, self.auth.as_ref(), SOURCE_REQUEST_TIMEOUT)?;
        let checkpoint = match self.checkpoint {
            CheckpointLocation::Database => checkpoint::Checkpoint::Database {
                id: self.checkpoint_id.clone().unwrap_or_else(|| format!("feedline-{}", ctx.pipeline)),
                pipeline: ctx.pipeline.to_string(),
                rev: None,
            },
            CheckpointLocation::Local => {
                checkpoint::Checkpoint::Local(feedline_engine::checkpoint::CheckpointStore::new(
                    &ctx.data_dir,
                    &ctx.pipeline,
                    &ctx.component_id,
                ))
            }
        };
        Ok(Box::new(source::ChangesSource { config: self.clone(), client, checkpoint }))
    }
}

impl SinkConfig for CouchdbSinkConfig {
    const TYPE: &'static str = "couchdb";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        CouchdbSinkConfig::check(self, ctx)
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        let timeout = Duration::from_millis(self.request_timeout_ms);
        let client = client::Client::new(&self.url, &self.database, self.auth.as_ref(), timeout)?;
        Ok(Arc::new(sink::CouchSink::new(client, self.on_conflict, self.create_database)))
    }
}

/// Posts pre-serialized `_bulk_docs` bodies with the connector's HTTP client and nothing else:
/// the baseline `feedline bench couchdb` measures the sink against.
pub struct RawBulkWriter {
    client: client::Client,
}

impl RawBulkWriter {
    /// A writer for `database` at `url` (no I/O).
    pub fn new(url: &str, database: &str) -> Result<Self, ComponentError> {
        Ok(Self { client: client::Client::new(url, database, None, Duration::from_secs(60))? })
    }

    /// Create the database (fine when it exists).
    pub async fn create_database(&self) -> Result<(), ComponentError> {
        let url = self.client.db_url(&[]);
        match self.client.json::<serde_json::Value>(reqwest::Method::PUT, url, "PUT database", None).await {
            Err(e) if e.status != Some(412) => Err(e.component()),
            _ => Ok(()),
        }
    }

    /// POST one `{"docs": [...]}` body; the number of documents stored.
    pub async fn post(&self, body: Vec<u8>) -> Result<usize, ComponentError> {
        let url = self.client.db_url(&["_bulk_docs"]);
        let rows: Vec<serde_json::Value> = self
            .client
            .json(reqwest::Method::POST, url, "POST _bulk_docs", Some(bytes::Bytes::from(body)))
            .await
            .map_err(|e| e.component())?;
        Ok(rows.iter().filter(|r| r.get("ok").is_some()).count())
    }

    /// The database's `doc_count`.
    pub async fn doc_count(&self) -> Result<u64, ComponentError> {
        let url = self.client.db_url(&[]);
        let info: serde_json::Value = self
            .client
            .json(reqwest::Method::GET, url, "GET database", None)
            .await
            .map_err(|e| e.component())?;
        Ok(info.get("doc_count").and_then(serde_json::Value::as_u64).unwrap_or(0))
    }
}
