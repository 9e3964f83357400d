//! In-process tests of the processor and the sink against the SDK's in-memory emulator
//! (`__internal_in_memory_emulator`, a dev-dependency feature): real SDK clients, real
//! pipelines through the engine runtime, no network. Replicas are several sources sharing one
//! emulator store; a crash is an aborted pipeline task (its leases are neither renewed nor
//! released). Multi-process tests (SIGKILL) are in `cli/tests/cosmos_*.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_data_cosmos::options::Region;
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, CosmosRuntimeBuilder,
    RoutingStrategy,
};
use azure_data_cosmos_driver::in_memory_emulator::{
    ConsistencyLevel, ContainerConfig, InMemoryEmulatorHttpClient, VirtualAccountConfig, VirtualRegion,
};
use feedline_engine::config::load_file;
use feedline_engine::health::Health;
use feedline_engine::metrics::Metrics;
use feedline_engine::runtime::{run_pipeline, RuntimeOptions};
use feedline_engine::{
    BuildContext, ComponentError, ErrorClass, Event, Metadata, Operation, Registry, Sink, SinkConfig, Source,
    SourceConfig, WriteResult,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::leases::{LeaseDoc, LeaseStore};
use super::{CosmosChangeFeedConfig, CosmosChangeFeedSource, CosmosSink, CosmosSinkConfig};

const GATEWAY: &str = "https://eastus.emulator.local";
const DB: &str = "whisk";

fn clients() -> &'static Mutex<HashMap<String, CosmosClient>> {
    static C: OnceLock<Mutex<HashMap<String, CosmosClient>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

type Collected = Arc<Mutex<Vec<Event>>>;

fn outputs() -> &'static Mutex<HashMap<String, Collected>> {
    static O: OnceLock<Mutex<HashMap<String, Collected>>> = OnceLock::new();
    O.get_or_init(Default::default)
}

/// `cosmos_change_feed` with a client from [`clients`] instead of an endpoint.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EmulatedSource {
    client: String,
    config: CosmosChangeFeedConfig,
}

impl SourceConfig for EmulatedSource {
    const TYPE: &'static str = "cosmos_emulated";
    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn Source>, ComponentError> {
        let client = clients().lock().unwrap().get(&self.client).cloned().expect("client registered");
        Ok(Box::new(CosmosChangeFeedSource::with_client(self.config.clone(), client)))
    }
}

/// A sink keeping every event in [`outputs`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CollectConfig {
    name: String,
}

struct CollectSink(Collected);

#[async_trait]
impl Sink for CollectSink {
    async fn write(&self, events: &[Event]) -> Vec<WriteResult> {
        self.0.lock().unwrap().extend(events.iter().cloned());
        vec![Ok(()); events.len()]
    }
}

impl SinkConfig for CollectConfig {
    const TYPE: &'static str = "collect";
    fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Sink>, ComponentError> {
        let out = outputs().lock().unwrap().entry(self.name.clone()).or_default().clone();
        Ok(Arc::new(CollectSink(out)))
    }
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// One emulated account with database `whisk` and the given containers (4 feed ranges each).
struct World {
    emulator: Arc<InMemoryEmulatorHttpClient>,
    writer: CosmosClient,
    dir: tempfile::TempDir,
}

struct Replica {
    task: JoinHandle<()>,
    stop: CancellationToken,
    out: Collected,
}

impl Replica {
    fn ids(&self) -> BTreeSet<String> {
        self.out.lock().unwrap().iter().filter_map(|e| e.value["id"].as_str().map(String::from)).collect()
    }
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task).await.expect("replica stops").expect("task");
    }
    /// A crash: the task is gone, nothing is released or committed any more.
    fn crash(self) {
        self.task.abort();
    }
}

impl World {
    async fn new(containers: &[&str], throughput: Option<u64>) -> Self {
        let config = VirtualAccountConfig::new(vec![VirtualRegion::new("East US", GATEWAY.parse().unwrap())])
            .unwrap()
            .with_consistency(ConsistencyLevel::Session)
            .with_throttling_enabled(throughput.is_some());
        let emulator = Arc::new(InMemoryEmulatorHttpClient::new(config));
        let store = emulator.store();
        store.create_database(DB);
        for c in containers {
            let path = if *c == "activations" { "/namespace" } else { "/id" };
            let pk = serde_json::from_value(json!({"paths": [path], "kind": "Hash", "version": 2})).unwrap();
            let mut cc = ContainerConfig::new().with_partition_count(4);
            if let Some(ru) = throughput {
                cc = cc.with_throughput(ru);
            }
            store.create_container_with_config(DB, c, pk, cc.build().unwrap());
        }
        let writer = client(&emulator).await;
        World { emulator, writer, dir: tempfile::tempdir().unwrap() }
    }

