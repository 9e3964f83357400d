//! Tests of the `wasm` transform against real guests: the examples in `examples/wasm` (built by
//! `scripts/build-wasm-examples.sh`, which the first test to need them runs) and the hand-written
//! WAT modules in `testdata/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use feedline_engine::metrics::Metrics;
use feedline_engine::{BuildContext, CheckContext, Event, Metadata, Output, Transform, TransformConfig};
use serde_json::{json, Value};

use super::*;

/// The directory of the built example guests.
pub(crate) fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/build-wasm-examples.sh"))
            .output()
            .expect("running scripts/build-wasm-examples.sh");
        assert!(
            out.status.success(),
            "scripts/build-wasm-examples.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(stdout.lines().last().expect("the script prints the output directory").trim())
    })
}

fn example(name: &str) -> PathBuf {
    let path = examples_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing (is clang installed? see scripts/install-system-deps.sh)",
        path.display()
    );
    path
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wasm/testdata").join(name)
}

fn check_ctx() -> CheckContext {
    CheckContext { base_dir: PathBuf::from("/") }
}

fn build_ctx(metrics: &Metrics) -> BuildContext {
    BuildContext {
        pipeline: "p".into(),
        component_id: "w".into(),
        base_dir: PathBuf::from("/"),
        data_dir: std::env::temp_dir(),
        metrics: metrics.clone(),
    }
}

fn build(cfg: &WasmConfig) -> Box<dyn Transform> {
    build_with(cfg, &Metrics::new())
}

fn build_with(cfg: &WasmConfig, metrics: &Metrics) -> Box<dyn Transform> {
    if let Err(p) = cfg.check(&check_ctx()) {
        panic!("check failed on {:?}: {}", p.field, p.message);
    }
    cfg.build(&build_ctx(metrics)).expect("builds")
}

fn events(values: impl IntoIterator<Item = Value>) -> Vec<Event> {
    values.into_iter().map(|v| Event::new(v, Metadata::from_source("t"))).collect()
}

/// Emitted events and rejections (with reasons).
fn run(t: &mut dyn Transform, input: Vec<Event>) -> (Vec<Event>, Vec<(Event, String)>) {
    let mut out = Output::default();
    t.transform_batch(input, &mut out);
    let emitted = out.emitted().cloned().collect();
    let rejected = out.rejections().map(|(e, r)| (e.clone(), r.to_owned())).collect();
    (emitted, rejected)
}

fn values(events: &[Event]) -> Vec<Value> {
    events.iter().map(|e| Value::clone(&e.value)).collect()
}

fn misbehave(mode: &str) -> WasmConfig {
    WasmConfig::new(example("misbehave.wasm"), json!({ "mode": mode }))
}

/// `n` records numbered by `i`, record `bad` poisoned.
fn numbered(n: usize, bad: usize) -> Vec<Event> {
    events((0..n).map(|i| if i == bad { json!({"i": i, "poison": true}) } else { json!({"i": i}) }))
}

fn problem(cfg: &WasmConfig) -> feedline_engine::ConfigProblem {
    cfg.check(&check_ctx()).expect_err("check must fail")
}

#[test]
fn namespace_filter_in_rust_and_in_c_behave_the_same() {
    let input = || {
        events([
            json!({"namespace": "whisk.system", "name": "a"}),
            json!({"namespace": "whisk.system/utils"}),
            json!({"namespace": "whisk.systemic"}),
            json!({"namespace": "guest", "nested": {"namespace": "whisk.system"}, "list": [1, "x", {"y": null}]}),
            json!({"name": "no namespace"}),
            json!({"namespace": 5}),
            json!([1, 2]),
            json!("text"),
            json!({"big": "x".repeat(10_000), "namespace": "whisk.system"}),
            json!({"escaped\"key": "q\\\"uote", "namespace": "tenant\"a"}),
        ])
    };
    for module in ["namespace_filter.wasm", "namespace_filter_c.wasm"] {
        let cfg = WasmConfig::new(example(module), json!({"namespaces": ["whisk.system", "tenant\"a"]}));
        let mut t = build(&cfg);
        let (kept, rejected) = run(t.as_mut(), input());
        assert!(rejected.is_empty(), "{module}: {rejected:?}");
        let want: Vec<Value> = [2, 3, 4, 5, 6, 7].iter().map(|i| values(&input())[*i].clone()).collect();
        assert_eq!(values(&kept), want, "{module}");
        // The field is configurable in both.
        let cfg = WasmConfig::new(example(module), json!({"namespaces": ["west"], "field": "_clusterId"}));
        let (kept, _) =
            run(build(&cfg).as_mut(), events([json!({"_clusterId": "west"}), json!({"_clusterId": "east"})]));
        assert_eq!(values(&kept), vec![json!({"_clusterId": "east"})], "{module}");
    }
}

