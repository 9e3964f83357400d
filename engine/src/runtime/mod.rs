//! Running pipelines: one task per source, the transform chain on the source's task or on one of
//! its own (see [`downstream`]), one driver per sink and one for the dead-letter sink, joined by
//! bounded channels.
//!
//! Shutdown order is the delivery contract: the source stops reading, waits for its in-flight
//! events (bounded by the drain timeout) and commits; when it returns its context is dropped and
//! with it the next channel's sender, which ends the chain task (if any), which ends the sink
//! drivers after their last writes, which ends the dead-letter driver. Tasks still running at the hard deadline are aborted: their
//! events stay unacknowledged and are read again after a restart.

mod chain;
mod dead_letter;
pub(crate) mod downstream;
mod sink_driver;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use chain::{run_chain, ChainStage, TransformPanic};
pub use dead_letter::{default_path as default_dead_letter_path, envelope as dead_letter_envelope};
use downstream::Downstream;

use crate::checkpoint::CheckpointStore;
use crate::component::{Batch, ComponentError, ErrorClass, Rejected, SourceContext};
use crate::config::{PipelineDef, SinkDef};
use crate::health::{ComponentHealth, Health, DEFAULT_DEGRADED_AFTER};
use crate::metrics::Metrics;
use crate::registry::BuildContext;
use crate::telemetry::{Role, StageTelemetry, Telemetry};
use sink_driver::{Fallback, SinkDriver};

/// Process-wide runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Checkpoints and default dead-letter files live here.
    pub data_dir: PathBuf,
    /// How long a stopping pipeline may drain in-flight events.
    pub drain_timeout: Duration,
}

/// Why a pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A component could not be built.
    #[error("pipeline `{pipeline}`: cannot build `{component}`: {error}")]
    Build {
        /// Pipeline.
        pipeline: String,
        /// Component id.
        component: String,
        /// Why.
        error: ComponentError,
    },
    /// A component failed fatally while running.
    #[error("pipeline `{pipeline}` stopped: {reason}")]
    Failed {
        /// Pipeline.
        pipeline: String,
        /// Why.
        reason: String,
    },
}

struct Shared {
    name: Arc<str>,
    def: Arc<PipelineDef>,
    metrics: Metrics,
    options: RuntimeOptions,
    fatal: CancellationToken,
    fatal_reason: Arc<Mutex<Option<String>>>,
    telemetry: Telemetry,
    health: Health,
}

impl Shared {
    fn stage(&self, id: &str, type_name: &str, role: Role) -> StageTelemetry {
        StageTelemetry::new(&self.telemetry, &self.name, id, type_name, role)
    }

