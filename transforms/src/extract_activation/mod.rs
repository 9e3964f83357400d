//! `extract_activation`: OpenWhisk activation-completion message → activation document to store.
//!
//! Invokers publish completions on `completed*` topics in four forms (DESIGN.md §8):
//!
//! 1. result — `response` is the activation object → emit the document;
//! 2. shrunk result — `response` is only the activation id (a string) → drop, nothing to store;
//! 3. completion — an `instance` (or legacy `invoker`) marker and no `response` → drop;
//! 4. combined — marker and an activation `response` → emit the document.
//!
//! The document is the activation with `_id = "<namespace>/<activationId>"`,
//! `entityType = "activation"`, its `response` reduced to `statusCode`, `result` and optional
//! `size`, and `updated` (milliseconds, read once per batch from the injected clock). The event
//! key becomes the `_id`, so document sinks write idempotently. A message that is not JSON, not an
//! object, or whose activation lacks a required field (or has it with the wrong type) is rejected
//! with the field named. `transid` is never read, so a malformed one is harmless. A string value
//! (a source that decodes bytes as text) is parsed as JSON first.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use feedline_engine::{
    kind_of, BuildContext, ComponentError, Event, Operation, Output, Payload, Transform, TransformConfig,
};
use text::TextVerdict;

mod text;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Turns activation-completion messages into activation documents; skips shrunk results and
/// bare completions.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractActivationConfig {
    /// Keep the activation's `logs`. `false` stores an empty `logs` array (smaller documents when
    /// logs are shipped elsewhere).
    #[serde(default = "default_keep_logs")]
    pub keep_logs: bool,
}

fn default_keep_logs() -> bool {
    true
}

