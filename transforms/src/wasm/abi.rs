//! ABI v1, host side: encode a batch of events once, decode the guest's answers.
//!
//! `docs/wasm-abi.md` is the normative description; the guest's twin is
//! `transforms/guest-sdk/src/wire.rs`. All integers are little-endian `u32`.
//!
//! Request (`filter` and `map`): `u32 count`, then per record a flags byte and length-prefixed
//! key, stream, route (each only when its flag is set) and the value as JSON text. Records are
//! encoded once per batch; a retry on a sub-range sends `count` plus a slice of the same bytes.

use std::ops::Range;

use feedline_engine::{Event, Operation};

/// The envelope version this host speaks.
pub const ABI_VERSION: i32 = 1;

/// Request flags.
mod flag {
    pub const KEY: u8 = 1;
    pub const DELETE: u8 = 1 << 1;
    pub const STREAM: u8 = 1 << 2;
    pub const ROUTE: u8 = 1 << 3;
}

/// Map output field modes.
mod out {
    pub const AS_INPUT: u8 = 0;
    pub const NONE: u8 = 1;
    pub const SET: u8 = 2;
    pub const VALUE_SET: u8 = 1 << 6;
    pub const PATCHES: u8 = 1 << 7;
}

/// A batch encoded once, sliceable by record range.
#[derive(Debug, Default)]
pub struct Encoded {
    body: Vec<u8>,
    /// `starts[i]` is where record `i` begins; one extra entry marks the end.
    starts: Vec<usize>,
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

impl Encoded {
    /// Encode `events`, replacing what was there (buffers are reused).
    pub fn encode<'a>(&mut self, events: impl ExactSizeIterator<Item = &'a Event>) {
        self.body.clear();
        self.starts.clear();
        self.starts.reserve(events.len() + 1);
        for e in events {
            self.starts.push(self.body.len());
            let mut flags = 0;
            if e.key.is_some() {
                flags |= flag::KEY;
            }
            if e.operation == Operation::Delete {
                flags |= flag::DELETE;
            }
            if e.meta.stream.is_some() {
                flags |= flag::STREAM;
            }
            if e.meta.route.is_some() {
                flags |= flag::ROUTE;
            }
            self.body.push(flags);
            if let Some(k) = &e.key {
                put_bytes(&mut self.body, k);
            }
            if let Some(s) = &e.meta.stream {
                put_bytes(&mut self.body, s.as_bytes());
            }
            if let Some(r) = &e.meta.route {
                put_bytes(&mut self.body, r.as_bytes());
            }
            let len_at = self.body.len();
            self.body.extend_from_slice(&[0; 4]);
            match e.value.raw() {
                // Text as the source read it: the guest parses it anyway, so no round trip here.
                Some(raw) => self.body.extend_from_slice(raw),
                // Serializing a `Value` into a Vec cannot fail.
                None => {
                    let _ = serde_json::to_writer(&mut self.body, &e.value);
                }
            }
            let len = (self.body.len() - len_at - 4) as u32;
            self.body[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
        }
        self.starts.push(self.body.len());
    }

    /// The request for records `range`: the count header and the records' bytes.
    pub fn request(&self, range: Range<usize>) -> ([u8; 4], &[u8]) {
        let count = (range.len() as u32).to_le_bytes();
        (count, &self.body[self.starts[range.start]..self.starts[range.end]])
    }
}

/// The guest broke the ABI in its answer: a guest bug, handled like a trap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed answer: {0}")]
pub struct Malformed(pub String);

fn bad(what: impl Into<String>) -> Malformed {
    Malformed(what.into())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end =
            self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(|| bad("truncated"))?;
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
        std::str::from_utf8(self.bytes()?).map_err(|_| bad("text is not UTF-8"))
    }
    fn index(&mut self, count: usize) -> Result<usize, Malformed> {
        let i = self.u32()? as usize;
        if i >= count {
            return Err(bad(format!("record index {i} outside a batch of {count}")));
        }
        Ok(i)
    }
    fn errors(&mut self, count: usize) -> Result<Vec<(usize, &'a str)>, Malformed> {
        let n = self.u32()? as usize;
        let mut errors = Vec::with_capacity(n.min(count));
        for _ in 0..n {
            errors.push((self.index(count)?, self.text()?));
        }
        if self.at != self.bytes.len() {
            return Err(bad("trailing bytes"));
        }
        Ok(errors)
    }
}

