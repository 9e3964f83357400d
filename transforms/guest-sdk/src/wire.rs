//! The ABI v1 byte layouts, guest side: decode the host's batch envelope, encode the outputs.
//!
//! All integers are little-endian `u32`; strings are UTF-8; values are JSON text.
//! `docs/wasm-abi.md` is the normative description; the host's twin is
//! `transforms/src/wasm/abi.rs`.

use crate::event::{Event, Operation};

/// The ABI version this SDK speaks.
pub const ABI_VERSION: i32 = 1;

/// Input record flags.
pub(crate) mod flag {
    pub const KEY: u8 = 1;
    pub const DELETE: u8 = 1 << 1;
    pub const STREAM: u8 = 1 << 2;
    pub const ROUTE: u8 = 1 << 3;
}

/// Map output field modes (two bits each, 0 = as the input; the value has one bit).
pub(crate) mod out {
    pub const NONE: u8 = 1;
    pub const SET: u8 = 2;
    pub const OP_UPSERT: u8 = 1;
    pub const OP_DELETE: u8 = 2;
    pub const OP_SHIFT: u8 = 0;
    pub const KEY_SHIFT: u8 = 2;
    pub const ROUTE_SHIFT: u8 = 4;
    pub const VALUE_SET: u8 = 1 << 6;
    pub const PATCHES: u8 = 1 << 7;
}

/// The envelope was not what ABI v1 describes (a host/guest mismatch, never a data problem).
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(Malformed("truncated"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn text(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("text is not UTF-8"))
    }
}

/// Decode a batch envelope into borrowed events.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Event<'_>>, Malformed> {
    let mut r = Reader { bytes, at: 0 };
    let count = r.u32()? as usize;
    // Each record takes at least 5 bytes: never trust `count` for the allocation.
    let mut events = Vec::with_capacity(count.min(bytes.len() / 5));
    for index in 0..count {
        let flags = r.u8()?;
        let key = if flags & flag::KEY != 0 { Some(r.bytes()?) } else { None };
        let stream = if flags & flag::STREAM != 0 { Some(r.text()?) } else { None };
        let route = if flags & flag::ROUTE != 0 { Some(r.text()?) } else { None };
        let raw = r.text()?;
        let operation = if flags & flag::DELETE != 0 { Operation::Delete } else { Operation::Upsert };
        events.push(Event::from_input(index as u32, key, stream, route, operation, raw));
    }
    if r.at != bytes.len() {
        return Err(Malformed("trailing bytes after the last record"));
    }
    Ok(events)
}

fn put_u32(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u32(buf, b.len());
    buf.extend_from_slice(b);
}

/// A per-record error: the input index and the message.
pub type RecordError = (u32, String);

/// `value` as length-prefixed JSON text.
fn put_json(buf: &mut Vec<u8>, value: &serde_json::Value) -> Result<(), serde_json::Error> {
    let len_at = buf.len();
    put_u32(buf, 0);
    serde_json::to_writer(&mut *buf, value)?;
    let len = (buf.len() - len_at - 4) as u32;
    buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn put_errors(buf: &mut Vec<u8>, errors: &[RecordError]) {
    put_u32(buf, errors.len());
    for (index, message) in errors {
        buf.extend_from_slice(&index.to_le_bytes());
        put_bytes(buf, message.as_bytes());
    }
}

/// Filter output: one verdict byte per input (1 keep, 0 drop), then the errors.
pub fn encode_filter(verdicts: &[bool], errors: &[RecordError]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + verdicts.len());
    put_u32(&mut buf, verdicts.len());
    buf.extend(verdicts.iter().map(|k| u8::from(*k)));
    put_errors(&mut buf, errors);
    buf
}

/// Map output writer: outputs are appended as they are emitted, errors at the end.
pub struct MapWriter {
    buf: Vec<u8>,
    count: usize,
}

impl MapWriter {
    /// An empty output with room for about `n` records.
    pub fn new(n: usize) -> Self {
        let mut buf = Vec::with_capacity(4 + n * 16);
        put_u32(&mut buf, 0);
        Self { buf, count: 0 }
    }

    /// Append `event` as an output of input `index`: only what changed crosses back.
    pub fn push(&mut self, index: u32, event: &Event<'_>) -> Result<(), serde_json::Error> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&index.to_le_bytes());
        let flags_at = self.buf.len();
        self.buf.push(0);
        let mut flags = 0u8;
        if let Some(op) = event.changed_operation() {
            let mode = match op {
                Operation::Upsert => out::OP_UPSERT,
                Operation::Delete => out::OP_DELETE,
            };
            flags |= mode << out::OP_SHIFT;
        }
        if let Some(key) = event.changed_key() {
            match key {
                None => flags |= out::NONE << out::KEY_SHIFT,
                Some(k) => {
                    flags |= out::SET << out::KEY_SHIFT;
                    put_bytes(&mut self.buf, k);
                }
            }
        }
        if let Some(route) = event.changed_route() {
            match route {
                None => flags |= out::NONE << out::ROUTE_SHIFT,
                Some(r) => {
                    flags |= out::SET << out::ROUTE_SHIFT;
                    put_bytes(&mut self.buf, r.as_bytes());
                }
            }
        }
        let written = if let Some(value) = event.changed_value() {
            flags |= out::VALUE_SET;
            put_json(&mut self.buf, value)
        } else if !event.patches().is_empty() {
            flags |= out::PATCHES;
            put_u32(&mut self.buf, event.patches().len());
            event.patches().iter().try_for_each(|patch| {
                self.buf.push(patch.op as u8);
                put_bytes(&mut self.buf, patch.pointer.as_bytes());
                put_json(&mut self.buf, &patch.value)
            })
        } else {
            Ok(())
        };
        if let Err(e) = written {
            self.buf.truncate(start);
            return Err(e);
        }
        self.buf[flags_at] = flags;
        self.count += 1;
        Ok(())
    }

