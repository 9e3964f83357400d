//! The `kafka` source and sink configs: the reference documentation of every key.
//!
//! Validation here is pure (no network). Building turns a config into an rdkafka
//! [`ClientConfig`] whose values never reach a log unredacted.

use std::collections::BTreeMap;
use std::fmt;

use feedline_engine::{CheckContext, ConfigProblem};
use rdkafka::ClientConfig;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::template::Template;

/// Reads records from Kafka topics as a member of a consumer group.
///
/// Offsets are committed only for the unbroken run of records whose events are done (delivered,
/// dropped on purpose, or dead-lettered), per partition, every `commit_interval_ms` and when a
/// partition is revoked. After any crash the group resumes from there: records in flight are
/// read again (at-least-once), none is skipped.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// Bootstrap brokers, comma-separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Consumer group id. Replicas with the same group share the partitions (cooperative-sticky
    /// rebalancing); the group's committed offsets are the source's checkpoint.
    pub group_id: String,
    /// Topics to read. Exactly one of `topics` and `topic_pattern` must be set.
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression (librdkafka syntax, must start with `^`) selecting topics, e.g.
    /// `"^completed.*"`. Topics created later that match are picked up within seconds
    /// (metadata is refreshed every 5 s unless `topic.metadata.refresh.interval.ms` says otherwise).
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Where a partition starts when the group has no committed offset for it.
    #[serde(default)]
    pub start: Start,
    /// How a record value becomes the event value.
    #[serde(default)]
    pub decoding: Decoding,
    /// Most records per batch handed to the transforms.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: usize,
    /// How often done offsets are committed, in milliseconds (also on revocation and shutdown).
    #[serde(default = "default_commit_interval_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub commit_interval_ms: u64,
    /// When downstream has not accepted a batch for this long (ms), every assigned partition is
    /// paused (the consumer keeps its group membership) until it does.
    #[serde(default = "default_pause_after_ms")]
    #[schemars(range(min = 0, max = 86400000))]
    pub pause_after_ms: u64,
    /// When partitions are revoked (another replica takes them), wait up to this long (ms) for
    /// their in-flight events before committing, so the new owner re-reads as little as
    /// possible. `0` commits what is done at once.
    #[serde(default = "default_revoke_drain_ms")]
    #[schemars(range(min = 0, max = 3600000))]
    pub revoke_drain_ms: u64,
    /// Any librdkafka consumer property (`security.protocol`, `sasl.mechanism`,
    /// `sasl.password`, `ssl.ca.location`, `fetch.wait.max.ms`, ...). Values of keys containing
    /// `password`, `secret`, `key`, `token` or `jaas` are never logged. `enable.auto.commit`,
    /// `group.id` and `bootstrap.servers` are set by the source and cannot be given here.
    #[serde(default)]
    pub librdkafka: Librdkafka,
}

/// Where a partition without a committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "KafkaStart")]
pub enum Start {
    /// The oldest record still in the partition.
    #[default]
    Earliest,
    /// Only records produced after the consumer joined.
    Latest,
}

/// How a record value becomes an event value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "KafkaDecoding")]
pub enum Decoding {
    /// The value is a JSON document; one that is not is dead-lettered with its
    /// topic/partition/offset.
    #[default]
    Json,
    /// The value is UTF-8 text and becomes a JSON string; invalid UTF-8 is dead-lettered.
    String,
    /// The value becomes a JSON string holding its standard base64 encoding.
    Bytes,
}

