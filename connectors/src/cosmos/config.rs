//! The `cosmos_change_feed` source and `cosmos` sink configs: the reference documentation of
//! every key, pure validation, and the client each one builds (the only place that does I/O
//! here is [`Connection::connect`]).

use std::fmt;
use std::path::PathBuf;

use azure_data_cosmos::options::{ChangeFeedStartFrom, Region};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, RoutingStrategy,
};
use feedline_engine::{CheckContext, ComponentError, ConfigProblem};
use schemars::JsonSchema;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Reads the change feed of Cosmos DB containers as a *change-feed processor*: replicas with the
/// same lease prefix share the containers' feed ranges through lease documents.
///
/// Each feed range has one lease document in `lease_container` holding its owner, the
/// continuation up to which every change is done, and a heartbeat timestamp. A replica acquires
/// free or expired leases, steals one at a time from a replica holding more than its fair share,
/// renews its own, and releases them on shutdown. Every lease write is conditional on the
/// document's etag (`If-Match`), so two replicas never both own a lease, and a replica that lost
/// a lease can never move its continuation. After a crash, changes after the last committed
/// continuation are read again (at-least-once); none is skipped.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CosmosChangeFeedConfig {
    /// Account endpoint, e.g. `https://myaccount.documents.azure.com:443/` (`http://` only for
    /// `localhost`/`127.0.0.1` emulators).
    pub endpoint: String,
    /// Account key (primary or secondary), normally `"${COSMOSDB_KEY}"`. Never logged.
    #[serde(default)]
    pub key: Option<String>,
    /// File holding the account key (a mounted secret); used when `key` is not set.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Preferred region for reads, e.g. `"West Europe"`. Unset: the account's first region.
    #[serde(default)]
    pub region: Option<String>,
    /// Database holding the watched containers and the lease container.
    pub database: String,
    /// Containers whose change feeds are read, e.g. `["whisks", "subjects"]`. Each event's
    /// metadata `stream` is its container.
    pub containers: Vec<String>,
    /// Container holding the lease documents (partition key `/id`).
    #[serde(default = "default_lease_container")]
    pub lease_container: String,
    /// Create `lease_container` (partition key `/id`) when it does not exist.
    #[serde(default = "default_true")]
    pub create_lease_container: bool,
    /// Prefix of this processor's lease documents: replicas with the same prefix share the work,
    /// processors with different prefixes each see every change. Default: `<cluster_id>-<container>`
    /// when `cluster_id` is set, else `<container>`. When set and several containers are read,
    /// `-<container>` is appended per container.
    #[serde(default)]
    pub lease_prefix: Option<String>,
    /// This cluster's id (usually `"${CLUSTER_ID:-}"`); only used for the default `lease_prefix`,
    /// so each cluster's invalidator keeps its own leases. Empty: none.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Where a feed range without a lease continuation starts: `"now"`, `"beginning"`, or an
    /// RFC 3339 time such as `"2026-01-01T00:00:00Z"`.
    #[serde(default = "default_start_from")]
    pub start_from: String,
    /// Pause between polls of a feed range that returned a partial or empty page, in
    /// milliseconds. A full page (`max_items` changes) is followed by another poll at once.
    #[serde(default = "default_poll_interval_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub poll_interval_ms: u64,
    /// Most changes per page (and per batch handed to the transforms).
    #[serde(default = "default_max_items")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_items: u32,
    /// A lease whose owner has not renewed it for this long (ms) is expired and may be taken.
    /// This bounds how long the ranges of a crashed replica go unread.
    #[serde(default = "default_lease_expiry_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub lease_expiry_ms: u64,
    /// How often owned leases are renewed (ms). Must be well below `lease_expiry_ms`.
    #[serde(default = "default_lease_renew_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub lease_renew_ms: u64,
    /// How often leases are listed to create missing ones, pick up free or expired ones and
    /// rebalance (ms).
    #[serde(default = "default_lease_acquire_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub lease_acquire_ms: u64,
    /// How often a lease's continuation is committed (ms); also on release and shutdown.
    #[serde(default = "default_commit_interval_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub commit_interval_ms: u64,
    /// Most pages read but not yet done per feed range before polling pauses (backpressure).
    #[serde(default = "default_max_pending_pages")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_pending_pages: usize,
    /// Name of this replica in lease documents. Default: `<hostname>-<pid>-<random>`.
    #[serde(default)]
    pub instance_name: Option<String>,
}

