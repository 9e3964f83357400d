//! What a guest transform sees and returns: [`Event`], [`Operation`], [`Error`].

use std::borrow::Cow;
use std::cell::OnceCell;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// What a change means for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Operation {
    /// Create or replace the document/record.
    #[default]
    Upsert,
    /// Remove it.
    Delete,
}

/// A failure for one record: the host sends that record to the dead-letter sink with this
/// message, and the rest of the batch flows on. Any error type converts with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Self { message: e.to_string() }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One record of the batch: key, operation, stream, route and a JSON value.
///
/// The value arrives as JSON text and is parsed only when asked: [`Event::parse`] reads just
/// the fields of a typed view (fastest for filters), [`Event::value`] parses it all once.
/// Setters record what changed, so a map that only sets the route sends back a few bytes.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub(crate) index: u32,
    raw: Option<&'a str>,
    value: OnceCell<Value>,
    value_changed: bool,
    /// Field changes not yet applied to a full value: sent as patches when the value itself is
    /// not sent, so neither side re-parses the whole value.
    patches: Vec<Patch>,
    key: Option<Cow<'a, [u8]>>,
    key_changed: bool,
    stream: Option<&'a str>,
    route: Option<Cow<'a, str>>,
    route_changed: bool,
    operation: Operation,
    operation_changed: bool,
}

impl<'a> Event<'a> {
    pub(crate) fn from_input(
        index: u32,
        key: Option<&'a [u8]>,
        stream: Option<&'a str>,
        route: Option<&'a str>,
        operation: Operation,
        raw: &'a str,
    ) -> Self {
        Self {
            index,
            raw: Some(raw),
            value: OnceCell::new(),
            value_changed: false,
            patches: Vec::new(),
            key: key.map(Cow::Borrowed),
            key_changed: false,
            stream,
            route: route.map(Cow::Borrowed),
            route_changed: false,
            operation,
            operation_changed: false,
        }
    }

