//! `filter`: keep the events that match a condition, drop the rest.
//!
//! The condition is a small tree written as TOML inline tables, one key naming the test:
//!
//! ```toml
//! [[transforms]]
//! type = "filter"
//! condition = { all = [
//!   { equals = { field = "/entityType", value = "action" } },
//!   { not = { matches = { field = "name", regex = "^test-" } } },
//! ] }
//! ```
//!
//! Fields are top-level names, JSON pointers (`/a/b/0`), `$key` (the event key as text) or
//! `$stream` (the topic, database or container the event came from). Everything is compiled at
//! build time (pointers split, regexes compiled, `in` lists hashed), so evaluation allocates
//! nothing. Dropped events count as done.

use std::collections::HashSet;

use feedline_engine::{
    BuildContext, CheckContext, ComponentError, ConfigProblem, Event, Operation, Output, Transform,
    TransformConfig,
};
use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Keeps events matching `condition` (or, with `invert`, those not matching) and drops the rest.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The test each event must pass, e.g. `{ equals = { field = "/entityType", value = "action" } }`.
    pub condition: Condition,
    /// Keep the events that do *not* match instead.
    #[serde(default)]
    pub invert: bool,
}

/// A test on an event. Field paths are top-level names, JSON pointers (`/a/b`), `$key` (the event
/// key as text) or `$stream` (topic, database or container); `$key` and `$stream` compare with
/// string values only. A missing field matches nothing but `not`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schemars(rename = "FilterCondition")]
pub enum Condition {
    /// The field equals `value` (numbers compare by value: `1` equals `1.0`).
    Equals {
        /// Field path.
        field: String,
        /// The value to compare with.
        value: Value,
    },
    /// The field equals one of `values`.
    In {
        /// Field path.
        field: String,
        /// Accepted values.
        values: Vec<Value>,
    },
    /// The field exists (it may be `null`).
    Exists(String),
    /// The field is a string containing a match of `regex` (anchor with `^…$` for a full match).
    Matches {
        /// Field path.
        field: String,
        /// Regular expression (Rust `regex` syntax).
        regex: String,
    },
    /// The event's operation is this one (`upsert` or `delete`).
    Operation(Operation),
    /// The inner condition does not hold.
    Not(Box<Condition>),
    /// Every inner condition holds.
    All(Vec<Condition>),
    /// At least one inner condition holds.
    Any(Vec<Condition>),
}

fn problem(message: String) -> ConfigProblem {
    ConfigProblem::field("condition", message)
}

impl TransformConfig for FilterConfig {
    const TYPE: &'static str = "filter";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        compile(&self.condition).map(|_| ())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        let condition = compile(&self.condition).map_err(|p| ComponentError::fatal(p.message))?;
        Ok(Box::new(Filter { condition, invert: self.invert }))
    }
}

/// Where a condition reads its value.
#[derive(Debug)]
enum Field {
    /// Top-level field name.
    Name(String),
    /// JSON pointer tokens, unescaped.
    Pointer(Vec<String>),
    /// `$key`.
    Key,
    /// `$stream`.
    Stream,
}

/// A field's value: JSON from the document, or text from the event around it.
enum Found<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl Field {
    fn parse(path: &str) -> Result<Self, ConfigProblem> {
        let hint =
            "write a top-level name (`name`), a JSON pointer (`/response/result`), `$key` or `$stream`";
        match path {
            "" => Err(problem("a condition's field must not be empty".into()).with_hint(hint)),
            "$key" => Ok(Self::Key),
            "$stream" => Ok(Self::Stream),
            p if p.starts_with('$') => Err(problem(format!("unknown special field `{p}`"))
                .with_hint(format!("{hint}; for a document field named `{p}` write `/{p}`"))),
            p if p.starts_with('/') => {
                let tokens = p.split('/').skip(1).map(unescape).collect::<Option<Vec<_>>>();
                tokens.map(Self::Pointer).ok_or_else(|| {
                    problem(format!("invalid JSON pointer `{p}`"))
                        .with_hint("in a pointer `~` must be written `~0` and a `/` inside a name `~1`")
                })
            }
            p => Ok(Self::Name(p.to_owned())),
        }
    }

