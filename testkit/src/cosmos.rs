//! A Cosmos DB test server: Microsoft's in-memory emulator (shipped in `azure_data_cosmos_driver`
//! behind `__internal_in_memory_emulator`) behind a small HTTP/1.1 front on a free 127.0.0.1 port,
//! so several processes (feedline replicas, the Python SDK) share one account.
//!
//! The emulator itself does not check the `Authorization` header; the front does: every request
//! must carry a master-key signature — base64 HMAC-SHA256, keyed with the decoded account key, of
//! `verb\nresourcetype\nresourcelink\nx-ms-date\n\n` (verb, type and date lowercased), sent as
//! `type=master&ver=1.0&sig=<signature>` (URL-encoded) — or it gets 401, so a wrong key fails as it
//! does against the service. The region the account advertises is the front's own
//! `http://127.0.0.1:PORT/`, so SDKs keep talking to it after account discovery.
//!
//! Known emulator gaps (not the front's): `PointInTime` starts behave like `Beginning`, documents
//! carry no `_lsn`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Response as HttpResponse, StatusCode};
use azure_core::credentials::Secret;
use azure_core::http::{Method, Request, Url};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, RoutingStrategy,
};
use azure_data_cosmos_driver::in_memory_emulator::{
    ConsistencyLevel, ContainerConfig, EmulatorStore, InMemoryEmulatorHttpClient, VirtualAccountConfig,
    VirtualRegion,
};
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// The well-known key of the Cosmos DB emulators (any base64 key works; this one is recognisable).
pub const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// A running test server; stops when dropped.
pub struct CosmosServer {
    port: u16,
    emulator: Arc<InMemoryEmulatorHttpClient>,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Front {
    emulator: Arc<InMemoryEmulatorHttpClient>,
    base: String,
    key: Vec<u8>,
}

impl CosmosServer {
    /// Start on a free port with account key [`EMULATOR_KEY`].
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("cosmos-test-server")
            .build()
            .expect("server runtime");
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let base = format!("http://127.0.0.1:{port}");
        let region = VirtualRegion::new("East US", Url::parse(&format!("{base}/")).expect("url"));
        let config = VirtualAccountConfig::new(vec![region])
            .expect("account config")
            .with_consistency(ConsistencyLevel::Session);
        let emulator = Arc::new(InMemoryEmulatorHttpClient::new(config));
        let key = base64::engine::general_purpose::STANDARD.decode(EMULATOR_KEY).expect("key");
        let front = Arc::new(Front { emulator: emulator.clone(), base, key });
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let front = front.clone();
            async move { front.handle(req).await }
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        CosmosServer { port, emulator, runtime: Some(runtime), shutdown: Some(tx) }
    }

    /// `http://127.0.0.1:PORT/`, the account endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The account key clients must sign with.
    pub fn key(&self) -> &'static str {
        EMULATOR_KEY
    }

    /// The emulator's store: provisioning and test hooks (splits, ...).
    pub fn store(&self) -> Arc<EmulatorStore> {
        self.emulator.store()
    }

    /// Create a database.
    pub fn create_database(&self, db: &str) {
        self.store().create_database(db);
    }

    /// Create a container with partition key `pk_path` and `partitions` physical partitions
    /// (= feed ranges).
    pub fn create_container(&self, db: &str, container: &str, pk_path: &str, partitions: u32) {
        let pk =
            serde_json::from_value(serde_json::json!({"paths": [pk_path], "kind": "Hash", "version": 2}))
                .expect("partition key definition");
        let config =
            ContainerConfig::new().with_partition_count(partitions).build().expect("container config");
        self.store().create_container_with_config(db, container, pk, config);
    }

    /// Split physical partition `partition` (ids start at 0) of a container, on the server's runtime.
    pub fn split(&self, db: &str, container: &str, partition: u32) {
        let store = self.store();
        let (db, container) = (db.to_owned(), container.to_owned());
        self.runtime().block_on(async move {
            store.split_partition(&db, &container, partition, Duration::from_millis(20));
        });
    }

    /// Run a future on the server's runtime (the emulator's hooks need one).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime")
    }

    /// A Rust SDK client talking to the front over HTTP with `key` (run it on [`Self::runtime`]).
    pub async fn client_with_key(&self, key: &str) -> azure_data_cosmos::Result<CosmosClient> {
        let endpoint: AccountEndpoint = self.endpoint().parse()?;
        let account = AccountReference::with_authentication_key(endpoint, Secret::new(key.to_owned()));
        CosmosClientBuilder::new().build(account, RoutingStrategy::PreferredRegions(Vec::new())).await
    }

    /// A container client over HTTP with the right key (blocking; for test code).
    pub fn container(&self, db: &str, container: &str) -> ContainerClient {
        self.runtime().block_on(async {
            let client = self.client_with_key(EMULATOR_KEY).await.expect("client");
            client.database_client(db).container_client(container, None).await.expect("container")
        })
    }

    /// Upsert documents (partition key = `id`), retrying while a split completes (blocking).
    pub fn upsert(&self, container: &ContainerClient, docs: &[serde_json::Value]) {
        self.runtime().block_on(async {
            for doc in docs {
                let id = doc["id"].as_str().expect("document id").to_owned();
                for attempt in 0.. {
                    match container.upsert_item(id.clone(), &id, doc, None).await {
                        Ok(_) => break,
                        Err(e) if attempt < 200 && u16::from(e.status().status_code()) == 410 => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("upsert {id}: {e}"),
                    }
                }
            }
        });
    }
}

