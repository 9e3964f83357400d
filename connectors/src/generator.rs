//! `generator` source: synthetic events, for demos and benchmarks.
//!
//! Events are rendered as JSON text and parsed, like any real source decodes its input, so a
//! benchmark through the generator measures the cost a production pipeline pays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use feedline_engine::{
    Batch, BuildContext, CheckContext, ComponentError, ConfigProblem, Event, Metadata, Source, SourceConfig,
    SourceContext, Tracker,
};
use schemars::JsonSchema;
use serde::Deserialize;

/// Produces synthetic events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// What the events look like.
    #[serde(default)]
    pub shape: Shape,
    /// Events to produce before stopping (unset: until shutdown).
    #[serde(default)]
    #[schemars(range(min = 0, max = u64::MAX))]
    pub count: Option<u64>,
    /// Events per second (unset: as fast as downstream accepts them).
    #[serde(default)]
    #[schemars(range(min = 0.001, max = 1e9))]
    pub rate: Option<f64>,
    /// Events per batch.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: usize,
}

fn default_batch_size() -> usize {
    1000
}

/// Synthetic event shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// `{"seq": n, "message": "event n"}`.
    #[default]
    Counter,
    /// A Cosmos DB whisk-document change: every other one from cluster `west`, every tenth
    /// soft-deleted, ids with `|` separators.
    CosmosChange,
    /// An OpenWhisk activation result message (~1 KB).
    Activation,
}

/// Render event number `n` of `shape` as JSON text.
pub fn render(shape: Shape, n: u64) -> String {
    match shape {
        Shape::Counter => format!(r#"{{"seq":{n},"message":"event {n}"}}"#),
        Shape::CosmosChange => format!(
            r#"{{"id":"guest|pkg{p}|action{n}","_clusterId":"{c}","_deleted":{d},"ttl":36000,"namespace":"guest","name":"action{n}","entityType":"action","version":"0.0.{v}","_lsn":{n},"_ts":{ts},"_etag":"\"{n:016x}\"","_rid":"AAAAAAAAAAA=","_self":"dbs/x/colls/y/docs/{n}"}}"#,
            p = n % 100,
            c = if n.is_multiple_of(2) { "west" } else { "east" },
            d = n.is_multiple_of(10),
            v = n % 7,
            ts = 1_571_600_000 + n / 1000,
        ),
        Shape::Activation => format!(
            r#"{{"response":{{"activationId":"{n:032x}","annotations":[{{"key":"path","value":"guest/hello{m}"}},{{"key":"waitTime","value":12}},{{"key":"kind","value":"nodejs:20"}},{{"key":"timeout","value":false}},{{"key":"limits","value":{{"concurrency":1,"logs":10,"memory":256,"timeout":60000}}}}],"duration":100,"end":{end},"logs":["2026-01-01T00:00:00.000Z stdout: handling request {n}","2026-01-01T00:00:00.010Z stdout: fetched configuration","2026-01-01T00:00:00.020Z stdout: computed greeting for guest","2026-01-01T00:00:00.050Z stdout: done"],"name":"hello{m}","namespace":"guest","publish":false,"response":{{"result":{{"payload":"hello from activation {n}","items":[1,2,3,4,5,6,7,8],"ok":true}},"size":64,"statusCode":0}},"start":{start},"subject":"guest","version":"0.0.1","cause":"{n:032x}"}},"transid":["tid{n}",{start}],"isSystemError":false,"instance":{{"instance":0,"instanceType":"invoker","userMemory":"1024 MB"}}}}"#,
            m = n % 50,
            start = 1_571_600_000_000u64 + n,
            end = 1_571_600_000_100u64 + n,
        ),
    }
}

impl SourceConfig for GeneratorConfig {
    const TYPE: &'static str = "generator";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        if self.batch_size == 0 {
            return Err(ConfigProblem::field("batch_size", "`batch_size` must be at least 1"));
        }
        if self.rate.is_some_and(|r| r <= 0.0 || !r.is_finite()) {
            return Err(ConfigProblem::field(
                "rate",
                "`rate` must be a positive number of events per second",
            )
            .with_hint("leave it out to generate as fast as possible"));
        }
        Ok(())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        Ok(Box::new(Generator { config: self.clone() }))
    }
}

struct Generator {
    config: GeneratorConfig,
}

#[async_trait]
impl Source for Generator {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let tracker: Tracker<u64> = Tracker::new(16);
        let stream: Arc<str> = "generator".into();
        let started = Instant::now();
        let mut n: u64 = 0;
        let limit = self.config.count.unwrap_or(u64::MAX);
        while n < limit && !ctx.shutdown.is_cancelled() {
            tokio::select! {
                _ = ctx.cancelled() => break,
                _ = tracker.wait_for_room() => {}
            }
            let size = (self.config.batch_size as u64).min(limit - n);
            let token = tracker.track(n + size);
            let mut batch = Batch::with_capacity(size as usize);
            for i in n..n + size {
                let text = render(self.config.shape, i);
                let value: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| ComponentError::fatal(format!("generator produced invalid JSON: {e}")))?;
                let meta = Metadata {
                    source: ctx.component_id.clone(),
                    stream: Some(stream.clone()),
                    position: Some(serde_json::json!(i)),
                    ..Metadata::default()
                };
                batch.push(Event::new(value, meta), token.clone());
            }
            n += size;
            if ctx.send(batch).await.is_err() {
                break;
            }
            token.ack();
            if let Some(rate) = self.config.rate {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                tokio::select! {
                    _ = ctx.cancelled() => break,
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
        }
        tokio::select! {
            _ = tracker.wait_drained() => {}
            _ = ctx.cancelled() => { let _ = tokio::time::timeout(ctx.drain_timeout, tracker.wait_drained()).await; }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_renders_valid_json() {
        for shape in [Shape::Counter, Shape::CosmosChange, Shape::Activation] {
            for n in [0, 1, 9, 10, 123_456_789] {
                let v: serde_json::Value = serde_json::from_str(&render(shape, n)).unwrap();
                assert!(v.is_object(), "{shape:?} {n}");
            }
        }
        let a = render(Shape::Activation, 7);
        assert!(a.len() > 900 && a.len() < 1400, "activation ~1 KB, got {}", a.len());
    }
}
