//! Bridges between the span-keeping TOML tree and JSON values: conversion with interpolation,
//! and finding the byte span of a key path for diagnostics.

use std::ops::Range;

use serde_json::{Map, Value};
use toml_edit::{Item, Table};

use super::interpolate::{interpolate, InterpolationError};

/// A string value that failed interpolation, with its span.
pub struct InterpolationFailure {
    pub span: Option<Range<usize>>,
    pub error: InterpolationError,
}

/// Converts TOML to JSON, interpolating strings and collecting the substituted values.
pub struct Converter<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub substituted: Vec<String>,
    pub failures: Vec<InterpolationFailure>,
}

impl Converter<'_> {
    pub fn item(&mut self, item: &Item) -> Value {
        match item {
            Item::None => Value::Null,
            Item::Value(v) => self.value(v),
            Item::Table(t) => self.table(t),
            Item::ArrayOfTables(a) => Value::Array(a.iter().map(|t| self.table(t)).collect()),
        }
    }

    pub fn table(&mut self, t: &Table) -> Value {
        Value::Object(t.iter().map(|(k, v)| (k.to_owned(), self.item(v))).collect())
    }

    fn value(&mut self, v: &toml_edit::Value) -> Value {
        use toml_edit::Value as T;
        match v {
            T::String(s) => match interpolate(s.value(), self.env) {
                Ok((text, used)) => {
                    self.substituted.extend(used);
                    Value::String(text)
                }
                Err(error) => {
                    self.failures.push(InterpolationFailure { span: v.span(), error });
                    Value::String(String::new())
                }
            },
            T::Integer(i) => Value::from(*i.value()),
            T::Float(f) => serde_json::Number::from_f64(*f.value()).map_or(Value::Null, Value::Number),
            T::Boolean(b) => Value::Bool(*b.value()),
            T::Datetime(d) => Value::String(d.value().to_string()),
            T::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            T::InlineTable(t) => {
                let mut m = Map::new();
                for (k, x) in t.iter() {
                    m.insert(k.to_owned(), self.value(x));
                }
                Value::Object(m)
            }
        }
    }
}

enum Node<'a> {
    Item(&'a Item),
    Value(&'a toml_edit::Value),
    Table(&'a Table),
}

impl<'a> Node<'a> {
    fn span(&self) -> Option<Range<usize>> {
        match *self {
            Node::Item(Item::Value(v)) | Node::Value(v) => v.span(),
            Node::Item(Item::Table(t)) | Node::Table(t) => t.span(),
            Node::Item(Item::ArrayOfTables(a)) => a.span(),
            Node::Item(Item::None) => None,
        }
    }

    /// The child at `seg`, with the span of its key when it is a table entry.
    fn child(&self, seg: &str) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match *self {
            Node::Item(Item::Table(t)) | Node::Table(t) => {
                t.get_key_value(seg).map(|(k, v)| (Node::Item(v), k.span()))
            }
            Node::Item(Item::ArrayOfTables(a)) => a.get(seg.parse().ok()?).map(|t| (Node::Table(t), None)),
            Node::Item(Item::Value(v)) | Node::Value(v) => match v {
                toml_edit::Value::InlineTable(t) => {
                    t.get_key_value(seg).map(|(k, v)| (Node::Item(v), k.span()))
                }
                toml_edit::Value::Array(a) => a.get(seg.parse().ok()?).map(|x| (Node::Value(x), None)),
                _ => None,
            },
            Node::Item(Item::None) => None,
        }
    }
}

/// The span of `path` (keys and array indexes from the root). With `want_key`, the span of the
/// last key rather than its value. Falls back to the deepest ancestor that has a span.
pub fn locate(root: &Table, path: &[String], want_key: bool) -> Option<Range<usize>> {
    let mut node = Node::Table(root);
    let mut best = None;
    let mut key_span = None;
    for seg in path {
        let Some((child, kspan)) = node.child(seg) else { break };
        key_span = kspan.clone();
        node = child;
        let span = if want_key { kspan.or_else(|| node.span()) } else { node.span().or(kspan) };
        if span.is_some() {
            best = span;
        }
    }
    if want_key && key_span.is_some() {
        return key_span.or(best);
    }
    best
}
