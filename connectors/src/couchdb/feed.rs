//! The `_changes` wire format: building requests, splitting a streamed body into lines, turning
//! rows into events.

use std::sync::Arc;

use bytes::Bytes;
use feedline_engine::{Event, Metadata, Operation};
use reqwest::Url;
use serde_json::{json, Value};

use super::client::{body, Client};
use super::config::{CouchdbSourceConfig, Feed};

/// One `_changes` request: where, and the POST body when a selector or id list filters it.
pub struct FeedRequest {
    /// The URL with every parameter.
    pub url: Url,
    /// `{"selector": ..}` or `{"doc_ids": [..]}`; `None` means GET.
    pub body: Option<Bytes>,
}

/// `since` as the server wants it back: a string as is, anything else as its JSON text.
pub fn seq_param(seq: &Value) -> String {
    match seq {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The request for changes after `since`.
pub fn request(client: &Client, cfg: &CouchdbSourceConfig, since: &Value) -> FeedRequest {
    let mut url = client.db_url(&["_changes"]);
    let mut body_value = None;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair(
            "feed",
            match cfg.feed {
                Feed::Continuous => "continuous",
                Feed::Longpoll => "longpoll",
            },
        );
        q.append_pair("since", &seq_param(since));
        q.append_pair("heartbeat", &cfg.heartbeat_ms.to_string());
        q.append_pair("timeout", &cfg.timeout_ms.to_string());
        if cfg.include_docs {
            q.append_pair("include_docs", "true");
        }
        if cfg.feed == Feed::Longpoll {
            q.append_pair("limit", &cfg.batch_size.to_string());
        }
        if let Some(selector) = &cfg.selector {
            q.append_pair("filter", "_selector");
            body_value = Some(json!({ "selector": selector }));
        } else if !cfg.doc_ids.is_empty() {
            q.append_pair("filter", "_doc_ids");
            body_value = Some(json!({ "doc_ids": cfg.doc_ids }));
        } else if let Some(filter) = &cfg.filter {
            q.append_pair("filter", filter);
            for (k, v) in &cfg.filter_params {
                q.append_pair(k, v);
            }
        }
    }
    FeedRequest { url, body: body_value.as_ref().map(body) }
}

/// One line of a continuous feed.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A change row.
    Change(Value),
    /// `{"last_seq": ..}`: the server ends the feed here (its `timeout` passed).
    End(Value),
    /// `{"error": .., "reason": ..}` inside the stream.
    Error(String),
}

/// Parse one non-empty line of a continuous feed.
pub fn parse_line(line: &[u8]) -> Result<Line, String> {
    let value: Value = serde_json::from_slice(line).map_err(|e| format!("invalid change line: {e}"))?;
    if let Some(error) = value.get("error") {
        let reason = value.get("reason").and_then(Value::as_str).unwrap_or_default();
        return Ok(Line::Error(format!("{}: {reason}", error.as_str().unwrap_or_default())));
    }
    if value.get("seq").is_none() {
        if let Some(last) = value.get("last_seq") {
            return Ok(Line::End(last.clone()));
        }
    }
    Ok(Line::Change(value))
}

/// What the feed handed over, in feed order.
#[derive(Debug)]
pub enum FeedItem {
    /// A change row.
    Row(Value),
    /// A line that can never become a row (not JSON to serde_json — a document nested deeper
    /// than 128, say — or longer than `max_line_bytes`): dead-lettered with its bytes, never
    /// retried, so the feed goes on.
    Poison {
        /// The line as read (for an oversized line, its head).
        original: Bytes,
        /// Why it was refused.
        reason: String,
    },
}

/// What a change row becomes.
#[derive(Debug)]
pub enum RowEvent {
    /// An event to send.
    Event(Event),
    /// A design document, skipped on purpose.
    Skip,
    /// A row that cannot be an event: the raw row and why.
    Bad(Event, String),
}

/// The row's `seq`, if it has one.
pub fn row_seq(row: &Value) -> Option<&Value> {
    row.get("seq").filter(|s| !s.is_null())
}

