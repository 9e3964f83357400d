//! `remap`: edit events with an ordered list of operations addressed by JSON pointer.
//!
//! ```toml
//! [[transforms]]
//! type = "remap"
//! ops = [
//!   { set = { path = "/meta/source", value = "cosmos" } },
//!   { rename = { from = "/id", to = "/_id" } },
//!   { remove = "/_lsn" },
//!   { copy = { from = "/namespace", to = "/meta/namespace" } },
//!   { set_key = { from = "/_id" } },
//!   { set_route = { from = "/namespace" } },
//! ]
//! ```
//!
//! Writes (`set`, and the targets of `rename` and `copy`) create missing intermediate objects;
//! writing through something that is not an object (or an array with that index; `-` appends) is
//! an error. A missing source (`rename`/`copy`/`set_key`/`set_route` `from`) is an error too.
//! `on_error` decides what an error does: `skip` skips that one edit, `reject` sends the event to
//! the dead-letter sink with the edits before it applied. Removing a missing field is a no-op.
//! Pointers are parsed once at build time; edits work in place on the event.

use std::borrow::Cow;

use bytes::Bytes;
use feedline_engine::{
    kind_of, BuildContext, CheckContext, ComponentError, ConfigProblem, Event, Output, Transform,
    TransformConfig,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Applies `ops` to every event, in order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemapConfig {
    /// The edits, applied in order. Paths are JSON pointers: `/a/b` is field `b` of field `a`,
    /// `/tags/0` an array element; write `~1` for a `/` and `~0` for a `~` inside a name.
    pub ops: Vec<RemapOp>,
    /// What a failing edit (missing source, writing into a non-object) does: `skip` skips that
    /// edit, `reject` sends the event to the dead-letter sink.
    #[serde(default)]
    pub on_error: RemapOnError,
}

/// One edit.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RemapOp {
    /// Write `value` at `path`, replacing what is there.
    Set {
        /// Target pointer.
        path: String,
        /// Any value.
        value: Value,
    },
    /// Move the value at `from` to `to`.
    Rename {
        /// Source pointer.
        from: String,
        /// Target pointer.
        to: String,
    },
    /// Delete the value at this pointer (nothing happens when it is missing).
    Remove(String),
    /// Copy the value at `from` to `to`.
    Copy {
        /// Source pointer.
        from: String,
        /// Target pointer.
        to: String,
    },
    /// Set the event key from a fixed `value` or `from` a field.
    SetKey(RemapText),
    /// Set the route sinks use (e.g. the Kafka topic) from a fixed `value` or `from` a field.
    SetRoute(RemapText),
}

/// Text for a key or route: exactly one of `value` and `from`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemapText {
    /// Fixed text.
    pub value: Option<String>,
    /// Pointer to a string, number or boolean in the document.
    pub from: Option<String>,
}

/// What a failing remap edit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemapOnError {
    /// Skip the failing edit and go on with the next.
    #[default]
    Skip,
    /// Send the event to the dead-letter sink.
    Reject,
}

impl TransformConfig for RemapConfig {
    const TYPE: &'static str = "remap";

    fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        compile(&self.ops).map(|_| ())
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        let edits = compile(&self.ops).map_err(|p| ComponentError::fatal(p.message))?;
        Ok(Box::new(Remap { edits, on_error: self.on_error }))
    }
}

/// A parsed JSON pointer: its text for messages and its unescaped tokens.
#[derive(Debug)]
struct Pointer {
    text: String,
    tokens: Vec<String>,
}

/// Where a key or route comes from.
#[derive(Debug)]
enum Source<T> {
    Fixed(T),
    From(Pointer),
}

#[derive(Debug)]
enum Edit {
    Set(Pointer, Value),
    Rename(Pointer, Pointer),
    Remove(Pointer),
    Copy(Pointer, Pointer),
    SetKey(Source<Bytes>),
    SetRoute(Source<String>),
}

fn pointer(index: usize, path: &str) -> Result<Pointer, ConfigProblem> {
    let tokens = path.strip_prefix('/').and_then(|rest| rest.split('/').map(unescape).collect());
    let Some(tokens) = tokens else {
        return Err(ConfigProblem::field("ops", format!("ops[{index}]: `{path}` is not a JSON pointer"))
            .with_hint("pointers start with `/` (`/name` is the top-level field `name`); inside a name write `~1` for `/` and `~0` for `~`"));
    };
    Ok(Pointer { text: path.to_owned(), tokens })
}