    fn get<'a>(&self, event: &'a Event) -> Option<Found<'a>> {
        match self {
            Self::Name(name) => event.value.get(name).map(Found::Json),
            Self::Pointer(tokens) => {
                tokens.iter().try_fold(&*event.value, |v, t| step(v, t)).map(Found::Json)
            }
            Self::Key => event.key_str().map(Found::Text),
            Self::Stream => event.meta.stream.as_deref().map(Found::Text),
        }
    }
}

/// Unescape one JSON pointer token; `None` for a `~` not followed by `0` or `1`.
fn unescape(token: &str) -> Option<String> {
    if !token.contains('~') {
        return Some(token.to_owned());
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('0') => '~',
            Some('1') => '/',
            _ => return None,
        });
    }
    Some(out)
}

/// One pointer step: an object member, or an array element by canonical index.
fn step<'a>(value: &'a Value, token: &str) -> Option<&'a Value> {
    match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => {
            let canonical = !token.is_empty() && (token == "0" || !token.starts_with('0'));
            if !canonical {
                return None;
            }
            token.parse::<usize>().ok().and_then(|i| items.get(i))
        }
        _ => None,
    }
}

/// A condition ready to evaluate.
#[derive(Debug)]
enum Compiled {
    Equals(Field, Value),
    In { field: Field, texts: HashSet<String>, others: Vec<Value> },
    Exists(Field),
    Matches(Field, Regex),
    Operation(Operation),
    Not(Box<Compiled>),
    All(Vec<Compiled>),
    Any(Vec<Compiled>),
}

fn compile(c: &Condition) -> Result<Compiled, ConfigProblem> {
    Ok(match c {
        Condition::Equals { field, value } => Compiled::Equals(Field::parse(field)?, value.clone()),
        Condition::In { field, values } => {
            if values.is_empty() {
                return Err(problem(format!("`in` on `{field}` has no values, so it never matches"))
                    .with_hint("list at least one value"));
            }
            let (texts, others): (Vec<_>, Vec<_>) = values.iter().cloned().partition(Value::is_string);
            let texts = texts.into_iter().filter_map(|v| v.as_str().map(str::to_owned)).collect();
            Compiled::In { field: Field::parse(field)?, texts, others }
        }
        Condition::Exists(field) => Compiled::Exists(Field::parse(field)?),
        Condition::Matches { field, regex } => {
            let re = Regex::new(regex).map_err(|e| {
                problem(format!("invalid regex `{regex}` for `{field}`: {e}"))
                    .with_hint("the syntax is Rust's `regex` crate (no look-around or backreferences)")
            })?;
            Compiled::Matches(Field::parse(field)?, re)
        }
        Condition::Operation(op) => Compiled::Operation(*op),
        Condition::Not(inner) => Compiled::Not(Box::new(compile(inner)?)),
        Condition::All(list) | Condition::Any(list) => {
            let any = matches!(c, Condition::Any(_));
            if list.is_empty() {
                let name = if any { "any" } else { "all" };
                return Err(problem(format!("`{name}` has no conditions"))
                    .with_hint("list at least one condition, or remove the `filter` stage"));
            }
            let list = list.iter().map(compile).collect::<Result<Vec<_>, _>>()?;
            if any {
                Compiled::Any(list)
            } else {
                Compiled::All(list)
            }
        }
    })
}

/// JSON equality where numbers compare by value (`1 == 1.0`), as TOML and JSON spell them apart.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

