//! A small CouchDB HTTP client: URLs, auth (basic or cookie session), JSON bodies and error
//! classification. Every request asks for `Accept: application/json` (some servers answer errors
//! in text otherwise). Credentials live only in request headers: never in URLs or messages.

use std::error::Error as _;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use feedline_engine::{ComponentError, ErrorClass};
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::config::{AuthConfig, AuthMethod};

/// A failed CouchDB request, classified for the engine. Never carries credentials.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CouchError {
    /// Retry, reject or stop.
    pub class: ErrorClass,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    /// CouchDB's `error` name (`conflict`, `not_found`, ...), or empty.
    pub error: String,
    /// What happened, with the server's `reason`.
    pub message: String,
}

impl CouchError {
    fn transport(what: &str, e: &reqwest::Error) -> Self {
        // reqwest's own text names the URL; the cause chain says what went wrong.
        let mut message = format!("{what}: {}", if e.is_timeout() { "timed out" } else { "request failed" });
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        Self { class: ErrorClass::Retriable, status: None, error: String::new(), message }
    }

    /// A server error: 408/429/5xx retriable, 401/403 fatal, other statuses reject.
    pub fn http(what: &str, status: StatusCode, error: String, reason: &str) -> Self {
        let class = match status.as_u16() {
            408 | 429 | 500..=599 => ErrorClass::Retriable,
            401 | 403 => ErrorClass::Fatal,
            _ => ErrorClass::Reject,
        };
        let message = format!("{what}: HTTP {} {error}: {reason}", status.as_u16());
        Self { class, status: Some(status.as_u16()), error, message }
    }

    /// As an engine error.
    pub fn component(&self) -> ComponentError {
        ComponentError { class: self.class, message: self.message.clone() }
    }

    /// The database does not exist.
    pub fn is_missing_database(&self) -> bool {
        self.status == Some(404)
    }
}

#[derive(Clone)]
enum Credentials {
    None,
    Basic { user: String, password: String },
    Cookie { user: String, password: String },
}

/// Client for one database on one server. Cheap to share (`reqwest::Client` pools connections).
pub struct Client {
    http: reqwest::Client,
    root: Url,
    database: String,
    credentials: Credentials,
    /// The `AuthSession=...` cookie of a cookie-auth login.
    session: Mutex<Option<HeaderValue>>,
    /// Bound on each [`Client::json`] request (streaming feeds set their own read timeout).
    request_timeout: Duration,
}

