//! `feedline test`: run a pipeline's `[[test]]` cases through its transform chain, offline.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};

use crate::ack::AckToken;
use crate::component::Batch;
use crate::config::{PipelineDef, TestCase, TestExpect};
use crate::event::{Event, Metadata};
use crate::metrics::Metrics;
use crate::registry::BuildContext;
use crate::runtime::{run_chain, ChainStage, PipelineError};

/// The outcome of one case.
#[derive(Debug)]
pub struct CaseOutcome {
    /// Case name.
    pub name: String,
    /// `None` when it passed; otherwise a readable diff.
    pub failure: Option<String>,
}

/// Run every case of `def`; transforms are built afresh for each case.
pub fn run_tests(def: &PipelineDef) -> Result<Vec<CaseOutcome>, PipelineError> {
    let metrics = Metrics::new();
    def.tests.iter().map(|case| run_case(def, case, &metrics)).collect()
}

fn run_case(def: &PipelineDef, case: &TestCase, metrics: &Metrics) -> Result<CaseOutcome, PipelineError> {
    let mut stages = Vec::new();
    for t in &def.transforms {
        let ctx = BuildContext {
            pipeline: def.name.as_str().into(),
            component_id: t.id.as_str().into(),
            base_dir: def.base_dir.clone(),
            data_dir: std::env::temp_dir(),
            metrics: metrics.clone(),
        };
        let transform = t.config.build(&ctx).map_err(|error| PipelineError::Build {
            pipeline: def.name.clone(),
            component: t.id.clone(),
            error,
        })?;
        stages.push(ChainStage {
            id: t.id.clone(),
            type_name: t.type_name.clone(),
            transform,
            metrics: None,
            telemetry: Default::default(),
        });
    }
    let source: Arc<str> = "test".into();
    let mut batch = Batch::with_capacity(case.input.len());
    for (i, input) in case.input.iter().enumerate() {
        let meta = Metadata {
            source: source.clone(),
            stream: input.stream.as_deref().map(Into::into),
            partition: Some("0".into()),
            position: Some(json!(i)),
            ..Metadata::default()
        };
        let event = Event {
            key: input.key.as_ref().map(|k| Bytes::from(k.clone().into_bytes())),
            value: input.value.clone().into(),
            operation: input.operation,
            meta,
        };
        batch.push(event, AckToken::untracked());
    }
    let (out, rejected) = run_chain(&mut stages, batch)
        .map_err(|p| PipelineError::Failed { pipeline: def.name.clone(), reason: p.to_string() })?;
    let mut report = String::new();
    if out.len() != case.expect.len() {
        let _ = writeln!(report, "expected {} output event(s), got {}", case.expect.len(), out.len());
    }
    for i in 0..out.len().max(case.expect.len()) {
        match (case.expect.get(i), out.events.get(i)) {
            (Some(want), Some(got)) => {
                if let Some(diff) = compare(want, got) {
                    let _ = writeln!(report, "output #{i}:\n{diff}");
                }
            }
            (Some(want), None) => {
                let _ = writeln!(report, "output #{i}: missing\n  - expected: {}", show_expect(want));
            }
            (None, Some(got)) => {
                let _ = writeln!(report, "output #{i}: unexpected\n  + actual:   {}", show_event(got));
            }
            (None, None) => {}
        }
    }
    if rejected.len() != case.expect_rejected {
        let _ =
            writeln!(report, "expected {} rejected input(s), got {}", case.expect_rejected, rejected.len());
        for r in &rejected {
            let _ = writeln!(report, "  rejected by {}: {}", r.stage, r.error);
        }
    }
    for r in rejected {
        r.ack.ack();
    }
    out.acks.into_iter().for_each(AckToken::ack);
    Ok(CaseOutcome { name: case.name.clone(), failure: (!report.is_empty()).then_some(report) })
}

fn compare(want: &TestExpect, got: &Event) -> Option<String> {
    let mut diff = String::new();
    if let Some(v) = &want.value {
        if *v != got.value {
            let _ = writeln!(diff, "  - expected value: {v}\n  + actual value:   {}", got.value);
        }
    }
    if let Some(k) = &want.key {
        if got.key_str() != Some(k.as_str()) {
            let _ = writeln!(diff, "  - expected key: {k:?}\n  + actual key:   {:?}", got.key_str());
        }
    }
    if let Some(op) = want.operation {
        if op != got.operation {
            let _ =
                writeln!(diff, "  - expected operation: {op:?}\n  + actual operation:   {:?}", got.operation);
        }
    }
    if let Some(r) = &want.route {
        if got.meta.route.as_deref() != Some(r.as_str()) {
            let _ = writeln!(diff, "  - expected route: {r:?}\n  + actual route:   {:?}", got.meta.route);
        }
    }
    (!diff.is_empty()).then_some(diff)
}

fn show_expect(e: &TestExpect) -> Value {
    json!({ "value": e.value, "key": e.key, "operation": e.operation, "route": e.route })
}

fn show_event(e: &Event) -> Value {
    json!({ "value": e.value, "key": e.key_str(), "operation": e.operation, "route": e.meta.route })
}
