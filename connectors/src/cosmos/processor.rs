//! The change-feed processor: the `cosmos_change_feed` source's task.
//!
//! Every `lease_acquire_ms` each watched container's processor lists its leases and
//! 1. creates a free lease for every current feed range no lease covers (first start, new ranges);
//! 2. replaces each of its own leases whose range split by its children: it stops the range's
//!    reader (which commits everything done), creates the child leases with the parent's
//!    continuation (the SDK resumes each child from it: nothing lost, nothing replayed from the
//!    start) and deletes the parent conditionally;
//! 3. deletes stale parents left by a replica that crashed mid-split (expired, children exist);
//! 4. applies [`plan`]: acquires free/expired leases, steals one from a replica above its share.
//!
//! Owned leases are renewed every `lease_renew_ms`. Merged ranges need nothing: each lease keeps
//! reading its own (now sub-)range, scoped by effective partition key. On shutdown every reader
//! stops, waits for its in-flight changes (bounded by the drain timeout), commits, and the lease
//! is released so another replica takes it without waiting for expiry.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_data_cosmos::clients::{ContainerClient, DatabaseClient};
use azure_data_cosmos::models::ContainerProperties;
use azure_data_cosmos::options::ReadFeedRangesOptions;
use azure_data_cosmos::CosmosClient;
use feedline_engine::{ChainPlacement, ComponentError, ErrorClass, Source, SourceContext};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::change_feed::{Reader, ReaderExit, ReaderSettings};
use super::config::{default_instance_name, Connection, CosmosChangeFeedConfig, StartFrom};
use super::errors::classify;
use super::leases::{now_ms, plan, Action, Bounds, Lease, LeaseDoc, LeaseError, LeaseStore, OwnedLease};

/// The running source.
pub struct CosmosChangeFeedSource {
    config: CosmosChangeFeedConfig,
    base_dir: PathBuf,
    client: Option<CosmosClient>,
}

impl CosmosChangeFeedSource {
    /// A source that connects with the configured endpoint and key when it runs.
    pub fn new(config: CosmosChangeFeedConfig, base_dir: PathBuf) -> Self {
        Self { config, base_dir, client: None }
    }

    /// A source using an existing client (tests: the SDK's in-memory emulator).
    pub fn with_client(config: CosmosChangeFeedConfig, client: CosmosClient) -> Self {
        Self { config, base_dir: PathBuf::from("."), client: Some(client) }
    }
}

struct Owned {
    lease: Arc<OwnedLease>,
    stop: CancellationToken,
    task: JoinHandle<ReaderExit>,
}

impl Drop for Owned {
    /// Readers never outlive the source (an aborted source stops reading, like a crash).
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What every container processor of the source shares.
struct Shared {
    me: String,
    expiry_ms: u64,
    settings: Arc<ReaderSettings>,
    ctx: Arc<SourceContext>,
    fatal: CancellationToken,
    fatal_error: Mutex<Option<ComponentError>>,
}

impl Shared {
    fn fail(&self, e: ComponentError) {
        if let Ok(mut slot) = self.fatal_error.lock() {
            slot.get_or_insert(e);
        }
        self.fatal.cancel();
    }
}

struct ContainerProcessor {
    name: Arc<str>,
    container: ContainerClient,
    store: LeaseStore,
    owned: BTreeMap<String, Owned>,
    rounds: u64,
}

const FORCE_REFRESH_EVERY: u64 = 6;

impl ContainerProcessor {
    async fn current_ranges(&mut self) -> Result<Vec<Bounds>, ComponentError> {
        self.rounds += 1;
        let force = self.rounds.is_multiple_of(FORCE_REFRESH_EVERY);
        let options = ReadFeedRangesOptions::default().with_force_refresh(force);
        let ranges =
            self.container.read_feed_ranges(Some(options)).await.map_err(|e| classify(&e, "feed ranges"))?;
        Ok(ranges.iter().map(Bounds::of).collect())
    }

    async fn list(&self) -> Result<Vec<Lease>, ComponentError> {
        self.store.list().await.map_err(|e| classify(&e, "list leases"))
    }