/// Unescape one pointer token; `None` for a `~` not followed by `0` or `1`.
fn unescape(token: &str) -> Option<String> {
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

fn source<T>(index: usize, text: &RemapText, fixed: fn(&str) -> T) -> Result<Source<T>, ConfigProblem> {
    match (&text.value, &text.from) {
        (Some(v), None) => Ok(Source::Fixed(fixed(v))),
        (None, Some(p)) => Ok(Source::From(pointer(index, p)?)),
        _ => Err(ConfigProblem::field("ops", format!("ops[{index}]: give one of `value` and `from`"))
            .with_hint(
                "e.g. `{ set_route = { value = \"topic-a\" } }` or `{ set_key = { from = \"/id\" } }`",
            )),
    }
}

fn compile(ops: &[RemapOp]) -> Result<Vec<Edit>, ConfigProblem> {
    if ops.is_empty() {
        return Err(ConfigProblem::field("ops", "`ops` is empty, so `remap` would do nothing")
            .with_hint("add an edit such as `{ remove = \"/_lsn\" }`, or remove the stage"));
    }
    let key = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            Ok(match op {
                RemapOp::Set { path, value } => Edit::Set(pointer(i, path)?, value.clone()),
                RemapOp::Rename { from, to } => Edit::Rename(pointer(i, from)?, pointer(i, to)?),
                RemapOp::Remove(path) => Edit::Remove(pointer(i, path)?),
                RemapOp::Copy { from, to } => Edit::Copy(pointer(i, from)?, pointer(i, to)?),
                RemapOp::SetKey(text) => Edit::SetKey(source(i, text, key)?),
                RemapOp::SetRoute(text) => Edit::SetRoute(source(i, text, str::to_owned)?),
            })
        })
        .collect()
}

/// Why an edit failed; borrows the pointer text so skipping costs no allocation.
#[derive(Debug, thiserror::Error)]
enum EditError<'a> {
    #[error("`{0}` is missing")]
    Missing(&'a str),
    #[error("cannot write `{path}`: {} is {found}", parent(path, *depth))]
    Blocked { path: &'a str, depth: usize, found: &'static str },
    #[error("`{path}` is {found}; a key or route needs a string, number or boolean")]
    NotText { path: &'a str, found: &'static str },
}

/// The pointer prefix with `depth` tokens, for messages.
fn parent(path: &str, depth: usize) -> String {
    match path.match_indices('/').nth(depth) {
        _ if depth == 0 => "the document".to_owned(),
        Some((end, _)) => format!("`{}`", &path[..end]),
        None => format!("`{path}`"),
    }
}

/// A canonical array index (no sign, no leading zeros).
fn index(token: &str) -> Option<usize> {
    if token.len() > 1 && token.starts_with('0') {
        return None;
    }
    token.bytes().all(|b| b.is_ascii_digit()).then(|| token.parse().ok()).flatten()
}

fn step_mut<'v>(v: &'v mut Value, token: &str) -> Option<&'v mut Value> {
    match v {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => index(token).and_then(|i| items.get_mut(i)),
        _ => None,
    }
}

