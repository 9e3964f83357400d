//! The `feedline` command. Errors become exit codes here and nowhere else.

mod commands;
mod data_dir;
mod output;
mod telemetry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Events are allocated on one thread and freed on another (source → transforms → sinks); glibc's
/// malloc serialises that on arena locks (measured: ~10% of CPU in lock waits in `feedline-bench engine`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Feedline moves events from a source through transforms to sinks, at least once.
///
/// A pipeline file (TOML) names one source, an ordered list of transforms, one or more sinks, an
/// optional dead-letter sink and optional [[test]] cases. Start with:
///
///   feedline validate examples/quickstart.toml
///   feedline run examples/quickstart.toml
///
/// Docs: docs/pipeline-reference.md (file format), docs/components.md, docs/architecture.md.
#[derive(Parser)]
#[command(name = "feedline", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log format on stderr. Levels come from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run every pipeline in the given files and directories until SIGTERM/SIGINT (or until all
    /// of them finish, e.g. a file source without `follow`).
    ///
    /// On shutdown each pipeline stops reading, drains in-flight events within
    /// --drain-timeout, commits checkpoints and exits 0.
    Run {
        /// Pipeline files, or directories whose *.toml files are pipelines.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Serve /metrics, /health and /ready here (e.g. 127.0.0.1:9598; port 0 picks a free port,
        /// printed on stderr).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Checkpoints and default dead-letter files.
        #[arg(long, env = "FEEDLINE_DATA_DIR", default_value = "feedline-data")]
        data_dir: PathBuf,
        /// Seconds a stopping pipeline may spend delivering in-flight events.
        #[arg(long, default_value_t = 30)]
        drain_timeout: u64,
        /// What happens to a pipeline that fails: `stop` keeps it failed (`/health` answers 503),
        /// `restart` starts it again after a backoff. The other pipelines keep running either way;
        /// the process exits non-zero once all are done if any failed.
        #[arg(long, value_enum, default_value_t = commands::OnFailure::Stop)]
        on_failure: commands::OnFailure,
        /// A TOML file with a [telemetry] table (OTLP endpoint, protocol, service name, sampler,
        /// resource attributes, queue sizes). OTEL_* environment variables override it; with
        /// neither an endpoint nor OTEL_EXPORTER_OTLP_ENDPOINT, no traces are exported.
        /// See docs/observability.md.
        #[arg(long, env = "FEEDLINE_TELEMETRY_CONFIG")]
        telemetry_config: Option<PathBuf>,
    },
    /// Check pipeline files without touching the network. Prints file:line:column errors and
    /// exits 1 if there are any.
    Validate {
        /// Pipeline files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run the [[test]] cases embedded in pipeline files through their transforms, offline.
    /// Prints a diff for each failing case; exits 1 if any fails.
    Test {
        /// Pipeline files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print a pipeline's stages as a Mermaid flowchart or Graphviz DOT.
    Graph {
        /// A pipeline file.
        path: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
        format: GraphFormat,
    },
    /// Print the JSON Schema of pipeline files (for editor completion and CI checks), or the
    /// component reference in Markdown (docs/components.md is this output).
    Schema {
        /// Output format.
        #[arg(long, value_enum, default_value_t = SchemaFormat::Json)]
        format: SchemaFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaFormat {
    Json,
    Markdown,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Mermaid,
    Dot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, exporting) = match &cli.command {
        Command::Run { telemetry_config, .. } => (telemetry_config.as_deref(), true),
        _ => (None, false),
    };
    let installed = match telemetry::init(cli.log_format, config, exporting) {
        Ok(i) => i,
        Err(e) => {
            output::stderr(&format!("error: telemetry: {e:#}\n"));
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { paths, listen, data_dir, drain_timeout, on_failure, telemetry_config: _ } => {
            let drain = Duration::from_secs(drain_timeout);
            commands::run(&paths, listen, data_dir, drain, on_failure, &installed)
        }
        Command::Validate { paths } => commands::validate(&paths),
        Command::Test { paths } => commands::test(&paths),
        Command::Graph { path, format } => commands::graph(&path, matches!(format, GraphFormat::Dot)),
        Command::Schema { format } => commands::schema(matches!(format, SchemaFormat::Markdown)),
    };
    installed.shutdown();
    match result {
        Ok(code) => code,
        Err(e) => {
            output::stderr(&format!("error: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}