    /// One balancing round (see the module docs).
    async fn balance(&mut self, shared: &Arc<Shared>) -> Result<(), ComponentError> {
        self.reap();
        let ranges = self.current_ranges().await?;
        let mut leases = self.list().await?;
        if self.create_missing(&ranges, &leases).await? {
            leases = self.list().await?;
        }
        for lease in &leases {
            if let Some(mine) = self.owned.get(&lease.doc.id) {
                if lease.doc.owner.as_deref() != Some(shared.me.as_str()) {
                    mine.lease.lost.cancel(); // stolen: stop reading at once
                }
            }
        }
        if self.split_owned(&ranges, &leases, shared).await?
            | self.delete_stale_parents(&leases, shared).await
        {
            leases = self.list().await?;
        }
        let now = now_ms();
        let view: Vec<LeaseDoc> = leases
            .iter()
            .map(|l| {
                let mut d = l.doc.clone();
                if d.owner.as_deref() == Some(shared.me.as_str()) && !self.owned.contains_key(&d.id) {
                    d.owner = None; // ours on paper but not read here (a reader ended): take it again
                }
                d
            })
            .collect();
        for action in plan(&view, &shared.me, now, shared.expiry_ms, rand::random::<u16>() as usize) {
            let (Action::Acquire(id) | Action::Steal(id)) = &action;
            let Some(lease) = leases.iter().find(|l| &l.doc.id == id) else { continue };
            self.acquire(lease, shared, matches!(action, Action::Steal(_))).await;
        }
        Ok(())
    }

    /// Create free leases for ranges no lease covers. Returns whether any was created.
    async fn create_missing(&self, ranges: &[Bounds], leases: &[Lease]) -> Result<bool, ComponentError> {
        let mut created = false;
        for range in ranges {
            if covered(range, leases) {
                continue;
            }
            let doc = LeaseDoc::new(self.store.prefix(), &self.name, range.clone(), None, now_ms());
            match self.store.create(&doc).await {
                Ok(Some(_)) => {
                    tracing::info!(lease = %doc.id, "created lease");
                    created = true;
                }
                Ok(None) => created = true, // another replica created it meanwhile
                Err(e) => return Err(classify(&e, "create lease")),
            }
        }
        Ok(created)
    }

    /// Replace own leases whose range split by child leases. Returns whether any was split.
    async fn split_owned(
        &mut self,
        ranges: &[Bounds],
        leases: &[Lease],
        shared: &Arc<Shared>,
    ) -> Result<bool, ComponentError> {
        let mut split_any = false;
        for lease in leases {
            let id = &lease.doc.id;
            if !self.owned.contains_key(id) || ranges.contains(&lease.doc.feed_range) {
                continue;
            }
            let children: Vec<Bounds> = ranges
                .iter()
                .filter(|r| lease.doc.feed_range.contains(r) && **r != lease.doc.feed_range)
                .cloned()
                .collect();
            if children.len() < 2 {
                continue; // merged into a larger range: keep reading this sub-range
            }
            let Some(mut owned) = self.owned.remove(id) else { continue };
            owned.stop.cancel();
            let exit = (&mut owned.task).await.unwrap_or(ReaderExit::Lost);
            if matches!(exit, ReaderExit::Lost) || owned.lease.lost.is_cancelled() {
                continue;
            }
            let parent = owned.lease.snapshot().await;
            for child in &children {
                let doc = LeaseDoc::new(
                    self.store.prefix(),
                    &self.name,
                    child.clone(),
                    parent.doc.continuation.clone(),
                    now_ms(),
                );
                self.store.create(&doc).await.map_err(|e| classify(&e, "create child lease"))?;
            }
            match self.store.delete(&parent).await {
                Ok(()) | Err(LeaseError::Lost) => {}
                Err(LeaseError::Cosmos(e)) => return Err(classify(&e, "delete split lease")),
            }
            owned.lease.lost.cancel();
            tracing::info!(lease = %id, children = children.len(), me = %shared.me, "feed range split; lease replaced by its children");
            split_any = true;
        }
        Ok(split_any)
    }

    /// Delete expired leases whose range is already covered by (child) leases.
    async fn delete_stale_parents(&self, leases: &[Lease], shared: &Arc<Shared>) -> bool {
        let mut deleted = false;
        for lease in leases {
            let r = &lease.doc.feed_range;
            let children =
                leases.iter().filter(|o| o.doc.id != lease.doc.id && r.contains(&o.doc.feed_range)).count();
            if children < 2
                || !lease.doc.is_expired(now_ms(), shared.expiry_ms)
                || self.owned.contains_key(&lease.doc.id)
            {
                continue;
            }
            if self.store.delete(lease).await.is_ok() {
                tracing::info!(lease = %lease.doc.id, "deleted the lease of a range already split");
                deleted = true;
            }
        }
        deleted
    }

