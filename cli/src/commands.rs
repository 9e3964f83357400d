//! The subcommands other than `bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use feedline_engine::config::{
    load_file, load_paths, pipeline_schema, reference_markdown, ConfigErrors, PipelineDef,
};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline_traced, PipelineError, RuntimeOptions};

use crate::output::{errln, outln};
use crate::telemetry::Installed;
use feedline_engine::Registry;
use tokio_util::sync::CancellationToken;

/// Every component type this binary knows.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    feedline_connectors::register(&mut registry);
    feedline_transforms::register(&mut registry);
    registry
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn load(paths: &[PathBuf]) -> Result<Vec<PipelineDef>, ConfigErrors> {
    load_paths(paths, &registry(), &env)
}

pub fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    match load(paths) {
        Ok(defs) => {
            for d in &defs {
                outln!("ok: {} ({})", d.name, d.file.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            errln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn test(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let defs = match load(paths) {
        Ok(d) => d,
        Err(errors) => {
            errln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for def in &defs {
        for outcome in feedline_engine::testing::run_tests(def)? {
            match outcome.failure {
                None => {
                    passed += 1;
                    outln!("ok    {} :: {}", def.name, outcome.name)?;
                }
                Some(diff) => {
                    failed += 1;
                    outln!("FAIL  {} :: {}\n{diff}", def.name, outcome.name)?;
                }
            }
        }
    }
    outln!("{passed} passed, {failed} failed")?;
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn graph(path: &Path, dot: bool) -> anyhow::Result<ExitCode> {
    let def = match load_file(path, &registry(), &env) {
        Ok(d) => d,
        Err(errors) => {
            errln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let text = if dot { feedline_engine::graph::dot(&def) } else { feedline_engine::graph::mermaid(&def) };
    crate::output::stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

pub fn schema(markdown: bool) -> anyhow::Result<ExitCode> {
    if markdown {
        crate::output::stdout(&reference_markdown(&registry()))?;
    } else {
        outln!("{}", serde_json::to_string_pretty(&pipeline_schema(&registry()))?)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(
    paths: &[PathBuf],
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    drain: Duration,
    on_failure: OnFailure,
    telemetry: &Installed,
) -> anyhow::Result<ExitCode> {
    let defs = match load(paths) {
        Ok(d) => d,
        Err(errors) => {
            errln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let _lock = match crate::data_dir::lock(&data_dir) {
        Ok(lock) => lock,
        Err(e) => {
            errln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let code = runtime.block_on(run_all(defs, listen, data_dir, drain, on_failure, telemetry));
    // Every pipeline has drained within its deadline; a blocking task still running (a stuck
    // client call) must not hold the exit beyond --drain-timeout.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn run_all(
    defs: Vec<PipelineDef>,
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    drain: Duration,
    on_failure: OnFailure,
    telemetry: &Installed,
) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone())?);
    let metrics = Metrics::new();
    if let Some(health) = &telemetry.health {
        health.register(metrics.registry()).context("registering exporter metrics")?;
    }
    let health = Health::default();
    for def in &defs {
        health.starting(&def.name);
    }
    let ops_stop = CancellationToken::new();
    if let Some(addr) = listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr()?;
        tracing::info!(%bound, "serving /metrics, /health, /ready");
        errln!("feedline: listening on {bound}");
        tokio::spawn(feedline_engine::ops::serve(
            listener,
            metrics.clone(),
            health.clone(),
            ops_stop.clone(),
        ));
    }
    let options = RuntimeOptions { data_dir, drain_timeout: drain };
    let mut tasks = tokio::task::JoinSet::new();
    for def in defs {
        let run = Supervised {
            def: Arc::new(def),
            options: options.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
            telemetry: telemetry.telemetry.clone(),
        };
        let name = run.def.name.clone();
        tasks.spawn(async move { (name, run.until_done(on_failure).await) });
    }
    let mut failed = false;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok((_, Ok(()))) => continue,
            Ok((name, Err(e))) => {
                // The others keep running: one pipeline's failure is not theirs.
                tracing::error!(pipeline = %name, error = %e, "pipeline failed; the others keep running");
                e.to_string()
            }
            Err(e) => format!("pipeline task crashed: {e}"),
        };
        errln!("error: {error}");
        failed = true;
    }
    ops_stop.cancel();
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// What happens to a pipeline that fails while the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFailure {
    /// It stays failed (`/health` answers 503); the other pipelines keep running.
    Stop,
    /// It is started again after a backoff (1 s doubling to 60 s; reset after 60 s of running).
    Restart,
}

/// One pipeline and everything it needs to be (re)started.
struct Supervised {
    def: Arc<PipelineDef>,
    options: RuntimeOptions,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
    telemetry: feedline_engine::telemetry::Telemetry,
}

impl Supervised {
    const FIRST_BACKOFF: Duration = Duration::from_secs(1);
    const MAX_BACKOFF: Duration = Duration::from_secs(60);

    async fn until_done(&self, on_failure: OnFailure) -> Result<(), PipelineError> {
        let mut backoff = Self::FIRST_BACKOFF;
        loop {
            let started = std::time::Instant::now();
            let result = run_pipeline_traced(
                self.def.clone(),
                self.options.clone(),
                self.metrics.clone(),
                self.health.clone(),
                self.shutdown.clone(),
                self.telemetry.clone(),
            )
            .await;
            let error = match result {
                Err(e) if on_failure == OnFailure::Restart && !self.shutdown.is_cancelled() => e,
                other => return other,
            };
            if started.elapsed() >= Self::MAX_BACKOFF {
                backoff = Self::FIRST_BACKOFF;
            }
            let name = &self.def.name;
            tracing::error!(pipeline = %name, error = %error, restart_in_ms = backoff.as_millis() as u64, "pipeline failed; restarting");
            self.health.restarting(name, &error.to_string());
            self.metrics.pipeline_restarted(name);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.cancelled() => {
                    self.health.failed(name, &error.to_string());
                    return Err(error);
                }
            }
            backoff = (backoff * 2).min(Self::MAX_BACKOFF);
        }
    }
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit at once. SIGHUP (a closed terminal, or an
/// operator expecting a reload) is logged and ignored: its default action would kill the process
/// without a drain or a commit. The handlers are installed before this returns, so no signal
/// arriving after start-up takes its default action.
#[cfg(unix)]
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        let mut requests = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP ignored: configuration reload is not supported; SIGTERM stops");
                    continue;
                }
            }
            requests += 1;
            if requests == 1 {
                tracing::info!("shutdown requested: draining in-flight events");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    })
}

#[cfg(not(unix))]
fn watch_signals(shutdown: CancellationToken) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    })
}
