//! A real OTLP trace receiver for tests: gRPC (tonic, with `opentelemetry-proto`'s generated
//! `TraceService` server) and HTTP/protobuf (`POST /v1/traces`), both on free 127.0.0.1 ports.
//! Every span it receives is recorded, flattened into [`ReceivedSpan`], for tests to assert on;
//! [`OtlpReceiver::start_counting`] makes one that only counts requests and bytes (benchmarks).
//! It runs on its own thread and Tokio runtime and stops when dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use serde_json::Value;

/// One received span, with ids as lower-case hex and attributes as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind (1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Start and end, nanoseconds since the epoch.
    pub start_ns: u64,
    /// See `start_ns`.
    pub end_ns: u64,
    /// Span attributes.
    pub attributes: BTreeMap<String, Value>,
    /// Span events (name, attributes).
    pub events: Vec<(String, BTreeMap<String, Value>)>,
    /// OTLP status code (0 unset, 1 ok, 2 error) and message.
    pub status: (i32, String),
    /// Which listener it came through: `grpc` or `http`.
    pub transport: &'static str,
}

impl ReceivedSpan {
    /// An attribute as text (strings as they are, other values as JSON).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

#[derive(Default)]
struct Shared {
    /// Only count requests and bytes: decode nothing, keep nothing.
    counting: bool,
    spans: Mutex<Vec<ReceivedSpan>>,
    requests: Mutex<u64>,
    bytes: Mutex<u64>,
}

impl Shared {
    fn count(&self, bytes: usize) {
        *self.requests.lock().unwrap() += 1;
        *self.bytes.lock().unwrap() += bytes as u64;
    }

    fn record(&self, request: ExportTraceServiceRequest, transport: &'static str) {
        self.count(request.encoded_len());
        if self.counting {
            return;
        }
        let mut out = Vec::new();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref())
                .map(|v| json(v).as_str().map(str::to_owned).unwrap_or_default())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    let status =
                        s.status.as_ref().map(|st| (st.code, st.message.clone())).unwrap_or_default();
                    out.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attributes: attributes(&s.attributes),
                        events: s
                            .events
                            .iter()
                            .map(|e| (e.name.clone(), attributes(&e.attributes)))
                            .collect(),
                        status,
                        transport,
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(out);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(json).unwrap_or(Value::Null))).collect()
}

fn json(v: &AnyValue) -> Value {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Value::String(s.clone()),
        Some(any_value::Value::BoolValue(b)) => Value::Bool(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::ArrayValue(a)) => Value::Array(a.values.iter().map(json).collect()),
        Some(any_value::Value::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map(json).unwrap_or(Value::Null)))
                .collect(),
        ),
        Some(any_value::Value::BytesValue(b)) => Value::String(hex(b)),
        _ => Value::Null,
    }
}

struct Grpc(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.record(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Start both listeners on free 127.0.0.1 ports.
    pub fn start() -> Self {
        Self::launch(false)
    }

    /// Start a receiver that accepts every export and only counts requests and bytes: no span
    /// is decoded (over HTTP) or kept, so it costs next to nothing while a benchmark measures the
    /// exporting process.
    pub fn start_counting() -> Self {
        Self::launch(true)
    }

    fn launch(counting: bool) -> Self {
        let grpc_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind grpc");
        let http_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind http");
        grpc_listener.set_nonblocking(true).unwrap();
        http_listener.set_nonblocking(true).unwrap();
        let grpc = grpc_listener.local_addr().unwrap();
        let http = http_listener.local_addr().unwrap();
        let shared = Arc::new(Shared { counting, ..Shared::default() });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(serve(grpc_listener, http_listener, s, stop_rx));
            })
            .unwrap();
        Self { grpc, http, shared, stop: Some(stop_tx), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener (the exporter appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self.shared.requests.lock().unwrap()
    }

    /// Protobuf bytes of the export requests received so far.
    pub fn bytes(&self) -> u64 {
        *self.shared.bytes.lock().unwrap()
    }

    /// Poll until `cond` holds on the spans received (or `timeout`); returns whether it held.
    pub fn wait_for(&self, timeout: Duration, mut cond: impl FnMut(&[ReceivedSpan]) -> bool) -> bool {
        crate::wait_until(timeout, || cond(&self.shared.spans.lock().unwrap()))
    }
}

async fn serve(
    grpc: std::net::TcpListener,
    http: std::net::TcpListener,
    shared: Arc<Shared>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let grpc = tokio::net::TcpListener::from_std(grpc).unwrap();
    let http = tokio::net::TcpListener::from_std(http).unwrap();
    let (stop_all, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut grpc_stop = stop_all.subscribe();
    let mut http_stop = stop_all.subscribe();
    let grpc_server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Grpc(shared.clone())))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(grpc), async move {
            let _ = grpc_stop.recv().await;
        });
    let h = shared.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let h = h.clone();
            async move {
                if h.counting {
                    h.count(body.len());
                    // An empty ExportTraceServiceResponse is an empty protobuf message.
                    return (
                        axum::http::StatusCode::OK,
                        [("content-type", "application/x-protobuf")],
                        Vec::new(),
                    );
                }
                match ExportTraceServiceRequest::decode(body) {
                    Ok(req) => {
                        h.record(req, "http");
                        let body = ExportTraceServiceResponse::default().encode_to_vec();
                        (axum::http::StatusCode::OK, [("content-type", "application/x-protobuf")], body)
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"bad protobuf".to_vec(),
                    ),
                }
            }
        }),
    );
    let http_server = axum::serve(http, app).with_graceful_shutdown(async move {
        let _ = http_stop.recv().await;
    });
    let grpc_task = tokio::spawn(grpc_server);
    let http_task = tokio::spawn(async move { http_server.await });
    let _ = stop.await;
    let _ = stop_all.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    })
    .await;
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Spans grouped by trace id.
pub fn by_trace(spans: &[ReceivedSpan]) -> BTreeMap<String, Vec<ReceivedSpan>> {
    let mut out: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
    for s in spans {
        out.entry(s.trace_id.clone()).or_default().push(s.clone());
    }
    out
}

/// The parent/child chain of one trace from its root, when the trace is a single chain (each span
/// has at most one child): the names in order. `None` if it branches, has no root or a parent is
/// missing.
pub fn chain(spans: &[ReceivedSpan]) -> Option<Vec<ReceivedSpan>> {
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.is_empty() || !spans.iter().any(|p| p.span_id == s.parent_span_id))?;
    let mut out = vec![root.clone()];
    loop {
        let last = &out[out.len() - 1];
        let children: Vec<&ReceivedSpan> =
            spans.iter().filter(|s| s.parent_span_id == last.span_id).collect();
        match children.as_slice() {
            [] => break,
            [one] => out.push((*one).clone()),
            _ => return None,
        }
    }
    (out.len() == spans.len()).then_some(out)
}