    async fn write(&self, container: &str, doc: Value) {
        let id = doc["id"].as_str().unwrap().to_owned();
        let c = self.writer.database_client(DB).container_client(container, None).await.unwrap();
        // Writes during a split may see 410/1007 (CompletingSplitOrMerge): retry like an app would.
        for attempt in 0.. {
            match c.upsert_item(id.clone(), &id, &doc, None).await {
                Ok(_) => return,
                Err(e) if attempt < 100 && u16::from(e.status().status_code()) == 410 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("write {id}: {e}"),
            }
        }
    }

    async fn leases(&self, prefix: &str) -> Vec<LeaseDoc> {
        let Ok(c) = self.writer.database_client(DB).container_client("leases", None).await else {
            return Vec::new(); // not created yet
        };
        LeaseStore::new(c, prefix.to_owned()).list().await.unwrap().into_iter().map(|l| l.doc).collect()
    }

    async fn start(&self, instance: &str, extra: &str) -> Replica {
        let key = unique("client");
        let replica_client = client(&self.emulator).await;
        clients().lock().unwrap().insert(key.clone(), replica_client);
        let out_name = unique("out");
        let file = self.dir.path().join(format!("{out_name}.toml"));
        let toml = format!(
            r#"name = "{out_name}"
[source]
type = "cosmos_emulated"
client = "{key}"
[source.config]
endpoint = "{GATEWAY}/"
key = "dGVzdGtleQ=="
database = "{DB}"
containers = ["whisks"]
instance_name = "{instance}"
poll_interval_ms = 20
commit_interval_ms = 100
lease_expiry_ms = 1500
lease_renew_ms = 300
lease_acquire_ms = 200
{extra}
[[sinks]]
type = "collect"
name = "{out_name}"
"#
        );
        std::fs::write(&file, toml).unwrap();
        let mut registry = Registry::new();
        registry.add_source::<EmulatedSource>();
        registry.add_sink::<CollectConfig>();
        let def = load_file(&file, &registry, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let stop = CancellationToken::new();
        let options =
            RuntimeOptions { data_dir: self.dir.path().join("data"), drain_timeout: Duration::from_secs(5) };
        let token = stop.clone();
        let task = tokio::spawn(async move {
            run_pipeline(Arc::new(def), options, Metrics::new(), Health::default(), token).await.unwrap();
        });
        let out = outputs().lock().unwrap().entry(out_name).or_default().clone();
        Replica { task, stop, out }
    }
}

async fn client(emulator: &Arc<InMemoryEmulatorHttpClient>) -> CosmosClient {
    let runtime = CosmosRuntimeBuilder::from(emulator.runtime_builder()).build().await.unwrap();
    let account = AccountReference::with_authentication_key(
        GATEWAY.parse::<AccountEndpoint>().unwrap(),
        azure_core::credentials::Secret::new("dGVzdGtleQ=="),
    );
    CosmosClientBuilder::new()
        .with_runtime(runtime)
        .build(account, RoutingStrategy::ProximityTo(Region::EAST_US))
        .await
        .unwrap()
}

fn doc(id: &str, n: u64) -> Value {
    json!({"id": id, "n": n, "_clusterId": "west"})
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_leases(
    world: &World,
    prefix: &str,
    timeout: Duration,
    cond: impl Fn(&[LeaseDoc]) -> bool,
) -> Vec<LeaseDoc> {
    let deadline = Instant::now() + timeout;
    loop {
        let leases = world.leases(prefix).await;
        if cond(&leases) {
            return leases;
        }
        assert!(Instant::now() < deadline, "leases never reached the expected state: {leases:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn owned_by(leases: &[LeaseDoc], who: &str) -> usize {
    leases.iter().filter(|l| l.owner.as_deref() == Some(who)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_changes_with_metadata_and_restarts_from_lease_continuations() {
    let world = World::new(&["whisks"], None).await;
    for i in 0..20 {
        world.write("whisks", doc(&format!("guest|a{i}"), i)).await;
    }
    let a = world.start("a", r#"start_from = "beginning""#).await;
    wait_for("20 changes", Duration::from_secs(20), || a.ids().len() == 20).await;
    {
        let events = a.out.lock().unwrap();
        let e = events.iter().find(|e| e.value["id"] == "guest|a3").unwrap();
        assert_eq!(e.meta.stream.as_deref(), Some("whisks"));
        assert!(
            e.meta.partition.as_deref().is_some_and(|p| p.starts_with('[') && p.ends_with(')')),
            "{:?}",
            e.meta.partition
        );
        assert!(e.meta.time_ms.is_some_and(|t| t > 1_600_000_000_000));
        assert_eq!(e.key_str(), Some("guest|a3"));
        assert!(e.meta.header("cosmos-etag").is_some());
        assert_eq!(e.operation, Operation::Upsert);
        assert_eq!(e.value["n"], 3);
    }
    a.stop().await;
    let leases = world.leases("whisks").await;
    assert_eq!(leases.len(), 4, "one lease per feed range");
    assert!(
        leases.iter().all(|l| l.owner.is_none() && l.continuation.is_some()),
        "released with continuations: {leases:#?}"
    );

    for i in 0..10 {
        world.write("whisks", doc(&format!("guest|b{i}"), i)).await;
    }
    world.write("whisks", doc("guest|a7", 700)).await; // an update of an old document is a new change
    let b = world.start("b", r#"start_from = "beginning""#).await;
    wait_for("the 11 new changes", Duration::from_secs(20), || b.ids().len() >= 11).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut expected: BTreeSet<String> = (0..10).map(|i| format!("guest|b{i}")).collect();
    expected.insert("guest|a7".into());
    assert_eq!(b.ids(), expected, "resumed from the lease continuations, not from the beginning");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_ranges_and_the_survivor_takes_over_a_crashed_ones_leases() {
    let world = Arc::new(World::new(&["whisks"], None).await);
    let a = world.start("a", "").await;
    wait_for_leases(&world, "whisks", Duration::from_secs(10), |l| l.len() == 4 && owned_by(l, "a") == 4)
        .await;
    let b = world.start("b", "").await;
    wait_for_leases(&world, "whisks", Duration::from_secs(10), |l| {
        owned_by(l, "a") == 2 && owned_by(l, "b") == 2
    })
    .await;

    let writing = CancellationToken::new();
    let writer = tokio::spawn({
        let (world, writing) = (world.clone(), writing.clone());
        async move {
            let mut n = 0u64;
            while !writing.is_cancelled() {
                world.write("whisks", doc(&format!("guest|w{n}"), n)).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let crashed_ids = a.ids();
    a.crash();
    let crashed_at = Instant::now();
    wait_for_leases(&world, "whisks", Duration::from_secs(10), |l| owned_by(l, "b") == 4).await;
    let takeover = crashed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.cancel();
    let written = writer.await.unwrap();
    let expected: BTreeSet<String> = (0..written).map(|n| format!("guest|w{n}")).collect();
    wait_for("every change after the crash", Duration::from_secs(20), || {
        let seen: BTreeSet<String> = b.ids().union(&crashed_ids).cloned().collect();
        expected.is_subset(&seen)
    })
    .await;
    println!(
        "takeover after a crash: {} ms (lease_expiry_ms = 1500, acquire every 200 ms)",
        takeover.as_millis()
    );
    assert!(takeover >= Duration::from_millis(1000), "leases must not be taken before they expire");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_during_a_run_loses_nothing_and_replaces_the_lease_by_its_children() {
    let world = Arc::new(World::new(&["whisks"], None).await);
    let a = world.start("a", "").await;
    wait_for_leases(&world, "whisks", Duration::from_secs(10), |l| owned_by(l, "a") == 4).await;
    for n in 0..200u64 {
        world.write("whisks", doc(&format!("guest|s{n}"), n)).await;
    }
    world.emulator.store().split_partition(DB, "whisks", 0, Duration::from_millis(20));
    for n in 200..400u64 {
        world.write("whisks", doc(&format!("guest|s{n}"), n)).await;
    }
    let expected: BTreeSet<String> = (0..400).map(|n| format!("guest|s{n}")).collect();
    wait_for("every change across the split", Duration::from_secs(30), || expected.is_subset(&a.ids())).await;
    let leases =
        wait_for_leases(&world, "whisks", Duration::from_secs(20), |l| l.len() == 5 && owned_by(l, "a") == 5)
            .await;
    assert!(leases.iter().all(|l| l.continuation.is_some()));
    for n in 400..450u64 {
        world.write("whisks", doc(&format!("guest|s{n}"), n)).await;
    }
    let expected: BTreeSet<String> = (0..450).map(|n| format!("guest|s{n}")).collect();
    wait_for("changes after the split", Duration::from_secs(20), || expected.is_subset(&a.ids())).await;
    let total = a.out.lock().unwrap().len();
    assert!(total < 450 + 100, "the split replayed too much: {total} events for 450 changes");
    a.stop().await;
}

fn sink_config(extra: Value) -> CosmosSinkConfig {
    let mut v = json!({"endpoint": format!("{GATEWAY}/"), "key": "dGVzdGtleQ==", "database": DB, "container": "activations",
        "id_field": "_id", "partition_key": "namespace"});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    feedline_engine::registry::parse_typed(v).unwrap()
}

fn activation(n: u64) -> Event {
    Event::new(
        json!({"_id": format!("guest/{n:032x}"), "namespace": "guest", "n": n}),
        Metadata::from_source("t"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_creates_ignores_conflicts_upserts_and_deletes() {
    let world = World::new(&["activations"], None).await;
    let create =
        CosmosSink::with_client(sink_config(json!({"mode": "create"})), client(&world.emulator).await);
    create.start().await.unwrap();
    let events: Vec<Event> = (0..5).map(activation).collect();
    assert!(create.write(&events).await.iter().all(Result::is_ok));
    assert!(create.write(&events).await.iter().all(Result::is_ok), "a conflict on the same id is delivered");
    let strict = CosmosSink::with_client(
        sink_config(json!({"mode": "create", "on_conflict": "reject"})),
        client(&world.emulator).await,
    );
    let r = strict.write(&events[..1]).await;
    assert_eq!(r[0].as_ref().unwrap_err().class, ErrorClass::Reject);

    let c = world.writer.database_client(DB).container_client("activations", None).await.unwrap();
    let id = format!("guest|{:032x}", 3);
    let stored: Value = c.read_item("guest", &id, None).await.unwrap().into_model().unwrap();
    assert_eq!(
        (stored["id"].as_str(), stored["_id"].as_str()),
        (Some(id.as_str()), Some("guest/00000000000000000000000000000003"))
    );

    let upsert = CosmosSink::with_client(sink_config(json!({})), client(&world.emulator).await);
    let mut changed = activation(3);
    changed.value["n"] = json!(33);
    assert!(upsert.write(&[changed.clone()]).await[0].is_ok());
    let stored: Value = c.read_item("guest", &id, None).await.unwrap().into_model().unwrap();
    assert_eq!(stored["n"], 33);

    let bad = Event::new(json!({"_id": "guest/x"}), Metadata::from_source("t"));
    assert_eq!(
        upsert.write(&[bad]).await[0].as_ref().unwrap_err().class,
        ErrorClass::Reject,
        "no partition key"
    );
    changed.operation = Operation::Delete;
    assert!(upsert.write(&[changed.clone()]).await[0].is_ok());
    assert!(upsert.write(&[changed]).await[0].is_ok(), "deleting what is gone is delivered");
    assert!(c.read_item("guest", &id, None).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_writes_are_retried_after_the_services_retry_after() {
    let world = World::new(&["activations"], Some(400)).await;
    let sink =
        CosmosSink::with_client(sink_config(json!({"concurrency": 64})), client(&world.emulator).await);
    sink.start().await.unwrap();
    let events: Vec<Event> = (0..60).map(activation).collect();
    let started = Instant::now();
    let results = sink.write(&events).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.iter().all(|e| e.class == ErrorClass::Retriable), "{:?}", failed.first());
    println!(
        "60 writes against 400 RU/s: {} ms, {} left for the engine to retry",
        started.elapsed().as_millis(),
        failed.len()
    );
    assert!(failed.len() < 60);
    assert!(started.elapsed() > Duration::from_millis(300), "the emulator throttled nothing");
}
