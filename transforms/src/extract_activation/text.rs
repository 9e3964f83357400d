//! The text path: a result or combined message that is still the JSON text its source read
//! becomes the document's text without building a `serde_json::Value` tree for it.
//!
//! The text was validated when it entered the pipeline (`Payload::from_json_bytes`), so this path
//! does not validate it again: a [`Cursor`] only finds where values start and end. Only the two
//! objects the document is made of are split into fields (each field's value stays a slice of the
//! input); everything below them is copied as it is. The output equals what the tree path writes
//! for the same message — the same keys in the same (sorted) order — apart from insignificant
//! whitespace inside nested values. Whatever this path does not handle (a message to reject, a key
//! written with escapes, text that turns out not to be JSON) answers `None` and the tree path
//! decides, so error messages come from one place.

use super::{Kind, REQUIRED, RESPONSE_KEYS};

/// What the text path made of a message.
pub(super) enum TextVerdict {
    /// The document's JSON text and its `_id`.
    Store { doc: Vec<u8>, id: String },
    /// A shrunk result or a bare completion.
    Skip,
}

/// An object's fields: key (as written, without escapes) and value (its JSON text).
type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

/// A cursor over JSON text that was validated before: it finds value boundaries without checking
/// the text again. On text that is not JSON after all it answers `None` (never panics, never
/// loops): every step moves forward or stops at the end.
struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self { text, at: 0 }
    }

    /// The next byte that is not whitespace, without consuming it.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.text.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string's contents as written, and whether they hold escapes.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        // A plain loop: strings here are short (keys, ids, log lines), where a SIMD search's
        // set-up costs more than it saves.
        loop {
            match *self.text.get(self.at)? {
                b'\\' => {
                    escaped = true;
                    self.at += 2;
                }
                b'"' => {
                    let contents = self.text.get(start..self.at)?;
                    self.at += 1;
                    return Some((contents, escaped));
                }
                _ => self.at += 1,
            }
        }
    }

    /// Skip one value; its text.
    fn value(&mut self) -> Option<&'a [u8]> {
        let first = self.peek()?;
        let start = self.at;
        match first {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.text.get(self.at)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1)?;
                            if depth == 0 {
                                self.at += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                while let Some(&b) = self.text.get(self.at) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.at += 1;
                }
            }
        }
        let value = self.text.get(start..self.at)?;
        (!value.is_empty()).then_some(value)
    }

    /// Walk the object that starts here: `on_field` gets each key (as written) with the cursor
    /// at its value, and must consume the value. `None` if a key has escapes.
    fn fields(&mut self, mut on_field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let (key, escaped) = self.string()?;
            if escaped {
                return None;
            }
            self.eat(b':')?;
            on_field(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The fields of the object that starts here, in input order.
    fn object(&mut self) -> Option<Fields<'a>> {
        let mut fields = Vec::with_capacity(16);
        self.fields(|c, key| {
            fields.push((key, c.value()?));
            Some(())
        })?;
        Some(fields)
    }
}

/// A message's `response` (the last one, as in a `serde_json` map).
enum Response<'a> {
    Absent,
    /// A shrunk result: the activation id alone.
    Id,
    /// An activation, split into fields while the message is read (one pass over the text).
    Activation(Fields<'a>),
    Other,
}

/// The message's `response`, and whether it has an `instance`/`invoker` marker.
fn message(text: &[u8]) -> Option<(Response<'_>, bool)> {
    let (mut response, mut marker) = (Response::Absent, false);
    Cursor::new(text).fields(|c, key| {
        match key {
            b"response" if c.peek()? == b'{' => response = Response::Activation(c.object()?),
            b"response" => {
                response = if c.value()?.first() == Some(&b'"') { Response::Id } else { Response::Other };
            }
            b"instance" | b"invoker" => {
                c.value()?;
                marker = true;
            }
            _ => {
                c.value()?;
            }
        }
        Some(())
    })?;
    Some((response, marker))
}

/// The fields of the object `text` holds.
fn object(text: &[u8]) -> Option<Fields<'_>> {
    Cursor::new(text).object()
}

/// Sort by key and keep the last of equal keys, as a `serde_json` map does (byte order of UTF-8
/// is the order of `str`).
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

/// The last value of `key`. A linear scan: comparing lengths first rejects almost every other key
/// without a byte comparison.
fn get<'a>(fields: &[(&[u8], &'a [u8])], key: &str) -> Option<&'a [u8]> {
    fields.iter().rev().find(|(k, _)| *k == key.as_bytes()).map(|(_, v)| *v)
}

/// Set `key` to `value` (JSON text) in fields sorted by key.
fn set<'a>(fields: &mut Fields<'a>, key: &'a str, value: &'a [u8]) {
    let key = key.as_bytes();
    match fields.iter_mut().find(|(k, _)| *k == key) {
        Some(field) => field.1 = value,
        None => {
            let at = fields.partition_point(|(k, _)| *k < key);
            fields.insert(at, (key, value));
        }
    }
}

fn has_kind(value: &[u8], kind: Kind) -> bool {
    match (kind, value.first().copied().unwrap_or(b' ')) {
        (Kind::String, b'"') | (Kind::Bool, b't' | b'f') | (Kind::Array, b'[') | (Kind::Object, b'{') => true,
        (Kind::Number, b) => b == b'-' || b.is_ascii_digit(),
        _ => false,
    }
}

