//! `blackhole` sink: accepts and discards everything (benchmarks, dry runs). Optionally logs
//! its rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use feedline_engine::{same_result, BuildContext, ComponentError, Event, Sink, SinkConfig, WriteResult};
use schemars::JsonSchema;
use serde::Deserialize;

/// Discards events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {
    /// Log the event count and rate every this many seconds (0: never).
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub print_interval_secs: u64,
}

impl SinkConfig for BlackholeConfig {
    const TYPE: &'static str = "blackhole";

    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        Ok(Arc::new(Blackhole {
            interval: self.print_interval_secs,
            count: AtomicU64::new(0),
            started: Instant::now(),
            last_print: AtomicU64::new(0),
        }))
    }
}

struct Blackhole {
    interval: u64,
    count: AtomicU64,
    started: Instant,
    last_print: AtomicU64,
}

#[async_trait]
impl Sink for Blackhole {
    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        let total = self.count.fetch_add(events.len() as u64, Ordering::Relaxed) + events.len() as u64;
        if self.interval > 0 {
            let secs = self.started.elapsed().as_secs();
            let last = self.last_print.load(Ordering::Relaxed);
            if secs >= last + self.interval
                && self.last_print.compare_exchange(last, secs, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                let rate = total as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                tracing::info!(total, rate = rate as u64, "blackhole");
            }
        }
        same_result(events.len(), Ok(()))
    }
}
