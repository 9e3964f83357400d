//! The text path: a result or combined message that is still the JSON text its source read
//! becomes the document's text without building a `serde_json::Value` tree for it.
//!
//! Only the two objects the document is made of are split into fields (each field's value stays
//! a borrowed slice of the input); everything below them is copied as it is. The output equals
//! what the tree path writes for the same message — the same keys in the same (sorted) order —
//! apart from insignificant whitespace inside nested values. Whatever this path does not handle
//! (a message to reject, a key written with escapes) answers `None` and the tree path decides,
//! so error messages come from one place.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Kind, REQUIRED, RESPONSE_KEYS};

/// What the text path made of a message.
pub(super) enum TextVerdict {
    /// The document's JSON text and its `_id`.
    Store { doc: Vec<u8>, id: String },
    /// A shrunk result or a bare completion.
    Skip,
}

/// The message fields the decision needs; the rest is skipped without being built.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    response: Response<'a>,
    #[serde(default)]
    instance: Option<IgnoredAny>,
    #[serde(default)]
    invoker: Option<IgnoredAny>,
}

/// A message's `response`, split into fields while it is read (one pass over the text); also
/// reads the activation's own `response` object.
#[derive(Default)]
enum Response<'a> {
    /// No `response` field.
    #[default]
    Absent,
    /// A shrunk result: only the activation id.
    Id,
    /// An activation: its fields in input order, values as their JSON text.
    Activation(Fields<'a>),
    /// Anything else: the tree path names the problem.
    Other,
}

/// An object's fields, values as their JSON text (input order until [`sorted`]).
type Fields<'a> = Vec<(&'a str, &'a RawValue)>;

impl<'de: 'a, 'a> Deserialize<'de> for Response<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ResponseVisitor(std::marker::PhantomData))
    }
}

struct ResponseVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for ResponseVisitor<'a> {
    type Value = Response<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an activation object or an activation id")
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Response::Id)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(16);
        while let Some(entry) = map.next_entry::<&'a str, &'a RawValue>()? {
            fields.push(entry);
        }
        Ok(Response::Activation(fields))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Response::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Response::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Response::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Response::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Response::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Response::Other)
    }
}

/// Sort by key and keep the last of equal keys, as a `serde_json` map does.
fn sorted(mut fields: Fields<'_>) -> Fields<'_> {
    // A stable sort keeps equal keys in input order; the last of each run wins.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            earlier.1 = later.1;
        }
        same
    });
    fields
}

/// A field's value (fields deduplicated by [`sorted`]). A linear scan: comparing lengths first
/// rejects almost every other key without a byte comparison, which beats a binary search here.
fn get<'a>(fields: &[(&str, &'a RawValue)], key: &str) -> Option<&'a RawValue> {
    fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Set `key` to `value` (JSON text) in fields sorted by key.
fn set<'a>(fields: &mut Vec<(&'a str, &'a str)>, key: &'a str, value: &'a str) {
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(field) => field.1 = value,
        None => {
            let at = fields.partition_point(|(k, _)| *k < key);
            fields.insert(at, (key, value));
        }
    }
}

fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or(b' ')
}

fn has_kind(raw: &RawValue, kind: Kind) -> bool {
    match (kind, first_byte(raw)) {
        (Kind::String, b'"') | (Kind::Bool, b't' | b'f') | (Kind::Array, b'[') | (Kind::Object, b'{') => true,
        (Kind::Number, b) => b == b'-' || b.is_ascii_digit(),
        _ => false,
    }
}

fn object_text(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Build the document from `text`, or `None` when the tree path must decide.
pub(super) fn extract(text: &[u8], keep_logs: bool, now_ms: i64) -> Option<TextVerdict> {
    if !object_text(text) {
        return None;
    }
    let message: Message<'_> = serde_json::from_slice(text).ok()?;
    let activation = match message.response {
        Response::Id => return Some(TextVerdict::Skip),
        Response::Activation(fields) => sorted(fields),
        Response::Absent if message.instance.is_some() || message.invoker.is_some() => {
            return Some(TextVerdict::Skip)
        }
        _ => return None,
    };
    if !REQUIRED.iter().all(|(field, kind)| get(&activation, field).is_some_and(|v| has_kind(v, *kind))) {
        return None;
    }
    let Ok(Response::Activation(inner)) = serde_json::from_str(get(&activation, "response")?.get()) else {
        return None;
    };
    let inner = sorted(inner);
    if !get(&inner, "statusCode").is_some_and(|v| has_kind(v, Kind::Number)) {
        return None;
    }
    let namespace: Cow<'_, str> = serde_json::from_str(get(&activation, "namespace")?.get()).ok()?;
    let activation_id: Cow<'_, str> = serde_json::from_str(get(&activation, "activationId")?.get()).ok()?;
    let mut id = String::with_capacity(namespace.len() + 1 + activation_id.len());
    id.push_str(&namespace);
    id.push('/');
    id.push_str(&activation_id);

    let kept: Vec<(&str, &str)> =
        inner.iter().filter(|(k, _)| RESPONSE_KEYS.contains(k)).map(|(k, v)| (*k, v.get())).collect();
    let mut reduced = Vec::with_capacity(64);
    write_object(&mut reduced, &kept);
    let reduced = String::from_utf8(reduced).ok()?;
    let id_json = serde_json::to_string(&id).ok()?;
    let updated = now_ms.to_string();

    let mut doc: Vec<(&str, &str)> = Vec::with_capacity(activation.len() + 3);
    doc.extend(activation.iter().map(|(k, v)| (*k, v.get())));
    set(&mut doc, "response", &reduced);
    if !keep_logs {
        set(&mut doc, "logs", "[]");
    }
    set(&mut doc, "_id", &id_json);
    set(&mut doc, "entityType", "\"activation\"");
    set(&mut doc, "updated", &updated);
    let mut out = Vec::with_capacity(text.len() + 96);
    write_object(&mut out, &doc);
    Some(TextVerdict::Store { doc: out, id })
}

/// Write `{"k":v,...}`. Keys were borrowed from the input, so they hold no characters that would
/// need escaping (serde_json only borrows a key written without escapes).
fn write_object(out: &mut Vec<u8>, fields: &[(&str, &str)]) {
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'}');
}