/// Writes events as documents into a Cosmos DB container.
///
/// Writes are idempotent by document id: `upsert` replaces, `create` with
/// `on_conflict = "ignore"` counts an existing id as delivered. Throttling (429) is retried by the
/// SDK after the service's `x-ms-retry-after-ms`, then by the engine with backoff.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CosmosSinkConfig {
    /// Account endpoint, e.g. `https://myaccount.documents.azure.com:443/`.
    pub endpoint: String,
    /// Account key, normally `"${COSMOSDB_KEY}"`. Never logged.
    #[serde(default)]
    pub key: Option<String>,
    /// File holding the account key; used when `key` is not set.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Preferred region, e.g. `"West Europe"`. Unset: the account's first region.
    #[serde(default)]
    pub region: Option<String>,
    /// Database.
    pub database: String,
    /// Container the documents go to.
    pub container: String,
    /// `upsert` creates or replaces; `create` only creates (see `on_conflict`).
    #[serde(default)]
    pub mode: CosmosWriteMode,
    /// With `mode = "create"`: what an existing id (409) means. `ignore`: already written,
    /// delivered. `reject`: dead-letter the event.
    #[serde(default)]
    pub on_conflict: CosmosOnConflict,
    /// Field holding the document's partition key value: a top-level name or a JSON pointer.
    #[serde(default = "default_partition_key")]
    pub partition_key: String,
    /// Field holding the document id (top-level name or JSON pointer). When it is not `id`, its
    /// value is also written as `id` (Cosmos DB requires one).
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Store `/` in ids as `|` (Cosmos DB ids cannot contain `/`; OpenWhisk's convention).
    #[serde(default = "default_true")]
    pub escape_ids: bool,
    /// Documents of one batch written at once.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 1024))]
    pub concurrency: usize,
    /// Throttled (429) writes the SDK retries, waiting `x-ms-retry-after-ms` each time, before the
    /// engine's own retry takes over.
    #[serde(default = "default_throttle_retries")]
    #[schemars(range(min = 0, max = 1000))]
    pub throttle_retries: u32,
}

/// How the sink writes a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CosmosWriteMode {
    /// Create or replace.
    #[default]
    Upsert,
    /// Create only.
    Create,
}

/// What a 409 Conflict on create means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CosmosOnConflict {
    /// The document is already there: delivered.
    #[default]
    Ignore,
    /// Dead-letter the event.
    Reject,
}

fn default_lease_container() -> String {
    "leases".into()
}
fn default_true() -> bool {
    true
}
fn default_start_from() -> String {
    "now".into()
}
fn default_poll_interval_ms() -> u64 {
    50
}
fn default_max_items() -> u32 {
    1000
}
fn default_lease_expiry_ms() -> u64 {
    30_000
}
fn default_lease_renew_ms() -> u64 {
    10_000
}
fn default_lease_acquire_ms() -> u64 {
    5_000
}
fn default_commit_interval_ms() -> u64 {
    1_000
}
fn default_max_pending_pages() -> usize {
    8
}
fn default_partition_key() -> String {
    "id".into()
}
fn default_id_field() -> String {
    "id".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_throttle_retries() -> u32 {
    9
}

impl fmt::Debug for CosmosChangeFeedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosmosChangeFeedConfig")
            .field("endpoint", &self.endpoint)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("containers", &self.containers)
            .field("lease_container", &self.lease_container)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CosmosSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosmosSinkConfig")
            .field("endpoint", &self.endpoint)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("container", &self.container)
            .finish_non_exhaustive()
    }
}

/// Where a feed range without a continuation starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// Only changes made after the first poll.
    Now,
    /// Every change the container still has.
    Beginning,
    /// Changes since this time.
    Time(OffsetDateTime),
}

