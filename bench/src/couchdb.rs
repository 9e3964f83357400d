//! `feedline-bench couchdb`: activations persisted per second through the engine next to a direct
//! `_bulk_docs` loop on the same server in the same run, and a `rate_limit` check.
//!
//! - feedline: generator (activation completion messages, rendered and parsed like real input) →
//!   `extract_activation` → `couchdb` sink (batches of 1000, `max_in_flight = 4`), with full
//!   delivery tracking.
//! - baseline: the same activation documents, already extracted, serialized and posted with
//!   `_bulk_docs` in batches of 1000, 4 requests in flight, with an HTTP client set up like the
//!   connector's — the least any persister must do.
//! - rate: the feedline pipeline with `rate_limit` set; documents/s measured on the server.
//!
//! Without `--url` the test kit starts a pouchdb-server (in memory, on a free 127.0.0.1 port) from
//! `FEEDLINE_POUCHDB` or where `scripts/install-pouchdb.sh` installs it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use feedline_connectors::generator::{render, Shape};
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_engine::{BuildContext, Event, Metadata, Output, TransformConfig};
use feedline_testkit::couchdb::{encode, pouchdb_path, CouchDb};
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

/// Posts pre-serialized `_bulk_docs` bodies and nothing else: the baseline. Its HTTP client is set
/// up like the `couchdb` connector's (10 s connect timeout, 32 idle connections per host, JSON
/// accepted), with 60 s per request.
struct BulkWriter {
    http: reqwest::Client,
    /// `<url>/<database>`.
    db: String,
}

impl BulkWriter {
    /// A writer for `database` at `url` (no I/O).
    fn new(url: &str, database: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(32)
            .timeout(Duration::from_secs(60))
            .build()
            .context("HTTP client")?;
        Ok(Self { http, db: format!("{}/{}", url.trim_end_matches('/'), encode(database)) })
    }

    /// One JSON request; the answer on 2xx (or on `also_ok`), an error otherwise.
    async fn json(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Vec<u8>>,
        also_ok: Option<u16>,
    ) -> anyhow::Result<serde_json::Value> {
        let mut req =
            self.http.request(method.clone(), &url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        }
        let resp = req.send().await.with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("{method} {url}: reading the answer"))?;
        if !status.is_success() && Some(status.as_u16()) != also_ok {
            bail!("{method} {url}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: not JSON: {text}"))
    }

    /// Create the database (fine when it exists).
    async fn create_database(&self) -> anyhow::Result<()> {
        self.json(reqwest::Method::PUT, self.db.clone(), None, Some(412)).await.map(drop)
    }

    /// POST one `{"docs": [...]}` body; the number of documents stored.
    async fn post(&self, body: Vec<u8>) -> anyhow::Result<usize> {
        let rows =
            self.json(reqwest::Method::POST, format!("{}/_bulk_docs", self.db), Some(body), None).await?;
        let rows = rows.as_array().context("_bulk_docs answered no array")?;
        Ok(rows.iter().filter(|r| r.get("ok").is_some()).count())
    }

    /// The database's `doc_count`.
    async fn doc_count(&self) -> anyhow::Result<u64> {
        let info = self.json(reqwest::Method::GET, self.db.clone(), None, None).await?;
        Ok(info.get("doc_count").and_then(serde_json::Value::as_u64).unwrap_or(0))
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
    let def = crate::common::load_pipeline(&dir, &pipeline_toml(url, database, events, rate))?;
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
async fn baseline_run(writer: Arc<BulkWriter>, docs: Vec<serde_json::Value>) -> anyhow::Result<Duration> {
    writer.create_database().await?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let mut stored = 0;
    for chunk in docs.chunks(BATCH) {
        if tasks.len() >= IN_FLIGHT {
            stored += tasks.join_next().await.context("task")???;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "docs": chunk }))?;
        let writer = writer.clone();
        tasks.spawn(async move { writer.post(body).await });
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
    BulkWriter::new(url, database)?.doc_count().await
}

pub fn run(opts: Options) -> anyhow::Result<ExitCode> {
    let server = match &opts.url {
        Some(_) => None,
        None if !pouchdb_path().is_file() => bail!(
            "pouchdb-server not found at {} (run scripts/install-pouchdb.sh, set FEEDLINE_POUCHDB, or pass --url)",
            pouchdb_path().display()
        ),
        None => Some(CouchDb::start()),
    };
    let url = opts.url.clone().or_else(|| server.as_ref().map(CouchDb::url)).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stamp = std::process::id();
    let n = opts.events;
    let docs = documents(n)?;
    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    // Interleaved: baseline, feedline, baseline, feedline — each into a fresh database; best of two.
    let (mut base_best, mut engine_best) = (Duration::MAX, Duration::MAX);
    for round in 0..2 {
        let db = format!("bench-direct-{stamp}-{round}");
        let writer = Arc::new(BulkWriter::new(&url, &db)?);
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
    println!("feedline-bench couchdb: {n} activations (~1 KB messages) into {url} (best of 2 rounds)");
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
