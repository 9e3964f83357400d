//! # feedline-connectors
//!
//! Sources and sinks, one folder or file each (config struct, implementation, unit tests):
//!
//! - [`file`]: JSON-lines `file` source (checkpointed, optional `follow`) and `file` sink.
//! - [`stdio`]: `stdin` source and `stdout` sink.
//! - [`generator`]: synthetic events at a rate, for demos and benchmarks.
//! - [`blackhole`]: a sink that discards (and counts) everything.
//! - [`cosmos`]: `cosmos_change_feed` source (change-feed processor with leases) and `cosmos` sink.
//! - [`couchdb`]: `_changes` source (checkpointed `seq`) and `_bulk_docs` document sink.
//! - [`kafka`]: consumer-group `kafka` source and idempotent-producer `kafka` sink.
//!
//! [`register`] is the explicit list: adding a connector adds one line there.

pub mod blackhole;
pub mod cosmos;
pub mod couchdb;
pub mod file;
pub mod generator;
pub mod kafka;
mod lines;
pub mod stdio;

use feedline_engine::Registry;

/// Register every connector. One line per source or sink type.
pub fn register(registry: &mut Registry) {
    registry.add_source::<file::FileSourceConfig>();
    registry.add_source::<stdio::StdinSourceConfig>();
    registry.add_source::<generator::GeneratorConfig>();
    registry.add_source::<cosmos::CosmosChangeFeedConfig>();
    registry.add_source::<couchdb::CouchdbSourceConfig>();
    registry.add_source::<kafka::KafkaSourceConfig>();
    registry.add_sink::<file::FileSinkConfig>();
    registry.add_sink::<stdio::StdoutSinkConfig>();
    registry.add_sink::<blackhole::BlackholeConfig>();
    registry.add_sink::<cosmos::CosmosSinkConfig>();
    registry.add_sink::<couchdb::CouchdbSinkConfig>();
    registry.add_sink::<kafka::KafkaSinkConfig>();
}
