//! Every pipeline file shipped in `pipelines/` and `examples/` validates, and its `[[test]]`
//! cases pass — with placeholder values for the environment variables deployments set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables the shipped pipelines read; values are placeholders (validation does no I/O).
const ENV: &[(&str, &str)] = &[
    ("KAFKA_HOSTS", "127.0.0.1:9092"),
    ("CLUSTER_ID", "west"),
    ("COUCHDB_URL", "http://127.0.0.1:5984"),
    ("COUCHDB_USER", "admin"),
    ("COUCHDB_PASSWORD", "placeholder"),
    ("COSMOSDB_ENDPOINT", "http://127.0.0.1:8081/"),
    (
        "COSMOSDB_KEY",
        "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==",
    ),
    ("COSMOSDB_NAME", "whisk"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn pipeline_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["pipelines", "examples"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn feedline(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_feedline"));
    cmd.args(args);
    feedline_testkit::process::clean_env(&mut cmd);
    for (k, v) in ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_shipped_pipeline_validates_and_passes_its_tests() {
    let files = pipeline_files();
    assert!(!files.is_empty(), "no pipeline files found");
    let mut failures = Vec::new();
    for file in &files {
        let f = file.to_str().unwrap();
        let (ok, out) = feedline(&["validate", f]);
        if !ok {
            failures.push(format!("validate {f}:\n{out}"));
            continue;
        }
        let (ok, out) = feedline(&["test", f]);
        let cases = out.lines().filter(|l| l.starts_with("ok ")).count();
        println!("{f}: {cases} test case(s) passed");
        if !ok {
            failures.push(format!("test {f}:\n{out}"));
        } else if cases == 0 {
            failures.push(format!("{f} has no [[test]] cases"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn graph_and_schema_describe_the_shipped_quickstart() {
    let (ok, mermaid) = feedline(&["graph", root().join("examples/quickstart.toml").to_str().unwrap()]);
    assert!(ok, "{mermaid}");
    assert!(mermaid.contains("flowchart LR"));
    assert!(mermaid.contains("source_file --> transform_drop_own_cluster"), "{mermaid}");
    assert!(mermaid.contains("transform_invalidate_cache --> sink_stdout"), "{mermaid}");
    let (ok, dot) =
        feedline(&["graph", "--format", "dot", root().join("examples/quickstart.toml").to_str().unwrap()]);
    assert!(ok && dot.starts_with("digraph \"quickstart\""), "{dot}");

    let (ok, schema) = feedline(&["schema"]);
    assert!(ok);
    let schema: serde_json::Value = serde_json::from_str(&schema).unwrap();
    let sources = schema["$defs"]["source"]["oneOf"].as_array().unwrap();
    let file = sources.iter().find(|s| s["properties"]["type"]["const"] == "file").unwrap();
    assert_eq!(file["additionalProperties"], false);
    assert!(file["properties"]["path"]["description"].as_str().unwrap().contains("relative paths"));
    let sinks = schema["$defs"]["sink"]["oneOf"].as_array().unwrap();
    assert!(
        sinks.iter().all(|s| s["properties"]["max_in_flight"].is_object()),
        "sinks carry the delivery options"
    );
}

#[test]
fn docs_component_reference_is_current() {
    let (ok, generated) = feedline(&["schema", "--format", "markdown"]);
    assert!(ok);
    let committed = std::fs::read_to_string(root().join("docs/components.md")).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/components.md is stale: regenerate it with `cargo run -p feedline -- schema --format markdown > docs/components.md`"
    );
}

#[test]
fn the_readme_example_pipeline_validates() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme.split("## A pipeline file").nth(1).unwrap();
    let toml = section.split("```toml\n").nth(1).unwrap().split("```").next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, toml).unwrap();
    let (ok, out) = feedline(&["validate", file.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = feedline(&["test", file.to_str().unwrap()]);
    assert!(ok && out.contains("1 passed, 0 failed"), "{out}");
}

#[test]
fn no_two_components_define_a_schema_type_differently() {
    let mut registry = feedline_engine::Registry::new();
    feedline_connectors::register(&mut registry);
    feedline_transforms::register(&mut registry);
    let collisions = feedline_engine::config::schema_collisions(&registry);
    assert!(
        collisions.is_empty(),
        "rename these config types (they clash in the JSON Schema): {collisions:?}"
    );
}