/// Turn a change row into an event: the document (or an `{"_id","_rev"}` stub), keyed by id,
/// a delete event for deleted rows, positioned at the row's `seq`.
pub fn row_event(row: Value, source: &Arc<str>, database: &Arc<str>, skip_design_docs: bool) -> RowEvent {
    let meta = Metadata {
        source: source.clone(),
        stream: Some(database.clone()),
        position: row_seq(&row).cloned(),
        ..Metadata::default()
    };
    let Some(id) = row.get("id").and_then(Value::as_str).map(str::to_owned) else {
        return RowEvent::Bad(Event::new(row, meta), "change row without an `id`".into());
    };
    if meta.position.is_none() {
        return RowEvent::Bad(Event::new(row, meta), format!("change of `{id}` without a `seq`"));
    }
    if skip_design_docs && id.starts_with("_design/") {
        return RowEvent::Skip;
    }
    let deleted = row.get("deleted").and_then(Value::as_bool).unwrap_or(false);
    let value = match row.get("doc") {
        Some(doc @ Value::Object(_)) => doc.clone(),
        _ => {
            let rev = row.pointer("/changes/0/rev").cloned().unwrap_or(Value::Null);
            let mut stub = json!({ "_id": id, "_rev": rev });
            if deleted {
                stub["_deleted"] = Value::Bool(true);
            }
            stub
        }
    };
    RowEvent::Event(Event {
        key: Some(Bytes::from(id.into_bytes())),
        value: value.into(),
        operation: if deleted { Operation::Delete } else { Operation::Upsert },
        meta,
    })
}

/// The leading number of a `seq` (`42`, `"42-g1AAAA..."`), for the checkpoint gauge.
pub fn seq_number(seq: &Value) -> Option<i64> {
    match seq {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.split('-').next()?.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_changes_ends_or_errors() {
        assert_eq!(parse_line(br#"{"last_seq":"9-g1"}"#).unwrap(), Line::End(json!("9-g1")));
        assert!(matches!(parse_line(br#"{"seq":1,"id":"a","changes":[]}"#).unwrap(), Line::Change(_)));
        assert_eq!(
            parse_line(br#"{"error":"not_found","reason":"missing"}"#).unwrap(),
            Line::Error("not_found: missing".into())
        );
        assert!(parse_line(b"{oops").is_err());
    }

    #[test]
    fn deleted_rows_become_delete_events_with_the_id_kept() {
        let (src, db): (Arc<str>, Arc<str>) = ("couchdb".into(), "whisks".into());
        // CouchDB 3 shape (DESIGN.md §8): opaque string seq, tombstone doc with include_docs.
        let row = json!({"seq":"4-g1AA","id":"guest/hello","changes":[{"rev":"3-73"}],"deleted":true,
                         "doc":{"_id":"guest/hello","_rev":"3-73","_deleted":true}});
        let RowEvent::Event(e) = row_event(row, &src, &db, true) else { panic!() };
        assert_eq!(e.operation, Operation::Delete);
        assert_eq!(e.key_str(), Some("guest/hello"));
        assert_eq!(e.value["_deleted"], true);
        assert_eq!(e.meta.position, Some(json!("4-g1AA")));
        assert_eq!(e.meta.stream.as_deref(), Some("whisks"));
        // Without include_docs: a stub; integer seq (pouchdb-server) kept as it is.
        let row = json!({"seq":7,"id":"guest/a","changes":[{"rev":"2-b"}],"deleted":true});
        let RowEvent::Event(e) = row_event(row, &src, &db, true) else { panic!() };
        assert_eq!(e.value, json!({"_id":"guest/a","_rev":"2-b","_deleted":true}));
        assert_eq!(e.meta.position, Some(json!(7)));
        let row = json!({"seq":8,"id":"guest/b","changes":[{"rev":"1-c"}],"doc":{"_id":"guest/b","x":1}});
        let RowEvent::Event(e) = row_event(row, &src, &db, true) else { panic!() };
        assert_eq!((e.operation, e.value["x"].clone()), (Operation::Upsert, json!(1)));
        assert!(matches!(row_event(json!({"seq":9,"id":"_design/x"}), &src, &db, true), RowEvent::Skip));
        assert!(matches!(row_event(json!({"seq":9}), &src, &db, true), RowEvent::Bad(..)));
        assert!(matches!(row_event(json!({"id":"x"}), &src, &db, true), RowEvent::Bad(..)));
    }

    #[test]
    fn seqs_go_back_as_given() {
        assert_eq!(seq_param(&json!("12-g1AAAA")), "12-g1AAAA");
        assert_eq!(seq_param(&json!(12)), "12");
        assert_eq!(seq_number(&json!("12-g1AAAA")), Some(12));
        assert_eq!(seq_number(&json!(12)), Some(12));
        assert_eq!(seq_number(&json!("now")), None);
    }
}
