//! A Kafka record becomes an event: key, headers, timestamp, topic, partition and offset into
//! [`Metadata`], the value decoded per [`Decoding`]. A null value (tombstone) is a delete event.

use std::sync::Arc;

use bytes::Bytes;
use feedline_engine::{Event, Metadata, Operation, Payload};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde_json::Value;

use super::config::Decoding;

/// Where a record came from: cached per partition so events share the strings.
#[derive(Clone)]
pub struct Origin {
    /// Source component id.
    pub source: Arc<str>,
    /// Topic.
    pub topic: Arc<str>,
    /// Partition number as text.
    pub partition: Arc<str>,
}

/// A record value that could not be decoded: why, and its bytes for the dead-letter record.
pub struct Undecodable {
    /// The decoder's reason.
    pub reason: String,
    /// The value exactly as the broker returned it.
    pub original: Bytes,
}

/// Turn a record into an event. When the value cannot be decoded, the event has key and
/// metadata only and the reason and original bytes come with it: they go to the dead-letter
/// sink with its position.
pub fn to_event(
    msg: &BorrowedMessage<'_>,
    decoding: Decoding,
    origin: &Origin,
) -> (Event, Option<Undecodable>) {
    let headers = match msg.headers() {
        Some(h) => h
            .iter()
            .map(|h| (h.key.to_owned(), Bytes::copy_from_slice(h.value.unwrap_or_default())))
            .collect(),
        None => Vec::new(),
    };
    let meta = Metadata {
        source: origin.source.clone(),
        stream: Some(origin.topic.clone()),
        partition: Some(origin.partition.clone()),
        position: Some(Value::from(msg.offset())),
        time_ms: msg.timestamp().to_millis(),
        headers,
        route: None,
    };
    let key = msg.key().map(Bytes::copy_from_slice);
    let Some(payload) = msg.payload() else {
        return (Event { key, value: Payload::default(), operation: Operation::Delete, meta }, None);
    };
    match decode(payload, decoding) {
        Ok(value) => (Event { key, value, operation: Operation::Upsert, meta }, None),
        Err(reason) => {
            let undecodable = Undecodable { reason, original: Bytes::copy_from_slice(payload) };
            (Event { key, value: Payload::default(), operation: Operation::Upsert, meta }, Some(undecodable))
        }
    }
}

/// Decode a record value. JSON is validated and kept as text: stages that read it parse it once,
/// and a sink that writes it unchanged sends the same bytes.
pub fn decode(payload: &[u8], decoding: Decoding) -> Result<Payload, String> {
    match decoding {
        Decoding::Json => Payload::from_json_bytes(Bytes::copy_from_slice(payload))
            .map_err(|e| format!("invalid JSON: {e}")),
        Decoding::String => match std::str::from_utf8(payload) {
            Ok(s) => Ok(Value::String(s.to_owned()).into()),
            Err(e) => Err(format!("invalid UTF-8: {e}")),
        },
        Decoding::Bytes => Ok(Value::String(base64(payload)).into()),
    }
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_way_and_explains_failures() {
        assert_eq!(decode(br#"{"a":1}"#, Decoding::Json).unwrap(), serde_json::json!({"a": 1}));
        let kept = decode(b"{\"a\": 1 }", Decoding::Json).unwrap();
        assert_eq!(kept.raw().map(|b| &b[..]), Some(&b"{\"a\": 1 }"[..]), "JSON stays text until read");
        assert!(decode(b"{nope", Decoding::Json).unwrap_err().starts_with("invalid JSON"));
        assert_eq!(decode(b"hi", Decoding::String).unwrap(), Value::String("hi".into()));
        assert!(decode(&[0xff], Decoding::String).unwrap_err().starts_with("invalid UTF-8"));
        assert_eq!(decode(&[0xff, 0, 1], Decoding::Bytes).unwrap(), Value::String("/wAB".into()));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