fn get<'v>(root: &'v Value, p: &Pointer) -> Option<&'v Value> {
    p.tokens.iter().try_fold(root, |v, t| match v {
        Value::Object(map) => map.get(t),
        Value::Array(items) => index(t).and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Remove and return the value at `p`.
fn take(root: &mut Value, p: &Pointer) -> Option<Value> {
    let (last, parents) = p.tokens.split_last()?;
    match parents.iter().try_fold(root, |v, t| step_mut(v, t))? {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => index(last).filter(|i| *i < items.len()).map(|i| items.remove(i)),
        _ => None,
    }
}

/// The node in a write's way: its depth in the pointer and what it is.
type Blocked = (usize, &'static str);

const SHORT_ARRAY: &str = "an array without that index";

/// Write `value` at `p`, creating missing intermediate objects; in an array an index replaces
/// (or, with `insert`, inserts) and `-` or the length appends. On failure nothing was changed and
/// `value` comes back.
fn put(root: &mut Value, p: &Pointer, value: Value, insert: bool) -> Result<(), (Blocked, Value)> {
    let Some((last, parents)) = p.tokens.split_last() else {
        *root = value;
        return Ok(());
    };
    let mut cur = root;
    for (depth, token) in parents.iter().enumerate() {
        cur = match cur {
            Value::Object(map) => {
                if !map.contains_key(token) {
                    map.insert(token.clone(), Value::Object(Map::new()));
                }
                match map.get_mut(token) {
                    Some(next) => next,
                    None => return Err(((depth, "an object"), value)),
                }
            }
            Value::Array(items) => match index(token).and_then(|i| items.get_mut(i)) {
                Some(next) => next,
                None => return Err(((depth, SHORT_ARRAY), value)),
            },
            other => return Err(((depth, kind_of(other)), value)),
        };
    }
    let depth = parents.len();
    match cur {
        Value::Object(map) => {
            if let Some(slot) = map.get_mut(last) {
                *slot = value;
            } else {
                map.insert(last.clone(), value);
            }
            Ok(())
        }
        Value::Array(items) => {
            let at = if last == "-" { Some(items.len()) } else { index(last) };
            match at {
                Some(i) if i == items.len() => items.push(value),
                Some(i) if i < items.len() && insert => items.insert(i, value),
                Some(i) if i < items.len() => {
                    if let Some(slot) = items.get_mut(i) {
                        *slot = value;
                    }
                }
                _ => return Err(((depth, SHORT_ARRAY), value)),
            }
            Ok(())
        }
        other => Err(((depth, kind_of(other)), value)),
    }
}

fn write<'a>(root: &mut Value, p: &'a Pointer, value: Value) -> Result<(), EditError<'a>> {
    put(root, p, value, false).map_err(|((depth, found), _)| EditError::Blocked {
        path: &p.text,
        depth,
        found,
    })
}

/// The scalar at `p` as text, for keys and routes.
fn text<'v, 'a>(root: &'v Value, p: &'a Pointer) -> Result<Cow<'v, str>, EditError<'a>> {
    match get(root, p) {
        Some(Value::String(s)) => Ok(Cow::Borrowed(s)),
        Some(Value::Number(n)) => Ok(Cow::Owned(n.to_string())),
        Some(Value::Bool(b)) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
        Some(other) => Err(EditError::NotText { path: &p.text, found: kind_of(other) }),
        None => Err(EditError::Missing(&p.text)),
    }
}

impl Edit {
    fn name(&self) -> &'static str {
        match self {
            Self::Set(..) => "set",
            Self::Rename(..) => "rename",
            Self::Remove(_) => "remove",
            Self::Copy(..) => "copy",
            Self::SetKey(_) => "set_key",
            Self::SetRoute(_) => "set_route",
        }
    }

    fn apply(&self, event: &mut Event) -> Result<(), EditError<'_>> {
        let doc = &mut event.value;
        match self {
            Self::Set(p, value) => write(doc, p, value.clone())?,
            Self::Remove(p) => drop(take(doc, p)),
            Self::Copy(from, to) => {
                let value = get(doc, from).cloned().ok_or(EditError::Missing(&from.text))?;
                write(doc, to, value)?
            }
            Self::Rename(from, to) => {
                let value = take(doc, from).ok_or(EditError::Missing(&from.text))?;
                if let Err(((depth, found), value)) = put(doc, to, value, false) {
                    // Put the value back where it was (the parent is still there): an edit that
                    // fails changes nothing.
                    let _ = put(doc, from, value, true);
                    return Err(EditError::Blocked { path: &to.text, depth, found });
                }
            }
            Self::SetKey(Source::Fixed(key)) => event.key = Some(key.clone()),
            Self::SetKey(Source::From(p)) => {
                event.key = Some(Bytes::copy_from_slice(text(doc, p)?.as_bytes()))
            }
            Self::SetRoute(Source::Fixed(route)) => event.meta.route = Some(route.clone()),
            Self::SetRoute(Source::From(p)) => event.meta.route = Some(text(doc, p)?.into_owned()),
        }
        Ok(())
    }
}

struct Remap {
    edits: Vec<Edit>,
    on_error: RemapOnError,
}

