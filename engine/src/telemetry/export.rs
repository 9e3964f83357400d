//! Getting finished spans to an exporter without ever slowing the pipeline.
//!
//! [`BoundedBatchProcessor`] is a batch span processor like the SDK's, with two differences that
//! matter here: every span it loses is counted in Prometheus ([`ExportHealth`]), and the exporter
//! runs on the processor's own thread inside its own current-thread Tokio runtime, so async
//! exporters (tonic gRPC, hyper HTTP) work without a blocking HTTP client. A finished span is
//! offered to a bounded queue with `try_send`: when the queue is full (a slow or unreachable
//! collector) the span is dropped and counted, and the pipeline thread moves on.

use std::sync::mpsc as std_mpsc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::mpsc;

/// Queue and batch sizes of a [`BoundedBatchProcessor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Finished spans waiting for export; beyond this they are dropped (and counted).
    pub max_queue_size: usize,
    /// Spans per export call.
    pub max_export_batch_size: usize,
    /// Longest a span waits before a partial batch is exported.
    pub scheduled_delay: Duration,
    /// Longest one export call may take; after it the batch counts as dropped.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    /// The OpenTelemetry SDK defaults (`OTEL_BSP_*`): 2048, 512, 5 s, 30 s.
    fn default() -> Self {
        Self {
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(30),
        }
    }
}

/// The exporter's own health, as Prometheus counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ExportHealth {
    exported: IntCounter,
    dropped: IntCounterVec,
    failures: IntCounter,
}

impl Default for ExportHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl ExportHealth {
    /// Fresh counters, not yet registered anywhere.
    #[allow(clippy::expect_used)] // static definitions: a failure is a programming error
    pub fn new() -> Self {
        Self {
            exported: IntCounter::new(
                "feedline_otel_spans_exported_total",
                "Spans the OTLP exporter delivered to the collector",
            )
            .expect("static metric definition"),
            dropped: IntCounterVec::new(
                Opts::new(
                    "feedline_otel_spans_dropped_total",
                    "Spans lost on the way to the collector, by reason (queue_full, export_failed, shutdown)",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            failures: IntCounter::new(
                "feedline_otel_export_failures_total",
                "Export calls that failed or timed out",
            )
            .expect("static metric definition"),
        }
    }

    /// Add the counters to `registry` (the one `/metrics` serves).
    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.exported.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(self.failures.clone()))
    }

    /// Spans exported so far.
    pub fn exported(&self) -> u64 {
        self.exported.get()
    }

    /// Spans dropped so far, all reasons.
    pub fn dropped(&self) -> u64 {
        ["queue_full", "export_failed", "shutdown"]
            .iter()
            .map(|r| self.dropped.with_label_values(&[r]).get())
            .sum()
    }

    fn drop_spans(&self, reason: &str, n: usize) {
        self.dropped.with_label_values(&[reason]).inc_by(n as u64);
    }
}

enum Control {
    Resource(Resource),
    Flush(std_mpsc::Sender<()>),
    Shutdown(std_mpsc::Sender<()>),
}

/// A batch span processor with a bounded queue, its own export thread and counted losses.
#[derive(Debug)]
pub struct BoundedBatchProcessor {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    health: ExportHealth,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

impl BoundedBatchProcessor {
    /// Start the export thread; `make_exporter` runs on it, inside its Tokio runtime (tonic and
    /// hyper clients need one). An error building the exporter is returned here.
    pub fn spawn<E, F>(config: BatchConfig, health: ExportHealth, make_exporter: F) -> Result<Self, String>
    where
        E: SpanExporter + 'static,
        F: FnOnce() -> Result<E, String> + Send + 'static,
    {
        let (span_tx, span_rx) = mpsc::channel(config.max_queue_size.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
        let worker_health = health.clone();
        let worker = std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("export runtime: {e}")));
                        return;
                    }
                };
                let exporter = {
                    let _guard = runtime.enter();
                    match make_exporter() {
                        Ok(e) => e,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let worker = Worker { exporter, config, health: worker_health, batch: Vec::new() };
                runtime.block_on(worker.run(span_rx, control_rx));
            })
            .map_err(|e| format!("starting the export thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the export thread stopped while starting".into()),
        }
        Ok(Self { spans: span_tx, control: control_tx, health, worker: Mutex::new(Some(worker)) })
    }

    fn round_trip(
        &self,
        make: impl FnOnce(std_mpsc::Sender<()>) -> Control,
        timeout: Duration,
    ) -> OTelSdkResult {
        let (tx, rx) = std_mpsc::channel();
        self.control.send(make(tx)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        rx.recv_timeout(timeout).map_err(|_| OTelSdkError::Timeout(timeout))
    }
}

impl SpanProcessor for BoundedBatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.health.drop_spans("queue_full", 1),
            Err(mpsc::error::TrySendError::Closed(_)) => self.health.drop_spans("shutdown", 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.round_trip(Control::Flush, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.round_trip(Control::Shutdown, timeout);
        if result.is_ok() {
            if let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take()) {
                let _ = worker.join();
            }
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.control.send(Control::Resource(resource.clone()));
    }
}

struct Worker<E> {
    exporter: E,
    config: BatchConfig,
    health: ExportHealth,
    batch: Vec<SpanData>,
}

impl<E: SpanExporter> Worker<E> {
    async fn run(
        mut self,
        mut spans: mpsc::Receiver<SpanData>,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) {
        let mut deadline = tokio::time::Instant::now() + self.config.scheduled_delay;
        loop {
            tokio::select! {
                biased;
                msg = control.recv() => match msg {
                    Some(Control::Resource(r)) => self.exporter.set_resource(&r),
                    Some(Control::Flush(done)) => {
                        self.drain(&mut spans).await;
                        let _ = done.send(());
                    }
                    Some(Control::Shutdown(done)) => {
                        spans.close();
                        self.drain(&mut spans).await;
                        let _ = self.exporter.shutdown_with_timeout(self.config.export_timeout);
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.drain(&mut spans).await;
                        return;
                    }
                },
                span = spans.recv() => match span {
                    Some(s) => {
                        self.batch.push(s);
                        if self.batch.len() >= self.config.max_export_batch_size {
                            self.export().await;
                            deadline = tokio::time::Instant::now() + self.config.scheduled_delay;
                        }
                    }
                    None => {
                        self.export().await;
                        return;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    self.export().await;
                    deadline = tokio::time::Instant::now() + self.config.scheduled_delay;
                }
            }
        }
    }

    /// Export everything queued so far.
    async fn drain(&mut self, spans: &mut mpsc::Receiver<SpanData>) {
        while let Ok(s) = spans.try_recv() {
            self.batch.push(s);
            if self.batch.len() >= self.config.max_export_batch_size {
                self.export().await;
            }
        }
        self.export().await;
    }

    async fn export(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len();
        match tokio::time::timeout(self.config.export_timeout, self.exporter.export(batch)).await {
            Ok(Ok(())) => self.health.exported.inc_by(n as u64),
            Ok(Err(e)) => {
                self.health.failures.inc();
                self.health.drop_spans("export_failed", n);
                tracing::debug!(error = %e, spans = n, "span export failed; spans dropped");
            }
            Err(_) => {
                self.health.failures.inc();
                self.health.drop_spans("export_failed", n);
                tracing::debug!(spans = n, "span export timed out; spans dropped");
            }
        }
    }
}