/// A filter's answer for `count` records: keep flags and per-record errors.
#[derive(Debug, PartialEq, Eq)]
pub struct FilterAnswer<'a> {
    /// `keep[i]` for record `i` of the request.
    pub keep: Vec<bool>,
    /// Records the guest failed on, with its message.
    pub errors: Vec<(usize, &'a str)>,
}

/// Decode a filter answer to a request of `count` records.
pub fn decode_filter(bytes: &[u8], count: usize) -> Result<FilterAnswer<'_>, Malformed> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.u32()? as usize;
    if n != count {
        return Err(bad(format!("{n} verdicts for {count} records")));
    }
    let keep = r
        .take(n)?
        .iter()
        .map(|v| match v {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(bad(format!("verdict byte {other}"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(FilterAnswer { keep, errors: r.errors(count)? })
}

/// How an output field relates to its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<T> {
    /// Same as the input record.
    AsInput,
    /// Cleared.
    Clear,
    /// Set to this.
    Set(T),
}

/// One output of a map.
#[derive(Debug, PartialEq, Eq)]
pub struct MapOutput<'a> {
    /// The input record it derives from (its ack token and metadata come from there).
    pub index: usize,
    /// A new operation, if changed.
    pub operation: Option<Operation>,
    /// The key.
    pub key: Change<&'a [u8]>,
    /// The route.
    pub route: Change<&'a str>,
    /// New JSON value text, if changed.
    pub value: Option<&'a [u8]>,
    /// Field changes to apply to the input's value (never together with `value`).
    pub patches: Vec<Patch<'a>>,
}

/// One field change of a map output.
#[derive(Debug, PartialEq, Eq)]
pub struct Patch<'a> {
    /// Create the field when missing (`true`), or only replace it when present.
    pub create: bool,
    /// RFC 6901 JSON pointer; `""` is the whole value.
    pub pointer: &'a str,
    /// The new value as JSON text.
    pub json: &'a [u8],
}

/// A map's answer: outputs in emission order and per-record errors.
#[derive(Debug, PartialEq, Eq)]
pub struct MapAnswer<'a> {
    /// Outputs.
    pub outputs: Vec<MapOutput<'a>>,
    /// Records the guest failed on, with its message.
    pub errors: Vec<(usize, &'a str)>,
}

fn change<'a, T>(
    mode: u8,
    r: &mut Reader<'a>,
    read: fn(&mut Reader<'a>) -> Result<T, Malformed>,
) -> Result<Change<T>, Malformed> {
    match mode {
        out::AS_INPUT => Ok(Change::AsInput),
        out::NONE => Ok(Change::Clear),
        out::SET => Ok(Change::Set(read(r)?)),
        m => Err(bad(format!("field mode {m}"))),
    }
}

/// Decode a map answer to a request of `count` records.
pub fn decode_map(bytes: &[u8], count: usize) -> Result<MapAnswer<'_>, Malformed> {
    let mut r = Reader { bytes, at: 0 };
    let n = r.u32()? as usize;
    let mut outputs = Vec::with_capacity(n.min(bytes.len() / 5));
    for _ in 0..n {
        let index = r.index(count)?;
        let flags = r.u8()?;
        if flags & out::VALUE_SET != 0 && flags & out::PATCHES != 0 {
            return Err(bad("an output both sets the value and patches it"));
        }
        let operation = match flags & 0b11 {
            0 => None,
            1 => Some(Operation::Upsert),
            2 => Some(Operation::Delete),
            m => return Err(bad(format!("operation mode {m}"))),
        };
        let key = change((flags >> 2) & 0b11, &mut r, Reader::bytes)?;
        let route = change((flags >> 4) & 0b11, &mut r, Reader::text)?;
        let value = if flags & out::VALUE_SET != 0 { Some(r.bytes()?) } else { None };
        let mut patches = Vec::new();
        if flags & out::PATCHES != 0 {
            let n = r.u32()? as usize;
            patches.reserve(n.min(bytes.len() / 9));
            for _ in 0..n {
                let create = match r.u8()? {
                    0 => true,
                    1 => false,
                    op => return Err(bad(format!("patch op {op}"))),
                };
                patches.push(Patch { create, pointer: r.text()?, json: r.bytes()? });
            }
        }
        outputs.push(MapOutput { index, operation, key, route, value, patches });
    }
    Ok(MapAnswer { outputs, errors: r.errors(count)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use feedline_engine::Metadata;
    use serde_json::json;

    #[test]
    fn request_slices_share_one_encoding() {
        let mut a = Event::new(json!({"a": 1}), Metadata::from_source("t"));
        a.key = Some(Bytes::from_static(b"k"));
        a.operation = Operation::Delete;
        a.meta.route = Some("r".into());
        let b = Event::new(json!([true]), Metadata::from_source("t"));
        let mut enc = Encoded::default();
        enc.encode([a, b].iter());
        let (count, body) = enc.request(1..2);
        assert_eq!(count, [1, 0, 0, 0]);
        assert_eq!(body, b"\0\x06\0\0\0[true]");
        let (count, body) = enc.request(0..1);
        assert_eq!(count, [1, 0, 0, 0]);
        assert_eq!(body[0], flag::KEY | flag::DELETE | flag::ROUTE);
        assert_eq!(&body[1..6], b"\x01\0\0\0k");
        assert_eq!(enc.request(0..2).1.len(), enc.body.len());
    }

    #[test]
    fn filter_answers_are_checked() {
        let ok = [2, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'n', b'o'];
        let a = decode_filter(&ok, 2).expect("valid");
        assert_eq!(a.keep, vec![true, false]);
        assert_eq!(a.errors, vec![(1, "no")]);
        assert!(decode_filter(&ok, 3).is_err(), "count mismatch");
        assert!(decode_filter(&[1, 0, 0, 0, 7, 0, 0, 0, 0], 1).is_err(), "bad verdict");
        assert!(decode_filter(&[1, 0, 0, 0, 1, 1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0], 1).is_err(), "index");
    }

    #[test]
    fn map_answers_decode_changes() {
        let mut b = vec![2, 0, 0, 0];
        b.extend_from_slice(&[0, 0, 0, 0, 0]);
        b.extend_from_slice(&[0, 0, 0, 0, 2 | (1 << 2) | (2 << 4) | out::VALUE_SET]);
        b.extend_from_slice(&[1, 0, 0, 0, b't']);
        b.extend_from_slice(&[2, 0, 0, 0, b'{', b'}']);
        b.extend_from_slice(&[0, 0, 0, 0]);
        let a = decode_map(&b, 1).expect("valid");
        assert_eq!(
            a.outputs[0],
            MapOutput {
                index: 0,
                operation: None,
                key: Change::AsInput,
                route: Change::AsInput,
                value: None,
                patches: Vec::new(),
            }
        );
        assert_eq!(
            a.outputs[1],
            MapOutput {
                index: 0,
                operation: Some(Operation::Delete),
                key: Change::Clear,
                route: Change::Set("t"),
                value: Some(b"{}"),
                patches: Vec::new(),
            }
        );
        assert!(decode_map(&b, 0).is_err(), "index outside the batch");
        assert!(decode_map(&b[..b.len() - 1], 1).is_err(), "truncated");
    }

    #[test]
    fn map_answers_decode_patches() {
        let mut b = vec![1, 0, 0, 0, 0, 0, 0, 0, out::PATCHES, 2, 0, 0, 0];
        b.extend_from_slice(&[0, 2, 0, 0, 0, b'/', b'a', 1, 0, 0, 0, b'1']);
        b.extend_from_slice(&[1, 2, 0, 0, 0, b'/', b'b', 2, 0, 0, 0, b'"', b'"']);
        b.extend_from_slice(&[0, 0, 0, 0]);
        let a = decode_map(&b, 1).expect("valid");
        assert_eq!(
            a.outputs[0].patches,
            vec![
                Patch { create: true, pointer: "/a", json: b"1" },
                Patch { create: false, pointer: "/b", json: b"\"\"" },
            ]
        );
        let mut both = b.clone();
        both[8] |= out::VALUE_SET;
        assert!(decode_map(&both, 1).is_err(), "value and patches together");
        let mut op = b.clone();
        op[13] = 7;
        assert!(decode_map(&op, 1).is_err(), "unknown patch op");
    }
}