    /// A new upsert event with this value, no key and no route (for maps that emit more than
    /// they receive).
    pub fn new(value: Value) -> Event<'static> {
        let cell = OnceCell::new();
        let _ = cell.set(value);
        Event {
            index: 0,
            raw: None,
            value: cell,
            value_changed: true,
            patches: Vec::new(),
            key: None,
            key_changed: true,
            stream: None,
            route: None,
            route_changed: true,
            operation: Operation::Upsert,
            operation_changed: true,
        }
    }

    /// The record key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    /// The key as UTF-8 text, when it is text.
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|k| std::str::from_utf8(k).ok())
    }
    /// Topic, database or container the event was read from.
    pub fn stream(&self) -> Option<&str> {
        self.stream
    }
    /// The route sinks will use (e.g. the Kafka topic); `None` is the sink's default.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }
    /// Upsert or delete.
    pub fn operation(&self) -> Operation {
        self.operation
    }
    /// The value as the JSON text it arrived as (`None` for events made with [`Event::new`]).
    pub fn raw_json(&self) -> Option<&'a str> {
        self.raw
    }

    /// A typed view of the value, reading only the fields `T` names; it may borrow from the
    /// input (`&'a str`, `Cow<'a, str>`).
    pub fn parse<T: Deserialize<'a>>(&self) -> Result<T> {
        match self.raw {
            Some(raw) if !self.value_changed && self.patches.is_empty() => Ok(serde_json::from_str(raw)?),
            _ => Ok(T::deserialize(self.value()?.clone()).map_err(|e| Error::new(e.to_string()))?),
        }
    }

    /// The top-level field `name` when it is a string (`None` when missing or not a string),
    /// read without building the whole value: the cheapest way for a filter to look at one field.
    pub fn field_str(&self, name: &str) -> Result<Option<Cow<'a, str>>> {
        match self.raw {
            Some(raw) if !self.value_changed && self.patches.is_empty() => {
                let mut de = serde_json::Deserializer::from_str(raw);
                let found = FieldStr { name }.deserialize(&mut de)?;
                de.end()?;
                Ok(found)
            }
            _ => Ok(self.value()?.get(name).and_then(Value::as_str).map(|s| Cow::Owned(s.to_owned()))),
        }
    }

    /// The whole value, parsed on first use.
    pub fn value(&self) -> Result<&Value> {
        if let Some(v) = self.value.get() {
            return Ok(v);
        }
        let mut parsed: Value = serde_json::from_str(self.raw.unwrap_or("null"))?;
        for patch in &self.patches {
            patch.apply(&mut parsed);
        }
        Ok(self.value.get_or_init(|| parsed))
    }

    /// The whole value, to change in place; the change is sent back to the host.
    pub fn value_mut(&mut self) -> Result<&mut Value> {
        self.value()?;
        self.value_changed = true;
        self.value.get_mut().ok_or_else(|| Error::new("value not parsed"))
    }

    /// Replace the value.
    pub fn set_value(&mut self, value: Value) {
        self.value = OnceCell::new();
        let _ = self.value.set(value);
        self.value_changed = true;
        self.patches.clear();
    }

    /// Set the field at JSON pointer `pointer` (`/a/b`; `""` is the whole value), creating it
    /// in its object when missing (a missing parent makes the record fail on the host). Unless
    /// the whole value was changed, only this change crosses back: neither side parses the
    /// value, the cheapest way for a map to rewrite a field.
    pub fn set_field(&mut self, pointer: &str, value: Value) -> Result<()> {
        self.patch(Patch::new(PatchOp::Set, pointer, value)?)
    }

    /// Like [`Event::set_field`], but only when the field is there (redaction): a missing
    /// field is left missing.
    pub fn replace_field(&mut self, pointer: &str, value: Value) -> Result<()> {
        self.patch(Patch::new(PatchOp::Replace, pointer, value)?)
    }

    fn patch(&mut self, patch: Patch) -> Result<()> {
        if let Some(v) = self.value.get_mut() {
            patch.apply(v);
        }
        if !self.value_changed {
            self.patches.push(patch);
        }
        Ok(())
    }
    /// Set or clear the key.
    pub fn set_key(&mut self, key: Option<Vec<u8>>) {
        self.key = key.map(Cow::Owned);
        self.key_changed = true;
    }
    /// Set the route sinks use (e.g. the Kafka topic).
    pub fn set_route(&mut self, route: impl Into<String>) {
        self.route = Some(Cow::Owned(route.into()));
        self.route_changed = true;
    }
    /// Go back to the sink's default route.
    pub fn clear_route(&mut self) {
        self.route = None;
        self.route_changed = true;
    }
    /// Set the operation.
    pub fn set_operation(&mut self, operation: Operation) {
        self.operation = operation;
        self.operation_changed = true;
    }

    pub(crate) fn changed_operation(&self) -> Option<Operation> {
        self.operation_changed.then_some(self.operation)
    }
    pub(crate) fn changed_key(&self) -> Option<Option<&[u8]>> {
        self.key_changed.then(|| self.key())
    }
    pub(crate) fn changed_route(&self) -> Option<Option<&str>> {
        self.route_changed.then(|| self.route())
    }
    pub(crate) fn patches(&self) -> &[Patch] {
        if self.value_changed {
            &[]
        } else {
            &self.patches
        }
    }
    pub(crate) fn changed_value(&self) -> Option<&Value> {
        if self.value_changed {
            self.value.get()
        } else {
            None
        }
    }
}

/// How a patch treats a missing field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchOp {
    /// Create or replace.
    Set = 0,
    /// Replace only when present.
    Replace = 1,
}

/// One field change: the op, a JSON pointer and the new value.
#[derive(Debug, Clone)]
pub(crate) struct Patch {
    pub(crate) op: PatchOp,
    pub(crate) pointer: String,
    pub(crate) value: Value,
}