impl TransformConfig for ExtractActivationConfig {
    const TYPE: &'static str = "extract_activation";

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Transform>, ComponentError> {
        Ok(Box::new(ExtractActivation { keep_logs: self.keep_logs, clock: Box::new(now_ms), now: now_ms() }))
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a required activation field must hold.
#[derive(Clone, Copy)]
enum Kind {
    String,
    Bool,
    Number,
    Array,
    Object,
}

/// The activation fields every stored document needs, in the order errors name them.
const REQUIRED: [(&str, Kind); 11] = [
    ("activationId", Kind::String),
    ("namespace", Kind::String),
    ("name", Kind::String),
    ("subject", Kind::String),
    ("version", Kind::String),
    ("publish", Kind::Bool),
    ("annotations", Kind::Array),
    ("logs", Kind::Array),
    ("start", Kind::Number),
    ("end", Kind::Number),
    ("response", Kind::Object),
];

/// Keys kept from the activation's own `response`.
const RESPONSE_KEYS: [&str; 3] = ["statusCode", "result", "size"];

struct ExtractActivation {
    keep_logs: bool,
    clock: Box<dyn Fn() -> i64 + Send>,
    /// The clock's reading for the current batch (`transform_batch` reads it; the runtime always
    /// calls that).
    now: i64,
}

/// What a message asks for.
enum Verdict {
    Store,
    Skip,
    Reject(String),
}

fn has_kind(v: &Value, kind: Kind) -> bool {
    matches!(
        (kind, v),
        (Kind::String, Value::String(_))
            | (Kind::Bool, Value::Bool(_))
            | (Kind::Number, Value::Number(_))
            | (Kind::Array, Value::Array(_))
            | (Kind::Object, Value::Object(_))
    )
}

/// Classify a message without changing it.
fn classify(message: &Value) -> Verdict {
    let Value::Object(msg) = message else {
        return Verdict::Reject(format!("message is not a JSON object, got {}", kind_of(message)));
    };
    let activation = match msg.get("response") {
        Some(Value::Object(a)) => a,
        Some(Value::String(_)) => return Verdict::Skip,
        None if msg.contains_key("instance") || msg.contains_key("invoker") => return Verdict::Skip,
        None => {
            return Verdict::Reject(
                "not an activation message: no `response` and no `instance`/`invoker` marker".into(),
            )
        }
        Some(other) => {
            return Verdict::Reject(format!(
                "`response` must be an activation object or an activation id, got {}",
                kind_of(other)
            ))
        }
    };
    let mut missing = Vec::new();
    let mut mistyped = None;
    for (field, kind) in REQUIRED {
        match activation.get(field) {
            None => missing.push(field),
            Some(v) if !has_kind(v, kind) => {
                mistyped.get_or_insert((field, v));
            }
            Some(_) => {}
        }
    }
    if !missing.is_empty() {
        return Verdict::Reject(format!(
            "activation is missing required field(s) `{}`",
            missing.join("`, `")
        ));
    }
    if let Some((field, v)) = mistyped {
        return Verdict::Reject(format!("activation field `{field}` must not be {}", kind_of(v)));
    }
    match activation.get("response").and_then(|r| r.get("statusCode")) {
        Some(Value::Number(_)) => Verdict::Store,
        Some(v) => {
            Verdict::Reject(format!("activation field `response.statusCode` must not be {}", kind_of(v)))
        }
        None => Verdict::Reject("activation is missing required field `response.statusCode`".into()),
    }
}

impl ExtractActivation {
    /// The text path's answer for a message that is still unparsed JSON text (or a string value
    /// holding it); `None` sends it down the tree path.
    fn text_verdict(&self, event: &Event) -> Option<TextVerdict> {
        let (text, validated): (&[u8], bool) = match event.value.raw() {
            // Already parsed by an earlier stage: the tree is there, use it.
            Some(_) if event.value.is_parsed() => return None,
            Some(raw) => (raw, true),
            None => match &*event.value {
                Value::String(text) => (text.as_bytes(), false),
                _ => return None,
            },
        };
        text::extract(text, validated, self.keep_logs, self.now)
    }

    /// Turn a message that `classify` accepted into the activation document and its `_id`.
    fn document(&self, message: Value) -> (Value, String) {
        let mut activation = match message {
            Value::Object(mut msg) => match msg.remove("response") {
                Some(Value::Object(a)) => a,
                _ => Map::new(),
            },
            _ => Map::new(),
        };
        let text = |k: &str| activation.get(k).and_then(Value::as_str).unwrap_or_default();
        let (namespace, activation_id) = (text("namespace"), text("activationId"));
        let mut id = String::with_capacity(namespace.len() + 1 + activation_id.len());
        id.push_str(namespace);
        id.push('/');
        id.push_str(activation_id);
        if let Some(Value::Object(response)) = activation.get_mut("response") {
            response.retain(|k, _| RESPONSE_KEYS.contains(&k.as_str()));
        }
        if !self.keep_logs {
            activation.insert("logs".to_owned(), Value::Array(Vec::new()));
        }
        activation.insert("_id".to_owned(), Value::String(id.clone()));
        activation.insert("entityType".to_owned(), Value::String("activation".to_owned()));
        activation.insert("updated".to_owned(), Value::from(self.now));
        (Value::Object(activation), id)
    }
}

/// Emit the document, keyed by its `_id` so document sinks write idempotently.
fn emit_document(mut event: Event, id: String, out: &mut Output) {
    event.key = Some(Bytes::from(id.into_bytes()));
    event.operation = Operation::Upsert;
    out.emit(event);
}

impl Transform for ExtractActivation {
    fn transform_batch(&mut self, events: Vec<Event>, out: &mut Output) {
        self.now = (self.clock)();
        for (i, event) in events.into_iter().enumerate() {
            out.set_current(i);
            self.transform(event, out);
        }
    }

    fn transform(&mut self, mut event: Event, out: &mut Output) {
        match self.text_verdict(&event) {
            Some(TextVerdict::Skip) => return,
            Some(TextVerdict::Store { doc, id }) => {
                event.value = Payload::from_validated_json(Bytes::from(doc));
                return emit_document(event, id, out);
            }
            None => {}
        }
        let parsed = match &*event.value {
            Value::String(text) => match serde_json::from_str::<Value>(text) {
                Ok(v) => Some(v),
                Err(e) => return out.reject(event, format!("not JSON: {e}")),
            },
            _ => None,
        };
        let message = parsed.as_ref().unwrap_or(&event.value);
        match classify(message) {
            Verdict::Skip => {}
            Verdict::Reject(reason) => out.reject(event, reason),
            Verdict::Store => {
                let message = parsed.unwrap_or_else(|| std::mem::take(&mut event.value).into_value());
                let (doc, id) = self.document(message);
                event.value = doc.into();
                emit_document(event, id, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::{registry::parse_typed, Metadata};
    use serde_json::json;

    const NOW: i64 = 1_700_000_000_000;

    fn activation() -> Value {
        json!({"activationId":"0123456789abcdef0123456789abcdef","annotations":[{"key":"path","value":"guest/hello"}],
            "duration":100,"end":1571600000200_i64,"logs":["2019 stdout: hi"],"name":"hello","namespace":"guest",
            "publish":false,"response":{"result":{"payload":"hi"},"size":16,"statusCode":0,"extra":1},
            "start":1571600000100_i64,"subject":"guest","version":"0.0.1"})
    }

    fn expected_doc() -> Value {
        json!({"_id":"guest/0123456789abcdef0123456789abcdef","entityType":"activation","updated":NOW,
            "activationId":"0123456789abcdef0123456789abcdef","annotations":[{"key":"path","value":"guest/hello"}],
            "duration":100,"end":1571600000200_i64,"logs":["2019 stdout: hi"],"name":"hello","namespace":"guest",
            "publish":false,"response":{"result":{"payload":"hi"},"size":16,"statusCode":0},
            "start":1571600000100_i64,"subject":"guest","version":"0.0.1"})
    }

    fn run_payloads(keep_logs: bool, payloads: Vec<Payload>) -> Output {
        let mut t = ExtractActivation { keep_logs, clock: Box::new(|| NOW), now: 0 };
        let mut out = Output::default();
        t.transform_batch(
            payloads.into_iter().map(|v| Event::new(v, Metadata::from_source("t"))).collect(),
            &mut out,
        );
        out
    }

    fn run_with(keep_logs: bool, values: Vec<Value>) -> Output {
        run_payloads(keep_logs, values.into_iter().map(Payload::from).collect())
    }

    /// The same messages as unparsed JSON text, the way the Kafka source hands them over.
    fn run_text(keep_logs: bool, values: &[Value]) -> Output {
        let text = |v: &Value| Payload::from_json_bytes(Bytes::from(v.to_string())).unwrap();
        run_payloads(keep_logs, values.iter().map(text).collect())
    }

    /// An emitted event's value, key and operation.
    type Emitted = (Value, Option<String>, Operation);

    /// Everything observable about an output: what was emitted, then the rejection reasons.
    fn observed(out: &Output) -> (Vec<Emitted>, Vec<String>) {
        let emitted =
            out.emitted().map(|e| (Value::clone(&e.value), e.key_str().map(str::to_owned), e.operation));
        (emitted.collect(), reasons(out))
    }

    fn run(values: Vec<Value>) -> Output {
        run_with(true, values)
    }

    fn reasons(out: &Output) -> Vec<String> {
        out.rejections().map(|(_, r)| r.to_owned()).collect()
    }

    #[test]
    fn result_form_becomes_document_keyed_by_id() {
        let out = run(vec![json!({"response": activation(), "transid": ["tid123", 1571600000000_i64]})]);
        let docs: Vec<_> = out.emitted().cloned().collect();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].value, expected_doc());
        assert_eq!(docs[0].key_str(), Some("guest/0123456789abcdef0123456789abcdef"));
        assert_eq!(docs[0].operation, Operation::Upsert);
    }

    #[test]
    fn combined_form_and_cause_are_kept() {
        let mut a = activation();
        a["cause"] = json!("fedcba9876543210fedcba9876543210");
        let msg = json!({"instance":{"instance":0,"instanceType":"invoker"},"isSystemError":false,"response":a,"transid":"?"});
        let out = run(vec![msg]);
        let doc = out.emitted().next().map(|e| Value::clone(&e.value)).unwrap_or_default();
        assert_eq!(doc["cause"], json!("fedcba9876543210fedcba9876543210"));
        assert_eq!(doc["_id"], json!("guest/0123456789abcdef0123456789abcdef"));
    }

    #[test]
    fn shrunk_and_completion_forms_are_skipped() {
        let out = run(vec![
            json!({"response":"0123456789abcdef0123456789abcdef","transid":["tid123",1571600000000_i64]}),
            json!({"activationId":"0123","instance":{"instance":0,"instanceType":"invoker","userMemory":"1024 MB"},
                "isSystemError":false,"transid":["tid123",1571600000000_i64]}),
            json!({"activationId":"0123","invoker":{"instance":0},"isSystemError":true}),
        ]);
        assert_eq!(out.emitted().count(), 0);
        assert_eq!(out.rejections().count(), 0);
    }

    #[test]
    fn string_values_are_parsed_or_rejected() {
        let text = json!({"response": activation(), "transid": 42}).to_string();
        let out = run(vec![Value::String(text), json!("{not json"), json!("\"just a string\"")]);
        assert_eq!(out.emitted().map(|e| Value::clone(&e.value)).collect::<Vec<_>>(), vec![expected_doc()]);
        let r = reasons(&out);
        assert!(r[0].starts_with("not JSON"), "{r:?}");
        assert_eq!(r[1], "message is not a JSON object, got a string");
        let first = out.rejections().next().map(|(e, _)| Value::clone(&e.value));
        assert_eq!(first, Some(json!("{not json")), "rejected events keep their original value");
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let mut no_logs = activation();
        if let Some(a) = no_logs.as_object_mut() {
            a.remove("logs");
            a.remove("version");
        }
        let mut bad_publish = activation();
        bad_publish["publish"] = json!("no");
        let mut no_status = activation();
        no_status["response"] = json!({"result": {}});
        let mut bad_status = activation();
        bad_status["response"] = json!({"statusCode": "0"});
        let out = run(vec![
            json!({"response": no_logs}),
            json!({"response": bad_publish}),
            json!({"response": no_status}),
            json!({"response": bad_status}),
            json!({"response": {}}),
            json!({"response": 5}),
            json!({"transid": ["x"]}),
            json!([1, 2]),
            json!(null),
        ]);
        assert_eq!(out.emitted().count(), 0);
        assert_eq!(
            reasons(&out),
            vec![
                "activation is missing required field(s) `version`, `logs`".to_owned(),
                "activation field `publish` must not be a string".into(),
                "activation is missing required field `response.statusCode`".into(),
                "activation field `response.statusCode` must not be a string".into(),
                "activation is missing required field(s) `activationId`, `namespace`, `name`, `subject`, `version`, \
                 `publish`, `annotations`, `logs`, `start`, `end`, `response`"
                    .into(),
                "`response` must be an activation object or an activation id, got a number".into(),
                "not an activation message: no `response` and no `instance`/`invoker` marker".into(),
                "message is not a JSON object, got an array".into(),
                "message is not a JSON object, got null".into(),
            ]
        );
    }

    #[test]
    fn keep_logs_false_empties_logs_and_result_is_optional() {
        let mut a = activation();
        a["response"] = json!({"statusCode": 1});
        let out = run_with(false, vec![json!({"response": a})]);
        let doc = out.emitted().next().map(|e| Value::clone(&e.value)).unwrap_or_default();
        assert_eq!(doc["logs"], json!([]));
        assert_eq!(doc["response"], json!({"statusCode": 1}));
    }

    #[test]
    fn clock_is_read_once_per_batch() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let clock = move || seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as i64;
        let mut t = ExtractActivation { keep_logs: true, clock: Box::new(clock), now: 0 };
        let events =
            (0..3).map(|_| Event::new(json!({"response": activation()}), Metadata::from_source("t")));
        let mut out = Output::default();
        t.transform_batch(events.collect(), &mut out);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(out.emitted().all(|e| e.value["updated"] == json!(0)));
        assert!(now_ms() > 1_600_000_000_000);
    }

    #[test]
    fn text_and_tree_paths_agree_on_every_form() {
        let mut combined = activation();
        combined["cause"] = json!("c");
        let mut no_logs = activation();
        no_logs.as_object_mut().map(|a| a.remove("logs"));
        let mut bad_status = activation();
        bad_status["response"] = json!({"statusCode": "0"});
        let messages = vec![
            json!({"response": activation(), "transid": ["tid123", 1571600000000_i64]}),
            json!({"instance": {"instance": 0}, "response": combined, "transid": "?"}),
            json!({"response": "0123456789abcdef0123456789abcdef"}),
            json!({"activationId": "0123", "instance": {"instance": 0}}),
            json!({"activationId": "0123", "invoker": {"instance": 0}}),
            json!({"response": no_logs}),
            json!({"response": bad_status}),
            json!({"response": 5}),
            json!({"response": null, "instance": {"instance": 0}}),
            json!({"response": [1, {"a": 2}], "invoker": 0}),
            json!({"transid": ["x"]}),
            json!([1, 2]),
            json!("{\"response\": 1}"),
            json!(null),
        ];
        for keep_logs in [true, false] {
            let tree = observed(&run_with(keep_logs, messages.clone()));
            let text = observed(&run_text(keep_logs, &messages));
            assert_eq!(text, tree, "keep_logs = {keep_logs}");
            assert_eq!((text.0.len(), text.1.len()), (2, 9), "2 documents, 3 skipped, 9 rejected");
        }
    }

    #[test]
    fn text_path_writes_text_without_building_a_tree() {
        let out = run_text(true, &[json!({"response": activation()})]);
        let doc = out.emitted().next().map(|e| e.value.clone()).unwrap_or_default();
        assert!(!doc.is_parsed(), "the document was written as text, not as a tree");
        let bytes = doc.to_json_bytes().unwrap();
        assert_eq!(bytes, serde_json::to_vec(&expected_doc()).unwrap(), "same text as the tree path");
    }

    #[test]
    fn text_path_keeps_odd_but_valid_input_exact() {
        // Pretty-printed, a duplicate key (the last wins) and an escaped key and value.
        let text = r#"{ "response" : {
            "activationId": "0123456789abcdef0123456789abcdef", "annotations": [ ], "end": 2,
            "logs": ["a\nb"], "name": "x", "namespace": "gu\u0065st", "publish": true, "start": 1e0,
            "subject": "s", "version": "0.0.1", "name": "hello",
            "response": {"statusCode": 0, "result": {"k\"ey": [1, 2.50]}, "extra": null} } }"#;
        let out = run_payloads(true, vec![Payload::from_json_bytes(Bytes::from(text)).unwrap()]);
        let doc = out.emitted().next().map(|e| Value::clone(&e.value)).unwrap_or_default();
        let want: Value = serde_json::from_str(text).unwrap();
        let tree = observed(&run_with(true, vec![want]));
        assert_eq!(doc, tree.0[0].0);
        assert_eq!(doc["name"], json!("hello"));
        assert_eq!(doc["_id"], json!("guest/0123456789abcdef0123456789abcdef"));
        assert_eq!(doc["response"], json!({"statusCode": 0, "result": {"k\"ey": [1, 2.5]}}));
    }

    #[test]
    fn config_is_minimal_and_strict() {
        let cfg: Result<ExtractActivationConfig, _> = parse_typed(json!({}));
        assert!(cfg.map(|c| c.keep_logs).unwrap_or(false));
        assert!(parse_typed::<ExtractActivationConfig>(json!({"keep_log": false})).is_err());
    }
}
