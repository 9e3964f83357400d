//! The `kafka` sink: one record per event through an idempotent producer.
//!
//! `write` enqueues the whole batch with librdkafka (which batches, compresses and retries
//! internally), then waits for every delivery report: an event is delivered only when its record
//! is acknowledged by all in-sync replicas. Failures are classified for the engine:
//! oversized or invalid records and unknown templated topics are rejected to the dead-letter sink;
//! authorization failures stop the pipeline; everything else (timeouts, broker down, leader
//! changes) is retried by the engine with backoff. A producer that hit a fatal idempotence error
//! is replaced by a fresh one, and its events retried.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use feedline_engine::{lookup, ComponentError, Event, Operation, Sink, WriteResult};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde_json::Value;

use super::config::{redact_client_error, KafkaSinkConfig};
use super::group::log_librdkafka;
use super::template::Template;

/// Forwards librdkafka's logs and errors to tracing.
#[derive(Clone)]
pub struct ProducerLogs;

impl ClientContext for ProducerLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_librdkafka(level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "kafka producer error");
    }
}

type Producer_ = FutureProducer<ProducerLogs>;

/// The running sink.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    client_config: ClientConfig,
    topic: Template,
    producer: Mutex<Arc<Producer_>>,
}

impl KafkaSink {
    /// Build the producer (no network until the first write).
    pub fn new(config: &KafkaSinkConfig) -> Result<Self, ComponentError> {
        let topic = Template::parse(&config.topic).map_err(ComponentError::fatal)?;
        let client_config = config.client_config();
        let producer = Arc::new(create_producer(&client_config)?);
        tracing::info!(brokers = %config.brokers, topic = %config.topic, librdkafka = ?config.librdkafka, "kafka sink created");
        Ok(Self { config: config.clone(), client_config, topic, producer: Mutex::new(producer) })
    }

    fn producer(&self) -> Arc<Producer_> {
        self.producer.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace a producer that is in a fatal state (once, however many writes noticed it).
    fn replace_producer(&self, broken: &Arc<Producer_>) {
        let mut current = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&current, broken) {
            return;
        }
        match create_producer(&self.client_config) {
            Ok(p) => {
                tracing::warn!("kafka producer hit a fatal error; replaced it with a new one");
                *current = Arc::new(p);
            }
            Err(e) => tracing::error!(error = %e.message, "cannot recreate the kafka producer"),
        }
    }

    fn topic_for<'e>(&'e self, event: &'e Event) -> Result<Cow<'e, str>, ComponentError> {
        if let Some(route) = &event.meta.route {
            super::template::check_topic_name(route).map_err(ComponentError::reject)?;
            return Ok(Cow::Borrowed(route));
        }
        self.topic.render(event).map_err(ComponentError::reject)
    }

    fn key_for<'e>(&'e self, event: &'e Event) -> Option<Cow<'e, [u8]>> {
        if let Some(fixed) = &self.config.key {
            return Some(Cow::Borrowed(fixed.as_bytes()));
        }
        if let Some(field) = &self.config.key_field {
            return match lookup(&event.value, field)? {
                Value::Null => None,
                Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
                other => Some(Cow::Owned(other.to_string().into_bytes())),
            };
        }
        event.key.as_deref().map(Cow::Borrowed)
    }

    fn headers(&self, event: &Event) -> Option<OwnedHeaders> {
        if !self.config.forward_headers || event.meta.headers.is_empty() {
            return None;
        }
        let mut headers = OwnedHeaders::new_with_capacity(event.meta.headers.len());
        for (key, value) in &event.meta.headers {
            headers = headers.insert(Header { key, value: Some(value.as_ref()) });
        }
        Some(headers)
    }

    /// Enqueue one event; waits while librdkafka's queue is full.
    async fn enqueue(&self, producer: &Producer_, event: &Event) -> Result<DeliveryFuture, ComponentError> {
        let topic = self.topic_for(event)?;
        let key = self.key_for(event);
        // A delete without a value is a tombstone; everything else is the event's JSON.
        // Unchanged input text is sent as it was read, without a parse or a serialisation.
        let payload: Option<Bytes> = match event.operation {
            Operation::Delete if event.value.is_null() => None,
            _ => Some(
                event
                    .value
                    .to_json_bytes()
                    .map_err(|e| ComponentError::reject(format!("cannot serialize: {e}")))?,
            ),
        };
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        if let Some(p) = payload.as_deref() {
            record = record.payload(p);
        }
        if let Some(h) = self.headers(event) {
            record = record.headers(h);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(classify(&e, self.topic.is_fixed())),
            }
        }
    }
}

fn create_producer(config: &ClientConfig) -> Result<Producer_, ComponentError> {
    Producer_::from_config_and_context(config, ProducerLogs)
        .map_err(|e| ComponentError::fatal(format!("kafka producer: {}", redact_client_error(&e))))
}

