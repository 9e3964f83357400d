//! The running `wasm` transform: one guest call per batch, and isolation of bad records by
//! retrying in halves when a call fails.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use feedline_engine::{Event, Output, Payload, Transform};
use serde_json::Value;

use super::abi::{decode_filter, decode_map, Change, Encoded, Malformed, MapOutput, Patch};
use super::config::WasmKind;
use super::guest::{put_idle, timed, Failure, Guest, Limits, PoolKey};
use super::metrics::WasmMetrics;
use super::runtime::Prepared;

/// A `wasm` filter or map bound to one guest instance (replaced after any failure).
pub struct WasmTransform {
    pub(crate) module: Arc<Prepared>,
    pub(crate) kind: WasmKind,
    pub(crate) config: Vec<u8>,
    pub(crate) limits: Limits,
    pub(crate) key: PoolKey,
    pub(crate) guest: Option<Guest>,
    pub(crate) metrics: WasmMetrics,
    pub(crate) encoded: Encoded,
    pub(crate) max_outputs_per_event: usize,
}

impl Drop for WasmTransform {
    fn drop(&mut self) {
        if let Some(guest) = self.guest.take() {
            put_idle(self.key.clone(), guest);
        }
    }
}

type Slots = [Option<Event>];

impl Transform for WasmTransform {
    fn transform(&mut self, event: Event, out: &mut Output) {
        let mut one = Output::default();
        self.transform_batch(vec![event], &mut one);
        one.emitted().for_each(|e| out.emit(e.clone()));
        one.rejections().for_each(|(e, reason)| out.reject(e.clone(), reason));
    }

    fn transform_batch(&mut self, events: Vec<Event>, out: &mut Output) {
        if events.is_empty() {
            return;
        }
        self.encoded.encode(events.iter());
        let mut slots: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        self.process(0..slots.len(), &mut slots, out);
    }
}

impl WasmTransform {
    /// Run `range` through the guest; on failure retry each half, down to single records,
    /// which are rejected with the reason.
    fn process(&mut self, range: Range<usize>, slots: &mut Slots, out: &mut Output) {
        let failure = match self.call(range.clone()) {
            Ok(answer) => match self.apply(range.clone(), &answer, slots, out) {
                Ok(()) => return,
                Err(Malformed(m)) => Failure::Protocol(m),
            },
            Err(f) => f,
        };
        self.metrics.traps.with_label_values(&[failure.label()]).inc();
        // After a trap the instance's state is unknown: never reuse it.
        self.guest = None;
        if let Failure::Start(reason) = &failure {
            // No record is at fault: dead-lettering the batch would lose it for a problem of
            // the module. Fail the pipeline instead (restarted per `--on-failure`).
            tracing::error!(module = %self.module.name, error = %reason, "wasm guest cannot be started; failing the pipeline");
            out.fail(self.reason(&failure.to_string()));
            return;
        }
        if range.len() == 1 {
            tracing::warn!(module = %self.module.name, records = range.len(), error = %failure, "wasm guest failed; dead-lettering");
            let reason = self.reason(&failure.to_string());
            for i in range {
                if let Some(e) = slots[i].take() {
                    out.reject_from(i, e, reason.clone());
                }
            }
            return;
        }
        tracing::debug!(module = %self.module.name, records = range.len(), error = %failure, "wasm guest failed; retrying in halves");
        let mid = range.start + range.len() / 2;
        self.process(range.start..mid, slots, out);
        self.process(mid..range.end, slots, out);
    }

    fn reason(&self, message: &str) -> String {
        format!("wasm `{}`: {message}", self.module.name)
    }

