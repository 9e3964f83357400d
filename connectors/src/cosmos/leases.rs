//! Lease documents: one per feed range, in the lease container (partition key `/id`).
//!
//! ```json
//! {"id": "west-whisks..00-3F", "prefix": "west-whisks", "container": "whisks",
//!  "feedRange": {"min": "00", "max": "3F"}, "owner": "host-17-a3f0",
//!  "continuation": "c1.eyJvcCI6...", "timestamp": 1767225600000}
//! ```
//!
//! `owner` is `null` for a free lease. `timestamp` (ms, the owner's clock) is the heartbeat: a
//! lease not renewed for `lease_expiry_ms` is expired. `continuation` is the SDK continuation
//! token up to which every change of the range is done; `null` means "start at `start_from`".
//! Every change to a lease is a replace or delete conditional on its etag (`If-Match`), so of
//! two replicas racing for a lease exactly one wins, and a replica that lost a lease cannot
//! write to it again. [`plan`] is the balancing rule, a pure function.

use std::collections::BTreeMap;

use azure_core::http::Etag;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::feed::FeedRange;
use azure_data_cosmos::models::EffectivePartitionKey;
use azure_data_cosmos::options::{ItemWriteOptions, Precondition, QueryOptions};
use azure_data_cosmos::{CosmosError, FeedScope, Query};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// Bounds of a feed range as stored: hex effective partition keys, `[min, max)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Bounds {
    /// Inclusive lower bound (`""` is the start of the key space).
    pub min: String,
    /// Exclusive upper bound (`"FF"` is the end).
    pub max: String,
}

impl Bounds {
    /// The bounds of an SDK feed range.
    pub fn of(range: &FeedRange) -> Self {
        Self { min: range.min_inclusive().to_hex(), max: range.max_exclusive().to_hex() }
    }

    /// The SDK feed range.
    pub fn to_range(&self) -> Result<FeedRange, CosmosError> {
        FeedRange::new(
            EffectivePartitionKey::try_from(self.min.as_str())?,
            EffectivePartitionKey::try_from(self.max.as_str())?,
        )
    }

    /// `other` lies inside `self` (compared as effective partition keys, like the SDK does).
    pub fn contains(&self, other: &Bounds) -> bool {
        match (self.to_range(), other.to_range()) {
            (Ok(outer), Ok(inner)) => inner.is_subset_of(&outer),
            _ => false,
        }
    }

    /// Label for metrics and event metadata: `[min,max)`.
    pub fn label(&self) -> String {
        format!("[{},{})", self.min, self.max)
    }
}

/// The stored lease document (system properties other than the etag are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseDoc {
    /// `<prefix>..<min>-<max>`.
    pub id: String,
    /// The processor's lease prefix.
    pub prefix: String,
    /// Watched container.
    pub container: String,
    /// The range this lease covers.
    pub feed_range: Bounds,
    /// Owning instance, `None` when free.
    pub owner: Option<String>,
    /// Continuation token up to which every change is done.
    pub continuation: Option<String>,
    /// Heartbeat of the owner, ms since the Unix epoch.
    pub timestamp: i64,
}

impl LeaseDoc {
    /// A free lease for `range` starting at `continuation`.
    pub fn new(prefix: &str, container: &str, range: Bounds, continuation: Option<String>, now: i64) -> Self {
        Self {
            id: format!("{prefix}..{}-{}", range.min, range.max),
            prefix: prefix.to_owned(),
            container: container.to_owned(),
            feed_range: range,
            owner: None,
            continuation,
            timestamp: now,
        }
    }

    /// Free, or its owner stopped renewing it.
    pub fn is_expired(&self, now: i64, expiry_ms: u64) -> bool {
        self.owner.is_none() || now.saturating_sub(self.timestamp) > expiry_ms as i64
    }
}

/// A lease as read, with the etag every conditional write needs.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The document.
    pub doc: LeaseDoc,
    /// Its etag when read.
    pub etag: String,
}

#[derive(Deserialize)]
struct WithEtag {
    #[serde(flatten)]
    doc: LeaseDoc,
    #[serde(rename = "_etag")]
    etag: String,
}

