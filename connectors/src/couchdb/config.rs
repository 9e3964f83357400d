//! The `couchdb` source and sink configs: the reference documentation of every key.
//!
//! Validation here is pure (no network). Passwords never reach a log: the configs' `Debug`
//! redacts them, and credentials written into `url` are moved out of it before it is used.

use std::collections::BTreeMap;
use std::fmt;

use feedline_engine::{CheckContext, ConfigProblem};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Follows a database's `_changes` feed.
///
/// Each change becomes one event: the document (with `include_docs`, the default) or a stub
/// `{"_id", "_rev"}`; the event key is the document id, the position the change's `seq`.
/// Deleted rows become delete events (`operation = "delete"`, id kept; the value is the
/// tombstone `{"_id", "_rev", "_deleted": true}`). The last `seq` whose events are all done is
/// checkpointed — by default in the database itself as `_local/feedline-<pipeline>`, like CouchDB
/// replication does — and the feed resumes there after any restart (at-least-once).
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CouchdbSourceConfig {
    /// Server URL, e.g. `"http://127.0.0.1:5984"` (a path prefix behind a proxy is kept).
    /// Credentials written as `https://user:pass@host` are used as basic auth and removed from
    /// the URL.
    pub url: String,
    /// Database to follow.
    pub database: String,
    /// Credentials: `{ username = "..", password = "..", method = "basic" | "cookie" }`
    /// (`basic` by default). The password is never logged.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// `continuous` keeps one response open and streams changes; `longpoll` asks again after
    /// each batch.
    #[serde(default = "default_feed")]
    pub feed: Feed,
    /// Ask the server for a newline every this many milliseconds while nothing changes.
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub heartbeat_ms: u64,
    /// `timeout` sent with the request, in milliseconds. Some servers ignore it and keep a feed
    /// open forever; `read_timeout_ms` protects against that.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 0, max = 86400000))]
    pub timeout_ms: u64,
    /// The client's own read timeout: with no byte (not even a heartbeat) for this long the
    /// connection is dropped and the feed reopened from the last change read. Must exceed
    /// `heartbeat_ms`.
    #[serde(default = "default_read_timeout_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub read_timeout_ms: u64,
    /// Include each changed document (`include_docs=true`). Without it the value is a stub
    /// `{"_id", "_rev"}` (plus `"_deleted": true` for deletions).
    #[serde(default = "default_true")]
    pub include_docs: bool,
    /// A Mango selector: only changes of matching documents (`filter=_selector`; CouchDB 2+).
    #[serde(default)]
    pub selector: Option<Value>,
    /// Only changes of these document ids (`filter=_doc_ids`).
    #[serde(default)]
    pub doc_ids: Vec<String>,
    /// A design-document filter function, `"ddoc/name"`.
    #[serde(default)]
    pub filter: Option<String>,
    /// Query parameters passed to `filter`.
    #[serde(default)]
    pub filter_params: BTreeMap<String, String>,
    /// Skip changes of design documents (`_design/...`).
    #[serde(default = "default_true")]
    pub skip_design_docs: bool,
    /// Where to start when there is no checkpoint yet.
    #[serde(default = "default_start_from")]
    pub start_from: StartFrom,
    /// Where the checkpoint (the last done `seq`) is kept.
    #[serde(default = "default_checkpoint")]
    pub checkpoint: CheckpointLocation,
    /// Id of the checkpoint document (after `_local/`); default `feedline-<pipeline>`.
    #[serde(default)]
    pub checkpoint_id: Option<String>,
    /// Most changes per batch handed to the transforms.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: usize,
    /// Longest `_changes` line accepted, in bytes (a row with its document, when
    /// `include_docs`). A longer line — or one serde_json cannot read, such as a document nested
    /// deeper than 128 — is dead-lettered (its head and length) and the feed goes on. The default
    /// is twice CouchDB's default `max_document_size`.
    #[serde(default = "default_max_line_bytes")]
    #[schemars(range(min = 1, max = 1073741824))]
    pub max_line_bytes: usize,
    /// How long a partial batch waits for more changes, in milliseconds.
    #[serde(default = "default_batch_timeout_ms")]
    #[schemars(range(min = 0, max = 3600000))]
    pub batch_timeout_ms: u64,
    /// How often the done position is checkpointed, in milliseconds (and always at shutdown).
    #[serde(default = "default_commit_interval_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub commit_interval_ms: u64,
    /// Most batches read but not yet done before reading pauses (backpressure).
    #[serde(default = "default_max_pending_batches")]
    #[schemars(range(min = 1, max = 65536))]
    pub max_pending_batches: usize,
    /// First wait before reopening a failed feed, in milliseconds; doubles up to
    /// `max_backoff_ms`.
    #[serde(default = "default_initial_backoff_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub initial_backoff_ms: u64,
    /// Longest wait between reconnection attempts, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    #[schemars(range(min = 1, max = 86400000))]
    pub max_backoff_ms: u64,
}

