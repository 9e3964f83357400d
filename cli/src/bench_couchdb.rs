//! `feedline bench couchdb`: activations persisted per second through the engine next to a direct
//! `_bulk_docs` loop on the same server in the same run, and a `rate_limit` check.
//!
//! - feedline: generator (activation completion messages, rendered and parsed like real input) →
//!   `extract_activation` → `couchdb` sink (batches of 1000, `max_in_flight = 4`), with full
//!   delivery tracking.
//! - baseline: the same activation documents, already extracted, serialized and posted with
//!   `_bulk_docs` in batches of 1000, 4 requests in flight — the least any persister must do.
//! - rate: the feedline pipeline with `rate_limit` set; documents/s measured on the server.
//!
//! Without `--url` a pouchdb-server is started (in memory, on a free 127.0.0.1 port) from
//! `FEEDLINE_POUCHDB` or where `scripts/install-pouchdb.sh` installs it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use feedline_connectors::couchdb::RawBulkWriter;
use feedline_connectors::generator::{render, Shape};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_engine::{BuildContext, Event, Metadata, Output, TransformConfig};
use feedline_transforms::extract_activation::ExtractActivationConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const BATCH: usize = 1000;
const IN_FLIGHT: usize = 4;

/// What to measure.
pub struct Options {
    /// Activations per throughput run.
    pub events: u64,
    /// Server URL; `None` starts pouchdb-server.
    pub url: Option<String>,
    /// `rate_limit` of the rate run (documents/s).
    pub rate: f64,
    /// Activations of the rate run.
    pub rate_events: u64,
}