impl Compiled {
    fn eval(&self, event: &Event) -> bool {
        match self {
            Self::Equals(field, want) => match field.get(event) {
                Some(Found::Json(v)) => json_eq(v, want),
                Some(Found::Text(t)) => want.as_str() == Some(t),
                None => false,
            },
            Self::In { field, texts, others } => match field.get(event) {
                Some(Found::Json(Value::String(s))) => texts.contains(s.as_str()),
                Some(Found::Json(v)) => others.iter().any(|o| json_eq(v, o)),
                Some(Found::Text(t)) => texts.contains(t),
                None => false,
            },
            Self::Exists(field) => field.get(event).is_some(),
            Self::Matches(field, re) => match field.get(event) {
                Some(Found::Json(Value::String(s))) => re.is_match(s),
                Some(Found::Text(t)) => re.is_match(t),
                _ => false,
            },
            Self::Operation(op) => event.operation == *op,
            Self::Not(inner) => !inner.eval(event),
            Self::All(list) => list.iter().all(|c| c.eval(event)),
            Self::Any(list) => list.iter().any(|c| c.eval(event)),
        }
    }
}

struct Filter {
    condition: Compiled,
    invert: bool,
}

impl Transform for Filter {
    fn transform(&mut self, event: Event, out: &mut Output) {
        if self.condition.eval(&event) != self.invert {
            out.emit(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use feedline_engine::{registry::parse_typed, Metadata};
    use serde_json::json;

    fn config(v: Value) -> FilterConfig {
        match parse_typed(v) {
            Ok(c) => c,
            Err(e) => panic!("config did not parse: {e:?}"),
        }
    }

    fn check(v: Value) -> Result<(), ConfigProblem> {
        config(v).check(&CheckContext { base_dir: ".".into() })
    }

    /// Which of `events` pass a filter built from `cfg`, by index.
    fn kept(cfg: Value, events: &[Event]) -> Vec<usize> {
        let cfg = config(cfg);
        let mut f = match compile(&cfg.condition) {
            Ok(condition) => Filter { condition, invert: cfg.invert },
            Err(p) => panic!("{}", p.message),
        };
        let mut out = Output::default();
        f.transform_batch(events.to_vec(), &mut out);
        out.emitted().filter_map(|e| events.iter().position(|x| x == e)).collect()
    }

    fn ev(v: Value) -> Event {
        Event::new(v, Metadata::from_source("t"))
    }

    fn docs() -> Vec<Event> {
        vec![
            ev(
                json!({"entityType": "action", "name": "test-a", "namespace": "a", "n": 1, "response": {"result": null}}),
            ),
            ev(json!({"entityType": "trigger", "name": "b", "namespace": "b", "n": 2.0})),
            ev(json!({"entityType": "action", "name": "c", "namespace": "z", "tags": ["x", "y"]})),
            ev(json!("not an object")),
            ev(json!(null)),
        ]
    }

    #[test]
    fn equals_in_exists() {
        let d = docs();
        assert_eq!(
            kept(json!({"condition": {"equals": {"field": "/entityType", "value": "action"}}}), &d),
            [0, 2]
        );
        assert_eq!(kept(json!({"condition": {"equals": {"field": "n", "value": 2}}}), &d), [1]);
        assert_eq!(kept(json!({"condition": {"equals": {"field": "n", "value": 1.0}}}), &d), [0]);
        assert_eq!(
            kept(json!({"condition": {"in": {"field": "namespace", "values": ["a", "b", 3]}}}), &d),
            [0, 1]
        );
        assert_eq!(kept(json!({"condition": {"in": {"field": "n", "values": [1, "x"]}}}), &d), [0]);
        assert_eq!(kept(json!({"condition": {"exists": "/response/result"}}), &d), [0]);
        assert_eq!(kept(json!({"condition": {"equals": {"field": "/tags/1", "value": "y"}}}), &d), [2]);
        assert_eq!(kept(json!({"condition": {"exists": "/tags/01"}}), &d), Vec::<usize>::new());
    }

    #[test]
    fn regex_and_combinators() {
        let d = docs();
        let is_test = json!({"matches": {"field": "name", "regex": "^test-"}});
        assert_eq!(kept(json!({"condition": is_test}), &d), [0]);
        assert_eq!(kept(json!({"condition": {"not": is_test}}), &d), [1, 2, 3, 4]);
        assert_eq!(kept(json!({"condition": is_test, "invert": true}), &d), [1, 2, 3, 4]);
        let action = json!({"equals": {"field": "entityType", "value": "action"}});
        assert_eq!(kept(json!({"condition": {"all": [action, {"not": is_test}]}}), &d), [2]);
        assert_eq!(
            kept(json!({"condition": {"any": [is_test, {"exists": "tags"}, {"exists": "n"}]}}), &d),
            [0, 1, 2]
        );
    }

    #[test]
    fn key_stream_and_operation() {
        let mut a = ev(json!({}));
        a.key = Some(Bytes::from_static(b"guest/hello"));
        a.meta.stream = Some("completed0".into());
        let mut b = ev(json!({}));
        b.key = Some(Bytes::from_static(&[0xff, 0xfe]));
        b.operation = Operation::Delete;
        let d = [a, b, ev(json!({"$key": "guest/hello"}))];
        assert_eq!(
            kept(json!({"condition": {"equals": {"field": "$key", "value": "guest/hello"}}}), &d),
            [0]
        );
        assert_eq!(kept(json!({"condition": {"exists": "$key"}}), &d), [0]);
        assert_eq!(
            kept(json!({"condition": {"matches": {"field": "$stream", "regex": "^completed"}}}), &d),
            [0]
        );
        assert_eq!(
            kept(json!({"condition": {"in": {"field": "$stream", "values": ["completed0"]}}}), &d),
            [0]
        );
        assert_eq!(kept(json!({"condition": {"operation": "delete"}}), &d), [1]);
        assert_eq!(kept(json!({"condition": {"exists": "/$key"}}), &d), [2]);
    }

    #[test]
    fn check_reports_bad_conditions_on_condition_field() {
        let bad = [
            json!({"matches": {"field": "name", "regex": "(unclosed"}}),
            json!({"not": {"any": []}}),
            json!({"all": []}),
            json!({"in": {"field": "x", "values": []}}),
            json!({"exists": ""}),
            json!({"exists": "$route"}),
            json!({"exists": "/a~2b"}),
        ];
        for condition in bad {
            let problem = check(json!({ "condition": condition.clone() })).err();
            let problem = problem.unwrap_or_else(|| panic!("accepted {condition}"));
            assert_eq!(problem.field.as_deref(), Some("condition"));
            assert!(problem.hint.is_some());
        }
        let regex_problem = check(json!({"condition": {"matches": {"field": "n", "regex": "a("}}})).err();
        assert!(regex_problem.is_some_and(|p| p.message.contains("invalid regex `a(`")));
        assert!(check(json!({"condition": {"exists": "/a~1b~0c"}})).is_ok());
    }

    #[test]
    fn config_shape_is_strict() {
        let rejects = |v: Value| parse_typed::<FilterConfig>(v).is_err();
        assert!(rejects(json!({})));
        assert!(rejects(json!({"condition": {"equals": {"field": "a", "value": 1, "extra": 2}}})));
        assert!(rejects(json!({"condition": {"exists": "a", "equals": {"field": "a", "value": 1}}})));
        assert!(rejects(json!({"condition": {"operation": "erase"}})));
        assert!(rejects(json!({"condition": {"exists": "a"}, "inverse": true})));
        assert_eq!(unescape("a~1b~0"), Some("a/b~".to_owned()));
    }

    #[test]
    fn schema_handles_the_recursive_condition() {
        let schema = serde_json::to_value(schemars::schema_for!(FilterConfig)).unwrap_or_default();
        assert!(schema["$defs"]["FilterCondition"]["oneOf"].is_array(), "{schema}");
        assert!(schema["properties"]["invert"]["description"].is_string());
    }
}
