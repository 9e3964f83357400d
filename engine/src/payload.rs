//! An event's JSON value, kept as the bytes it arrived as until something needs its structure.
//!
//! Most records on a Kafka → Kafka hop are never looked into by most stages: building a
//! `serde_json::Value` from 1 KB of text and writing it back costs more than everything else the
//! engine does per event. A [`Payload`] read from a source keeps the validated JSON text; the
//! first stage that reads it through `Deref` parses it once (the tree is cached beside the text),
//! the first stage that changes it through `DerefMut` drops the text, and a sink asks
//! [`Payload::to_json_bytes`], which hands the original bytes back untouched when nothing changed.
//! Transforms with a fast path of their own (see `extract_activation`) read [`Payload::raw`] and
//! answer with [`Payload::from_validated_json`].

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::Value;

/// The JSON value of an event: validated text (parsed on first read), or a tree.
#[derive(Clone)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    /// The exact JSON text of an unchanged value, and its tree once something read it.
    Text { raw: Bytes, parsed: OnceLock<Value> },
    /// A value built or changed in memory.
    Tree(Value),
}

impl Default for Payload {
    fn default() -> Self {
        Self(Repr::Tree(Value::Null))
    }
}

/// Check that `bytes` parse as a `Value` would, without building one.
///
/// `IgnoredAny` is not enough: it skips strings without checking their UTF-8 or surrogate
/// escapes, never converts numbers and has no depth limit, so it accepted text the later parse
/// refused (which then read as `null`). [`Validated`] walks the document through the same
/// `deserialize_any` calls as `Value` — strings are decoded, numbers converted, nesting counted —
/// and keeps nothing.
///
/// # Errors
/// Exactly the errors `serde_json::from_slice::<Value>` would give.
pub fn validate(bytes: &[u8]) -> Result<(), serde_json::Error> {
    serde_json::from_slice::<Validated>(bytes).map(|_| ())
}

/// A JSON value that was fully decoded and thrown away (see [`validate`]).
struct Validated;

impl<'de> serde::Deserialize<'de> for Validated {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValidatedVisitor)
    }
}

struct ValidatedVisitor;