fn default_batch_size() -> usize {
    1000
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_pause_after_ms() -> u64 {
    1000
}
fn default_revoke_drain_ms() -> u64 {
    2000
}

/// Writes each event as one Kafka record with an idempotent producer (`enable.idempotence`,
/// `acks=all`). An event is delivered when the broker acknowledged its record.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, comma-separated `host:port` (librdkafka `bootstrap.servers`).
    pub brokers: String,
    /// Target topic: fixed (`"cacheInvalidation"`) or a template with event fields in braces
    /// (`"activations-{namespace}"`, `"{/meta/topic}"`: top-level names or JSON pointers). A
    /// transform's route (`event.meta.route`) wins over this. An event whose template field is
    /// missing is dead-lettered.
    pub topic: String,
    /// A fixed record key for every record, e.g. `"messages"` for OpenWhisk cache invalidation.
    /// Without `key` or `key_field` the event's own key is used (the source record's key, or the
    /// one a transform set).
    #[serde(default)]
    pub key: Option<String>,
    /// Take the record key from this event field (top-level name or JSON pointer); a string is
    /// used as is, any other value as its JSON text. A missing field means no key.
    #[serde(default)]
    pub key_field: Option<String>,
    /// Copy the event's metadata headers (e.g. Kafka headers of the source record,
    /// `traceparent`) onto the record.
    #[serde(default = "default_true")]
    pub forward_headers: bool,
    /// Create the topic at start when it does not exist (brokers without auto-create). Needs a
    /// fixed `topic`.
    #[serde(default)]
    pub create_topic: Option<CreateTopic>,
    /// Any librdkafka producer property (`compression.type`, `linger.ms`, `security.protocol`,
    /// `sasl.password`, ...). Values of keys containing `password`, `secret`, `key`, `token` or
    /// `jaas` are never logged. `enable.idempotence` and `acks` are fixed by the sink.
    #[serde(default)]
    pub librdkafka: Librdkafka,
}

fn default_true() -> bool {
    true
}

/// Topic settings for `create_topic`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "KafkaCreateTopic")]
pub struct CreateTopic {
    /// Number of partitions.
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: i32,
    /// Replication factor.
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 1000))]
    pub replication: i32,
}

fn default_replication() -> i32 {
    1
}

/// librdkafka properties passed through as they are (values may be strings, numbers or booleans).
#[derive(Clone, Default, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Librdkafka(pub BTreeMap<String, Value>);

/// Key fragments whose values are secrets (covers properties librdkafka does not know yet).
const SECRET_HINTS: [&str; 6] = ["password", "secret", "key", "token", "jaas", "credential"];

/// The properties librdkafka 2.12 itself flags `_RK_SENSITIVE` (`rdkafka_conf.c`), so it redacts
/// them in its own dumps. Some carry no hint in their name (`sasl.username`,
/// `sasl.oauthbearer.config`, `ssl.ca.pem`).
const LIBRDKAFKA_SENSITIVE: [&str; 13] = [
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
    "ssl.ca.pem",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

/// True when the value of property `key` must never be logged: librdkafka's own sensitive list,
/// plus any key whose name hints at a secret.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    LIBRDKAFKA_SENSITIVE.contains(&key.as_str()) || SECRET_HINTS.iter().any(|hint| key.contains(hint))
}

impl Librdkafka {
    /// A property's value as librdkafka wants it (text).
    fn text(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// The property, if set.
    pub fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).and_then(Self::text)
    }

    fn check(&self, reserved: &[(&str, &str)]) -> Result<(), ConfigProblem> {
        for (key, value) in &self.0 {
            if Self::text(value).is_none() {
                return Err(ConfigProblem::field(
                    "librdkafka",
                    format!("librdkafka property `{key}` must be a string, number or boolean"),
                ));
            }
            if let Some((_, instead)) = reserved.iter().find(|(k, _)| k == key) {
                return Err(ConfigProblem::field("librdkafka", format!("`{key}` is set by Feedline"))
                    .with_hint(instead.to_string()));
            }
        }
        Ok(())
    }

    /// Apply every property to `config` (after Feedline's defaults, so they win).
    fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.0 {
            if let Some(text) = Self::text(value) {
                config.set(key, text);
            }
        }
    }
}

impl fmt::Debug for Librdkafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, value) in &self.0 {
            if is_secret(key) {
                map.entry(key, &"<redacted>");
            } else {
                map.entry(key, value);
            }
        }
        map.finish()
    }
}

impl fmt::Debug for KafkaSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSourceConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("topics", &self.topics)
            .field("topic_pattern", &self.topic_pattern)
            .field("start", &self.start)
            .field("decoding", &self.decoding)
            .field("batch_size", &self.batch_size)
            .field("commit_interval_ms", &self.commit_interval_ms)
            .field("librdkafka", &self.librdkafka)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("key_field", &self.key_field)
            .field("create_topic", &self.create_topic)
            .field("librdkafka", &self.librdkafka)
            .finish_non_exhaustive()
    }
}

/// A librdkafka error text with the value of a secret property removed.
pub fn redact_client_error(error: &rdkafka::error::KafkaError) -> String {
    match error {
        rdkafka::error::KafkaError::ClientConfig(_, desc, key, value) => {
            let shown = if is_secret(key) { "<redacted>" } else { value.as_str() };
            format!("invalid librdkafka property `{key}` = `{shown}`: {desc}")
        }
        other => other.to_string(),
    }
}

