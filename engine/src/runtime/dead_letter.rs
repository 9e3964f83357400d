//! The dead-letter path: rejected events become envelope records for the dead-letter sink.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::sink_driver::SinkDriver;
use crate::component::{Batch, ComponentError, Rejected, Sink};
use crate::config::{ComponentDef, SinkDef, SinkOptions};
use crate::event::Event;
use crate::jsonl::{JsonLinesSink, LineFormat};
use crate::payload::Payload;
use crate::registry::{BuildContext, BuildSink};

/// Used when a pipeline has no `[dead_letter]`: `<data-dir>/<pipeline>/dead-letter.jsonl`.
struct DefaultDeadLetter;

impl BuildSink for DefaultDeadLetter {
    fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        let path = default_path(&ctx.data_dir, &ctx.pipeline);
        Ok(Arc::new(JsonLinesSink::new(&path, LineFormat::Value, true)))
    }
}

/// Where rejected events of `pipeline` go when it has no `[dead_letter]`.
pub fn default_path(data_dir: &Path, pipeline: &str) -> std::path::PathBuf {
    data_dir.join(pipeline).join("dead-letter.jsonl")
}

/// The default dead-letter sink definition.
pub(super) fn default_sink() -> SinkDef {
    SinkDef {
        component: ComponentDef {
            id: "dead_letter".into(),
            type_name: "file".into(),
            config: Box::new(DefaultDeadLetter),
        },
        options: SinkOptions::default(),
    }
}

/// The record written for a rejected event: what failed, where, why, and the event itself as
/// it was — the original JSON text when no stage changed it, or the bytes as read for input that
/// never became a value (`"encoding": "text"`, or `"base64"` when they are not UTF-8) — with its
/// size and SHA-256 so a truncated copy (see [`truncated`]) still identifies it.
pub fn envelope(pipeline: &str, r: &Rejected) -> Event {
    let (event_json, encoding, size, sha256) = match &r.original {
        Some(bytes) => {
            let (text, encoding) = match std::str::from_utf8(bytes) {
                Ok(text) => (text.to_owned(), "text"),
                Err(_) => (BASE64.encode(bytes), "base64"),
            };
            (json_bytes(&Value::String(text)), encoding, bytes.len(), sha256_hex(bytes))
        }
        None => {
            let text = r.event.value.to_json_bytes().unwrap_or_else(|_| Bytes::from_static(b"null"));
            let (size, digest) = (text.len(), sha256_hex(&text));
            (text, "json", size, digest)
        }
    };
    let fields = json!({
        "pipeline": pipeline,
        "stage": r.stage,
        "error": r.error,
        "origin": r.event.meta.position_json(),
        "key": r.event.key_str(),
        "operation": r.event.operation,
        "encoding": encoding,
        "size": size,
        "sha256": sha256,
        "rejected_at_ms": now_ms(),
    });
    Event {
        key: r.event.key.clone(),
        value: Payload::from_validated_json(splice_event(&event_json, &json_bytes(&fields))),
        operation: r.event.operation,
        meta: r.event.meta.clone(),
    }
}

const EVENT_PREFIX: &[u8] = br#"{"event":"#;

/// `{"event":<event>,<fields>}` without parsing `event` again (it is valid JSON text already).
fn splice_event(event: &[u8], fields: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(event.len() + fields.len() + 10);
    out.extend_from_slice(EVENT_PREFIX);
    out.extend_from_slice(event);
    match fields.strip_prefix(b"{") {
        Some(rest) if rest != b"}" => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
        _ => out.push(b'}'),
    }
    Bytes::from(out)
}

/// How much of the event a truncated envelope keeps.
const TRUNCATED_HEAD_BYTES: usize = 1024;

/// The envelope the dead-letter sink refused (too large for a Kafka topic, say), cut down to
/// what identifies the event: everything but `event`, which becomes `event_head` (its first
/// KiB), plus `truncated` and the dead-letter sink's own reason. `None` if it is not an envelope.
pub(super) fn truncated(envelope: &Event, refused_because: &str) -> Option<Event> {
    let mut fields = envelope.value.value().as_object()?.clone();
    let event = fields.remove("event")?;
    let head = match event {
        // Text or base64 of the input as read: its start is the start of the original.
        Value::String(text) => text.into_bytes(),
        // JSON: the envelope's text holds the event's original bytes right after `{"event":`.
        other => match (envelope.value.raw(), fields.get("size").and_then(Value::as_u64)) {
            (Some(raw), Some(size)) if raw.starts_with(EVENT_PREFIX) => {
                let end = (EVENT_PREFIX.len() as u64).saturating_add(size).min(raw.len() as u64) as usize;
                raw[EVENT_PREFIX.len()..end].to_vec()
            }
            _ => other.to_string().into_bytes(),
        },
    };
    fields.insert("event_head".into(), Value::String(utf8_prefix(&head, TRUNCATED_HEAD_BYTES).to_owned()));
    fields.insert("truncated".into(), Value::Bool(true));
    fields.insert("dead_letter_error".into(), Value::String(refused_because.to_owned()));
    Some(Event { value: Value::Object(fields).into(), ..envelope.clone() })
}

