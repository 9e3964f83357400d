//! W3C trace context in event metadata: the `traceparent` / `tracestate` entries of
//! [`Metadata::headers`](crate::Metadata::headers).
//!
//! Parsing is hand-written and allocation-free (it runs once per event per stage while tracing is
//! on); only a present `tracestate` is parsed into the SDK's type. Sources that carry record
//! headers (Kafka) copy them into `meta.headers` and sinks that can carry headers copy them back,
//! so the context crosses processes without connector-specific code.

use std::str::FromStr;

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

use crate::event::Metadata;

/// Header carrying the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";

/// The span context in `meta`'s `traceparent` (and `tracestate`) headers, if valid.
pub fn extract(meta: &Metadata) -> Option<SpanContext> {
    if meta.headers.is_empty() {
        return None;
    }
    let parent = meta.header(TRACEPARENT)?;
    let (trace_id, span_id, flags) = parse_traceparent(parent)?;
    let state = meta
        .header(TRACESTATE)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

/// True when `meta` carries a valid `traceparent` with the sampled flag set. Cheaper than
/// [`extract`]: it never parses `tracestate`.
pub fn is_sampled(meta: &Metadata) -> bool {
    if meta.headers.is_empty() {
        return false;
    }
    meta.header(TRACEPARENT)
        .and_then(|h| parse_traceparent(h))
        .is_some_and(|(_, _, flags)| flags.is_sampled())
}

/// Replace `meta`'s trace context headers with `cx` (tracestate only when non-empty).
pub fn inject(meta: &mut Metadata, cx: &SpanContext) {
    let value = format_traceparent(cx);
    set_header(meta, TRACEPARENT, Bytes::from(value));
    let state = cx.trace_state().header();
    if state.is_empty() {
        meta.headers.retain(|(k, _)| k != TRACESTATE);
    } else {
        set_header(meta, TRACESTATE, Bytes::from(state));
    }
}

fn set_header(meta: &mut Metadata, name: &str, value: Bytes) {
    match meta.headers.iter_mut().find(|(k, _)| k == name) {
        Some((_, v)) => *v = value,
        None => meta.headers.push((name.to_owned(), value)),
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub fn format_traceparent(cx: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", cx.trace_id(), cx.span_id(), cx.trace_flags().to_u8())
}

/// Parse a version-00 (or future-version, per the spec's forward compatibility rules)
/// `traceparent`. Invalid ids (all zeros) and malformed values are `None`.
pub fn parse_traceparent(value: &[u8]) -> Option<(TraceId, SpanId, TraceFlags)> {
    // version(2) - trace-id(32) - parent-id(16) - flags(2)
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex_u128(&value[0..2])? as u8;
    if version == 0xff || (version == 0 && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let trace_id = hex_u128(&value[3..35])?;
    let span_id = hex_u128(&value[36..52])? as u64;
    let flags = hex_u128(&value[53..55])? as u8;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((TraceId::from(trace_id), SpanId::from(span_id), TraceFlags::new(flags & 0x01)))
}

/// Lower-case hex only, as the spec requires.
fn hex_u128(digits: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | v as u128;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn meta_with(headers: &[(&str, &str)]) -> Metadata {
        let mut m = Metadata::from_source("s");
        for (k, v) in headers {
            m.headers.push(((*k).to_owned(), Bytes::from((*v).to_owned())));
        }
        m
    }

    #[test]
    fn parses_the_spec_example_and_round_trips() {
        let m = meta_with(&[(TRACEPARENT, TP), (TRACESTATE, "congo=t61rcWkgMzE")]);
        let cx = extract(&m).unwrap();
        assert_eq!(cx.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(cx.trace_state().get("congo"), Some("t61rcWkgMzE"));
        assert_eq!(format_traceparent(&cx), TP);
        assert!(is_sampled(&m));
    }

    #[test]
    fn rejects_malformed_and_zero_ids() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
        // A future version may append fields.
        assert!(parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what").is_some());
    }

    #[test]
    fn unsampled_flag_and_missing_header() {
        let m = meta_with(&[(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]);
        assert!(!is_sampled(&m));
        assert!(extract(&m).is_some_and(|cx| !cx.is_sampled()));
        assert!(extract(&meta_with(&[("other", "x")])).is_none());
    }

    #[test]
    fn inject_replaces_in_place_and_drops_empty_tracestate() {
        let mut m = meta_with(&[("a", "1"), (TRACEPARENT, TP), (TRACESTATE, "x=y")]);
        let cx = SpanContext::new(
            TraceId::from(7u128),
            SpanId::from(9u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        inject(&mut m, &cx);
        assert_eq!(m.headers.len(), 2);
        assert_eq!(
            m.header(TRACEPARENT).unwrap().as_ref(),
            b"00-00000000000000000000000000000007-0000000000000009-01"
        );
        assert!(m.header(TRACESTATE).is_none());
    }
}