/// Writes events as documents with `_bulk_docs`.
///
/// The document is the event value (a JSON object) without its `_rev` (revisions belong to the
/// target; `on_conflict` decides about existing documents); its `_id` is the value's `_id`, else
/// the event key, else one the server assigns (avoid that: a retried write then stores a second
/// copy). Delete events delete the document (a `_deleted` stub with its current `_rev`; an
/// absent or already deleted document counts as delivered). Batching, concurrency
/// (`max_in_flight`), `rate_limit` (documents/s), retries and dead-lettering are the engine's
/// common sink options.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CouchdbSinkConfig {
    /// Server URL, e.g. `"http://127.0.0.1:5984"`. Credentials written as
    /// `https://user:pass@host` are used as basic auth and removed from the URL.
    pub url: String,
    /// Database to write to.
    pub database: String,
    /// Credentials: `{ username = "..", password = "..", method = "basic" | "cookie" }`
    /// (`basic` by default). The password is never logged.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// What a `conflict` (a document with this `_id` exists at another revision) means:
    /// `ignore` counts it as delivered (the record is already stored), `overwrite` re-reads the
    /// `_rev` and writes again, `reject` sends the event to the dead-letter sink.
    #[serde(default = "default_on_conflict")]
    pub on_conflict: OnConflict,
    /// Create the database at start (and after it vanished) when it does not exist.
    #[serde(default)]
    pub create_database: bool,
    /// Longest wait for one HTTP request, in milliseconds; a timeout is retried.
    #[serde(default = "default_request_timeout_ms")]
    #[schemars(range(min = 1, max = 3600000))]
    pub request_timeout_ms: u64,
}

/// Credentials.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CouchdbAuth")]
pub struct AuthConfig {
    /// User name.
    pub username: String,
    /// Password (never logged).
    pub password: String,
    /// `basic` sends the credentials with every request; `cookie` logs in at `/_session` and
    /// sends the session cookie, logging in again when it expires.
    #[serde(default = "default_auth_method")]
    pub method: AuthMethod,
}

/// How credentials are presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CouchdbAuthMethod")]
pub enum AuthMethod {
    /// HTTP basic auth on every request.
    #[default]
    Basic,
    /// `POST /_session`, then the `AuthSession` cookie.
    Cookie,
}

/// The kind of `_changes` feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CouchdbFeed")]
pub enum Feed {
    /// One long response streaming a line per change.
    #[default]
    Continuous,
    /// One request per batch, answered as soon as there is a change.
    Longpoll,
}

/// Where a feed without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CouchdbStartFrom")]
pub enum StartFrom {
    /// Every change since the database was created.
    #[default]
    Beginning,
    /// Only changes made after the source started.
    Now,
}

/// Where the source keeps its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CouchdbCheckpoint")]
pub enum CheckpointLocation {
    /// A `_local/<checkpoint_id>` document in the followed database (not replicated, survives
    /// a new data directory).
    #[default]
    Database,
    /// Feedline's embedded checkpoint store under `--data-dir` (read-only database access).
    Local,
}

/// What a write conflict means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "CouchdbOnConflict")]
pub enum OnConflict {
    /// Already stored: delivered.
    #[default]
    Ignore,
    /// Read the current `_rev` and write again.
    Overwrite,
    /// Dead-letter the event.
    Reject,
}

