//! The `cosmos_change_feed` source (a change-feed processor with leases) and the `cosmos` sink,
//! over the official SDK `azure_data_cosmos` (pinned: its change-feed API is a beta).
//!
//! - [`config`]: [`CosmosChangeFeedConfig`] and [`CosmosSinkConfig`] — every key documented, pure
//!   validation, redacting `Debug`, the client they build.
//! - `processor`: the source task — lease rounds (create, split, acquire, steal), renewal,
//!   shutdown with release.
//! - [`leases`]: lease documents, conditional (`If-Match`) lease writes, the balancing rule.
//! - `change_feed`: one reader per owned lease — pages to batches, checkpoints, lag.
//! - `sink`: the document sink.
//! - `errors`: SDK failures → retriable / reject / fatal.
//!
//! The SDK's change-feed *pull* API reads one feed range and survives splits underneath (a
//! parent continuation resumes each child); this module adds what the Rust SDK lacks — the
//! processor that shares ranges between replicas and checkpoints only what is done.
//! Reference documentation: `docs/connectors-cosmos.md`.

mod change_feed;
pub mod config;
mod errors;
pub mod leases;
mod processor;
mod sink;

use std::sync::Arc;

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Sink, SinkConfig, Source, SourceConfig,
};

pub use change_feed::session_lsn;
pub use config::{CosmosChangeFeedConfig, CosmosOnConflict, CosmosSinkConfig, CosmosWriteMode, StartFrom};
pub use errors::classify;
pub use processor::CosmosChangeFeedSource;
pub use sink::CosmosSink;

impl SourceConfig for CosmosChangeFeedConfig {
    const TYPE: &'static str = "cosmos_change_feed";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        CosmosChangeFeedConfig::check(self, ctx)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        Ok(Box::new(CosmosChangeFeedSource::new(self.clone(), ctx.base_dir.clone())))
    }
}

impl SinkConfig for CosmosSinkConfig {
    const TYPE: &'static str = "cosmos";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        CosmosSinkConfig::check(self, ctx)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(CosmosSink::new(self.clone(), ctx.base_dir.clone())))
    }
}

#[cfg(test)]
mod tests;