    fn build_context(&self, component: &str) -> BuildContext {
        BuildContext {
            pipeline: self.name.clone(),
            component_id: component.into(),
            base_dir: self.def.base_dir.clone(),
            data_dir: self.options.data_dir.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn fail(&self, reason: String) {
        fail_pipeline(&self.fatal, &self.fatal_reason, reason);
    }

    fn task_ended(&self, joined: Result<(), tokio::task::JoinError>) {
        if let Some(message) = panic_of(joined) {
            tracing::error!(pipeline = %self.name, panic = %message, "a pipeline task panicked; stopping the pipeline");
            self.fail(format!("a pipeline task panicked: {message}"));
        }
    }

    fn build_error(&self, component: &str, error: ComponentError) -> PipelineError {
        PipelineError::Build { pipeline: self.name.to_string(), component: component.to_owned(), error }
    }

    fn driver(
        &self,
        sink: &SinkDef,
        kind: &str,
        fallback: Fallback,
    ) -> Result<(SinkDriver, Arc<dyn crate::component::Sink>), PipelineError> {
        let id = &sink.component.id;
        let built =
            sink.component.config.build(&self.build_context(id)).map_err(|e| self.build_error(id, e))?;
        let role = match fallback {
            Fallback::Abandon => Role::DeadLetter,
            Fallback::DeadLetter(_) => Role::Sink,
        };
        let telemetry = self.stage(id, &sink.component.type_name, role);
        let stage = format!("sink.{id}");
        let degraded_after = Duration::from_millis(sink.options.degraded_after_ms);
        let driver = SinkDriver {
            telemetry,
            health: self.health.component(&self.name, &stage, degraded_after),
            stage,
            sink: built.clone(),
            options: sink.options.clone(),
            metrics: self.metrics.component(&self.name, id, kind),
            fallback,
            fatal: self.fatal.clone(),
            fatal_reason: self.fatal_reason.clone(),
        };
        Ok((driver, built))
    }
}

/// Run one pipeline until `shutdown` is cancelled (then drain and return `Ok`) or a component
/// fails fatally (then drain what can be drained and return the error). Untraced; see
/// [`run_pipeline_traced`].
pub async fn run_pipeline(
    def: Arc<PipelineDef>,
    options: RuntimeOptions,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> Result<(), PipelineError> {
    run_pipeline_traced(def, options, metrics, health, shutdown, Telemetry::disabled()).await
}

/// [`run_pipeline`] with per-event spans going to `telemetry`'s tracer (batch spans are
/// `tracing` spans either way: they reach an exporter if the binary installed one).
pub async fn run_pipeline_traced(
    def: Arc<PipelineDef>,
    options: RuntimeOptions,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
    telemetry: Telemetry,
) -> Result<(), PipelineError> {
    let fatal = shutdown.child_token();
    let shared = Shared {
        name: def.name.as_str().into(),
        def: def.clone(),
        metrics,
        options,
        fatal: fatal.clone(),
        fatal_reason: Arc::new(Mutex::new(None)),
        telemetry,
        health: health.clone(),
    };
    let name = shared.name.clone();
    // Before any component takes its health handle: a new run starts without the old outages.
    health.starting(&name);

    // Build everything before any I/O so configuration mistakes surface at once.
    let (dl_tx, dl_rx) = mpsc::channel::<Rejected>(1024);
    let default_dead_letter;
    let dead_letter_def = match &def.dead_letter {
        Some(d) => d,
        None => {
            default_dead_letter = dead_letter::default_sink();
            &default_dead_letter
        }
    };
    let (dl_driver, dl_sink) = shared.driver(dead_letter_def, "dead_letter", Fallback::Abandon)?;
    let mut sinks = Vec::new();
    for sink in &def.sinks {
        sinks.push((shared.driver(sink, "sink", Fallback::DeadLetter(dl_tx.clone()))?, sink.options.buffer));
    }
    let mut stages = Vec::new();
    for t in &def.transforms {
        let transform =
            t.config.build(&shared.build_context(&t.id)).map_err(|e| shared.build_error(&t.id, e))?;
        let metrics = Some(shared.metrics.component(&name, &t.id, "transform"));
        let telemetry = shared.stage(&t.id, &t.type_name, Role::Transform);
        stages.push(ChainStage {
            id: t.id.clone(),
            type_name: t.type_name.clone(),
            transform,
            metrics,
            telemetry,
        });
    }
    let source_id = def.source.id.clone();
    let source = def
        .source
        .config
        .build(&shared.build_context(&source_id))
        .map_err(|e| shared.build_error(&source_id, e))?;

    // Targets first: a sink that cannot start keeps the source from reading.
    let to_start = std::iter::once((&dl_sink, &dl_driver.health))
        .chain(sinks.iter().map(|((driver, sink), _)| (sink, &driver.health)));
    for (sink, sink_health) in to_start {
        start_sink(sink.as_ref(), sink_health, &fatal)
            .await
            .map_err(|e| PipelineError::Failed { pipeline: name.to_string(), reason: e.message })?;
    }

    let mut tasks = JoinSet::new();
    let mut sink_txs = Vec::new();
    for ((driver, _), buffer) in sinks {
        let (tx, rx) = mpsc::channel::<Batch>(buffer);
        sink_txs.push(tx);
        tasks.spawn(driver.run(rx));
    }
    tasks.spawn(dead_letter::run(dl_driver, dl_rx, name.clone()));
    let downstream = Downstream::new(
        source.chain_placement(),
        stages,
        sink_txs,
        dl_tx.clone(),
        shared.fatal.clone(),
        shared.fatal_reason.clone(),
        &mut tasks,
    );

    let ctx = SourceContext {
        pipeline: name.clone(),
        component_id: source_id.as_str().into(),
        shutdown: fatal.clone(),
        drain_timeout: shared.options.drain_timeout,
        checkpoints: CheckpointStore::new(&shared.options.data_dir, &name, &source_id),
        metrics: shared.metrics.component(&name, &source_id, "source"),
        base_dir: def.base_dir.clone(),
        out: downstream,
        dead_letter: dl_tx,
        telemetry: shared.stage(&source_id, &def.source.type_name, Role::Source),
        health: health.component(&name, &format!("source.{source_id}"), DEFAULT_DEGRADED_AFTER),
    };
    health.running(&name);
    tracing::info!(pipeline = %name, source = %source_id, sinks = def.sinks.len(), transforms = def.transforms.len(), "pipeline running");
    // While the source runs, a downstream task that panics fails the pipeline at once (its events
    // would otherwise stay pending for ever), and the moment a stop is requested starts the one
    // drain deadline the whole pipeline shares.
    let source_run = source.run(ctx);
    tokio::pin!(source_run);
    let mut stop_requested = None;
    let source_result = loop {
        tokio::select! {
            result = &mut source_run => break result,
            _ = fatal.cancelled(), if stop_requested.is_none() => stop_requested = Some(tokio::time::Instant::now()),
            Some(joined) = tasks.join_next() => shared.task_ended(joined),
        }
    };
    if let Err(e) = &source_result {
        shared.fail(format!("source.{source_id}: {}", e.message));
    }
    // The source has returned and dropped its sender: downstream drains on its own, within what
    // is left of the drain timeout (the source's own drain already spent part of it).
    let deadline = stop_requested.unwrap_or_else(tokio::time::Instant::now) + shared.options.drain_timeout;
    let drain = async {
        while let Some(joined) = tasks.join_next().await {
            shared.task_ended(joined);
        }
    };
    if tokio::time::timeout_at(deadline, drain).await.is_err() {
        tracing::warn!(pipeline = %name, "drain deadline passed; unfinished events will be re-read after restart");
        tasks.abort_all();
    }
    let reason = shared.fatal_reason.lock().ok().and_then(|mut r| r.take());
    match reason {
        Some(reason) => {
            health.failed(&name, &reason);
            Err(PipelineError::Failed { pipeline: name.to_string(), reason })
        }
        None => {
            health.stopped(&name);
            tracing::info!(pipeline = %name, "pipeline stopped");
            Ok(())
        }
    }
}

/// Stop the pipeline for `reason` (the first reason given is the one reported).
pub(crate) fn fail_pipeline(fatal: &CancellationToken, fatal_reason: &Mutex<Option<String>>, reason: String) {
    if let Ok(mut r) = fatal_reason.lock() {
        r.get_or_insert(reason);
    }
    fatal.cancel();
}

/// The text a panic carried (`panic!("...")` payloads are `&str` or `String`).
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".to_owned())
}

/// What a joined task's panic said; `None` if it returned or was aborted.
pub(crate) fn panic_of(joined: Result<(), tokio::task::JoinError>) -> Option<String> {
    match joined {
        Err(e) if e.is_panic() => Some(panic_text(e.into_panic().as_ref())),
        _ => None,
    }
}

/// Start `sink`, retrying retriable failures (each one told to `health`: a sink that cannot start
/// degrades the starting pipeline like one that cannot write).
async fn start_sink(
    sink: &dyn crate::component::Sink,
    health: &ComponentHealth,
    stop: &CancellationToken,
) -> Result<(), ComponentError> {
    let retry = crate::config::RetryOptions::default();
    let mut attempt = 0;
    loop {
        match sink.start().await {
            Ok(()) => {
                health.succeeded();
                return Ok(());
            }
            Err(e) if e.class == ErrorClass::Retriable => {
                health.failed(&e.message);
                attempt += 1;
                tracing::warn!(attempt, error = %e.message, "sink not ready; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(sink_driver::backoff(&retry, attempt)) => {}
                    _ = stop.cancelled() => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