fn default_feed() -> Feed {
    Feed::Continuous
}
fn default_start_from() -> StartFrom {
    StartFrom::Beginning
}
fn default_checkpoint() -> CheckpointLocation {
    CheckpointLocation::Database
}
fn default_on_conflict() -> OnConflict {
    OnConflict::Ignore
}
fn default_auth_method() -> AuthMethod {
    AuthMethod::Basic
}
fn default_true() -> bool {
    true
}
fn default_heartbeat_ms() -> u64 {
    10_000
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_read_timeout_ms() -> u64 {
    30_000
}
fn default_max_line_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_batch_size() -> usize {
    1000
}
fn default_batch_timeout_ms() -> u64 {
    20
}
fn default_commit_interval_ms() -> u64 {
    1000
}
fn default_max_pending_batches() -> usize {
    64
}
fn default_initial_backoff_ms() -> u64 {
    100
}
fn default_max_backoff_ms() -> u64 {
    10_000
}
fn default_request_timeout_ms() -> u64 {
    30_000
}

fn check_url(url: &str) -> Result<(), ConfigProblem> {
    let hint = "e.g. url = \"${COUCHDB_URL}\" or \"http://127.0.0.1:5984\"";
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ConfigProblem::field("url", format!("`url` is not a URL: {e}")).with_hint(hint))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigProblem::field("url", "`url` must be an http:// or https:// URL with a host")
            .with_hint(hint));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(ConfigProblem::field("url", "`url` must not have a query or fragment"));
    }
    Ok(())
}

/// CouchDB's rule for database names.
fn check_database(name: &str) -> Result<(), ConfigProblem> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_$()+-/".contains(c));
    if !valid {
        return Err(ConfigProblem::field(
            "database",
            format!("`{name}` is not a valid CouchDB database name"),
        )
        .with_hint("a lowercase letter, then lowercase letters, digits and _$()+-/"));
    }
    Ok(())
}

fn check_auth(auth: &Option<AuthConfig>) -> Result<(), ConfigProblem> {
    if let Some(a) = auth {
        if a.username.is_empty() {
            return Err(ConfigProblem::field("auth", "`auth.username` must not be empty"));
        }
    }
    Ok(())
}

impl CouchdbSourceConfig {
    /// Cross-field rules (no network).
    pub fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        check_url(&self.url)?;
        check_database(&self.database)?;
        check_auth(&self.auth)?;
        if self.heartbeat_ms == 0 {
            return Err(ConfigProblem::field("heartbeat_ms", "`heartbeat_ms` must be at least 1"));
        }
        if self.read_timeout_ms <= self.heartbeat_ms {
            return Err(ConfigProblem::field(
                "read_timeout_ms",
                "`read_timeout_ms` must exceed `heartbeat_ms`",
            )
            .with_hint("a live feed sends a heartbeat every `heartbeat_ms`; allow two or three of them"));
        }
        let filters = [self.selector.is_some(), !self.doc_ids.is_empty(), self.filter.is_some()];
        if filters.iter().filter(|f| **f).count() > 1 {
            return Err(ConfigProblem::field(
                "selector",
                "set at most one of `selector`, `doc_ids` and `filter`",
            ));
        }
        if self.selector.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(ConfigProblem::field("selector", "`selector` must be a table (a Mango selector)"));
        }
        if let Some(f) = &self.filter {
            if f.starts_with('_') || f.split('/').count() != 2 || f.split('/').any(str::is_empty) {
                return Err(ConfigProblem::field("filter", format!("`{f}` is not a filter name"))
                    .with_hint("write `ddoc/name`; for ids or selectors use `doc_ids` or `selector`"));
            }
        }
        if !self.filter_params.is_empty() && self.filter.is_none() {
            return Err(ConfigProblem::field("filter_params", "`filter_params` needs `filter`"));
        }
        if self.batch_size == 0 || self.max_pending_batches == 0 || self.commit_interval_ms == 0 {
            return Err(ConfigProblem::field(
                "batch_size",
                "`batch_size`, `max_pending_batches` and `commit_interval_ms` must be at least 1",
            ));
        }
        if self.checkpoint_id.as_ref().is_some_and(|id| id.is_empty() || id.starts_with('_')) {
            return Err(ConfigProblem::field(
                "checkpoint_id",
                "`checkpoint_id` must be a non-empty name not starting with `_`",
            ));
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            return Err(ConfigProblem::field(
                "max_backoff_ms",
                "backoffs must satisfy 0 < `initial_backoff_ms` <= `max_backoff_ms`",
            ));
        }
        Ok(())
    }
}

