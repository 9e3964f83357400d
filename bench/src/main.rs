//! `feedline-bench`: Feedline's benchmarks, each printing its figures next to a baseline measured
//! in the same run. Not shipped: it starts its servers (tansu, pouchdb-server, the Cosmos test
//! server, an OTLP receiver) with the test kit. Build it in release:
//!
//!   cargo run --release -p feedline-bench -- engine
//!
//! Every benchmark runs the way `feedline run` does: mimalloc, and the `feedline` binary's own
//! logging and OpenTelemetry set-up (its `telemetry` module, compiled in here from `cli/src`), so
//! the engine's batch spans cost what they cost in production.

mod common;
mod cosmos;
mod couchdb;
mod engine;
mod kafka;
#[path = "../../cli/src/telemetry.rs"]
mod telemetry;
mod tracing_cost;
mod wasm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// As in `feedline` (measured there: ~10% of CPU in glibc's arena locks in `engine`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log format `telemetry::init` takes; benchmarks log as text.
#[derive(Clone, Copy)]
#[expect(dead_code)] // `Json` is `feedline --log-format json`'s
enum LogFormat {
    Text,
    Json,
}

/// Feedline's benchmarks: each prints its figures next to a baseline measured in the same run.
#[derive(Parser)]
#[command(name = "feedline-bench", about, long_about)]
struct Cli {
    #[command(subcommand)]
    which: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// generator → 3 built-in transforms → blackhole, next to a bare serde_json parse +
    /// serialize of the same events; events/s and peak RSS.
    Engine {
        /// Events per run.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// The engine pipeline with tracing off, then on at 1% and 100% sampling (spans exported
    /// over OTLP/HTTP to an in-process receiver); events/s and CPU per event against off.
    Tracing {
        /// Events per run.
        #[arg(long, default_value_t = 500_000)]
        events: u64,
        /// Runs of each setting (interleaved).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// One measurement of `tracing`, in a child process configured from OTEL_* like `feedline run`.
    #[command(hide = true)]
    TracingChild {
        /// Events of the run.
        #[arg(long)]
        events: u64,
    },
    /// generator → WASM filter / map → blackhole next to the built-in `filter` / `remap` doing the
    /// same job: events/s, ratios, per-event overhead. Needs scripts/build-wasm-examples.sh.
    Wasm {
        /// Events per run.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Runs of each pipeline (interleaved; the best run counts).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Directory of the example modules [default: ${CARGO_TARGET_DIR:-target}/wasm-examples/out].
        #[arg(long)]
        modules: Option<PathBuf>,
    },
    /// Kafka topic → extract_activation → Kafka topic with 1 KB activation records, next to a raw
    /// librdkafka consume→produce pipe on the same broker in the same run; events/s and the ratio.
    Kafka {
        /// Records per run.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Bootstrap brokers (default: start tansu from FEEDLINE_TANSU or the install script's place).
        #[arg(long)]
        brokers: Option<String>,
        /// Runs of each pipe (interleaved; the best run counts).
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
    /// Activations persisted per second (generator → extract_activation → couchdb) next to a
    /// direct `_bulk_docs` loop on the same server, and a `rate_limit` check.
    Couchdb {
        /// Activations per throughput run.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// CouchDB URL (default: start pouchdb-server from FEEDLINE_POUCHDB or the install script's place).
        #[arg(long)]
        url: Option<String>,
        /// `rate_limit` of the rate run, documents/s.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Activations of the rate run.
        #[arg(long, default_value_t = 5_000)]
        rate_events: u64,
    },
    /// Cosmos change feed → invalidate_cache → Kafka: write-to-message latency and backlog drain,
    /// on the test kit's Cosmos server and tansu.
    Cosmos(cosmos::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs on stderr as `feedline run` has them; only the tracing child exports spans.
    let exporting = matches!(cli.which, Bench::TracingChild { .. });
    let installed = match telemetry::init(LogFormat::Text, None, exporting) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: telemetry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.which {
        Bench::Engine { events } => engine::run(events),
        Bench::Tracing { events, rounds } => tracing_cost::run(events, rounds),
        Bench::TracingChild { events } => tracing_cost::child(events, &installed),
        Bench::Wasm { events, rounds, modules } => wasm::run(events, rounds, modules),
        Bench::Kafka { events, brokers, rounds } => kafka::run(events, brokers, rounds),
        Bench::Couchdb { events, url, rate, rate_events } => {
            couchdb::run(couchdb::Options { events, url, rate, rate_events })
        }
        Bench::Cosmos(opts) => cosmos::run(opts),
    };
    installed.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