fn check_brokers(brokers: &str) -> Result<(), ConfigProblem> {
    if brokers.trim().is_empty() {
        return Err(ConfigProblem::field("brokers", "`brokers` must not be empty")
            .with_hint("e.g. brokers = \"${KAFKA_HOSTS}\" or \"kafka-0:9092,kafka-1:9092\""));
    }
    Ok(())
}

impl KafkaSourceConfig {
    /// Cross-field rules (no network).
    pub fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        check_brokers(&self.brokers)?;
        if self.group_id.trim().is_empty() {
            return Err(ConfigProblem::field("group_id", "`group_id` must not be empty"));
        }
        match (&self.topic_pattern, self.topics.is_empty()) {
            (Some(_), false) => {
                return Err(ConfigProblem::field(
                    "topic_pattern",
                    "set either `topics` or `topic_pattern`, not both",
                ))
            }
            (None, true) => {
                return Err(ConfigProblem::field("topics", "no topics to read")
                    .with_hint("set `topics = [\"name\"]` or `topic_pattern = \"^prefix.*\"`"))
            }
            (Some(p), true) => check_pattern(p)?,
            (None, false) => {
                if let Some(bad) = self.topics.iter().find(|t| t.trim().is_empty() || t.starts_with('^')) {
                    return Err(ConfigProblem::field("topics", format!("`{bad}` is not a topic name"))
                        .with_hint("regular expressions go in `topic_pattern`"));
                }
            }
        }
        if self.batch_size == 0 {
            return Err(ConfigProblem::field("batch_size", "`batch_size` must be at least 1"));
        }
        if self.commit_interval_ms == 0 {
            return Err(ConfigProblem::field(
                "commit_interval_ms",
                "`commit_interval_ms` must be at least 1",
            ));
        }
        self.librdkafka.check(&[
            ("bootstrap.servers", "use `brokers`"),
            ("metadata.broker.list", "use `brokers`"),
            ("group.id", "use `group_id`"),
            ("enable.auto.commit", "offsets are committed by the source once events are done"),
            ("enable.auto.offset.store", "offsets are committed by the source once events are done"),
            ("auto.offset.reset", "use `start = \"earliest\" | \"latest\"`"),
        ])
    }

    /// The subscription: topic names, or the pattern.
    pub fn subscription(&self) -> Vec<String> {
        match &self.topic_pattern {
            Some(p) => vec![p.clone()],
            None => self.topics.clone(),
        }
    }

    /// The consumer's librdkafka configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "auto.offset.reset",
                match self.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            )
            .set("statistics.interval.ms", "5000")
            .set("client.id", format!("feedline-{}", self.group_id));
        if self.topic_pattern.is_some() {
            c.set("topic.metadata.refresh.interval.ms", "5000");
        }
        self.librdkafka.apply(&mut c);
        c
    }
}

fn check_pattern(pattern: &str) -> Result<(), ConfigProblem> {
    if !pattern.starts_with('^') || pattern.len() < 2 {
        return Err(ConfigProblem::field("topic_pattern", format!("`{pattern}` must start with `^`"))
            .with_hint("librdkafka treats a subscription as a regular expression only when it starts with `^`, e.g. \"^completed.*\""));
    }
    let mut depth: i32 = 0;
    let mut escaped = false;
    for c in pattern.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '(') => depth += 1,
            (false, ')') => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            break;
        }
    }
    if depth != 0 || escaped {
        return Err(ConfigProblem::field(
            "topic_pattern",
            format!("`{pattern}` is not a valid regular expression"),
        ));
    }
    Ok(())
}