/// A JSON string value's text, decoded.
fn text_of(value: &[u8]) -> Option<String> {
    let inner = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        serde_json::from_slice(value).ok()
    } else {
        String::from_utf8(inner.to_vec()).ok()
    }
}

/// Build the document from `text`, or `None` when the tree path must decide. `validated`: the
/// text is known to be one JSON value; otherwise it is checked first.
pub(super) fn extract(text: &[u8], validated: bool, keep_logs: bool, now_ms: i64) -> Option<TextVerdict> {
    if !validated && serde_json::from_slice::<serde::de::IgnoredAny>(text).is_err() {
        return None;
    }
    let activation = match message(text)? {
        (Response::Id, _) | (Response::Absent, true) => return Some(TextVerdict::Skip),
        (Response::Activation(fields), _) => sorted(fields),
        (Response::Absent | Response::Other, _) => return None,
    };
    if !REQUIRED.iter().all(|(field, kind)| get(&activation, field).is_some_and(|v| has_kind(v, *kind))) {
        return None;
    }
    let inner = sorted(object(get(&activation, "response")?)?);
    if !get(&inner, "statusCode").is_some_and(|v| has_kind(v, Kind::Number)) {
        return None;
    }
    let (namespace, activation_id) =
        (text_of(get(&activation, "namespace")?)?, text_of(get(&activation, "activationId")?)?);
    let mut id = String::with_capacity(namespace.len() + 1 + activation_id.len());
    id.push_str(&namespace);
    id.push('/');
    id.push_str(&activation_id);

    let kept: Fields<'_> =
        inner.into_iter().filter(|(k, _)| RESPONSE_KEYS.iter().any(|r| r.as_bytes() == *k)).collect();
    let mut reduced = Vec::with_capacity(64);
    write_object(&mut reduced, &kept);
    let id_json = serde_json::to_vec(&id).ok()?;
    let updated = now_ms.to_string();

    let mut doc = activation;
    set(&mut doc, "response", &reduced);
    if !keep_logs {
        set(&mut doc, "logs", b"[]");
    }
    set(&mut doc, "_id", &id_json);
    set(&mut doc, "entityType", b"\"activation\"");
    set(&mut doc, "updated", updated.as_bytes());
    let mut out = Vec::with_capacity(text.len() + 96);
    write_object(&mut out, &doc);
    Some(TextVerdict::Store { doc: out, id })
}

/// Write `{"k":v,...}`. Keys hold no escapes (the cursor refuses those), and a key's characters
/// need none: a JSON string without escapes has no quote, backslash or control character.
fn write_object(out: &mut Vec<u8>, fields: &[(&[u8], &[u8])]) {
    out.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(value);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> String {
        let activation = r#"{"activationId":"a1","annotations":[{"key":"k]","value":"}{"}],"end":2,"logs":["x\"]}"],
            "name":"n","namespace":"ns","publish":false,"response":{"statusCode":0,"result":{"r":[1,[2,{}]]}},
            "start":-1.5e3,"subject":"s","version":"0.0.1"}"#;
        format!(r#"{{"transid":["t",1],"response":{activation},"x":null}}"#)
    }

    #[test]
    fn cursor_splits_fields_across_tricky_strings_and_nesting() {
        let text = br#" { "a" : "x}]\"{" , "b":[1,{"c":"]"}], "d":-1.5e3,"e":true,"f":null,"g":{} } "#;
        let fields = object(text).unwrap();
        let got: Vec<(&str, &str)> = fields
            .iter()
            .map(|(k, v)| (std::str::from_utf8(k).unwrap(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", r#""x}]\"{""#),
                ("b", r#"[1,{"c":"]"}]"#),
                ("d", "-1.5e3"),
                ("e", "true"),
                ("f", "null"),
                ("g", "{}")
            ]
        );
        assert!(object(br#"{"k\u0065y": 1}"#).is_none(), "keys with escapes go to the tree path");
    }

    #[test]
    fn documents_come_out_as_valid_json_with_the_expected_id() {
        let text = message();
        let Some(TextVerdict::Store { doc, id }) = extract(text.as_bytes(), true, true, 7) else {
            panic!("a result message is stored");
        };
        assert_eq!(id, "ns/a1");
        let doc: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(doc["annotations"][0]["value"], "}{");
        assert_eq!(doc["logs"][0], "x\"]}");
        assert_eq!(doc["response"], serde_json::json!({"statusCode": 0, "result": {"r": [1, [2, {}]]}}));
        assert_eq!((doc["updated"].as_i64(), doc["entityType"].as_str()), (Some(7), Some("activation")));
    }

    #[test]
    fn broken_text_never_panics_and_is_left_to_the_tree_path() {
        let text = message();
        let bytes = text.as_bytes();
        // Every strict prefix (the top-level object never closes), claimed valid or not.
        for end in 0..bytes.len() {
            for validated in [true, false] {
                assert!(extract(&bytes[..end], validated, true, 0).is_none(), "prefix of {end} bytes");
            }
        }
        // Bytes flipped to structural characters: whatever comes out, nothing panics, and text
        // that is not JSON is refused when it was not validated.
        for at in 0..bytes.len() {
            for b in [b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', 0xff] {
                let mut broken = bytes.to_vec();
                broken[at] = b;
                let _ = extract(&broken, true, true, 0);
                if serde_json::from_slice::<serde::de::IgnoredAny>(&broken).is_err() {
                    assert!(extract(&broken, false, true, 0).is_none());
                }
            }
        }
    }
}