impl StartFrom {
    /// Parse `now`, `beginning` or an RFC 3339 time.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "now" => Ok(Self::Now),
            "beginning" => Ok(Self::Beginning),
            other => OffsetDateTime::parse(other, &Rfc3339)
                .map(Self::Time)
                .map_err(|e| format!("`start_from` must be \"now\", \"beginning\" or an RFC 3339 time: {e}")),
        }
    }

    /// The SDK's start position.
    pub fn to_sdk(&self) -> ChangeFeedStartFrom {
        match self {
            Self::Now => ChangeFeedStartFrom::Now,
            Self::Beginning => ChangeFeedStartFrom::Beginning,
            Self::Time(t) => ChangeFeedStartFrom::PointInTime(*t),
        }
    }
}

/// Endpoint and credentials shared by the source and the sink.
#[derive(Clone)]
pub struct Connection {
    /// Account endpoint.
    pub endpoint: String,
    key: Option<String>,
    key_file: Option<PathBuf>,
    region: Option<String>,
}

impl Connection {
    /// From the source config (key file resolved against the pipeline directory).
    pub fn of_source(c: &CosmosChangeFeedConfig, base: &std::path::Path) -> Self {
        Self {
            endpoint: c.endpoint.clone(),
            key: c.key.clone(),
            key_file: c.key_file.as_ref().map(|p| base.join(p)),
            region: c.region.clone(),
        }
    }

    /// From the sink config.
    pub fn of_sink(c: &CosmosSinkConfig, base: &std::path::Path) -> Self {
        Self {
            endpoint: c.endpoint.clone(),
            key: c.key.clone(),
            key_file: c.key_file.as_ref().map(|p| base.join(p)),
            region: c.region.clone(),
        }
    }

    fn account_key(&self) -> Result<String, ComponentError> {
        if let Some(k) = self.key.as_ref().filter(|k| !k.is_empty()) {
            return Ok(k.clone());
        }
        let Some(path) = &self.key_file else {
            return Err(ComponentError::fatal("no account key: set `key` or `key_file`"));
        };
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| ComponentError::fatal(format!("cannot read key file {}: {e}", path.display())))
    }

    /// Build the SDK client (fetches the account's regions: network I/O).
    pub async fn connect(&self) -> Result<CosmosClient, ComponentError> {
        let endpoint: AccountEndpoint = self
            .endpoint
            .parse()
            .map_err(|e| ComponentError::fatal(format!("invalid endpoint `{}`: {e}", self.endpoint)))?;
        let key = azure_core::credentials::Secret::new(self.account_key()?);
        let account = AccountReference::with_authentication_key(endpoint, key);
        let routing = match &self.region {
            Some(r) => RoutingStrategy::PreferredRegions(vec![Region::new(r.clone())]),
            None => RoutingStrategy::PreferredRegions(Vec::new()),
        };
        CosmosClientBuilder::new()
            .build(account, routing)
            .await
            .map_err(|e| super::errors::classify(&e, "connect"))
    }
}

fn check_connection(
    endpoint: &str,
    key: &Option<String>,
    key_file: &Option<PathBuf>,
    ctx: &CheckContext,
) -> Result<(), ConfigProblem> {
    match endpoint.parse::<AccountEndpoint>() {
        Ok(_) if endpoint.starts_with("https://") || endpoint.starts_with("http://") => {}
        Ok(_) | Err(_) => {
            return Err(ConfigProblem::field("endpoint", format!("`{endpoint}` is not an account URL"))
                .with_hint("e.g. \"https://myaccount.documents.azure.com:443/\""))
        }
    }
    match (key.as_deref().filter(|k| !k.is_empty()), key_file) {
        (Some(_), Some(_)) => {
            Err(ConfigProblem::field("key_file", "set either `key` or `key_file`, not both"))
        }
        (None, None) => Err(ConfigProblem::field("key", "an account key is required")
            .with_hint("key = \"${COSMOSDB_KEY}\", or key_file = \"/run/secrets/cosmos-key\"")),
        (Some(k), None) => check_key(k),
        (None, Some(path)) if !ctx.resolve(path).is_file() => Err(ConfigProblem::field(
            "key_file",
            format!("key file {} does not exist", ctx.resolve(path).display()),
        )),
        (None, Some(_)) => Ok(()),
    }
}