    async fn acquire(&mut self, lease: &Lease, shared: &Arc<Shared>, steal: bool) {
        let mut doc = lease.doc.clone();
        let previous = doc.owner.take();
        doc.owner = Some(shared.me.clone());
        doc.timestamp = now_ms();
        match self.store.replace(lease, doc).await {
            Ok(mine) => {
                tracing::info!(lease = %mine.doc.id, previous = ?previous, steal, me = %shared.me, "acquired lease");
                self.start_reader(mine, shared);
            }
            Err(LeaseError::Lost) => {
                tracing::debug!(lease = %lease.doc.id, "lease taken by another instance first")
            }
            Err(LeaseError::Cosmos(e)) => {
                tracing::warn!(lease = %lease.doc.id, error = %e, "acquiring lease failed")
            }
        }
    }

    fn start_reader(&mut self, lease: Lease, shared: &Arc<Shared>) {
        let id = lease.doc.id.clone();
        let owned = Arc::new(OwnedLease::new(self.store.clone(), shared.me.clone(), lease));
        let stop = CancellationToken::new();
        let reader = Reader {
            container: self.container.clone(),
            name: self.name.clone(),
            lease: owned.clone(),
            settings: shared.settings.clone(),
            ctx: shared.ctx.clone(),
            stop: stop.clone(),
        };
        let shared2 = shared.clone();
        let task = tokio::spawn(async move {
            match reader.run().await {
                Ok(exit) => exit,
                Err(e) => {
                    shared2.fail(e);
                    ReaderExit::Stopped
                }
            }
        });
        self.owned.insert(id, Owned { lease: owned, stop, task });
    }

    /// Forget readers that ended (lease lost).
    fn reap(&mut self) {
        self.owned.retain(|id, o| {
            let done = o.task.is_finished();
            if done {
                tracing::info!(lease = %id, "no longer reading lease");
            }
            !done
        });
    }

    async fn renew(&self) {
        let renewals = self.owned.values().filter(|o| !o.lease.lost.is_cancelled()).map(|o| {
            let lease = o.lease.clone();
            async move {
                match lease.renew().await {
                    Ok(()) | Err(LeaseError::Lost) => {}
                    Err(LeaseError::Cosmos(e)) => {
                        tracing::warn!(lease = %lease.id, error = %e, "renewing lease failed")
                    }
                }
            }
        });
        futures::future::join_all(renewals).await;
    }

    /// Stop every reader (they drain and commit), then release the leases.
    async fn shutdown(&mut self) {
        for o in self.owned.values() {
            o.stop.cancel();
        }
        let owned = std::mem::take(&mut self.owned);
        let stops = owned.into_values().map(|mut o| async move {
            let exit = (&mut o.task).await.unwrap_or(ReaderExit::Lost);
            if matches!(exit, ReaderExit::Stopped) {
                if let Err(LeaseError::Cosmos(e)) = o.lease.release().await {
                    tracing::warn!(lease = %o.lease.id, error = %e, "releasing lease failed; it will expire");
                }
            }
        });
        futures::future::join_all(stops).await;
    }
}

fn covered(range: &Bounds, leases: &[Lease]) -> bool {
    // Covered when the leases inside or around it leave no gap.
    let mut pieces: Vec<&Bounds> =
        leases.iter().map(|l| &l.doc.feed_range).filter(|b| b.contains(range) || range.contains(b)).collect();
    if pieces.iter().any(|b| b.contains(range)) {
        return true;
    }
    pieces.sort();
    let mut cursor = range.min.clone();
    for p in pieces {
        if p.min != cursor {
            return false;
        }
        cursor = p.max.clone();
    }
    cursor == range.max
}

async fn lease_container(
    db: &DatabaseClient,
    config: &CosmosChangeFeedConfig,
) -> Result<ContainerClient, ComponentError> {
    match db.container_client(config.lease_container.as_str(), None).await {
        Ok(c) => return Ok(c),
        Err(e) if !(e.status().is_not_found() && config.create_lease_container) => {
            return Err(classify(&e, "lease container"));
        }
        Err(_) => {}
    }
    let pk = serde_json::from_value(serde_json::json!({"paths": ["/id"], "kind": "Hash", "version": 2}))
        .map_err(|e| ComponentError::fatal(format!("lease partition key: {e}")))?;
    let properties = ContainerProperties::new(config.lease_container.clone(), pk);
    match db.create_container(properties, None).await {
        Ok(_) => tracing::info!(container = %config.lease_container, "created lease container"),
        Err(e) if e.status().is_conflict() => {}
        Err(e) => return Err(classify(&e, "create lease container")),
    }
    db.container_client(config.lease_container.as_str(), None)
        .await
        .map_err(|e| classify(&e, "lease container"))
}

impl CosmosChangeFeedSource {
    async fn processors(&self, client: &CosmosClient) -> Result<Vec<ContainerProcessor>, ComponentError> {
        let db = client.database_client(self.config.database.as_str());
        let leases = lease_container(&db, &self.config).await?;
        let mut processors = Vec::new();
        for name in &self.config.containers {
            let container = db.container_client(name.as_str(), None).await.map_err(|e| classify(&e, name))?;
            processors.push(ContainerProcessor {
                name: name.as_str().into(),
                container,
                store: LeaseStore::new(leases.clone(), self.config.prefix_for(name)),
                owned: BTreeMap::new(),
                rounds: 0,
            });
        }
        Ok(processors)
    }

