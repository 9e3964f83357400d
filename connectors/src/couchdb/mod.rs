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
