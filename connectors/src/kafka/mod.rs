//! The `kafka` source and sink (rdkafka over a bundled librdkafka).
//!
//! - [`config`]: [`KafkaSourceConfig`] and [`KafkaSinkConfig`] — every key documented, pure
//!   validation, secret-redacting `Debug`, the librdkafka passthrough table.
//! - `source`: the consumer-group loop — batches, per-partition trackers, pause on backpressure,
//!   drain and commit on shutdown.
//! - `group`: assignment state and the rdkafka context (rebalance callbacks commit revoked
//!   partitions; commit results; consumer lag from librdkafka statistics).
//! - `decode`: a record becomes an event (key, headers, timestamp, topic/partition/offset).
//! - `sink`: the idempotent producer sink and its error classification.
//! - `template`: topic templates such as `"activations-{namespace}"`.
//!
//! Reference documentation: `docs/connectors-kafka.md`.

pub mod config;
mod decode;
mod group;
mod sink;
mod source;
mod template;

use std::sync::Arc;

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Sink, SinkConfig, Source, SourceConfig,
};

pub use config::{CreateTopic, Decoding, KafkaSinkConfig, KafkaSourceConfig, Librdkafka, Start};
pub use decode::base64;
pub use sink::classify as classify_produce_error;

impl SourceConfig for KafkaSourceConfig {
    const TYPE: &'static str = "kafka";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        KafkaSourceConfig::check(self, ctx)
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        Ok(Box::new(source::KafkaSource { config: self.clone() }))
    }
}

impl SinkConfig for KafkaSinkConfig {
    const TYPE: &'static str = "kafka";

    fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        KafkaSinkConfig::check(self, ctx)
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(sink::KafkaSink::new(self)?))
    }
}