/// A pouchdb-server started for the benchmark; killed on drop.
struct Server {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Server {
    fn start() -> anyhow::Result<Self> {
        let bin = crate::bench::installed_tool(
            "FEEDLINE_POUCHDB",
            "pouchdb-server/node_modules/.bin/pouchdb-server",
        );
        if !bin.is_file() {
            bail!(
                "pouchdb-server not found at {} (run scripts/install-pouchdb.sh, or pass --url)",
                bin.display()
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = scratch("server")?;
        let child = Command::new(&bin)
            .current_dir(&dir)
            .args(["--in-memory", "-o", "127.0.0.1", "-p", &port.to_string(), "-n"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let server = Server { child, url: format!("http://127.0.0.1:{port}"), dir };
        crate::bench::wait_accepting(&format!("127.0.0.1:{port}"), "pouchdb-server")?;
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh scratch directory under the system temp directory.
fn scratch(what: &str) -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("feedline-bench-couchdb-{what}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn pipeline_toml(url: &str, database: &str, events: u64, rate_limit: Option<f64>) -> String {
    let rate = rate_limit.map(|r| format!("rate_limit = {r}\n")).unwrap_or_default();
    format!(
        r#"name = "bench-couchdb"
[source]
type = "generator"
shape = "activation"
count = {events}
batch_size = {BATCH}

[[transforms]]
type = "extract_activation"

[[sinks]]
type = "couchdb"
url = "{url}"
database = "{database}"
create_database = true
max_in_flight = {IN_FLIGHT}
batch = {{ max_events = {BATCH} }}
{rate}"#
    )
}

/// Run the persister pipeline to completion; its wall time.
async fn feedline_run(url: &str, database: &str, events: u64, rate: Option<f64>) -> anyhow::Result<Duration> {
    let dir = scratch("pipeline")?;
    let def = crate::bench::load_pipeline(&dir, &pipeline_toml(url, database, events, rate))?;
    let options = RuntimeOptions { data_dir: dir.join("data"), drain_timeout: Duration::from_secs(60) };
    let started = Instant::now();
    let result =
        run_pipeline(Arc::new(def), options, Metrics::new(), Health::default(), CancellationToken::new())
            .await;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    result.context("bench pipeline")?;
    Ok(elapsed)
}

/// The activation documents `extract_activation` makes of the generator's messages.
fn documents(events: u64) -> anyhow::Result<Vec<serde_json::Value>> {
    let ctx = BuildContext {
        pipeline: "bench".into(),
        component_id: "extract_activation".into(),
        base_dir: ".".into(),
        data_dir: std::env::temp_dir(),
        metrics: Metrics::new(),
    };
    let config: ExtractActivationConfig = serde_json::from_value(serde_json::json!({}))?;
    let mut transform = config.build(&ctx).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut docs = Vec::with_capacity(events as usize);
    for chunk_start in (0..events).step_by(BATCH) {
        let inputs = (chunk_start..(chunk_start + BATCH as u64).min(events))
            .map(|n| {
                Ok(Event::new(
                    serde_json::from_str::<serde_json::Value>(&render(Shape::Activation, n))?,
                    Metadata::default(),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut out = Output::default();
        transform.transform_batch(inputs, &mut out);
        docs.extend(out.emitted().map(|e| serde_json::Value::clone(&e.value)));
    }
    Ok(docs)
}

/// Post `docs` with `_bulk_docs`, `IN_FLIGHT` requests at a time; the wall time.
async fn baseline_run(writer: Arc<RawBulkWriter>, docs: Vec<serde_json::Value>) -> anyhow::Result<Duration> {
    writer.create_database().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut stored = 0;
    for chunk in docs.chunks(BATCH) {
        if tasks.len() >= IN_FLIGHT {
            stored += tasks.join_next().await.context("task")???;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "docs": chunk }))?;
        let writer = writer.clone();
        tasks.spawn(async move { writer.post(body).await.map_err(|e| anyhow::anyhow!("{e}")) });
    }
    while let Some(r) = tasks.join_next().await {
        stored += r??;
    }
    if stored != docs.len() {
        bail!("baseline stored {stored} of {} documents", docs.len());
    }
    Ok(started.elapsed())
}

/// Run the pipeline with `rate_limit`; the documents/s the server received between 10% and 90%
/// of the run (start-up and drain excluded), and the length of that window.
async fn rate_run(url: &str, database: &str, events: u64, rate: f64) -> anyhow::Result<(f64, Duration)> {
    let pipeline = {
        let (url, database) = (url.to_owned(), database.to_owned());
        tokio::spawn(async move { feedline_run(&url, &database, events, Some(rate)).await })
    };
    let (low, high) = (events / 10, events * 9 / 10);
    let mut first: Option<(Instant, u64)> = None;
    let mut last = None;
    while !pipeline.is_finished() {
        let now = Instant::now();
        let n = count(url, database).await.unwrap_or(0);
        if n >= low && first.is_none() {
            first = Some((now, n));
        }
        if n >= high && last.is_none() {
            last = Some((now, n));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pipeline.await??;
    let (Some((t1, n1)), Some((t2, n2))) = (first, last) else {
        bail!("the rate run was too short to measure")
    };
    let window = t2 - t1;
    Ok(((n2 - n1) as f64 / window.as_secs_f64(), window))
}

async fn count(url: &str, database: &str) -> anyhow::Result<u64> {
    RawBulkWriter::new(url, database)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .doc_count()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    let server = match &opts.url {
        Some(_) => None,
        None => Some(Server::start()?),
    };
    let url = opts.url.clone().or_else(|| server.as_ref().map(|s| s.url.clone())).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stamp = std::process::id();
    let n = opts.events;
    let docs = documents(n)?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    // Interleaved: baseline, feedline, baseline, feedline — each into a fresh database; best of two.
    let (mut base_best, mut engine_best) = (Duration::MAX, Duration::MAX);
    for round in 0..2 {
        let db = format!("bench-direct-{stamp}-{round}");
        let writer = Arc::new(RawBulkWriter::new(&url, &db).map_err(|e| anyhow::anyhow!("{e}"))?);
        let base = runtime.block_on(baseline_run(writer, docs.clone()))?;
        let db_feedline = format!("bench-feedline-{stamp}-{round}");
        let engine = runtime.block_on(feedline_run(&url, &db_feedline, n, None))?;
        let stored = runtime.block_on(count(&url, &db_feedline))?;
        if stored != n {
            bail!("feedline stored {stored} of {n} activations");
        }
        println!(
            "  round {round}: direct _bulk_docs {:>8.0} docs/s   feedline {:>8.0} activations/s",
            rate(base),
            rate(engine)
        );
        base_best = base_best.min(base);
        engine_best = engine_best.min(engine);
    }
    let db_rate = format!("bench-rate-{stamp}");
    let (achieved, window) = runtime.block_on(rate_run(&url, &db_rate, opts.rate_events, opts.rate))?;
    let deviation = (achieved / opts.rate - 1.0) * 100.0;
    println!("feedline bench couchdb: {n} activations (~1 KB messages) into {url} (best of 2 rounds)");
    println!(
        "  direct _bulk_docs loop ({BATCH}/request, {IN_FLIGHT} in flight): {:>8.0} docs/s",
        rate(base_best)
    );
    println!(
        "  feedline (generator → extract_activation → couchdb):     {:>8.0} activations/s",
        rate(engine_best)
    );
    println!("  ratio feedline/direct: {:.2} (goal ≥ 0.90)", rate(engine_best) / rate(base_best));
    println!(
        "  rate_limit = {}: {:.1} documents/s stored over {:.1} s of a {}-activation run ({:+.1}%, goal within ±5%)",
        opts.rate,
        achieved,
        window.as_secs_f64(),
        opts.rate_events,
        deviation
    );
    drop(server);
    Ok(ExitCode::SUCCESS)
}
