//! Numeric ranges from the config types' own schemas.
//!
//! A config field declares its range once, next to its type (`#[schemars(range(min = 1, max =
//! 3_600_000))]`); the loader checks every number a pipeline file gives against the schema
//! generated from that type, so the range is in the reference docs, in editor completion and in
//! `validate` at the same time, and a new option cannot be enforced in one and forgotten in
//! another. A test over the whole registry keeps every numeric option bounded.

use serde_json::{Map, Value};

/// A number outside its declared range.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct OutOfRange {
    /// Keys from the component table down to the offending value.
    pub path: Vec<String>,
    /// What is wrong.
    pub message: String,
    /// The valid range.
    pub hint: String,
}

/// Check every number in `value` against the `minimum`/`maximum` of `schema` (a root schema with
/// its `$defs`).
pub(super) fn check(schema: &Value, value: &Value) -> Vec<OutOfRange> {
    let defs = schema.get("$defs").and_then(Value::as_object);
    let mut found = Vec::new();
    walk(schema, value, defs, &mut Vec::new(), &mut found, 0);
    found
}

fn resolve<'s>(schema: &'s Value, defs: Option<&'s Map<String, Value>>) -> &'s Value {
    let target = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
        .and_then(|name| defs?.get(name));
    target.unwrap_or(schema)
}

fn walk(
    schema: &Value,
    value: &Value,
    defs: Option<&Map<String, Value>>,
    path: &mut Vec<String>,
    found: &mut Vec<OutOfRange>,
    depth: usize,
) {
    // Recursive config types are not expected; the cap keeps a cycle from looping.
    if depth > 32 {
        return;
    }
    let schema = resolve(schema, defs);
    for key in ["anyOf", "oneOf", "allOf"] {
        for alternative in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            walk(alternative, value, defs, path, found, depth + 1);
        }
    }
    match value {
        Value::Number(n) => {
            if let Some(problem) = n.as_f64().and_then(|x| out_of_range(schema, x, &n.to_string())) {
                found.push(OutOfRange { path: path.clone(), message: problem.0, hint: problem.1 });
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, field) in fields {
                if let Some(field_schema) = properties.and_then(|p| p.get(key)) {
                    path.push(key.clone());
                    walk(field_schema, field, defs, path, found, depth + 1);
                    path.pop();
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    walk(item_schema, item, defs, path, found, depth + 1);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

fn out_of_range(schema: &Value, x: f64, given: &str) -> Option<(String, String)> {
    let min = schema.get("minimum").and_then(Value::as_f64);
    let max = schema.get("maximum").and_then(Value::as_f64);
    if min.is_none() && max.is_none() {
        return None;
    }
    let hint = match (min, max) {
        (Some(lo), Some(hi)) => format!("valid range: {} to {}", show(lo), show(hi)),
        (Some(lo), None) => format!("must be at least {}", show(lo)),
        (None, Some(hi)) => format!("must be at most {}", show(hi)),
        (None, None) => return None,
    };
    if min.is_some_and(|lo| x < lo) {
        return Some((format!("{given} is too small"), hint));
    }
    if max.is_some_and(|hi| x > hi) {
        return Some((format!("{given} is too large"), hint));
    }
    None
}

fn show(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:?}")
    }
}

/// Paths of numeric properties in `schema` that declare no `maximum` (a test keeps this empty
/// for every registered component, so a new option cannot forget its range).
pub fn unbounded_numbers(schema: &Value) -> Vec<String> {
    let defs = schema.get("$defs").and_then(Value::as_object);
    let mut out = Vec::new();
    unbounded(schema, defs, "", &mut out, 0);
    out
}

fn unbounded(
    schema: &Value,
    defs: Option<&Map<String, Value>>,
    at: &str,
    out: &mut Vec<String>,
    depth: usize,
) {
    if depth > 32 {
        return;
    }
    let schema = resolve(schema, defs);
    for key in ["anyOf", "oneOf", "allOf"] {
        for alternative in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            unbounded(alternative, defs, at, out, depth + 1);
        }
    }
    let numeric = |t: &Value| matches!(t.as_str(), Some("integer" | "number"));
    let is_number = match schema.get("type") {
        Some(Value::Array(types)) => types.iter().any(numeric),
        Some(t) => numeric(t),
        None => false,
    };
    if is_number && schema.get("maximum").is_none() {
        out.push(at.to_owned());
    }
    for (key, field) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        unbounded(field, defs, &format!("{at}.{key}"), out, depth + 1);
    }
    if let Some(items) = schema.get("items") {
        unbounded(items, defs, &format!("{at}[]"), out, depth + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "interval_ms": { "type": "integer", "minimum": 1, "maximum": 60000 },
                "rate": { "type": ["number", "null"], "minimum": 0.001, "maximum": 1e9 },
                "batch": { "$ref": "#/$defs/Batch" },
                "list": { "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 9 } }
            },
            "$defs": {
                "Batch": { "type": "object", "properties": { "max": { "type": "integer", "minimum": 1, "maximum": 10 } } }
            }
        })
    }

    #[test]
    fn numbers_outside_the_declared_range_are_found_with_their_path() {
        let found = check(
            &schema(),
            &json!({ "interval_ms": 0, "rate": 1e-300, "batch": { "max": 11 }, "list": [1, 10] }),
        );
        let paths: Vec<String> = found.iter().map(|f| f.path.join(".")).collect();
        assert_eq!(paths, ["batch.max", "interval_ms", "list.1", "rate"]);
        assert_eq!(found[1].message, "0 is too small");
        assert_eq!(found[1].hint, "valid range: 1 to 60000");
        assert_eq!(found[0].message, "11 is too large");
        assert_eq!(found[3].message, "1e-300 is too small");
    }

    #[test]
    fn values_inside_the_range_and_non_numbers_pass() {
        let ok =
            json!({ "interval_ms": 60000, "rate": 0.001, "batch": { "max": 1 }, "list": [0, 9], "x": "y" });
        assert!(check(&schema(), &ok).is_empty());
    }

    #[test]
    fn numbers_without_a_maximum_are_listed() {
        let s = json!({ "type": "object", "properties": {
            "a": { "type": "integer", "minimum": 0 },
            "b": { "type": ["integer", "null"], "minimum": 0, "maximum": 5 },
            "c": { "type": "string" }
        }});
        assert_eq!(unbounded_numbers(&s), [".a"]);
    }
}