    /// Finish with the errors.
    pub fn finish(mut self, errors: &[RecordError]) -> Vec<u8> {
        let count = (self.count as u32).to_le_bytes();
        self.buf[..4].copy_from_slice(&count);
        put_errors(&mut self.buf, errors);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// flags, key, stream, route, value.
    type Record<'a> = (u8, Option<&'a [u8]>, Option<&'a str>, Option<&'a str>, &'a str);

    fn envelope(records: &[Record]) -> Vec<u8> {
        let mut b = Vec::new();
        put_u32(&mut b, records.len());
        for (flags, key, stream, route, value) in records {
            b.push(*flags);
            if let Some(k) = key {
                put_bytes(&mut b, k);
            }
            if let Some(s) = stream {
                put_bytes(&mut b, s.as_bytes());
            }
            if let Some(r) = route {
                put_bytes(&mut b, r.as_bytes());
            }
            put_bytes(&mut b, value.as_bytes());
        }
        b
    }

    #[test]
    fn decodes_every_field() {
        let b = envelope(&[
            (flag::KEY | flag::STREAM | flag::ROUTE | flag::DELETE, Some(b"k"), Some("s"), Some("r"), "{}"),
            (0, None, None, None, r#"{"a":1}"#),
        ]);
        let events = decode_batch(&b).expect("decodes");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].key(), Some(&b"k"[..]));
        assert_eq!(events[0].stream(), Some("s"));
        assert_eq!(events[0].route(), Some("r"));
        assert_eq!(events[0].operation(), Operation::Delete);
        assert_eq!(events[1].value().expect("json"), &json!({"a": 1}));
        assert_eq!(events[1].key(), None);
    }

    #[test]
    fn refuses_truncated_and_trailing_input() {
        let b = envelope(&[(0, None, None, None, "{}")]);
        assert_eq!(decode_batch(&b[..b.len() - 1]).err(), Some(Malformed("truncated")));
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_batch(&extra).is_err());
        // A huge count with no records must not allocate or panic.
        assert!(decode_batch(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn map_output_carries_only_changes() {
        let b = envelope(&[(flag::KEY, Some(b"k"), None, None, r#"{"a":1}"#)]);
        let mut events = decode_batch(&b).expect("decodes");
        let mut w = MapWriter::new(2);
        w.push(0, &events[0]).expect("unchanged");
        events[0].set_route("topic-a");
        events[0].value_mut().expect("json")["a"] = json!(2);
        w.push(0, &events[0]).expect("changed");
        let out = w.finish(&[(0, "bad".into())]);
        let mut r = Reader { bytes: &out, at: 0 };
        assert_eq!(r.u32(), Ok(2));
        assert_eq!((r.u32(), r.u8()), (Ok(0), Ok(0)));
        assert_eq!(r.u32(), Ok(0));
        assert_eq!(r.u8(), Ok((out::SET << out::ROUTE_SHIFT) | out::VALUE_SET));
        assert_eq!(r.text(), Ok("topic-a"));
        assert_eq!(r.text(), Ok(r#"{"a":2}"#));
        assert_eq!((r.u32(), r.u32(), r.text()), (Ok(1), Ok(0), Ok("bad")));
        assert_eq!(r.at, out.len());
    }

    #[test]
    fn field_changes_cross_as_patches_until_the_value_is_replaced() {
        let b = envelope(&[(0, None, None, None, r#"{"a":1,"b":{"c":2}}"#)]);
        let mut events = decode_batch(&b).expect("decodes");
        events[0].set_field("/n", json!(3)).expect("pointer");
        events[0].replace_field("/b/missing", json!(0)).expect("pointer");
        assert!(events[0].set_field("n", json!(3)).is_err(), "not a pointer");
        assert_eq!(events[0].value().expect("json"), &json!({"a": 1, "b": {"c": 2}, "n": 3}));
        let mut w = MapWriter::new(1);
        w.push(0, &events[0]).expect("patched");
        let out = w.finish(&[]);
        let mut r = Reader { bytes: &out, at: 0 };
        assert_eq!((r.u32(), r.u32(), r.u8()), (Ok(1), Ok(0), Ok(out::PATCHES)));
        assert_eq!((r.u32(), r.u8(), r.text(), r.text()), (Ok(2), Ok(0), Ok("/n"), Ok("3")));
        assert_eq!((r.u8(), r.text(), r.text()), (Ok(1), Ok("/b/missing"), Ok("0")));
        // Once the whole value changed, it is sent instead, patches included.
        events[0].value_mut().expect("json")["a"] = json!(9);
        let mut w = MapWriter::new(1);
        w.push(0, &events[0]).expect("changed");
        let out = w.finish(&[]);
        let mut r = Reader { bytes: &out, at: 0 };
        assert_eq!((r.u32(), r.u32(), r.u8()), (Ok(1), Ok(0), Ok(out::VALUE_SET)));
        assert_eq!(r.text(), Ok(r#"{"a":9,"b":{"c":2},"n":3}"#));
    }

    #[test]
    fn filter_output_layout() {
        let out = encode_filter(&[true, false], &[]);
        assert_eq!(out, vec![2, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    }
}