    /// One call into the guest (starting a fresh instance if needed); the raw answer.
    fn call(&mut self, range: Range<usize>) -> Result<Vec<u8>, Failure> {
        if self.guest.is_none() {
            let guest = Guest::start(&self.module, self.kind, self.limits, &self.config)
                .map_err(|e| Failure::Start(e.to_string()))?;
            self.metrics.restarts.inc();
            self.guest = Some(guest);
        }
        let Some(guest) = self.guest.as_mut() else { return Err(Failure::Start("no instance".into())) };
        let (count, body) = self.encoded.request(range.clone());
        self.metrics.calls.inc();
        self.metrics.records_in.inc_by(range.len() as u64);
        let (answer, took) = timed(|| guest.call_parts(&[&count, body]));
        self.metrics.guest_seconds.inc_by(took.as_secs_f64());
        answer?.ok_or_else(|| Failure::Protocol("empty answer".into()))
    }

    /// Check the whole answer first, then emit, reject and drop.
    fn apply(
        &mut self,
        range: Range<usize>,
        answer: &[u8],
        slots: &mut Slots,
        out: &mut Output,
    ) -> Result<(), Malformed> {
        let base = range.start;
        let slots = &mut slots[range];
        match self.kind {
            WasmKind::Filter => {
                let a = decode_filter(answer, slots.len())?;
                for (i, message) in a.errors {
                    self.reject(base + i, &mut slots[i], message, out);
                }
                for (i, keep) in a.keep.into_iter().enumerate() {
                    if let Some(e) = slots[i].take().filter(|_| keep) {
                        out.emit_from(base + i, e);
                        self.metrics.records_out.inc();
                    }
                }
            }
            WasmKind::Map => {
                let a = decode_map(answer, slots.len())?;
                self.refuse_fan_out_over_limit(base, &a.outputs, slots, out);
                let mut values = Vec::with_capacity(a.outputs.len());
                let mut bad: Vec<(usize, String)> = Vec::new();
                for o in &a.outputs {
                    if slots[o.index].is_none() {
                        values.push((None, Vec::new()));
                        continue;
                    }
                    // Validated, not parsed: a value no later stage reads goes out as the guest wrote it.
                    let v = o.value.map(|json| Payload::from_json_bytes(Bytes::copy_from_slice(json)));
                    let v = v.transpose().unwrap_or_else(|e| {
                        bad.push((o.index, format!("guest emitted invalid JSON: {e}")));
                        None
                    });
                    let patches: Result<Vec<(&Patch, Value)>, String> = o
                        .patches
                        .iter()
                        .map(|p| {
                            serde_json::from_slice(p.json)
                                .map(|v| (p, v))
                                .map_err(|e| format!("guest emitted invalid JSON at `{}`: {e}", p.pointer))
                        })
                        .collect();
                    values.push((
                        v,
                        patches.unwrap_or_else(|e| {
                            bad.push((o.index, e));
                            Vec::new()
                        }),
                    ));
                }
                for (i, message) in
                    a.errors.iter().map(|(i, m)| (*i, *m)).chain(bad.iter().map(|(i, m)| (*i, m.as_str())))
                {
                    self.reject(base + i, &mut slots[i], message, out);
                }
                let mut uses = vec![0u32; slots.len()];
                a.outputs.iter().filter(|o| slots[o.index].is_some()).for_each(|o| uses[o.index] += 1);
                for (o, (value, patches)) in a.outputs.iter().zip(values) {
                    let i = o.index;
                    uses[i] = uses[i].saturating_sub(1);
                    let input = match (&slots[i], uses[i], &value) {
                        (_, 0, _) => slots[i].take(),
                        // A new value replaces the input's: copy only what the output keeps.
                        (Some(e), _, Some(_)) => Some(Event {
                            key: e.key.clone(),
                            value: Payload::default(),
                            operation: e.operation,
                            meta: e.meta.clone(),
                        }),
                        _ => slots[i].clone(),
                    };
                    let Some(mut e) = input else { continue };
                    if let Some(op) = o.operation {
                        e.operation = op;
                    }
                    match o.key {
                        Change::AsInput => {}
                        Change::Clear => e.key = None,
                        Change::Set(k) => e.key = Some(Bytes::copy_from_slice(k)),
                    }
                    match o.route {
                        Change::AsInput => {}
                        Change::Clear => e.meta.route = None,
                        Change::Set(r) => e.meta.route = Some(r.to_owned()),
                    }
                    if let Some(v) = value {
                        e.value = v;
                    }
                    if let Some(message) =
                        patches.into_iter().find_map(|(p, v)| apply_patch(&mut e.value, p, v).err())
                    {
                        self.metrics.errors.inc();
                        out.reject_from(base + i, e, self.reason(&message));
                        continue;
                    }
                    out.emit_from(base + i, e);
                    self.metrics.records_out.inc();
                }
            }
        }
        Ok(())
    }

