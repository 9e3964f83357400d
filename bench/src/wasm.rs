//! `feedline-bench wasm`: WASM transforms next to built-in ones doing the same job, in one run.
//!
//! Pipelines: generator (Cosmos-style changes) → one transform → blackhole, with full delivery
//! tracking, batches of 1,000:
//! - filter: built-in `filter` dropping `_clusterId == "west"` (half the events) vs the example
//!   guest `namespace_filter.wasm` configured to do the same;
//! - map: built-in `remap` setting `/_self` vs the example guest `field_redactor.wasm` rewriting
//!   the same field.
//!
//! Each pipeline runs `rounds` times, alternating, and the best round counts (the machine may be
//! shared). Per-event overhead is `1/wasm rate − 1/built-in rate`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

const FILTER_BUILTIN: &str = r#"type = "filter"
condition = { not = { equals = { field = "_clusterId", value = "west" } } }"#;
const FILTER_WASM: &str = r#"type = "wasm"
module = "MODULES/namespace_filter.wasm"
config = { namespaces = ["west"], field = "_clusterId" }"#;
const MAP_BUILTIN: &str = r#"type = "remap"
ops = [{ set = { path = "/_self", value = "[redacted]" } }]"#;
const MAP_WASM: &str = r#"type = "wasm"
module = "MODULES/field_redactor.wasm"
config = { fields = ["_self"] }"#;

fn pipeline_toml(events: u64, transform: &str, modules: &Path) -> String {
    let transform = transform.replace("MODULES", &modules.display().to_string());
    format!(
        r#"name = "bench-wasm"
[source]
type = "generator"
shape = "cosmos_change"
count = {events}
batch_size = 1000

[[transforms]]
id = "t"
{transform}

[[sinks]]
type = "blackhole"
"#
    )
}

/// One measured run.
struct Run {
    took: Duration,
    out: u64,
    guest_seconds: f64,
}

/// Sum of a metric family's samples whose labels contain `filter`.
fn metric(text: &str, family: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{') && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn run_once(dir: &Path, events: u64, transform: &str, modules: &Path) -> anyhow::Result<Run> {
    let (took, metrics) = crate::common::time_pipeline(dir, &pipeline_toml(events, transform, modules))?;
    let _ = std::fs::remove_dir_all(dir.join("data"));
    let text = metrics.render();
    Ok(Run {
        took,
        out: metric(&text, "feedline_events_out_total", r#"component="t""#) as u64,
        guest_seconds: metric(&text, "feedline_wasm_guest_seconds_total", r#"component="t""#),
    })
}

fn best(runs: &[Run]) -> anyhow::Result<&Run> {
    runs.iter().min_by_key(|r| r.took).context("no runs")
}

fn default_modules() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("wasm-examples/out")
}

pub fn run(events: u64, rounds: u32, modules: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let modules = modules.unwrap_or_else(default_modules);
    let modules = std::fs::canonicalize(&modules).with_context(|| {
        format!(
            "no example modules in {}: build them with scripts/build-wasm-examples.sh \
             (it prints their directory) and pass it as --modules",
            modules.display()
        )
    })?;
    let dir = std::env::temp_dir().join(format!("feedline-bench-wasm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cases = [("filter", FILTER_BUILTIN, FILTER_WASM, 0.8), ("map", MAP_BUILTIN, MAP_WASM, 0.5)];
    let mut results = Vec::new();
    for (_, builtin, wasm, _) in &cases {
        let (mut b, mut w) = (Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            b.push(run_once(&dir, events, builtin, &modules)?);
            w.push(run_once(&dir, events, wasm, &modules)?);
        }
        results.push((b, w));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rate = |r: &Run| events as f64 / r.took.as_secs_f64();
    println!(
        "feedline-bench wasm: {events} Cosmos-style change events, generator → transform → blackhole, \
         best of {rounds}"
    );
    let mut met = true;
    for ((name, _, _, goal), (b, w)) in cases.iter().zip(&results) {
        let (b, w) = (best(b)?, best(w)?);
        let ratio = rate(w) / rate(b);
        let overhead_ns = (1.0 / rate(w) - 1.0 / rate(b)) * 1e9;
        let guest_ns = w.guest_seconds / events as f64 * 1e9;
        let label = if *name == "filter" { "namespace_filter.wasm" } else { "field_redactor.wasm" };
        let builtin = if *name == "filter" { "built-in `filter`" } else { "built-in `remap`" };
        println!("  {name}");
        println!(
            "    {builtin:<26} {:>12.0} events/s   {:>7.3} s   {} out",
            rate(b),
            b.took.as_secs_f64(),
            b.out
        );
        println!(
            "    {label:<26} {:>12.0} events/s   {:>7.3} s   {} out",
            rate(w),
            w.took.as_secs_f64(),
            w.out
        );
        println!(
            "    ratio wasm/built-in {ratio:.2} (goal ≥ {goal:.2}{}), overhead {overhead_ns:+.0} ns/event, \
             {guest_ns:.0} ns/event inside the guest call",
            if ratio >= *goal { ", met" } else { ", NOT met" }
        );
        if b.out != w.out {
            println!("    warning: the two pipelines emitted different counts");
        }
        met &= ratio >= *goal;
    }
    println!("  goals {}", if met { "met" } else { "not met" });
    Ok(ExitCode::SUCCESS)
}