    fn shared(&self, ctx: SourceContext) -> Result<Arc<Shared>, ComponentError> {
        let c = &self.config;
        let start_from = StartFrom::parse(&c.start_from).map_err(ComponentError::fatal)?;
        let settings = ReaderSettings {
            start_from,
            max_items: c.max_items,
            poll_interval: Duration::from_millis(c.poll_interval_ms),
            commit_interval: Duration::from_millis(c.commit_interval_ms),
            max_pending_pages: c.max_pending_pages,
        };
        let me = c.instance_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(default_instance_name);
        Ok(Arc::new(Shared {
            me,
            expiry_ms: c.lease_expiry_ms,
            settings: Arc::new(settings),
            ctx: Arc::new(ctx),
            fatal: CancellationToken::new(),
            fatal_error: Mutex::new(None),
        }))
    }
}

/// Retry a start-up step while it fails transiently (the account may be unreachable for a while).
async fn patiently<T, F, Fut>(
    ctx: &SourceContext,
    what: &str,
    mut step: F,
) -> Result<Option<T>, ComponentError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ComponentError>>,
{
    let mut wait = Duration::from_millis(200);
    loop {
        match step().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.class == ErrorClass::Retriable => {
                tracing::warn!(error = %e.message, backoff_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::select! {
                    _ = ctx.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl Source for CosmosChangeFeedSource {
    /// Waits on change-feed pages: transforms run on this task.
    fn chain_placement(&self) -> ChainPlacement {
        ChainPlacement::SourceTask
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ComponentError> {
        let connection = Connection::of_source(&self.config, &self.base_dir);
        let client = match self.client.clone() {
            Some(c) => c,
            None => match patiently(&ctx, "connecting to Cosmos DB", || connection.connect()).await? {
                Some(c) => c,
                None => return Ok(()),
            },
        };
        let Some(mut processors) = patiently(&ctx, "opening containers", || self.processors(&client)).await?
        else {
            return Ok(());
        };
        let shared = self.shared(ctx)?;
        tracing::info!(instance = %shared.me, containers = ?self.config.containers, "change-feed processor started");
        let mut acquire = tokio::time::interval(Duration::from_millis(self.config.lease_acquire_ms));
        let mut renew = tokio::time::interval(Duration::from_millis(self.config.lease_renew_ms));
        renew.reset();
        let stopping = shared.ctx.shutdown.clone();
        loop {
            tokio::select! {
                _ = stopping.cancelled() => break,
                _ = shared.fatal.cancelled() => break,
                _ = acquire.tick() => {
                    for p in &mut processors {
                        if let Err(e) = p.balance(&shared).await {
                            if e.class == ErrorClass::Fatal {
                                shared.fail(e);
                                break;
                            }
                            tracing::warn!(container = %p.name, error = %e.message, "lease round failed; retrying next round");
                        }
                    }
                }
                _ = renew.tick() => {
                    futures::future::join_all(processors.iter().map(ContainerProcessor::renew)).await;
                }
            }
        }
        futures::future::join_all(processors.iter_mut().map(ContainerProcessor::shutdown)).await;
        match shared.fatal_error.lock().ok().and_then(|mut e| e.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(min: &str, max: &str) -> Lease {
        let doc = LeaseDoc::new("p", "c", Bounds { min: min.into(), max: max.into() }, None, 0);
        Lease { doc, etag: String::new() }
    }

    #[test]
    fn coverage_by_one_lease_by_children_or_not_at_all() {
        let all = Bounds { min: String::new(), max: "FF".into() };
        assert!(covered(&all, &[lease("", "FF")]));
        assert!(covered(&all, &[lease("", "7F"), lease("7F", "FF")]));
        assert!(!covered(&all, &[lease("", "7F")]));
        let child = Bounds { min: "3F".into(), max: "7F".into() };
        assert!(covered(&child, &[lease("", "7F")]), "a parent lease covers its children");
        assert!(!covered(&child, &[lease("", "3F")]));
    }
}
