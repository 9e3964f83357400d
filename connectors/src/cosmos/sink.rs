//! The `cosmos` sink: one document per event, created or upserted, `concurrency` at a time.
//!
//! The engine batches, caps the rate and the number of batches in flight, retries and
//! dead-letters; this file turns one event into one SDK call and its outcome into a result. A
//! 409 on create counts as delivered with `on_conflict = "ignore"` (the same id is already
//! stored: the idempotent case of DESIGN.md §4). Throttled writes are retried by the SDK after
//! the service's `x-ms-retry-after-ms` (up to `throttle_retries` times). A delete event deletes
//! the document; one already gone counts as delivered.

use std::path::PathBuf;

use async_trait::async_trait;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::options::{ItemWriteOptions, OperationOptionsBuilder, ThrottlingRetryOptionsBuilder};
use azure_data_cosmos::{CosmosClient, PartitionKey};
use feedline_engine::{lookup, ComponentError, Event, Operation, Sink, WriteResult};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::config::{Connection, CosmosOnConflict, CosmosSinkConfig, CosmosWriteMode};
use super::errors::classify;

/// The running sink.
pub struct CosmosSink {
    config: CosmosSinkConfig,
    connection: Connection,
    client: Option<CosmosClient>,
    container: OnceCell<ContainerClient>,
    options: ItemWriteOptions,
}

impl CosmosSink {
    /// A sink that connects on `start`.
    pub fn new(config: CosmosSinkConfig, base_dir: PathBuf) -> Self {
        let connection = Connection::of_sink(&config, &base_dir);
        Self::build(config, connection, None)
    }

    /// A sink using an existing client (tests: the SDK's in-memory emulator).
    pub fn with_client(config: CosmosSinkConfig, client: CosmosClient) -> Self {
        let connection = Connection::of_sink(&config, std::path::Path::new("."));
        Self::build(config, connection, Some(client))
    }

    fn build(config: CosmosSinkConfig, connection: Connection, client: Option<CosmosClient>) -> Self {
        let throttling =
            ThrottlingRetryOptionsBuilder::new().with_max_retry_count(config.throttle_retries).build();
        let operation = OperationOptionsBuilder::new().with_throttling_retry_options(throttling).build();
        let options = ItemWriteOptions::default().with_operation_options(operation);
        Self { config, connection, client, container: OnceCell::new(), options }
    }

    /// The id and partition key of a document, or why there are none.
    fn identity(&self, doc: &Value) -> Result<(String, PartitionKey), String> {
        let id = match lookup(doc, &self.config.id_field) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(format!("document has no string `{}`", self.config.id_field)),
        };
        let id = if self.config.escape_ids { id.replace('/', "|") } else { id };
        if id.contains(['/', '\\', '?', '#']) {
            return Err(format!("document id `{id}` contains a character Cosmos DB forbids (/ \\ ? #)"));
        }
        let pk = match lookup(doc, &self.config.partition_key) {
            Some(Value::String(s)) if self.config.partition_key == self.config.id_field => {
                PartitionKey::from(if self.config.escape_ids { s.replace('/', "|") } else { s.clone() })
            }
            Some(Value::String(s)) => PartitionKey::from(s.clone()),
            Some(Value::Bool(b)) => PartitionKey::from(*b),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => PartitionKey::from(i),
                None => n.as_f64().and_then(|f| PartitionKey::try_from(f).ok()).ok_or_else(|| {
                    format!("partition key `{}` is not a usable number", self.config.partition_key)
                })?,
            },
            _ => return Err(format!("document has no partition key `{}`", self.config.partition_key)),
        };
        Ok((id, pk))
    }

    async fn write_one(&self, container: &ContainerClient, event: &Event) -> WriteResult {
        let Value::Object(fields) = &*event.value else {
            return Err(ComponentError::reject("event value is not a JSON object"));
        };
        let (id, pk) = self.identity(&event.value).map_err(ComponentError::reject)?;
        let options = Some(self.options.clone());
        if event.operation == Operation::Delete {
            return match container.delete_item(pk, &id, options).await {
                Ok(_) => Ok(()),
                Err(e) if e.status().is_not_found() => Ok(()),
                Err(e) => Err(classify(&e, "delete")),
            };
        }
        let doc = if fields.get("id").and_then(Value::as_str) == Some(id.as_str()) {
            std::borrow::Cow::Borrowed(&*event.value)
        } else {
            let mut fields = fields.clone();
            fields.insert("id".to_owned(), Value::String(id.clone()));
            std::borrow::Cow::Owned(Value::Object(fields))
        };
        let result = match self.config.mode {
            CosmosWriteMode::Upsert => container.upsert_item(pk, &id, &*doc, options).await,
            CosmosWriteMode::Create => container.create_item(pk, &id, &*doc, options).await,
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.status().is_conflict() && self.config.on_conflict == CosmosOnConflict::Ignore => {
                Ok(())
            }
            Err(e) => Err(classify(&e, "write")),
        }
    }

    async fn container(&self) -> Result<&ContainerClient, ComponentError> {
        self.container
            .get_or_try_init(|| async {
                let client = match &self.client {
                    Some(c) => c.clone(),
                    None => self.connection.connect().await?,
                };
                client
                    .database_client(self.config.database.as_str())
                    .container_client(self.config.container.as_str(), None)
                    .await
                    .map_err(|e| classify(&e, &self.config.container))
            })
            .await
    }
}

#[async_trait]
impl Sink for CosmosSink {
    async fn start(&self) -> Result<(), ComponentError> {
        self.container().await.map(|_| ())
    }

    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let container = match self.container().await {
            Ok(c) => c,
            Err(e) => return feedline_engine::same_result(events.len(), Err(e)),
        };
        // Boxed: a higher-ranked closure inside `async_trait` trips the compiler otherwise.
        let writes: Vec<BoxFuture<'_, WriteResult>> =
            events.iter().map(|e| self.write_one(container, e).boxed()).collect();
        futures::stream::iter(writes).buffered(self.config.concurrency).collect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::registry::parse_typed;
    use serde_json::json;

    fn sink(extra: Value) -> CosmosSink {
        let mut v =
            json!({"endpoint": "http://127.0.0.1:8081/", "key": "a2V5", "database": "d", "container": "c"});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let cfg: CosmosSinkConfig = parse_typed(v).unwrap();
        CosmosSink::new(cfg, ".".into())
    }

    #[test]
    fn ids_are_escaped_and_partition_keys_found() {
        let s = sink(json!({"id_field": "_id", "partition_key": "namespace"}));
        let (id, _) = s.identity(&json!({"_id": "guest/0123", "namespace": "guest"})).unwrap();
        assert_eq!(id, "guest|0123");
        assert!(s.identity(&json!({"_id": "guest/0123"})).unwrap_err().contains("partition key"));
        assert!(s.identity(&json!({"namespace": "guest"})).unwrap_err().contains("`_id`"));
        let raw = sink(json!({"escape_ids": false}));
        assert!(raw.identity(&json!({"id": "a/b"})).unwrap_err().contains("forbids"));
        assert!(sink(json!({"partition_key": "/n"})).identity(&json!({"id": "x", "n": 7})).is_ok());
    }
}