impl CouchdbSinkConfig {
    /// Cross-field rules (no network).
    pub fn check(&self, _ctx: &CheckContext) -> Result<(), ConfigProblem> {
        check_url(&self.url)?;
        check_database(&self.database)?;
        check_auth(&self.auth)?;
        if self.request_timeout_ms == 0 {
            return Err(ConfigProblem::field(
                "request_timeout_ms",
                "`request_timeout_ms` must be at least 1",
            ));
        }
        Ok(())
    }
}

/// A URL with any `user:password@` removed, for logs.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<invalid url>".into(),
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("method", &self.method)
            .finish()
    }
}

impl fmt::Debug for CouchdbSourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CouchdbSourceConfig")
            .field("url", &display_url(&self.url))
            .field("database", &self.database)
            .field("auth", &self.auth)
            .field("feed", &self.feed)
            .field("include_docs", &self.include_docs)
            .field("start_from", &self.start_from)
            .field("checkpoint", &self.checkpoint)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CouchdbSinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CouchdbSinkConfig")
            .field("url", &display_url(&self.url))
            .field("database", &self.database)
            .field("auth", &self.auth)
            .field("on_conflict", &self.on_conflict)
            .field("create_database", &self.create_database)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CheckContext {
        CheckContext { base_dir: ".".into() }
    }

    fn source(extra: Value) -> Result<CouchdbSourceConfig, serde_json::Error> {
        let mut v = serde_json::json!({"url": "http://127.0.0.1:5984", "database": "whisks"});
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            obj.extend(extra.clone());
        }
        serde_json::from_value(v)
    }

    #[test]
    fn defaults_are_a_continuous_feed_with_docs_checkpointed_in_the_database() {
        let cfg = source(serde_json::json!({})).unwrap();
        cfg.check(&ctx()).unwrap();
        assert_eq!(cfg.feed, Feed::Continuous);
        assert!(cfg.include_docs);
        assert_eq!(cfg.checkpoint, CheckpointLocation::Database);
        assert_eq!(cfg.start_from, StartFrom::Beginning);
    }

    #[test]
    fn cross_field_rules_name_the_field() {
        let field = |extra: Value| source(extra).unwrap().check(&ctx()).unwrap_err().field;
        assert_eq!(field(serde_json::json!({"url": "ftp://x"})), Some("url".into()));
        assert_eq!(field(serde_json::json!({"url": "not a url"})), Some("url".into()));
        assert_eq!(field(serde_json::json!({"database": "Whisks"})), Some("database".into()));
        assert_eq!(
            field(serde_json::json!({"read_timeout_ms": 5000, "heartbeat_ms": 5000})),
            Some("read_timeout_ms".into())
        );
        assert_eq!(
            field(serde_json::json!({"selector": {"a": 1}, "doc_ids": ["x"]})),
            Some("selector".into())
        );
        assert_eq!(field(serde_json::json!({"filter": "_selector"})), Some("filter".into()));
        assert_eq!(field(serde_json::json!({"filter_params": {"a": "b"}})), Some("filter_params".into()));
        assert_eq!(field(serde_json::json!({"checkpoint_id": "_x"})), Some("checkpoint_id".into()));
        assert!(source(serde_json::json!({"feed": "normal"})).is_err(), "only continuous and longpoll");
        assert!(source(serde_json::json!({"databse": "x"})).is_err(), "unknown keys are refused");
        source(serde_json::json!({"filter": "app/by_type", "filter_params": {"type": "action"}}))
            .unwrap()
            .check(&ctx())
            .unwrap();
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let cfg = source(serde_json::json!({
            "url": "https://admin:url-secret@db.example:6984/couch",
            "auth": {"username": "admin", "password": "hunter2", "method": "cookie"}
        }))
        .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("url-secret"), "{shown}");
        assert!(shown.contains("db.example:6984/couch") && shown.contains("admin"), "{shown}");
        let sink: CouchdbSinkConfig = serde_json::from_value(serde_json::json!({
            "url": "http://u:pw-secret@h:5984", "database": "activations",
            "auth": {"username": "u", "password": "hunter2"}
        }))
        .unwrap();
        sink.check(&ctx()).unwrap();
        let shown = format!("{sink:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("pw-secret"), "{shown}");
        assert_eq!(sink.on_conflict, OnConflict::Ignore);
    }
}