/// Why a conditional lease write did not happen.
#[derive(Debug)]
pub enum LeaseError {
    /// Someone else changed (or deleted) the lease first.
    Lost,
    /// The call failed.
    Cosmos(CosmosError),
}

impl From<CosmosError> for LeaseError {
    fn from(e: CosmosError) -> Self {
        let code = super::errors::code(&e);
        if code == 412 || code == 404 || code == 409 {
            LeaseError::Lost
        } else {
            LeaseError::Cosmos(e)
        }
    }
}

/// Lease operations of one processor (one prefix).
#[derive(Clone)]
pub struct LeaseStore {
    container: ContainerClient,
    prefix: String,
}

impl LeaseStore {
    /// Leases with `prefix` in `container`.
    pub fn new(container: ContainerClient, prefix: String) -> Self {
        Self { container, prefix }
    }

    /// The processor's prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every lease of this prefix.
    pub async fn list(&self) -> Result<Vec<Lease>, CosmosError> {
        let query = Query::from("SELECT * FROM c WHERE c.prefix = @prefix")
            .with_parameter("@prefix", &self.prefix)?;
        let items = self
            .container
            .query_items::<WithEtag>(query, FeedScope::full_container(), Some(QueryOptions::default()))
            .await?;
        let found: Vec<WithEtag> = items.try_collect().await?;
        let mut leases: Vec<Lease> = found.into_iter().map(|w| Lease { doc: w.doc, etag: w.etag }).collect();
        leases.sort_by(|a, b| a.doc.feed_range.cmp(&b.doc.feed_range));
        Ok(leases)
    }