/// The longest whole-character prefix of `bytes` within `max` bytes (the bytes are UTF-8 text,
/// so only the cut can fall inside a character).
fn utf8_prefix(bytes: &[u8], max: usize) -> &str {
    let bytes = &bytes[..bytes.len().min(max)];
    match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

fn json_bytes(value: &Value) -> Bytes {
    serde_json::to_vec(value).map(Bytes::from).unwrap_or_else(|_| Bytes::from_static(b"null"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Forward rejections (in small batches) to the dead-letter driver until every sender is gone.
pub(super) async fn run(driver: SinkDriver, mut rx: mpsc::Receiver<Rejected>, pipeline: Arc<str>) {
    let (tx, batches) = mpsc::channel::<Batch>(4);
    let (fatal, fatal_reason) = (driver.fatal.clone(), driver.fatal_reason.clone());
    let driver_task = tokio::spawn(driver.run(batches));
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::with_capacity(16);
        let mut next = Some(first);
        while let Some(r) = next {
            tracing::debug!(stage = %r.stage, error = %r.error, "event rejected to dead-letter");
            let event = envelope(&pipeline, &r);
            batch.push(event, r.ack);
            next = if batch.len() < 500 { rx.try_recv().ok() } else { None };
        }
        if tx.send(batch).await.is_err() {
            break;
        }
    }
    drop(tx);
    if let Some(message) = super::panic_of(driver_task.await) {
        super::fail_pipeline(&fatal, &fatal_reason, format!("the dead-letter sink panicked: {message}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Metadata;

    fn rejected(event: Event, original: Option<&[u8]>) -> Rejected {
        Rejected {
            stage: "source.in".into(),
            error: "invalid JSON".into(),
            event,
            original: original.map(Bytes::copy_from_slice),
            ack: crate::ack::AckToken::untracked(),
        }
    }

    fn parsed(e: &Event) -> Value {
        let text = e.value.to_json_bytes().expect("text");
        serde_json::from_slice(&text).expect("the envelope is valid JSON")
    }

    #[test]
    fn unchanged_json_keeps_its_original_text_byte_for_byte() {
        let text = Bytes::from_static(br#"{ "b" : 1.50, "a":"\u00e9" }"#);
        let event =
            Event::new(Payload::from_json_bytes(text.clone()).expect("json"), Metadata::from_source("in"));
        let env = envelope("p", &rejected(event, None));
        let out = env.value.to_json_bytes().expect("text");
        let needle = [&br#"{"event":"#[..], &text[..], b","].concat();
        assert!(out.starts_with(&needle), "{}", String::from_utf8_lossy(&out));
        let v = parsed(&env);
        assert_eq!((v["encoding"].as_str(), v["size"].as_u64()), (Some("json"), Some(text.len() as u64)));
        assert_eq!(v["sha256"].as_str().map(str::len), Some(64));
        assert_eq!((v["pipeline"].as_str(), v["error"].as_str()), (Some("p"), Some("invalid JSON")));
    }

    #[test]
    fn undecodable_bytes_are_kept_as_text_or_base64() {
        let meta = Metadata::from_source("in");
        let text = parsed(&envelope("p", &rejected(Event::new(Value::Null, meta.clone()), Some(b"{oops"))));
        assert_eq!((text["event"].as_str(), text["encoding"].as_str()), (Some("{oops"), Some("text")));
        let bytes = [0xff, 0x00, b'{', 0xfe];
        let binary = parsed(&envelope("p", &rejected(Event::new(Value::Null, meta), Some(&bytes))));
        assert_eq!(binary["encoding"], "base64");
        let decoded = BASE64.decode(binary["event"].as_str().expect("a string")).expect("base64");
        assert_eq!(decoded, bytes);
        assert_eq!(binary["size"], 4);
    }

    #[test]
    fn a_truncated_json_event_keeps_the_head_of_its_original_text() {
        let text = format!(r#"{{ "z": 1, "a": "{}" }}"#, "é".repeat(3000));
        let event = Event::new(
            Payload::from_json_bytes(Bytes::from(text.clone())).expect("json"),
            Metadata::from_source("in"),
        );
        let cut =
            parsed(&truncated(&envelope("p", &rejected(event, None)), "too large").expect("an envelope"));
        let head = cut["event_head"].as_str().expect("head");
        assert!(text.starts_with(head) && head.len() > TRUNCATED_HEAD_BYTES - 4, "{head}");
        assert_eq!(cut["encoding"], "json");
    }

    #[test]
    fn a_truncated_envelope_keeps_origin_error_size_and_hash() {
        let big = format!("\"{}\"", "é".repeat(5000));
        let event = Event::new(
            Payload::from_json_bytes(Bytes::from(big.clone())).expect("json"),
            Metadata::from_source("in"),
        );
        let env = envelope("p", &rejected(event, None));
        let full = parsed(&env);
        let cut = parsed(&truncated(&env, "message too large").expect("an envelope"));
        assert!(cut.get("event").is_none());
        let head = cut["event_head"].as_str().expect("head");
        assert!(
            head.len() <= TRUNCATED_HEAD_BYTES && head.len() > 1000 && big[1..].starts_with(head),
            "{head}"
        );
        for field in ["origin", "error", "size", "sha256", "stage", "encoding"] {
            assert_eq!(cut[field], full[field], "{field}");
        }
        assert_eq!(
            (cut["truncated"].as_bool(), cut["dead_letter_error"].as_str()),
            (Some(true), Some("message too large"))
        );
    }
}