/// Account keys are base64; catching a mangled one here saves a round of 401s.
fn check_key(key: &str) -> Result<(), ConfigProblem> {
    let ok = key.len().is_multiple_of(4)
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
    if ok {
        Ok(())
    } else {
        Err(ConfigProblem::field("key", "the account key is not base64")
            .with_hint("copy the primary or secondary key of the account (88 characters ending in `==`)"))
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), ConfigProblem> {
    if value.is_empty() {
        return Err(ConfigProblem::field(field, format!("`{field}` must not be empty")));
    }
    Ok(())
}

impl CosmosChangeFeedConfig {
    /// Pure validation (no network).
    pub fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        check_connection(&self.endpoint, &self.key, &self.key_file, ctx)?;
        non_empty("database", &self.database)?;
        non_empty("lease_container", &self.lease_container)?;
        if self.containers.is_empty() || self.containers.iter().any(String::is_empty) {
            return Err(ConfigProblem::field("containers", "`containers` must name at least one container")
                .with_hint("containers = [\"whisks\", \"subjects\"]"));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = self.containers.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(ConfigProblem::field("containers", format!("container `{dup}` is listed twice")));
        }
        if self.containers.contains(&self.lease_container) {
            return Err(ConfigProblem::field(
                "lease_container",
                "the lease container cannot also be watched",
            )
            .with_hint("use a separate container, e.g. \"leases\""));
        }
        StartFrom::parse(&self.start_from).map_err(|m| ConfigProblem::field("start_from", m))?;
        if self.max_items == 0 {
            return Err(ConfigProblem::field("max_items", "`max_items` must be at least 1"));
        }
        if self.max_pending_pages == 0 {
            return Err(ConfigProblem::field("max_pending_pages", "`max_pending_pages` must be at least 1"));
        }
        if self.lease_renew_ms == 0 || self.lease_acquire_ms == 0 || self.commit_interval_ms == 0 {
            return Err(ConfigProblem::field("lease_renew_ms", "lease intervals must be positive"));
        }
        if self.lease_renew_ms.saturating_mul(2) > self.lease_expiry_ms {
            return Err(ConfigProblem::field(
                "lease_expiry_ms",
                format!(
                    "`lease_expiry_ms` ({}) must be at least twice `lease_renew_ms` ({})",
                    self.lease_expiry_ms, self.lease_renew_ms
                ),
            )
            .with_hint("otherwise a healthy replica's leases expire between renewals"));
        }
        if self.lease_prefix.as_deref().is_some_and(|p| p.is_empty() || p.contains(['/', '\\', '?', '#'])) {
            return Err(ConfigProblem::field(
                "lease_prefix",
                "`lease_prefix` must be non-empty without / \\ ? #",
            ));
        }
        Ok(())
    }

    /// The lease prefix of one watched container.
    pub fn prefix_for(&self, container: &str) -> String {
        match (&self.lease_prefix, self.cluster_id.as_deref().filter(|c| !c.is_empty())) {
            (Some(p), _) if self.containers.len() > 1 => format!("{p}-{container}"),
            (Some(p), _) => p.clone(),
            (None, Some(cluster)) => format!("{cluster}-{container}"),
            (None, None) => container.to_owned(),
        }
    }
}

impl CosmosSinkConfig {
    /// Pure validation (no network).
    pub fn check(&self, ctx: &CheckContext) -> Result<(), ConfigProblem> {
        check_connection(&self.endpoint, &self.key, &self.key_file, ctx)?;
        non_empty("database", &self.database)?;
        non_empty("container", &self.container)?;
        non_empty("partition_key", &self.partition_key)?;
        non_empty("id_field", &self.id_field)?;
        if self.concurrency == 0 {
            return Err(ConfigProblem::field("concurrency", "`concurrency` must be at least 1"));
        }
        if self.mode == CosmosWriteMode::Upsert && self.on_conflict == CosmosOnConflict::Reject {
            return Err(ConfigProblem::field(
                "on_conflict",
                "`on_conflict` only applies to `mode = \"create\"`",
            )
            .with_hint("an upsert never conflicts; remove `on_conflict` or set `mode = \"create\"`"));
        }
        Ok(())
    }
}