    /// Create a lease; `Ok(None)` when one with the same id exists already.
    pub async fn create(&self, doc: &LeaseDoc) -> Result<Option<Lease>, CosmosError> {
        match self.container.create_item(doc.id.clone(), &doc.id, doc, None).await {
            Ok(r) => Ok(Some(Lease { doc: doc.clone(), etag: etag_of(r.headers().etag()) })),
            Err(e) if e.status().is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace `lease` with `doc` if nobody changed it since it was read.
    pub async fn replace(&self, lease: &Lease, doc: LeaseDoc) -> Result<Lease, LeaseError> {
        let options = ItemWriteOptions::default()
            .with_precondition(Precondition::if_match(Etag::from(lease.etag.clone())));
        let r = self.container.replace_item(doc.id.clone(), &doc.id, &doc, Some(options)).await?;
        Ok(Lease { etag: etag_of(r.headers().etag()), doc })
    }

    /// Delete `lease` if nobody changed it since it was read.
    pub async fn delete(&self, lease: &Lease) -> Result<(), LeaseError> {
        let options = ItemWriteOptions::default()
            .with_precondition(Precondition::if_match(Etag::from(lease.etag.clone())));
        self.container.delete_item(lease.doc.id.clone(), &lease.doc.id, Some(options)).await?;
        Ok(())
    }

    /// Read one lease; `None` when it no longer exists.
    pub async fn read(&self, id: &str) -> Result<Option<Lease>, CosmosError> {
        match self.container.read_item(id.to_owned(), id, None).await {
            Ok(r) => {
                let w: WithEtag = r.into_model()?;
                Ok(Some(Lease { doc: w.doc, etag: w.etag }))
            }
            Err(e) if e.status().is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Milliseconds since the Unix epoch (lease heartbeats).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A lease this instance owns. Renewals, checkpoints and the release are serialized here, each
/// conditional on the last etag this instance saw; a write that loses the race re-reads the
/// lease, and if another instance owns it now, [`OwnedLease::lost`] is cancelled and nothing is
/// written.
pub struct OwnedLease {
    store: LeaseStore,
    me: String,
    state: tokio::sync::Mutex<Lease>,
    /// Cancelled once the lease is lost or released: its reader stops.
    pub lost: tokio_util::sync::CancellationToken,
    /// The range (fixed for the lease's life).
    pub range: Bounds,
    /// The lease id.
    pub id: String,
}

impl OwnedLease {
    /// Wrap a lease just acquired by `me`.
    pub fn new(store: LeaseStore, me: String, lease: Lease) -> Self {
        Self {
            range: lease.doc.feed_range.clone(),
            id: lease.doc.id.clone(),
            store,
            me,
            state: tokio::sync::Mutex::new(lease),
            lost: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// The continuation as last written.
    pub async fn continuation(&self) -> Option<String> {
        self.state.lock().await.doc.continuation.clone()
    }

    /// A copy of the lease as last written.
    pub async fn snapshot(&self) -> Lease {
        self.state.lock().await.clone()
    }

    /// Heartbeat.
    pub async fn renew(&self) -> Result<(), LeaseError> {
        self.update(|_| {}).await
    }

    /// Record that every change up to `continuation` is done (also a heartbeat).
    pub async fn checkpoint(&self, continuation: String) -> Result<(), LeaseError> {
        self.update(move |d| d.continuation = Some(continuation.clone())).await
    }

    /// Give the lease up (after the last checkpoint) so another instance takes it at once.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let result = self
            .write(|d| {
                d.owner = None;
                d.timestamp = now_ms();
            })
            .await;
        self.lost.cancel();
        result
    }

    async fn update(&self, change: impl Fn(&mut LeaseDoc)) -> Result<(), LeaseError> {
        let me = self.me.clone();
        self.write(move |d| {
            change(d);
            d.owner = Some(me.clone());
            d.timestamp = now_ms();
        })
        .await
    }

    async fn write(&self, change: impl Fn(&mut LeaseDoc)) -> Result<(), LeaseError> {
        if self.lost.is_cancelled() {
            return Err(LeaseError::Lost);
        }
        let mut current = self.state.lock().await;
        for _ in 0..3 {
            let mut doc = current.doc.clone();
            change(&mut doc);
            match self.store.replace(&current, doc).await {
                Ok(written) => {
                    *current = written;
                    return Ok(());
                }
                Err(LeaseError::Lost) => match self.store.read(&self.id).await? {
                    Some(fresh) if fresh.doc.owner.as_deref() == Some(self.me.as_str()) => *current = fresh,
                    _ => {
                        self.lost.cancel();
                        return Err(LeaseError::Lost);
                    }
                },
                Err(e) => return Err(e),
            }
        }
        Err(LeaseError::Lost)
    }
}

fn etag_of(etag: Option<&Etag>) -> String {
    etag.map(|e| e.to_string()).unwrap_or_default()
}

/// What one balancing round should try.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Take this free or expired lease.
    Acquire(String),
    /// Take this lease from an owner holding more than its share.
    Steal(String),
}

/// The balancing rule (the Cosmos DB change-feed processor's "equal partitions" strategy).
///
/// Workers are the owners of unexpired leases plus `me`. The target is `ceil(leases /
/// workers)`. Below target, `me` takes free/expired leases first; if there are none, it steals
/// one lease per round from the busiest worker when that worker holds more than the target (or
/// more than target − 1 while `me` needs two or more). Extra leases are never given away: others
/// steal them, so the total converges without leases bouncing.
pub fn plan(leases: &[LeaseDoc], me: &str, now: i64, expiry_ms: u64, pick: usize) -> Vec<Action> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    counts.insert(me, 0);
    let mut expired = Vec::new();
    for l in leases {
        match l.owner.as_deref() {
            Some(owner) if !l.is_expired(now, expiry_ms) => *counts.entry(owner).or_default() += 1,
            _ => expired.push(l),
        }
    }
    let workers = counts.len();
    let target = if leases.len() <= workers { 1 } else { leases.len().div_ceil(workers) };
    let mine = counts.get(me).copied().unwrap_or(0);
    if leases.is_empty() || mine >= target {
        return Vec::new();
    }
    let needed = target - mine;
    if !expired.is_empty() {
        // Start at a varying offset so replicas starting together do not all race for the same one.
        let start = pick % expired.len();
        return expired
            .iter()
            .cycle()
            .skip(start)
            .take(needed.min(expired.len()))
            .map(|l| Action::Acquire(l.id.clone()))
            .collect();
    }
    let Some((&busiest, &count)) = counts.iter().filter(|(w, _)| **w != me).max_by_key(|(_, c)| **c) else {
        return Vec::new();
    };
    let threshold = if needed > 1 { target - 1 } else { target };
    if count <= threshold {
        return Vec::new();
    }
    let victims: Vec<&LeaseDoc> = leases.iter().filter(|l| l.owner.as_deref() == Some(busiest)).collect();
    victims.get(pick % victims.len().max(1)).map(|l| vec![Action::Steal(l.id.clone())]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(i: usize, owner: Option<&str>, ts: i64) -> LeaseDoc {
        let mut d = LeaseDoc::new(
            "p",
            "c",
            Bounds { min: format!("{i:02}"), max: format!("{:02}", i + 1) },
            None,
            ts,
        );
        d.owner = owner.map(String::from);
        d
    }

    fn apply(leases: &mut [LeaseDoc], me: &str, now: i64) -> usize {
        let actions = plan(leases, me, now, 1000, 0);
        let n = actions.len();
        for a in actions {
            let (Action::Acquire(id) | Action::Steal(id)) = a;
            if let Some(l) = leases.iter_mut().find(|l| l.id == id) {
                l.owner = Some(me.to_owned());
                l.timestamp = now;
            }
        }
        n
    }

    fn count(leases: &[LeaseDoc], who: &str) -> usize {
        leases.iter().filter(|l| l.owner.as_deref() == Some(who)).count()
    }

    #[test]
    fn a_lone_worker_takes_everything_then_a_second_one_steals_down_to_half() {
        let mut leases: Vec<_> = (0..4).map(|i| lease(i, None, 0)).collect();
        assert_eq!(apply(&mut leases, "a", 10), 4);
        assert_eq!(count(&leases, "a"), 4);
        // b joins: steals one lease per round until 2/2, then nothing moves.
        for _ in 0..5 {
            apply(&mut leases, "b", 20);
            apply(&mut leases, "a", 20);
        }
        assert_eq!((count(&leases, "a"), count(&leases, "b")), (2, 2));
    }

    #[test]
    fn expired_leases_are_taken_before_anything_is_stolen() {
        let mut leases = vec![
            lease(0, Some("a"), 5000),
            lease(1, Some("a"), 5000),
            lease(2, Some("b"), 0),
            lease(3, Some("b"), 0),
        ];
        // b stopped renewing at t=0; at t=5000 its leases are expired and a takes both.
        assert_eq!(
            plan(&leases, "a", 5000, 1000, 0),
            vec![Action::Acquire(leases[2].id.clone()), Action::Acquire(leases[3].id.clone())]
        );
        apply(&mut leases, "a", 5000);
        assert_eq!(count(&leases, "a"), 4);
    }

    #[test]
    fn fair_share_with_three_workers_and_no_ping_pong() {
        let mut leases: Vec<_> = (0..4).map(|i| lease(i, Some(if i < 2 { "a" } else { "b" }), 0)).collect();
        for _ in 0..4 {
            apply(&mut leases, "c", 0);
            apply(&mut leases, "a", 0);
            apply(&mut leases, "b", 0);
        }
        let mut counts = [count(&leases, "a"), count(&leases, "b"), count(&leases, "c")];
        counts.sort_unstable();
        assert_eq!(counts, [1, 1, 2]);
        // Balanced: nobody acts any more.
        assert!(["a", "b", "c"].iter().all(|w| plan(&leases, w, 0, 1000, 0).is_empty()));
    }

    #[test]
    fn bounds_containment_and_labels() {
        let parent = Bounds { min: String::new(), max: "FF".into() };
        let child = Bounds { min: "3F".into(), max: "7F".into() };
        assert!(parent.contains(&child) && !child.contains(&parent));
        assert_eq!(child.label(), "[3F,7F)");
        let doc = LeaseDoc::new("west-whisks", "whisks", child, None, 0);
        assert_eq!(doc.id, "west-whisks..3F-7F");
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["feedRange"]["min"], "3F");
        assert!(json["owner"].is_null());
    }
}