    /// A guest may fan an event out, but the host copies the event for each output: an input
    /// with more than `max_outputs_per_event` outputs is rejected (none of them is made), so a
    /// guest within its memory cap cannot run the host out of memory.
    fn refuse_fan_out_over_limit(
        &self,
        base: usize,
        outputs: &[MapOutput<'_>],
        slots: &mut Slots,
        out: &mut Output,
    ) {
        let mut per_input = vec![0usize; slots.len()];
        outputs.iter().for_each(|o| per_input[o.index] += 1);
        for (i, n) in per_input.into_iter().enumerate().filter(|(_, n)| *n > self.max_outputs_per_event) {
            let message = format!(
                "the guest emitted {n} outputs for one event; max_outputs_per_event is {}",
                self.max_outputs_per_event
            );
            self.reject(base + i, &mut slots[i], &message, out);
        }
    }

    fn reject(&self, index: usize, slot: &mut Option<Event>, message: &str, out: &mut Output) {
        if let Some(e) = slot.take() {
            self.metrics.errors.inc();
            out.reject_from(index, e, self.reason(message));
        }
    }
}

/// Apply one field change of a map output (RFC 6901 pointer; `""` replaces the whole value).
fn apply_patch(target: &mut Value, patch: &Patch, value: Value) -> Result<(), String> {
    let Some((parent, last)) = patch.pointer.rsplit_once('/') else {
        if patch.pointer.is_empty() {
            *target = value;
            return Ok(());
        }
        return Err(format!("`{}` is not a JSON pointer", patch.pointer));
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match target.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            if patch.create || map.contains_key(&last) {
                map.insert(last, value);
            }
            Ok(())
        }
        Some(Value::Array(items)) => match last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
            Some(slot) => {
                *slot = value;
                Ok(())
            }
            None if patch.create => Err(format!("no array element at `{}`", patch.pointer)),
            None => Ok(()),
        },
        _ if patch.create => Err(format!("cannot set `{}`: no object or array at `{parent}`", patch.pointer)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch<'a>(create: bool, pointer: &'a str) -> Patch<'a> {
        Patch { create, pointer, json: b"null" }
    }

    #[test]
    fn patches_set_replace_and_refuse_missing_parents() {
        let mut v = json!({"a": {"b": 1}, "list": [1, 2], "k/x": 0});
        apply_patch(&mut v, &patch(true, "/a/c"), json!(2)).unwrap();
        apply_patch(&mut v, &patch(false, "/a/missing"), json!(3)).unwrap();
        apply_patch(&mut v, &patch(false, "/a/b"), json!("x")).unwrap();
        apply_patch(&mut v, &patch(true, "/list/1"), json!(9)).unwrap();
        apply_patch(&mut v, &patch(true, "/k~1x"), json!(1)).unwrap();
        assert_eq!(v, json!({"a": {"b": "x", "c": 2}, "list": [1, 9], "k/x": 1}));
        assert!(apply_patch(&mut v, &patch(true, "/nope/x"), json!(1)).is_err());
        assert!(apply_patch(&mut v, &patch(true, "/list/5"), json!(1)).is_err());
        assert!(apply_patch(&mut v, &patch(true, "nope"), json!(1)).is_err());
        apply_patch(&mut v, &patch(false, "/nope/x"), json!(1)).unwrap();
        apply_patch(&mut v, &patch(true, ""), json!([])).unwrap();
        assert_eq!(v, json!([]));
    }
}