impl Transform for Remap {
    fn transform(&mut self, mut event: Event, out: &mut Output) {
        for (i, edit) in self.edits.iter().enumerate() {
            if let Err(e) = edit.apply(&mut event) {
                if self.on_error == RemapOnError::Reject {
                    let reason = format!("ops[{i}] ({}): {e}", edit.name());
                    return out.reject(event, reason);
                }
                tracing::trace!(op = i, error = %e, "remap edit skipped");
            }
        }
        out.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::{registry::parse_typed, Metadata};
    use serde_json::json;

    fn config(v: Value) -> RemapConfig {
        match parse_typed(v) {
            Ok(c) => c,
            Err(e) => panic!("config did not parse: {e:?}"),
        }
    }

    fn problem(v: Value) -> Option<ConfigProblem> {
        config(v).check(&CheckContext { base_dir: ".".into() }).err()
    }

    fn run(ops: Value, on_error: &str, value: Value) -> Output {
        let cfg = config(json!({ "ops": ops, "on_error": on_error }));
        let edits = compile(&cfg.ops).unwrap_or_else(|p| panic!("{}", p.message));
        let mut t = Remap { edits, on_error: cfg.on_error };
        let mut out = Output::default();
        t.transform_batch(vec![Event::new(value, Metadata::from_source("t"))], &mut out);
        out
    }

    fn one(ops: Value, value: Value) -> Event {
        let out = run(ops, "reject", value);
        let rejected: Vec<_> = out.rejections().map(|(_, r)| r.to_owned()).collect();
        assert!(rejected.is_empty(), "{rejected:?}");
        let event = out.emitted().next().cloned();
        event.unwrap_or_default()
    }

    fn reason(ops: Value, value: Value) -> String {
        let out = run(ops, "reject", value);
        assert_eq!(out.emitted().count(), 0);
        let reason = out.rejections().next().map(|(_, r)| r.to_owned());
        reason.unwrap_or_default()
    }

    #[test]
    fn edits_apply_in_order_creating_intermediates() {
        let ops = json!([
            {"set": {"path": "/a/b", "value": 1}},
            {"rename": {"from": "/x", "to": "/y/z"}},
            {"remove": "/gone"},
            {"copy": {"from": "/a", "to": "/c"}},
            {"set": {"path": "/a/b", "value": {"deep": [true]}}},
            {"remove": "/never-there"},
        ]);
        let e = one(ops, json!({"x": "moved", "gone": 0, "keep": null}));
        assert_eq!(
            e.value,
            json!({"a": {"b": {"deep": [true]}}, "y": {"z": "moved"}, "c": {"b": 1}, "keep": null})
        );
    }

    #[test]
    fn arrays_and_escaped_names() {
        let ops = json!([
            {"set": {"path": "/tags/0", "value": "first"}},
            {"set": {"path": "/tags/-", "value": "last"}},
            {"set": {"path": "/tags/3", "value": "appended"}},
            {"rename": {"from": "/a~1b", "to": "/m~0n"}},
            {"remove": "/list/1"},
            {"copy": {"from": "/list/0/k", "to": "/k"}},
        ]);
        let e = one(ops, json!({"tags": ["x", "y"], "a/b": 1, "list": [{"k": 5}, 6, 7]}));
        assert_eq!(
            e.value,
            json!({"tags": ["first", "y", "last", "appended"], "m~n": 1, "list": [{"k": 5}, 7], "k": 5})
        );
    }

    #[test]
    fn key_and_route() {
        let ops = json!([
            {"set_key": {"from": "/id"}},
            {"set_route": {"from": "/tenant"}},
        ]);
        let e = one(ops.clone(), json!({"id": "guest/a", "tenant": 42}));
        assert_eq!((e.key_str(), e.meta.route.as_deref()), (Some("guest/a"), Some("42")));
        let fixed = json!([{"set_key": {"value": "k"}}, {"set_route": {"value": "topic-a"}}]);
        let e = one(fixed, json!(null));
        assert_eq!((e.key_str(), e.meta.route.as_deref()), (Some("k"), Some("topic-a")));
        assert_eq!(e.value, json!(null), "keys and routes leave the value alone");
        let e = one(json!([{"set_key": {"from": "/flag"}}]), json!({"flag": true}));
        assert_eq!(e.key_str(), Some("true"));
    }

    #[test]
    fn reject_mode_names_the_failing_edit() {
        assert_eq!(
            reason(json!([{"rename": {"from": "/x", "to": "/y"}}]), json!({})),
            "ops[0] (rename): `/x` is missing"
        );
        assert_eq!(
            reason(json!([{"remove": "/q"}, {"set": {"path": "/a/b/c", "value": 1}}]), json!({"a": 3})),
            "ops[1] (set): cannot write `/a/b/c`: `/a` is a number"
        );
        assert_eq!(
            reason(json!([{"set": {"path": "/a", "value": 1}}]), json!("text")),
            "ops[0] (set): cannot write `/a`: the document is a string"
        );
        assert_eq!(
            reason(json!([{"copy": {"from": "/a", "to": "/l/5"}}]), json!({"a": 1, "l": []})),
            "ops[0] (copy): cannot write `/l/5`: `/l` is an array without that index"
        );
        assert_eq!(
            reason(json!([{"set_route": {"from": "/o"}}]), json!({"o": {}})),
            "ops[0] (set_route): `/o` is an object; a key or route needs a string, number or boolean"
        );
        let out = run(
            json!([{"set": {"path": "/n", "value": 1}}, {"copy": {"from": "/zz", "to": "/b"}}]),
            "reject",
            json!({}),
        );
        let rejected = out.rejections().next().map(|(e, _)| Value::clone(&e.value));
        assert_eq!(rejected, Some(json!({"n": 1})), "edits before the failure stay applied");
    }

    #[test]
    fn skip_mode_skips_only_the_failing_edit() {
        let ops = json!([
            {"copy": {"from": "/missing", "to": "/x"}},
            {"rename": {"from": "/keep", "to": "/n/inner"}},
            {"set_key": {"from": "/obj"}},
            {"set": {"path": "/ok", "value": true}},
        ]);
        let out = run(ops, "skip", json!({"keep": 1, "n": 2, "obj": [1]}));
        let e = out.emitted().next().cloned().unwrap_or_default();
        assert_eq!(
            e.value,
            json!({"keep": 1, "n": 2, "obj": [1], "ok": true}),
            "failed rename restores its source"
        );
        assert_eq!(e.key, None);
    }

    #[test]
    fn failed_rename_restores_array_element_in_place() {
        let out =
            run(json!([{"rename": {"from": "/l/0", "to": "/s/x"}}]), "skip", json!({"l": [1, 2], "s": "t"}));
        assert_eq!(
            out.emitted().next().map(|e| Value::clone(&e.value)),
            Some(json!({"l": [1, 2], "s": "t"}))
        );
    }

    #[test]
    fn any_value_is_safe() {
        let ops = json!([{"rename": {"from": "/0", "to": "/1"}}, {"remove": "/0"}, {"copy": {"from": "/", "to": "/-"}}]);
        for v in [json!(null), json!(1), json!("s"), json!([0, 1]), json!({"": 1}), json!([[]])] {
            for mode in ["skip", "reject"] {
                let out = run(ops.clone(), mode, v.clone());
                assert_eq!(out.emitted().count() + out.rejections().count(), 1);
            }
        }
    }

    #[test]
    fn check_rejects_bad_paths_and_sources() {
        let bad = [
            json!({"ops": []}),
            json!({"ops": [{"remove": "z"}]}),
            json!({"ops": [{"set": {"path": "", "value": 1}}]}),
            json!({"ops": [{"rename": {"from": "/a", "to": "b"}}]}),
            json!({"ops": [{"copy": {"from": "/a~2", "to": "/b"}}]}),
            json!({"ops": [{"set_route": {}}]}),
            json!({"ops": [{"set_key": {"value": "k", "from": "/id"}}]}),
            json!({"ops": [{"set_key": {"from": "id"}}]}),
        ];
        for cfg in bad {
            let p = problem(cfg.clone()).unwrap_or_else(|| panic!("accepted {cfg}"));
            assert_eq!((p.field.as_deref(), p.hint.is_some()), (Some("ops"), true), "{cfg}");
        }
        assert!(problem(json!({"ops": [{"remove": "/"}]})).is_none());
        let rejects = |v: Value| parse_typed::<RemapConfig>(v).is_err();
        assert!(rejects(json!({"ops": [{"delete": "/a"}]})));
        assert!(rejects(json!({"ops": [{"set": {"path": "/a"}}]})));
        assert!(rejects(json!({"ops": [{"remove": "/a"}], "on_error": "ignore"})));
        assert!(rejects(json!({"ops": [{"remove": "/a", "set": {"path": "/a", "value": 1}}]})));
    }

    #[test]
    fn helpers() {
        assert_eq!(index("0"), Some(0));
        assert_eq!(index("10"), Some(10));
        assert_eq!((index("01"), index("-1"), index(""), index("+1")), (None, None, None, None));
        assert_eq!(parent("/a/b/c", 2), "`/a/b`");
        let schema = serde_json::to_value(schemars::schema_for!(RemapConfig)).unwrap_or_default();
        assert!(schema["$defs"]["RemapOp"]["oneOf"].is_array());
    }
}
