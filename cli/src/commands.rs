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
use feedline_engine::runtime::{run_pipeline_traced, RuntimeOptions};

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
                println!("ok: {} ({})", d.name, d.file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn test(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let defs = match load(paths) {
        Ok(d) => d,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for def in &defs {
        for outcome in feedline_engine::testing::run_tests(def)? {
            match outcome.failure {
                None => {
                    passed += 1;
                    println!("ok    {} :: {}", def.name, outcome.name);
                }
                Some(diff) => {
                    failed += 1;
                    println!("FAIL  {} :: {}\n{diff}", def.name, outcome.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub fn graph(path: &Path, dot: bool) -> anyhow::Result<ExitCode> {
    let def = match load_file(path, &registry(), &env) {
        Ok(d) => d,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let text = if dot { feedline_engine::graph::dot(&def) } else { feedline_engine::graph::mermaid(&def) };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub fn schema(markdown: bool) -> anyhow::Result<ExitCode> {
    if markdown {
        print!("{}", reference_markdown(&registry()));
    } else {
        println!("{}", serde_json::to_string_pretty(&pipeline_schema(&registry()))?);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(
    paths: &[PathBuf],
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    drain: Duration,
    telemetry: &Installed,
) -> anyhow::Result<ExitCode> {
    let defs = match load(paths) {
        Ok(d) => d,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(run_all(defs, listen, data_dir, drain, telemetry))
}

async fn run_all(
    defs: Vec<PipelineDef>,
    listen: Option<SocketAddr>,
    data_dir: PathBuf,
    drain: Duration,
    telemetry: &Installed,
) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
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
        eprintln!("feedline: listening on {bound}");
        tokio::spawn(feedline_engine::ops::serve(
            listener,
            metrics.clone(),
            health.clone(),
            ops_stop.clone(),
        ));
    }
    tokio::spawn(watch_signals(shutdown.clone()));
    let options = RuntimeOptions { data_dir, drain_timeout: drain };
    let mut tasks = tokio::task::JoinSet::new();
    for def in defs {
        tasks.spawn(run_pipeline_traced(
            Arc::new(def),
            options.clone(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
            telemetry.telemetry.clone(),
        ));
    }
    let mut failed = false;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("pipeline task crashed: {e}"),
        };
        tracing::error!(error = %error, "pipeline failed; stopping the others");
        eprintln!("error: {error}");
        failed = true;
        shutdown.cancel();
    }
    ops_stop.cancel();
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        for round in 0..2 {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if round == 0 {
                tracing::info!("shutdown requested: draining in-flight events");
                shutdown.cancel();
            } else {
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    }
}