impl Patch {
    fn new(op: PatchOp, pointer: &str, value: Value) -> Result<Self> {
        if !(pointer.is_empty() || pointer.starts_with('/')) {
            return Err(Error::new(format!("`{pointer}` is not a JSON pointer (write `/{pointer}`)")));
        }
        Ok(Self { op, pointer: pointer.to_owned(), value })
    }

    /// Apply to a parsed value, as the host does (a missing parent is left alone here; the
    /// host reports it).
    fn apply(&self, target: &mut Value) {
        if self.pointer.is_empty() {
            *target = self.value.clone();
            return;
        }
        let (parent, last) = self.pointer.rsplit_once('/').unwrap_or(("", ""));
        let last = last.replace("~1", "/").replace("~0", "~");
        match target.pointer_mut(parent) {
            Some(Value::Object(map)) if self.op == PatchOp::Set || map.contains_key(&last) => {
                map.insert(last, self.value.clone());
            }
            Some(Value::Array(items)) => {
                if let Some(slot) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    *slot = self.value.clone();
                }
            }
            _ => {}
        }
    }
}

/// Finds one top-level string field while skipping everything else.
struct FieldStr<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for FieldStr<'_> {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldStr<'_> {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<MaybeStr<'de>>()? {
            if found.is_none() && key.0.as_deref() == Some(self.name) {
                found = map.next_value::<MaybeStr<'de>>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
}

/// A string (borrowed when it has no escapes), or `None` for any other JSON value.
struct MaybeStr<'de>(Option<Cow<'de, str>>);

impl<'de> Deserialize<'de> for MaybeStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MaybeStr<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MaybeStr(None))
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
            fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
                Ok(MaybeStr(None))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct View<'a> {
        #[serde(borrow)]
        namespace: Option<Cow<'a, str>>,
    }

    #[test]
    fn typed_view_reads_only_what_it_names() {
        let e = Event::from_input(0, None, None, None, Operation::Upsert, r#"{"namespace":"a","x":[1,2]}"#);
        let v: View = e.parse().expect("parses");
        assert_eq!(v.namespace.as_deref(), Some("a"));
        assert!(e.changed_value().is_none());
    }

    #[test]
    fn field_str_reads_one_top_level_string() {
        let raw = r#"{"a":{"namespace":"inner"},"n":1,"namespace":"out\\er","z":[{"x":"y"}]}"#;
        let e = Event::from_input(0, None, None, None, Operation::Upsert, raw);
        assert_eq!(e.field_str("namespace").expect("valid").as_deref(), Some("out\\er"));
        assert_eq!(e.field_str("n").expect("valid"), None);
        assert_eq!(e.field_str("missing").expect("valid"), None);
        let plain = Event::from_input(0, None, None, None, Operation::Upsert, r#"{"k":"v"}"#);
        assert!(matches!(plain.field_str("k").expect("valid"), Some(Cow::Borrowed("v"))));
        let bad = Event::from_input(0, None, None, None, Operation::Upsert, r#"{"k":"#);
        assert!(bad.field_str("k").is_err());
        let array = Event::from_input(0, None, None, None, Operation::Upsert, "[1]");
        assert_eq!(array.field_str("k").expect("valid"), None);
    }

    #[test]
    fn changes_are_tracked() {
        let mut e = Event::from_input(3, Some(b"k"), None, Some("r"), Operation::Upsert, r#"{"a":1}"#);
        assert!(e.changed_route().is_none() && e.changed_key().is_none());
        e.value_mut().expect("json")["a"] = json!(2);
        e.clear_route();
        assert_eq!(e.changed_value(), Some(&json!({"a": 2})));
        assert_eq!(e.changed_route(), Some(None));
        let v: serde_json::Map<String, Value> = e.parse().expect("reads the changed value");
        assert_eq!(v["a"], json!(2));
    }

    #[test]
    fn any_error_converts() {
        fn f() -> Result<()> {
            let _: Value = serde_json::from_str("{")?;
            Ok(())
        }
        assert!(f().expect_err("bad json").message().contains("EOF"));
        let e: Error = "plain".into();
        assert_eq!(e.message(), "plain");
    }
}
