//! JSON Schema of pipeline files, generated from the registered config types.

use serde_json::{json, Map, Value};

use super::{SinkOptions, TestCase};
use crate::registry::{Entry, Registry};

/// The JSON Schema (draft 2020-12) of a pipeline file for this registry.
pub fn pipeline_schema(registry: &Registry) -> Value {
    build(registry).0
}

/// Names of shared schema definitions that two config types define differently (a type named
/// alike in two components). Each would make one component's schema wrong; a test keeps it empty.
pub fn schema_collisions(registry: &Registry) -> Vec<String> {
    build(registry).1
}

fn build(registry: &Registry) -> (Value, Vec<String>) {
    let mut defs = Defs::default();
    let sink_options = take(schemars::schema_for!(SinkOptions), &mut defs);
    let test_case = take(schemars::schema_for!(TestCase), &mut defs);
    let sources = variants(&registry.sources, &mut defs, None);
    let transforms = variants(&registry.transforms, &mut defs, None);
    let sinks = variants(&registry.sinks, &mut defs, Some(&sink_options));
    let Defs { mut map, collisions } = defs;
    map.insert("source".into(), json!({ "oneOf": sources }));
    map.insert("transform".into(), json!({ "oneOf": transforms }));
    map.insert("sink".into(), json!({ "oneOf": sinks }));
    let defs = map;
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Feedline pipeline",
        "description": "One pipeline: a source, ordered transforms, one or more sinks, an optional dead-letter sink and offline test cases. String values may use ${VAR}, ${VAR:-default} and ${VAR:?message}.",
        "type": "object",
        "additionalProperties": false,
        "required": ["source", "sinks"],
        "properties": {
            "name": { "type": "string", "description": "Unique pipeline name (default: the file stem)." },
            "description": { "type": "string" },
            "source": { "$ref": "#/$defs/source" },
            "transforms": { "type": "array", "items": { "$ref": "#/$defs/transform" } },
            "sinks": { "type": "array", "minItems": 1, "items": { "$ref": "#/$defs/sink" } },
            "dead_letter": { "$ref": "#/$defs/sink", "description": "Where rejected events go (default: a JSON-lines file under the data directory)." },
            "test": { "type": "array", "items": test_case },
        },
        "$defs": defs,
    });
    (schema, collisions)
}

#[derive(Default)]
struct Defs {
    map: Map<String, Value>,
    collisions: Vec<String>,
}

impl Defs {
    fn merge(&mut self, incoming: Map<String, Value>) {
        for (name, def) in incoming {
            match self.map.get(&name) {
                Some(existing) if *existing != def => self.collisions.push(name),
                Some(_) => {}
                None => {
                    self.map.insert(name, def);
                }
            }
        }
    }
}

/// Move a root schema's `$defs` into `defs` and return the rest, with refs kept valid.
fn take(schema: schemars::Schema, defs: &mut Defs) -> Value {
    let mut v = schema.to_value();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("$schema");
        if let Some(Value::Object(d)) = obj.remove("$defs") {
            defs.merge(d);
        }
    }
    v
}

fn variants<B: ?Sized>(
    entries: &std::collections::BTreeMap<&'static str, Entry<B>>,
    defs: &mut Defs,
    common: Option<&Value>,
) -> Vec<Value> {
    entries
        .values()
        .map(|e| {
            let mut v = (e.schema)();
            if let Some(obj) = v.as_object_mut() {
                obj.remove("$schema");
                if let Some(Value::Object(d)) = obj.remove("$defs") {
                    defs.merge(d);
                }
                let props = obj.entry("properties").or_insert_with(|| json!({}));
                if let Some(props) = props.as_object_mut() {
                    props.insert("type".into(), json!({ "const": e.type_name }));
                    props.insert(
                        "id".into(),
                        json!({ "type": "string", "description": "Component id (default: the type name)." }),
                    );
                    if let Some(Value::Object(cp)) = common.and_then(|c| c.get("properties")) {
                        props.extend(cp.clone());
                    }
                }
                let req = obj.entry("required").or_insert_with(|| json!([]));
                if let Some(req) = req.as_array_mut() {
                    req.push(json!("type"));
                }
            }
            v
        })
        .collect()
}