impl Drop for CosmosServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Front {
    async fn handle(&self, req: axum::extract::Request) -> HttpResponse<Body> {
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", "body too large");
        };
        let path = parts.uri.path().to_owned();
        if let Err(why) = self.authorize(parts.method.as_str(), &path, &parts.headers) {
            return error(StatusCode::UNAUTHORIZED, "Unauthorized", &why);
        }
        // The service accepts `/dbs/x/` (the Python SDK sends it); the emulator does not.
        let trimmed = match path.trim_end_matches('/') {
            "" => "/",
            p => p,
        };
        let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let Ok(url) = Url::parse(&format!("{}{trimmed}{query}", self.base)) else {
            return error(StatusCode::BAD_REQUEST, "BadRequest", "bad url");
        };
        let Some(method) = method(parts.method.as_str()) else {
            return error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method");
        };
        let mut request = Request::new(url, method);
        for (name, value) in &parts.headers {
            if let Ok(v) = value.to_str() {
                request.insert_header(name.as_str().to_owned(), v.to_owned());
            }
        }
        if !body.is_empty() {
            request.set_body(body.to_vec());
        }
        let raw = match self.emulator.execute_request(&request).await {
            Ok(r) => match r.try_into_raw_response().await {
                Ok(raw) => raw,
                Err(e) => {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", &e.to_string())
                }
            },
            Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
        let mut response = HttpResponse::builder().status(u16::from(raw.status()));
        for (name, value) in raw.headers().iter() {
            response = response.header(name.as_str(), value.as_str());
        }
        response
            .body(Body::from(raw.body().to_vec()))
            .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", "response"))
    }

    /// Check the master-key signature of a request.
    fn authorize(&self, verb: &str, path: &str, headers: &HeaderMap) -> Result<(), String> {
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let auth = header("authorization").ok_or("missing Authorization header")?;
        let auth = percent_decode(auth);
        let sig = auth
            .split('&')
            .find_map(|kv| kv.strip_prefix("sig="))
            .ok_or("Authorization header has no signature")?;
        if !auth.split('&').any(|kv| kv == "type=master") {
            return Err("only master-key authorization is supported here".into());
        }
        let date = header("x-ms-date").or_else(|| header("date")).ok_or("missing x-ms-date header")?;
        let decoded = percent_decode(path);
        let candidates = [resource(&decoded), resource(path)];
        for (kind, link) in &candidates {
            let text = format!(
                "{}\n{}\n{}\n{}\n\n",
                verb.to_lowercase(),
                kind.to_lowercase(),
                link,
                date.to_lowercase()
            );
            if self.sign(&text).is_some_and(|expected| expected == sig) {
                return Ok(());
            }
        }
        Err("The input authorization token can't serve the request. The wrong key is being used or the \
             expected payload is not built as per the protocol."
            .into())
    }

    fn sign(&self, text: &str) -> Option<String> {
        let key = PKey::hmac(&self.key).ok()?;
        let mut signer = Signer::new(MessageDigest::sha256(), &key).ok()?;
        signer.update(text.as_bytes()).ok()?;
        Some(base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec().ok()?))
    }
}

/// Resource type and link of a request path: `/dbs/d/colls/c/docs/x` is (`docs`,
/// `dbs/d/colls/c/docs/x`); a feed such as `/dbs/d/colls/c/docs` is (`docs`, `dbs/d/colls/c`).
fn resource(path: &str) -> (String, String) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    match segments.len() {
        0 => (String::new(), String::new()),
        n if n % 2 == 0 => (segments[n - 2].to_owned(), segments.join("/")),
        n => (segments[n - 1].to_owned(), segments[..n - 1].join("/")),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn method(m: &str) -> Option<Method> {
    Some(match m {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "HEAD" => Method::Head,
        _ => return None,
    })
}

fn error(status: StatusCode, code: &str, message: &str) -> HttpResponse<Body> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    HttpResponse::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_and_links() {
        assert_eq!(resource("/"), (String::new(), String::new()));
        assert_eq!(resource("/dbs"), ("dbs".into(), String::new()));
        assert_eq!(resource("/dbs/whisk"), ("dbs".into(), "dbs/whisk".into()));
        assert_eq!(resource("/dbs/whisk/colls/w/docs"), ("docs".into(), "dbs/whisk/colls/w".into()));
        assert_eq!(
            resource("/dbs/whisk/colls/w/docs/guest|a"),
            ("docs".into(), "dbs/whisk/colls/w/docs/guest|a".into())
        );
        assert_eq!(percent_decode("guest%7Ca%2fb"), "guest|a/b");
    }

    #[test]
    fn signatures_follow_the_documented_example_shape() {
        let front = Front {
            emulator: Arc::new(InMemoryEmulatorHttpClient::new(
                VirtualAccountConfig::new(vec![VirtualRegion::new(
                    "r",
                    Url::parse("http://127.0.0.1:1/").unwrap(),
                )])
                .unwrap(),
            )),
            base: String::new(),
            key: base64::engine::general_purpose::STANDARD.decode(EMULATOR_KEY).unwrap(),
        };
        let date = "Tue, 01 Nov 1994 08:12:31 GMT";
        let sig = front.sign(&format!("get\ndbs\ndbs/whisk\n{}\n\n", date.to_lowercase())).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-ms-date", date.parse().unwrap());
        let auth = format!(
            "type%3Dmaster%26ver%3D1.0%26sig%3D{}",
            sig.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
        );
        headers.insert("authorization", auth.parse().unwrap());
        assert!(front.authorize("GET", "/dbs/whisk", &headers).is_ok());
        assert!(front.authorize("DELETE", "/dbs/whisk", &headers).is_err(), "the verb is signed");
        headers.insert("authorization", "type%3Dmaster%26ver%3D1.0%26sig%3Dnope".parse().unwrap());
        assert!(front.authorize("GET", "/dbs/whisk", &headers).is_err());
    }
}