impl<'de> serde::de::Visitor<'de> for ValidatedVisitor {
    type Value = Validated;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Validated, E> {
        Ok(Validated)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Validated, E> {
        Ok(Validated)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Validated, E> {
        Ok(Validated)
    }
    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Validated, E> {
        // `Value` keeps only finite numbers; serde_json already refuses the others when
        // parsing, this guards that assumption.
        if n.is_finite() {
            Ok(Validated)
        } else {
            Err(E::custom("number out of range"))
        }
    }
    fn visit_str<E>(self, _: &str) -> Result<Validated, E> {
        Ok(Validated)
    }
    fn visit_unit<E>(self) -> Result<Validated, E> {
        Ok(Validated)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Validated, A::Error> {
        while seq.next_element::<Validated>()?.is_some() {}
        Ok(Validated)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Validated, A::Error> {
        while map.next_key::<Validated>()?.is_some() {
            map.next_value::<Validated>()?;
        }
        Ok(Validated)
    }
}

/// Parse text that was validated on the way in; `null` only for a caller that broke
/// [`Payload::from_validated_json`]'s promise.
fn parse_validated(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

impl Payload {
    /// Validate `bytes` as one JSON value and keep them unparsed.
    ///
    /// # Errors
    /// The parser's message when the bytes are not exactly one JSON value.
    pub fn from_json_bytes(bytes: Bytes) -> Result<Self, serde_json::Error> {
        validate(&bytes)?;
        Ok(Self::from_validated_json(bytes))
    }

    /// Keep bytes the caller has already checked to be one JSON value (for example text written
    /// by `serde_json` from parts of a validated payload). Unchecked bytes read as `null`.
    pub fn from_validated_json(bytes: Bytes) -> Self {
        Self(Repr::Text { raw: bytes, parsed: OnceLock::new() })
    }

    /// The original JSON text while the value is unchanged.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.0 {
            Repr::Text { raw, .. } => Some(raw),
            Repr::Tree(_) => None,
        }
    }

    /// The parsed value (parsed now if it was not yet).
    pub fn value(&self) -> &Value {
        match &self.0 {
            Repr::Text { raw, parsed } => parsed.get_or_init(|| parse_validated(raw)),
            Repr::Tree(v) => v,
        }
    }

    /// The value, taken out.
    pub fn into_value(self) -> Value {
        match self.0 {
            Repr::Text { raw, parsed } => parsed.into_inner().unwrap_or_else(|| parse_validated(&raw)),
            Repr::Tree(v) => v,
        }
    }

    /// The value as JSON text: the original bytes when nothing changed them, else serialised.
    ///
    /// # Errors
    /// Only what `serde_json` refuses to write (a map with non-string keys cannot occur in a
    /// `Value`, so in practice none).
    pub fn to_json_bytes(&self) -> Result<Bytes, serde_json::Error> {
        match &self.0 {
            Repr::Text { raw, .. } => Ok(raw.clone()),
            Repr::Tree(v) => serde_json::to_vec(v).map(Bytes::from),
        }
    }

    /// Whether the value has been parsed or built in memory (for tests and diagnostics).
    pub fn is_parsed(&self) -> bool {
        match &self.0 {
            Repr::Text { parsed, .. } => parsed.get().is_some(),
            Repr::Tree(_) => true,
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Self(Repr::Tree(value))
    }
}

impl Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value()
    }
}

impl DerefMut for Payload {
    /// Parses if needed and forgets the original text: the caller may change the value.
    fn deref_mut(&mut self) -> &mut Value {
        if let Repr::Text { .. } = self.0 {
            self.0 = Repr::Tree(std::mem::take(self).into_value());
        }
        match &mut self.0 {
            Repr::Tree(v) => v,
            Repr::Text { .. } => unreachable!("a text payload was turned into a tree just above"),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self.raw(), other.raw()) {
            (Some(a), Some(b)) if a == b => true,
            _ => self.value() == other.value(),
        }
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

impl PartialEq<Payload> for Value {
    fn eq(&self, other: &Payload) -> bool {
        self == other.value()
    }
}

impl serde::Serialize for Payload {
    /// As the value (sinks that write JSON text use [`Payload::to_json_bytes`], which skips the
    /// parse for unchanged text).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.value(), f)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Text { raw, .. } => f.write_str(&String::from_utf8_lossy(raw)),
            Repr::Tree(v) => fmt::Display::fmt(v, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn raw_bytes_stay_untouched_until_changed() {
        let text = Bytes::from_static(br#"{"b": 1,  "a": [true]}"#);
        let mut p = Payload::from_json_bytes(text.clone()).unwrap();
        assert!(!p.is_parsed());
        assert_eq!(p["a"], json!([true]));
        assert!(p.is_parsed());
        assert_eq!(p.to_json_bytes().unwrap(), text, "read only: the original text, whitespace and all");
        p["c"] = json!(2);
        assert_eq!(p.raw(), None);
        assert_eq!(&p.to_json_bytes().unwrap()[..], br#"{"a":[true],"b":1,"c":2}"#);
    }

    #[test]
    fn invalid_json_is_refused_with_the_parser_message() {
        for bad in [&b"{nope"[..], b"", b"1 2", b"{\"a\":1}x", b"\xff"] {
            assert!(Payload::from_json_bytes(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    /// Each of these passed the old `IgnoredAny` check and then read as `null`.
    #[test]
    fn validation_refuses_what_the_value_parse_refuses() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let cases: [&[u8]; 6] = [
            b"\"\xff\xfe\"",
            b"{\"a\xc3\":1}",
            br#""\ud800""#,
            br#"{"k":"\udc00x"}"#,
            b"[1e400]",
            deep.as_bytes(),
        ];
        for bad in cases {
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(bad).is_ok(),
                "the old check took {bad:?}"
            );
            let parse = serde_json::from_slice::<Value>(bad).expect_err("Value refuses it");
            let ours = Payload::from_json_bytes(Bytes::copy_from_slice(bad)).expect_err("so do we");
            assert_eq!(ours.to_string(), parse.to_string());
        }
        let ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        let fine: [&[u8]; 5] = [
            br#""\ud83d\ude00""#,
            b"18446744073709551616",
            b"-1e300",
            ok.as_bytes(),
            "\"h\u{e9}\"".as_bytes(),
        ];
        for good in fine {
            let p = Payload::from_json_bytes(Bytes::copy_from_slice(good)).expect("valid");
            assert_eq!(*p.value(), serde_json::from_slice::<Value>(good).expect("parses"), "{good:?}");
        }
    }

    #[test]
    fn equality_and_conversions_see_the_value() {
        let a = Payload::from_json_bytes(Bytes::from_static(b"{\"x\": 1}")).unwrap();
        let b = Payload::from(json!({"x": 1}));
        assert_eq!(a, b);
        assert_eq!(a, json!({"x": 1}));
        assert_eq!(a.clone().into_value(), json!({"x": 1}));
        assert_eq!(Payload::default(), Value::Null);
        assert_eq!(format!("{a}"), "{\"x\": 1}");
        assert_eq!(format!("{b}"), "{\"x\":1}");
    }
}
