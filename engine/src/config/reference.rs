//! The component reference (Markdown), generated from the same JSON Schema editors use, so the
//! docs cannot drift from the config types.

use std::fmt::Write as _;

use serde_json::{Map, Value};

use super::schema::pipeline_schema;
use super::SINK_OPTION_KEYS;
use crate::registry::Registry;

/// Markdown reference of every registered component and the sinks' delivery options.
pub fn reference_markdown(registry: &Registry) -> String {
    let schema = pipeline_schema(registry);
    let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    let mut md = String::from(
        "# Component reference\n\nGenerated from the config types by `feedline schema --format markdown`; do not edit by hand.\n\
         Every component also takes `type` (required) and `id` (default: the type name).\n",
    );
    for (title, key) in [("Sources", "source"), ("Transforms", "transform"), ("Sinks", "sink")] {
        let _ = write!(md, "\n## {title}\n");
        for variant in defs[key]["oneOf"].as_array().into_iter().flatten() {
            component(&mut md, variant, &defs, key == "sink");
        }
    }
    md.push_str("\n## Delivery options of every sink\n\n");
    if let Some(props) = defs["sink"]["oneOf"][0]["properties"].as_object() {
        table(&mut md, props, &[], &defs, |k| SINK_OPTION_KEYS.contains(&k));
    }
    for name in ["BatchOptions", "RetryOptions"] {
        if let Some(props) = defs.get(name).and_then(|d| d["properties"].as_object()) {
            let _ = write!(md, "\n`{}` table:\n\n", if name == "BatchOptions" { "batch" } else { "retry" });
            table(&mut md, props, &[], &defs, |_| true);
        }
    }
    md
}

fn component(md: &mut String, variant: &Value, defs: &Map<String, Value>, is_sink: bool) {
    let name = variant["properties"]["type"]["const"].as_str().unwrap_or("?");
    let _ = write!(md, "\n### `{name}`\n\n");
    if let Some(d) = variant["description"].as_str() {
        let _ = write!(md, "{}\n\n", d.replace('\n', " "));
    }
    let required: Vec<&str> =
        variant["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    match variant["properties"].as_object() {
        Some(props) if props.keys().any(|k| !skip(k, is_sink)) => {
            table(md, props, &required, defs, |k| !skip(k, is_sink));
        }
        _ => md.push_str("No options.\n"),
    }
    if is_sink {
        md.push_str("\nPlus the [delivery options](#delivery-options-of-every-sink).\n");
    }
}

fn skip(key: &str, is_sink: bool) -> bool {
    key == "type" || key == "id" || (is_sink && SINK_OPTION_KEYS.contains(&key))
}

fn table(
    md: &mut String,
    props: &Map<String, Value>,
    required: &[&str],
    defs: &Map<String, Value>,
    keep: impl Fn(&str) -> bool,
) {
    md.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    for (key, p) in props.iter().filter(|(k, _)| keep(k)) {
        let (ty, variants) = type_of(p, defs);
        let default = if required.contains(&key.as_str()) {
            "required".to_string()
        } else {
            p.get("default").map(|d| format!("`{d}`")).unwrap_or_default()
        };
        let mut desc = p["description"].as_str().unwrap_or("").replace('\n', " ");
        if !variants.is_empty() {
            let _ = write!(desc, " {variants}");
        }
        let desc = desc.trim().replace('\n', " ").replace('|', "\\|");
        let _ = writeln!(md, "| `{key}` | {ty} | {default} | {desc} |");
    }
}

/// A readable type, and for enums the meaning of each value.
fn type_of(p: &Value, defs: &Map<String, Value>) -> (String, String) {
    let resolved = p
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| defs.get(name))
        .unwrap_or(p);
    if let Some(options) = resolved["oneOf"].as_array().filter(|o| o.iter().all(|v| v.get("const").is_some()))
    {
        let names: Vec<String> = options.iter().map(|v| format!("`{}`", v["const"])).collect();
        let meanings: Vec<String> = options
            .iter()
            .filter_map(|v| Some(format!("{}: {}", v["const"], v["description"].as_str()?)))
            .collect();
        return (names.join(" \\| "), meanings.join("; "));
    }
    if let Some(t) = resolved["type"].as_str() {
        return (t.to_string(), String::new());
    }
    if let Some(ts) = resolved["type"].as_array() {
        let ts: Vec<&str> = ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
        return (ts.join(" or "), String::new());
    }
    if let Some(items) = p.get("anyOf").and_then(Value::as_array) {
        let inner = items.iter().find(|v| v["type"] != "null").map(|v| type_of(v, defs));
        return inner.unwrap_or_default();
    }
    ("table".to_string(), String::new())
}