#[test]
fn guests_free_what_they_are_given_batch_after_batch() {
    // 500 batches of ~20 KiB under a 4 MiB cap: a guest that leaked its requests would run out.
    for module in ["namespace_filter.wasm", "namespace_filter_c.wasm"] {
        let mut cfg = WasmConfig::new(example(module), json!({"namespaces": ["whisk.system"]}));
        cfg.memory_limit_mib = 4;
        let mut t = build(&cfg);
        for _ in 0..500 {
            let batch =
                events((0..200).map(|i| json!({"namespace": "guest", "i": i, "pad": "x".repeat(80)})));
            let (kept, rejected) = run(t.as_mut(), batch);
            assert_eq!((kept.len(), rejected.len()), (200, 0), "{module}: {rejected:?}");
        }
    }
}

#[test]
fn guest_init_rejects_bad_config_as_a_config_problem() {
    for module in ["namespace_filter.wasm", "namespace_filter_c.wasm"] {
        for config in [json!({"namespaces": [""]}), json!({}), json!({"namespaces": ["a"], "typo": 1})] {
            let p = problem(&WasmConfig::new(example(module), config.clone()));
            assert_eq!(p.field.as_deref(), Some("config"), "{module} {config}: {}", p.message);
            assert!(p.message.contains("rejected its config"), "{}", p.message);
        }
    }
}

#[test]
fn field_redactor_rewrites_only_what_it_names() {
    let cfg = WasmConfig::new(example("field_redactor.wasm"), json!({"fields": ["password", "/auth/token"]}));
    let mut t = build(&cfg);
    let mut input = events([
        json!({"user": "u", "password": "p", "auth": {"token": "t", "kind": "basic"}}),
        json!({"user": "v"}),
    ]);
    input[0].key = Some(bytes::Bytes::from_static(b"k1"));
    input[1].meta.route = Some("kept-route".into());
    let (out, rejected) = run(t.as_mut(), input);
    assert!(rejected.is_empty());
    assert_eq!(
        values(&out),
        vec![
            json!({"user": "u", "password": "[redacted]", "auth": {"token": "[redacted]", "kind": "basic"}}),
            json!({"user": "v"}),
        ]
    );
    assert_eq!(out[0].key_str(), Some("k1"), "the key survives a value change");
    assert_eq!(out[1].meta.route.as_deref(), Some("kept-route"));
    assert_eq!(out[0].meta.source.as_ref(), "t", "metadata comes from the input");
}

#[test]
fn topic_router_sets_the_route() {
    let cfg = WasmConfig::new(
        example("topic_router.wasm"),
        json!({"topics": {"whisk.system": "system"}, "prefix": "tenant-", "field": "namespace"}),
    );
    let (out, _) = run(
        build(&cfg).as_mut(),
        events([json!({"namespace": "whisk.system"}), json!({"namespace": "guest/pkg"}), json!({"x": 1})]),
    );
    let routes: Vec<_> = out.iter().map(|e| e.meta.route.clone()).collect();
    assert_eq!(routes, vec![Some("system".into()), Some("tenant-guest.pkg".into()), None]);
    assert_eq!(values(&out)[1], json!({"namespace": "guest/pkg"}), "the value is untouched");
}

#[test]
fn infinite_loop_is_stopped_within_the_budget() {
    let mut cfg = misbehave("loop");
    cfg.time_limit_ms = 100;
    let mut t = build(&cfg);
    let started = Instant::now();
    let (out, rejected) = run(t.as_mut(), numbered(1, 0));
    let took = started.elapsed();
    assert!(out.is_empty());
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].1.contains("exceeded its time limit of 100 ms"), "{}", rejected[0].1);
    // About 100 ms on a quiet machine; the slack absorbs a loaded one (tests run in parallel).
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(3), "took {took:?}");

    // In a batch, the looping record is isolated and the others flow.
    let started = Instant::now();
    let (out, rejected) = run(t.as_mut(), numbered(8, 5));
    assert_eq!(
        values(&out),
        values(&numbered(8, 99)).into_iter().filter(|v| v["i"] != 5).collect::<Vec<_>>()
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0.value["i"], 5);
    // Calls on 8, 4, 2 and 1 records time out: four budgets, with slack for a loaded machine.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(6), "took {took:?}");
}