/// A process-unique default instance name.
pub fn default_instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "feedline".into());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use feedline_engine::registry::parse_typed;
    use serde_json::json;

    const KEY: &str =
        "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

    fn source(extra: serde_json::Value) -> Result<CosmosChangeFeedConfig, String> {
        let mut v = json!({"endpoint": "http://127.0.0.1:8081/", "key": KEY, "database": "whisk",
            "containers": ["whisks", "subjects"]});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let cfg: CosmosChangeFeedConfig = parse_typed(v).map_err(|e| format!("{e:?}"))?;
        let ctx = CheckContext { base_dir: ".".into() };
        cfg.check(&ctx).map_err(|p| format!("{}: {}", p.field.unwrap_or_default(), p.message))?;
        Ok(cfg)
    }

    #[test]
    fn defaults_and_lease_prefixes() {
        let cfg = source(json!({})).unwrap();
        assert_eq!(
            (cfg.lease_container.as_str(), cfg.start_from.as_str(), cfg.max_items),
            ("leases", "now", 1000)
        );
        assert_eq!(cfg.prefix_for("whisks"), "whisks");
        let cfg = source(json!({"cluster_id": "west"})).unwrap();
        assert_eq!(cfg.prefix_for("subjects"), "west-subjects");
        let cfg = source(json!({"cluster_id": "", "lease_prefix": "inv"})).unwrap();
        assert_eq!(cfg.prefix_for("whisks"), "inv-whisks");
        let cfg = source(json!({"containers": ["whisks"], "lease_prefix": "inv"})).unwrap();
        assert_eq!(cfg.prefix_for("whisks"), "inv");
    }

    #[test]
    fn start_from_forms() {
        assert_eq!(StartFrom::parse("now"), Ok(StartFrom::Now));
        assert_eq!(StartFrom::parse("beginning"), Ok(StartFrom::Beginning));
        assert!(matches!(StartFrom::parse("2026-01-01T00:00:00Z"), Ok(StartFrom::Time(_))));
        let err = source(json!({"start_from": "yesterday"})).unwrap_err();
        assert!(err.starts_with("start_from:"), "{err}");
    }

    #[test]
    fn cross_field_rules_name_their_field() {
        let field = |v| source(v).unwrap_err().split(':').next().unwrap_or_default().to_owned();
        assert_eq!(field(json!({"containers": []})), "containers");
        assert_eq!(field(json!({"containers": ["a", "a"]})), "containers");
        assert_eq!(field(json!({"lease_container": "whisks"})), "lease_container");
        assert_eq!(field(json!({"key": "not base64!"})), "key");
        assert_eq!(field(json!({"key": null})), "key");
        assert_eq!(field(json!({"endpoint": "cosmos"})), "endpoint");
        assert_eq!(field(json!({"lease_renew_ms": 20000, "lease_expiry_ms": 30000})), "lease_expiry_ms");
        assert_eq!(field(json!({"max_items": 0})), "max_items");
        assert!(parse_typed::<CosmosChangeFeedConfig>(json!({"endpoint": "x", "database": "d",
            "containers": ["c"], "leaseContainer": "l"}))
        .is_err());
    }

    #[test]
    fn sink_rules_and_redacted_debug() {
        let cfg: CosmosSinkConfig = parse_typed(json!({"endpoint": "http://127.0.0.1:8081/", "key": KEY,
            "database": "whisk", "container": "activations", "mode": "upsert", "on_conflict": "reject"}))
        .unwrap();
        let ctx = CheckContext { base_dir: ".".into() };
        assert_eq!(cfg.check(&ctx).unwrap_err().field.as_deref(), Some("on_conflict"));
        assert!(!format!("{cfg:?}").contains(KEY));
    }
}