impl Client {
    /// A client for `database` at `url`. No I/O. `request_timeout` bounds each JSON request.
    pub fn new(
        url: &str,
        database: &str,
        auth: Option<&AuthConfig>,
        request_timeout: Duration,
    ) -> Result<Self, ComponentError> {
        let mut root = Url::parse(url).map_err(|e| ComponentError::fatal(format!("`url`: {e}")))?;
        let mut credentials = match auth {
            Some(a) if a.method == AuthMethod::Cookie => {
                Credentials::Cookie { user: a.username.clone(), password: a.password.clone() }
            }
            Some(a) => Credentials::Basic { user: a.username.clone(), password: a.password.clone() },
            None => Credentials::None,
        };
        if !root.username().is_empty() {
            if matches!(credentials, Credentials::None) {
                let decode = |s: &str| percent_decode(s);
                credentials = Credentials::Basic {
                    user: decode(root.username()),
                    password: decode(root.password().unwrap_or_default()),
                };
            }
            let _ = root.set_username("");
            let _ = root.set_password(None);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| ComponentError::fatal(format!("HTTP client: {e}")))?;
        Ok(Self {
            http,
            root,
            database: database.to_owned(),
            credentials,
            session: Mutex::new(None),
            request_timeout,
        })
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// `<root>/<segments...>`, each segment percent-encoded (a `/` inside one becomes `%2F`).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.root.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `<root>/<database>/<segments...>`.
    pub fn db_url(&self, segments: &[&str]) -> Url {
        let mut all = vec![self.database.as_str()];
        all.extend_from_slice(segments);
        self.url(&all)
    }

    /// Send a request built by `build` (called again for a retry after a cookie login).
    pub async fn send(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, CouchError> {
        let mut logged_in = false;
        loop {
            let mut req = build(&self.http).header(ACCEPT, "application/json");
            match &self.credentials {
                Credentials::None => {}
                Credentials::Basic { user, password } => req = req.basic_auth(user, Some(password)),
                Credentials::Cookie { .. } => {
                    if self.session().is_none() {
                        self.login().await?;
                        logged_in = true;
                    }
                    if let Some(cookie) = self.session() {
                        req = req.header(COOKIE, cookie);
                    }
                }
            }
            let resp = req.send().await.map_err(|e| CouchError::transport(what, &e))?;
            if resp.status() == StatusCode::UNAUTHORIZED
                && matches!(self.credentials, Credentials::Cookie { .. })
                && !logged_in
            {
                // The session expired: log in again once.
                self.set_session(None);
                continue;
            }
            return Ok(resp);
        }
    }

    fn session(&self) -> Option<HeaderValue> {
        self.session.lock().map(|s| s.clone()).unwrap_or(None)
    }

    fn set_session(&self, value: Option<HeaderValue>) {
        if let Ok(mut s) = self.session.lock() {
            *s = value;
        }
    }

    async fn login(&self) -> Result<(), CouchError> {
        let Credentials::Cookie { user, password } = &self.credentials else { return Ok(()) };
        let body = serde_json::json!({ "name": user, "password": password });
        let resp = self
            .http
            .post(self.url(&["_session"]))
            .header(ACCEPT, "application/json")
            .timeout(self.request_timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| CouchError::transport("POST /_session", &e))?;
        if !resp.status().is_success() {
            return Err(error_of("POST /_session (cookie login)", resp).await);
        }
        let cookie = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("AuthSession="))
            .and_then(|v| v.split(';').next())
            .and_then(|v| HeaderValue::from_str(v).ok());
        match cookie {
            Some(c) => {
                self.set_session(Some(c));
                Ok(())
            }
            None => Err(CouchError {
                class: ErrorClass::Fatal,
                status: None,
                error: String::new(),
                message: "POST /_session: no AuthSession cookie in the answer".into(),
            }),
        }
    }

    /// A JSON request; the answer parsed as `T` on 2xx, a classified error otherwise.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        what: &str,
        body: Option<Bytes>,
    ) -> Result<T, CouchError> {
        let resp = self
            .send(what, |http| {
                let req = http.request(method.clone(), url.clone()).timeout(self.request_timeout);
                match &body {
                    Some(b) => req.header(CONTENT_TYPE, "application/json").body(b.clone()),
                    None => req,
                }
            })
            .await?;
        if !resp.status().is_success() {
            return Err(error_of(what, resp).await);
        }
        resp.json::<T>().await.map_err(|e| CouchError::transport(what, &e))
    }
}

/// A JSON request body.
pub fn body(value: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// The `{"error","reason"}` of a failed response (or its text), classified.
pub async fn error_of(what: &str, resp: Response) -> CouchError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let (error, reason) = match serde_json::from_str::<Value>(&text) {
        Ok(v) => (
            v.get("error").and_then(Value::as_str).unwrap_or_default().to_owned(),
            v.get("reason").and_then(Value::as_str).unwrap_or_default().to_owned(),
        ),
        Err(_) => (String::new(), text.chars().take(200).collect()),
    };
    CouchError::http(what, status, error, &reason)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_segments_and_keep_a_path_prefix() {
        let c = Client::new("http://h:5984/couch/", "a/b", None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.db_url(&["_local", "feedline-p"]).as_str(),
            "http://h:5984/couch/a%2Fb/_local/feedline-p"
        );
        assert_eq!(c.db_url(&["guest/x y"]).as_str(), "http://h:5984/couch/a%2Fb/guest%2Fx%20y");
        let c = Client::new("http://h:5984", "db", None, Duration::from_secs(1)).unwrap();
        assert_eq!(c.db_url(&["_changes"]).as_str(), "http://h:5984/db/_changes");
    }

    #[test]
    fn credentials_in_the_url_move_to_basic_auth() {
        let c = Client::new("http://us%40er:p%3Ass@h:5984", "db", None, Duration::from_secs(1)).unwrap();
        assert_eq!(c.root.as_str(), "http://h:5984/");
        match &c.credentials {
            Credentials::Basic { user, password } => {
                assert_eq!((user.as_str(), password.as_str()), ("us@er", "p:ss"))
            }
            _ => panic!("expected basic auth"),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let class = |s: u16| CouchError::http("x", StatusCode::from_u16(s).unwrap(), String::new(), "").class;
        assert_eq!(class(503), ErrorClass::Retriable);
        assert_eq!(class(429), ErrorClass::Retriable);
        assert_eq!(class(408), ErrorClass::Retriable);
        assert_eq!(class(401), ErrorClass::Fatal);
        assert_eq!(class(400), ErrorClass::Reject);
    }
}