/// What the engine should do about a failed produce.
pub fn classify(error: &KafkaError, fixed_topic: bool) -> ComponentError {
    use RDKafkaErrorCode as C;
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        other => return ComponentError::retriable(format!("kafka produce: {other}")),
    };
    let message = format!("kafka produce: {error}");
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidTopic
        | C::MessageBatchTooLarge
        | C::InvalidTimestamp
        | C::BadMessage
        | C::InvalidArgument => ComponentError::reject(message),
        // A topic produced from an event field that does not exist: that event's problem. A
        // configured topic that does not exist yet: wait for it (an operator creates it).
        C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition if !fixed_topic => {
            ComponentError::reject(message)
        }
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication => ComponentError::fatal(message),
        _ => ComponentError::retriable(message),
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn start(&self) -> Result<(), ComponentError> {
        let (Some(create), Some(topic)) = (self.config.create_topic, self.topic.fixed()) else {
            return Ok(());
        };
        let admin: AdminClient<DefaultClientContext> =
            AdminClient::from_config_and_context(&self.client_config, DefaultClientContext)
                .map_err(|e| ComponentError::fatal(format!("kafka admin: {}", redact_client_error(&e))))?;
        let new = NewTopic::new(topic, create.partitions, TopicReplication::Fixed(create.replication));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| ComponentError::retriable(format!("kafka create topic `{topic}`: {e}")))?;
        for result in results {
            match result {
                Ok(_) => tracing::info!(topic, partitions = create.partitions, "kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic, "kafka topic exists")
                }
                Err((
                    _,
                    code @ (RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
                    | RDKafkaErrorCode::InvalidReplicationFactor
                    | RDKafkaErrorCode::InvalidPartitions
                    | RDKafkaErrorCode::InvalidTopic
                    | RDKafkaErrorCode::PolicyViolation),
                )) => return Err(ComponentError::fatal(format!("kafka create topic `{topic}`: {code}"))),
                Err((_, code)) => {
                    return Err(ComponentError::retriable(format!("kafka create topic `{topic}`: {code}")))
                }
            }
        }
        Ok(())
    }

    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let producer = self.producer();
        let mut results: Vec<WriteResult> = Vec::with_capacity(events.len());
        let mut waiting: Vec<(usize, DeliveryFuture)> = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match self.enqueue(&producer, event).await {
                Ok(delivery) => {
                    waiting.push((i, delivery));
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut fatal = false;
        for (i, delivery) in waiting {
            results[i] = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => {
                    fatal |= matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::Fatal));
                    Err(classify(&e, self.topic.is_fixed()))
                }
                Err(_) => {
                    Err(ComponentError::retriable("kafka producer went away before the delivery report"))
                }
            };
        }
        if fatal || producer.client().fatal_error().is_some() {
            self.replace_producer(&producer);
        }
        results
    }

    async fn stop(&self) {
        let producer = self.producer();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "kafka producer flush at stop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use feedline_engine::{ErrorClass, Metadata};

    fn sink(v: Value) -> KafkaSink {
        let cfg: KafkaSinkConfig = serde_json::from_value(v).unwrap();
        KafkaSink::new(&cfg).unwrap()
    }

    #[test]
    fn classification_of_produce_errors() {
        let class = |code, fixed| classify(&KafkaError::MessageProduction(code), fixed).class;
        assert_eq!(class(RDKafkaErrorCode::MessageSizeTooLarge, true), ErrorClass::Reject);
        assert_eq!(class(RDKafkaErrorCode::MessageTimedOut, true), ErrorClass::Retriable);
        assert_eq!(class(RDKafkaErrorCode::NotEnoughReplicas, true), ErrorClass::Retriable);
        assert_eq!(class(RDKafkaErrorCode::UnknownTopicOrPartition, true), ErrorClass::Retriable);
        assert_eq!(class(RDKafkaErrorCode::UnknownTopicOrPartition, false), ErrorClass::Reject);
        assert_eq!(class(RDKafkaErrorCode::TopicAuthorizationFailed, true), ErrorClass::Fatal);
        assert_eq!(class(RDKafkaErrorCode::Fatal, true), ErrorClass::Retriable);
    }

    #[test]
    fn topic_key_and_headers_from_the_event() {
        let s = sink(
            serde_json::json!({"brokers": "127.0.0.1:1", "topic": "act-{namespace}", "key_field": "/a/id"}),
        );
        let mut e =
            Event::new(serde_json::json!({"namespace": "guest", "a": {"id": 7}}), Metadata::default());
        assert_eq!(s.topic_for(&e).unwrap(), "act-guest");
        assert_eq!(s.key_for(&e).as_deref(), Some(&b"7"[..]));
        e.meta.route = Some("override".into());
        assert_eq!(s.topic_for(&e).unwrap(), "override", "a transform's route wins");
        e.meta.route = None;
        e.value = serde_json::json!({"a": {"id": "x"}}).into();
        assert_eq!(s.topic_for(&e).unwrap_err().class, ErrorClass::Reject);
        assert_eq!(s.key_for(&e).as_deref(), Some(&b"x"[..]));

        let fixed = sink(serde_json::json!({"brokers": "127.0.0.1:1", "topic": "t", "key": "messages"}));
        assert_eq!(fixed.key_for(&e).as_deref(), Some(&b"messages"[..]));
        let own = sink(serde_json::json!({"brokers": "127.0.0.1:1", "topic": "t"}));
        e.key = Some(Bytes::from_static(b"k1"));
        assert_eq!(own.key_for(&e).as_deref(), Some(&b"k1"[..]), "the event's key by default");
        e.meta.headers.push(("traceparent".into(), Bytes::from_static(b"00-abc")));
        assert!(own.headers(&e).is_some());
    }
}