impl KafkaSinkConfig {
    /// Cross-field rules (no network).
    pub fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        check_brokers(&self.brokers)?;
        let template = Template::parse(&self.topic).map_err(|e| ConfigProblem::field("topic", e))?;
        if self.key.is_some() && self.key_field.is_some() {
            return Err(ConfigProblem::field("key_field", "set either `key` or `key_field`, not both"));
        }
        if let Some(create) = &self.create_topic {
            if !template.is_fixed() {
                return Err(ConfigProblem::field("create_topic", "`create_topic` needs a fixed `topic`")
                    .with_hint("create templated topics ahead of time"));
            }
            if create.partitions < 1 || create.replication < 1 {
                return Err(ConfigProblem::field(
                    "create_topic",
                    "`partitions` and `replication` must be at least 1",
                ));
            }
        }
        self.librdkafka.check(&[
            ("bootstrap.servers", "use `brokers`"),
            ("metadata.broker.list", "use `brokers`"),
            ("enable.idempotence", "the sink always uses the idempotent producer"),
            ("acks", "the sink always uses acks=all"),
            ("request.required.acks", "the sink always uses acks=all"),
            ("transactional.id", "the sink does not use transactions"),
        ])
    }

    /// The producer's librdkafka configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers).set("linger.ms", "5").set("client.id", "feedline");
        self.librdkafka.apply(&mut c);
        c.set("enable.idempotence", "true").set("acks", "all");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CheckContext {
        CheckContext { base_dir: ".".into() }
    }

    fn source(extra: Value) -> KafkaSourceConfig {
        let mut v = serde_json::json!({"brokers": "127.0.0.1:9092", "group_id": "g", "topics": ["t"]});
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in extra {
                obj.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn secrets_never_show_in_debug_or_config_errors() {
        let cfg = source(serde_json::json!({"librdkafka": {
            "sasl.password": "hunter2", "sasl.jaas.config": "user=x password=hunter2",
            "ssl.key.password": "hunter2", "sasl.oauthbearer.client.secret": "hunter2",
            "sasl.username": "hunter2", "sasl.oauthbearer.config": "principal=hunter2",
            "ssl.ca.pem": "hunter2", "security.protocol": "SASL_SSL"
        }}));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
        let err = rdkafka::error::KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "bad".into(),
            "sasl.password".into(),
            "hunter2".into(),
        );
        assert!(!redact_client_error(&err).contains("hunter2"));
    }

    #[test]
    fn topics_and_pattern_are_exclusive_and_patterns_need_a_caret() {
        let both = source(serde_json::json!({"topic_pattern": "^a.*"}));
        assert_eq!(both.check(&ctx()).unwrap_err().field.as_deref(), Some("topic_pattern"));
        let mut none = source(serde_json::json!({}));
        none.topics.clear();
        assert!(none.check(&ctx()).is_err());
        none.topic_pattern = Some("completed.*".into());
        assert!(none.check(&ctx()).unwrap_err().hint.unwrap().contains('^'));
        none.topic_pattern = Some("^completed.*".into());
        none.check(&ctx()).unwrap();
        assert_eq!(none.subscription(), vec!["^completed.*".to_string()]);
    }

    #[test]
    fn reserved_properties_are_refused_with_a_hint() {
        let cfg = source(serde_json::json!({"librdkafka": {"enable.auto.commit": true}}));
        let p = cfg.check(&ctx()).unwrap_err();
        assert_eq!(p.field.as_deref(), Some("librdkafka"));
        let cfg = source(serde_json::json!({"librdkafka": {"fetch.wait.max.ms": 10}}));
        cfg.check(&ctx()).unwrap();
        assert_eq!(cfg.client_config().get("fetch.wait.max.ms"), Some("10"));
        assert_eq!(cfg.client_config().get("enable.auto.commit"), Some("false"));
    }

    #[test]
    fn sink_rules() {
        let sink = |v: Value| -> KafkaSinkConfig { serde_json::from_value(v).unwrap() };
        let ok =
            sink(serde_json::json!({"brokers": "b:9092", "topic": "t", "create_topic": {"partitions": 4}}));
        ok.check(&ctx()).unwrap();
        assert_eq!(ok.client_config().get("enable.idempotence"), Some("true"));
        assert_eq!(ok.client_config().get("acks"), Some("all"));
        let templated =
            sink(serde_json::json!({"brokers": "b", "topic": "t-{ns}", "create_topic": {"partitions": 1}}));
        assert_eq!(templated.check(&ctx()).unwrap_err().field.as_deref(), Some("create_topic"));
        let both = sink(serde_json::json!({"brokers": "b", "topic": "t", "key": "k", "key_field": "id"}));
        assert!(both.check(&ctx()).is_err());
        let acks = sink(serde_json::json!({"brokers": "b", "topic": "t", "librdkafka": {"acks": "1"}}));
        assert!(acks.check(&ctx()).is_err());
        let unknown: Result<KafkaSinkConfig, _> =
            serde_json::from_value(serde_json::json!({"brokers": "b", "topic": "t", "topics": ["x"]}));
        assert!(unknown.is_err());
    }
}