#[test]
fn memory_bomb_is_capped() {
    let mut cfg = misbehave("bomb");
    cfg.memory_limit_mib = 16;
    let mut t = build(&cfg);
    let (out, rejected) = run(t.as_mut(), numbered(4, 2));
    assert_eq!(out.len(), 3);
    assert_eq!(rejected.len(), 1);
    assert!(rejected[0].1.contains("exceeded its memory limit of 16 MiB"), "{}", rejected[0].1);
    // The transform goes on with a fresh instance.
    let (out, rejected) = run(t.as_mut(), numbered(3, 99));
    assert_eq!((out.len(), rejected.len()), (3, 0));
}

#[test]
fn a_trap_on_one_record_of_a_thousand_dead_letters_only_that_record() {
    let metrics = Metrics::new();
    let mut t = build_with(&misbehave("panic"), &metrics);
    let (out, rejected) = run(t.as_mut(), numbered(1000, 537));
    assert_eq!(out.len(), 999);
    let order: Vec<u64> = out.iter().map(|e| e.value["i"].as_u64().unwrap()).collect();
    assert_eq!(order, (0..1000).filter(|i| *i != 537).collect::<Vec<_>>(), "order is kept");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0.value["i"], 537);
    let reason = &rejected[0].1;
    assert!(reason.starts_with("wasm `misbehave.wasm`: guest panicked at"), "{reason}");
    assert!(reason.contains("poisoned record"), "{reason}");
    let text = metrics.render();
    let labels = r#"component="w",module="misbehave.wasm",pipeline="p""#;
    // Calls on 1000, 500, 250, 125, 62, 31, 15, 7, 4, 2 and 1 records fail; each is followed by
    // a call on a fresh instance; ten calls on halves without the record succeed.
    assert!(text.contains(&format!(r#"feedline_wasm_traps_total{{{labels},reason="panic"}} 11"#)), "{text}");
    assert!(text.contains(&format!("feedline_wasm_records_out_total{{{labels}}} 999")), "{text}");
    assert!(text.contains(&format!("feedline_wasm_calls_total{{{labels}}} 21")), "{text}");
    assert!(text.contains(&format!("feedline_wasm_restarts_total{{{labels}}} 11")), "{text}");
}

#[test]
fn a_bare_trap_is_isolated_too() {
    let (out, rejected) = run(build(&misbehave("trap")).as_mut(), numbered(10, 0));
    assert_eq!(out.len(), 9);
    assert!(rejected[0].1.contains("trapped: wasm `unreachable` instruction executed"), "{}", rejected[0].1);
}

#[test]
fn per_record_errors_need_no_retry() {
    let metrics = Metrics::new();
    let (out, rejected) = run(build_with(&misbehave("error"), &metrics).as_mut(), numbered(10, 3));
    assert_eq!(out.len(), 9);
    assert_eq!(rejected[0].1, "wasm `misbehave.wasm`: poisoned record refused");
    let text = metrics.render();
    assert!(
        text.contains(r#"feedline_wasm_calls_total{component="w",module="misbehave.wasm",pipeline="p"} 1"#),
        "{text}"
    );
}

#[test]
fn a_guest_that_breaks_the_abi_cannot_take_the_host_down() {
    let cfg = WasmConfig::new(testdata("garbage_answer.wat"), json!({}));
    let (out, rejected) = run(build(&cfg).as_mut(), numbered(4, 99));
    assert!(out.is_empty());
    assert_eq!(rejected.len(), 4);
    assert!(rejected[0].1.contains("broke the ABI: 99 verdicts for 1 records"), "{}", rejected[0].1);
}

#[test]
fn a_guest_cannot_fan_one_event_out_past_the_bound() {
    let mut cfg = WasmConfig::new(testdata("fan_out.wat"), json!({}));
    let (out, rejected) = run(build(&cfg).as_mut(), numbered(3, 99));
    assert!(out.is_empty(), "no copy is made: {} outputs", out.len());
    assert_eq!(rejected.len(), 1, "only record 0 fanned out");
    assert_eq!(rejected[0].0.value["i"], 0);
    assert!(
        rejected[0].1.contains("5000 outputs for one event; max_outputs_per_event is 100"),
        "{}",
        rejected[0].1
    );
    cfg.max_outputs_per_event = 5000;
    let (out, rejected) = run(build(&cfg).as_mut(), numbered(3, 99));
    assert_eq!((out.len(), rejected.len()), (5000, 0), "within the bound the fan-out is the guest's call");
}

#[test]
fn a_guest_that_cannot_be_restarted_fails_the_pipeline_instead_of_dead_lettering() {
    let cfg = misbehave("trap");
    let r = cfg.resolve(&check_ctx()).expect("resolves");
    let guest = r.guest().expect("starts");
    let metrics = Metrics::new();
    let mut t = WasmTransform {
        module: r.module,
        kind: r.kind,
        config: r.config,
        // Too small for the module's own memory: every restart after the first trap fails.
        limits: guest::Limits { memory: 1 << 16, ..r.limits },
        key: r.key,
        guest: Some(guest),
        metrics: metrics::WasmMetrics::new(metrics.registry(), "p", "w", "misbehave"),
        encoded: Default::default(),
        max_outputs_per_event: 100,
    };
    let mut out = Output::default();
    t.transform_batch(numbered(8, 3), &mut out);
    assert_eq!(out.rejections().count(), 0, "no record is blamed for the module: {:?}", out.failure());
    let failure = out.failure().expect("the transform says it cannot go on");
    assert!(failure.contains("misbehave"), "{failure}");
}

#[test]
fn a_hand_written_wat_guest_works() {
    let cfg = WasmConfig::new(testdata("keep_all.wat"), json!({}));
    let (out, rejected) = run(build(&cfg).as_mut(), numbered(100, 99));
    assert_eq!((out.len(), rejected.len()), (100, 0));
}

#[test]
fn wrong_abi_version_is_a_validation_error() {
    let p = problem(&WasmConfig::new(testdata("wrong_abi.wat"), json!({})));
    assert_eq!(p.field.as_deref(), Some("module"));
    assert_eq!(p.message, "`wrong_abi.wat` speaks ABI version 2; this Feedline speaks version 1");
    assert!(p.hint.is_some());
}

#[test]
fn wasi_imports_are_refused() {
    let p = problem(&WasmConfig::new(testdata("wasi_import.wat"), json!({})));
    assert_eq!(p.field.as_deref(), Some("module"));
    assert!(p.message.contains("imports WASI (`wasi_snapshot_preview1::fd_write`)"), "{}", p.message);
    assert!(p.hint.unwrap().contains("wasm32-unknown-unknown"));
}

#[test]
fn module_problems_point_at_the_right_field() {
    let p = problem(&WasmConfig::new("/no/such/module.wasm", json!({})));
    assert_eq!(p.field.as_deref(), Some("module"));
    assert!(p.message.starts_with("cannot read `/no/such/module.wasm`"), "{}", p.message);

    let mut cfg = WasmConfig::new(example("namespace_filter.wasm"), json!({"namespaces": ["a"]}));
    cfg.kind = Some(WasmKind::Map);
    let p = problem(&cfg);
    assert_eq!(p.field.as_deref(), Some("kind"));
    assert!(p.message.contains("does not export `map`"), "{}", p.message);

    cfg.kind = None;
    cfg.time_limit_ms = 0;
    assert_eq!(problem(&cfg).field.as_deref(), Some("time_limit_ms"));

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm junk").unwrap();
    let p = problem(&WasmConfig::new(&junk, json!({})));
    assert!(p.message.contains("is not a valid WebAssembly module"), "{}", p.message);
}

#[test]
fn modules_are_compiled_once_and_recompiled_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.wat");
    std::fs::copy(testdata("keep_all.wat"), &path).unwrap();
    let a = runtime::load(&path).unwrap();
    let b = runtime::load(&path).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "cached");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n;; changed\n");
    std::fs::write(&path, text).unwrap();
    let c = runtime::load(&path).unwrap();
    assert!(!Arc::ptr_eq(&a, &c), "a changed file is compiled again");
}

#[test]
fn validation_leaves_a_ready_instance_for_the_build() {
    let cfg = WasmConfig::new(example("namespace_filter.wasm"), json!({"namespaces": ["pool-test"]}));
    cfg.check(&check_ctx()).unwrap();
    let r = cfg.resolve(&check_ctx()).unwrap();
    let idle = take_idle(&r.key).expect("check pooled its instance");
    put_idle(r.key.clone(), idle);
    let t = cfg.build(&build_ctx(&Metrics::new())).unwrap();
    assert!(take_idle(&r.key).is_none(), "build took it");
    drop(t);
    assert!(take_idle(&r.key).is_some(), "dropping the transform returned it");
}

#[test]
fn the_single_event_path_matches_the_batch_path() {
    let cfg = WasmConfig::new(example("namespace_filter.wasm"), json!({"namespaces": ["a"]}));
    let mut t = build(&cfg);
    let mut out = Output::default();
    out.set_current(7);
    t.transform(Event::new(json!({"namespace": "b"}), Metadata::from_source("t")), &mut out);
    t.transform(Event::new(json!({"namespace": "a"}), Metadata::from_source("t")), &mut out);
    assert_eq!(out.emitted().count(), 1);
}
