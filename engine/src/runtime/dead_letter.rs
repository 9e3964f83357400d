//! The dead-letter path: rejected events become envelope records for the dead-letter sink.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::mpsc;

use super::sink_driver::SinkDriver;
use crate::component::{Batch, ComponentError, Rejected, Sink};
use crate::config::{ComponentDef, SinkDef, SinkOptions};
use crate::event::Event;
use crate::jsonl::{JsonLinesSink, LineFormat};
use crate::registry::{BuildContext, BuildSink};

/// Used when a pipeline has no `[dead_letter]`: `<data-dir>/<pipeline>/dead-letter.jsonl`.
struct DefaultDeadLetter;

impl BuildSink for DefaultDeadLetter {
    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        let path = default_path(&ctx.data_dir, &ctx.pipeline);
        Ok(Arc::new(JsonLinesSink::new(&path, LineFormat::Value, true)))
    }
}

/// Where rejected events of `pipeline` go when it has no `[dead_letter]`.
pub fn default_path(data_dir: &Path, pipeline: &str) -> std::path::PathBuf {
    data_dir.join(pipeline).join("dead-letter.jsonl")
}

/// The default dead-letter sink definition.
pub(super) fn default_sink() -> SinkDef {
    SinkDef {
        component: ComponentDef {
            id: "dead_letter".into(),
            type_name: "file".into(),
            config: Box::new(DefaultDeadLetter),
        },
        options: SinkOptions::default(),
    }
}

/// The record written for a rejected event: what failed, where, why, and the event itself.
pub fn envelope(pipeline: &str, r: &Rejected) -> Event {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let value = json!({
        "pipeline": pipeline,
        "stage": r.stage,
        "error": r.error,
        "origin": r.event.meta.position_json(),
        "key": r.event.key_str(),
        "operation": r.event.operation,
        "event": r.event.value,
        "rejected_at_ms": now_ms,
    });
    Event {
        key: r.event.key.clone(),
        value: value.into(),
        operation: r.event.operation,
        meta: r.event.meta.clone(),
    }
}

/// Forward rejections (in small batches) to the dead-letter driver until every sender is gone.
pub(super) async fn run(driver: SinkDriver, mut rx: mpsc::Receiver<Rejected>, pipeline: Arc<str>) {
    let (tx, batches) = mpsc::channel::<Batch>(4);
    let (fatal, fatal_reason) = (driver.fatal.clone(), driver.fatal_reason.clone());
    let driver_task = tokio::spawn(driver.run(batches));
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::with_capacity(16);
        let mut next = Some(first);
        while let Some(r) = next {
            tracing::debug!(stage = %r.stage, error = %r.error, "event rejected to dead-letter");
            let event = envelope(&pipeline, &r);
            batch.push(event, r.ack);
            next = if batch.len() < 500 { rx.try_recv().ok() } else { None };
        }
        if tx.send(batch).await.is_err() {
            break;
        }
    }
    drop(tx);
    if let Some(message) = super::panic_of(driver_task.await) {
        super::fail_pipeline(&fatal, &fatal_reason, format!("the dead-letter sink panicked: {message}"));
    }
}
