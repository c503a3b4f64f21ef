//! A real OTLP logs receiver for the export tests: the OpenTelemetry protobuf definitions
//! served over gRPC and HTTP/protobuf inside a lab namespace, decoding what the agent
//! actually sends. It can be stopped and started again on the same port (a collector
//! outage), and [`silent`] stands in for a collector that accepts and never answers.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        logs_service_server::{LogsService, LogsServiceServer},
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    },
    common::v1::{any_value::Value as Av, AnyValue, KeyValue},
};
use prost::Message as _;
use serde_json::Value;

/// One LogRecord as received, its values as JSON.
#[derive(Clone, Debug)]
pub struct Received {
    pub resource: BTreeMap<String, Value>,
    pub scope: String,
    pub attributes: BTreeMap<String, Value>,
    pub body: String,
    pub severity: String,
    pub event_name: String,
    pub time_unix_nano: u64,
}

/// What every receiver started with it has received, in arrival order (kept across
/// restarts).
pub type Inbox = Arc<Mutex<Vec<Received>>>;

/// How a receiver is stricter than plain gRPC and HTTP.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Serve gRPC over TLS with this (certificate PEM, key PEM).
    pub tls: Option<(String, String)>,
    /// Refuse requests without this header (name, value): gRPC UNAUTHENTICATED, HTTP 401.
    pub require: Option<(String, String)>,
}

pub struct Receiver {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("lab namespace");
    // SAFETY: setns on a valid namespace fd; it affects only this thread.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {ns}: {}",
        std::io::Error::last_os_error()
    );
}

fn json(v: &AnyValue) -> Value {
    match &v.value {
        None => Value::Null,
        Some(Av::StringValue(s)) => Value::String(s.clone()),
        Some(Av::BoolValue(b)) => Value::Bool(*b),
        Some(Av::IntValue(i)) => Value::from(*i),
        Some(Av::DoubleValue(d)) => Value::from(*d),
        Some(Av::BytesValue(b)) => Value::from(b.clone()),
        Some(Av::ArrayValue(a)) => Value::Array(a.values.iter().map(json).collect()),
        Some(Av::KvlistValue(l)) => Value::Object(
            l.values
                .iter()
                .map(|kv| {
                    (
                        kv.key.clone(),
                        kv.value.as_ref().map(json).unwrap_or(Value::Null),
                    )
                })
                .collect(),
        ),
        Some(_) => Value::Null,
    }
}

fn map(kvs: &[KeyValue]) -> BTreeMap<String, Value> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(json).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn store(inbox: &Inbox, req: ExportLogsServiceRequest) {
    let mut out = inbox.lock().unwrap();
    for rl in req.resource_logs {
        let resource = rl.resource.map(|r| map(&r.attributes)).unwrap_or_default();
        for sl in rl.scope_logs {
            let scope = sl.scope.map(|s| s.name).unwrap_or_default();
            for r in sl.log_records {
                out.push(Received {
                    resource: resource.clone(),
                    scope: scope.clone(),
                    attributes: map(&r.attributes),
                    body: r
                        .body
                        .as_ref()
                        .map(json)
                        .and_then(|b| b.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    severity: r.severity_text,
                    event_name: r.event_name,
                    time_unix_nano: r.time_unix_nano,
                });
            }
        }
    }
}

struct Grpc(Inbox, Option<(String, String)>);

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        req: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if let Some((name, value)) = &self.1 {
            let got = req
                .metadata()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok());
            if got != Some(value.as_str()) {
                return Err(tonic::Status::unauthenticated(
                    "missing or wrong credentials",
                ));
            }
        }
        store(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

type HttpState = (Inbox, Option<(String, String)>);

async fn http_export(
    axum::extract::State((inbox, require)): axum::extract::State<HttpState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    Vec<u8>,
) {
    let ct = [("content-type", "application/x-protobuf")];
    if let Some((name, value)) = &require {
        if headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str()) {
            return (axum::http::StatusCode::UNAUTHORIZED, ct, Vec::new());
        }
    }
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return (
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ct,
            Vec::new(),
        );
    }
    match ExportLogsServiceRequest::decode(body) {
        Ok(req) => {
            store(&inbox, req);
            (
                axum::http::StatusCode::OK,
                ct,
                ExportLogsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, ct, Vec::new()),
    }
}

impl Receiver {
    /// OTLP/gRPC on `grpc` and OTLP/HTTP on `http`, inside netns `ns`; listening when this
    /// returns.
    pub fn start(ns: &str, grpc: SocketAddr, http: SocketAddr, inbox: Inbox) -> Self {
        Self::start_with(ns, grpc, http, inbox, Options::default())
    }

    /// As [`Receiver::start`], with TLS and a required header as `opts` says.
    pub fn start_with(
        ns: &str,
        grpc: SocketAddr,
        http: SocketAddr,
        inbox: Inbox,
        opts: Options,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let ns = ns.to_owned();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let g = tokio::net::TcpListener::bind(grpc)
                    .await
                    .expect("bind gRPC");
                let h = tokio::net::TcpListener::bind(http)
                    .await
                    .expect("bind HTTP");
                ready_tx.send(()).unwrap();
                let app = axum::Router::new()
                    .route("/v1/logs", axum::routing::post(http_export))
                    .with_state((inbox.clone(), opts.require.clone()));
                let mut builder = tonic::transport::Server::builder();
                if let Some((cert, key)) = &opts.tls {
                    builder = builder
                        .tls_config(
                            tonic::transport::ServerTlsConfig::new()
                                .identity(tonic::transport::Identity::from_pem(cert, key)),
                        )
                        .expect("receiver TLS");
                }
                let grpc_server = builder
                    .add_service(LogsServiceServer::new(Grpc(inbox, opts.require)))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(g));
                let http_server = axum::serve(h, app);
                tokio::select! {
                    _ = grpc_server => {}
                    _ = http_server => {}
                    _ = stopped => {}
                }
            });
        });
        ready.recv().expect("receiver started");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops listening and drops every open connection (the collector goes away).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("receiver thread");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A collector that accepts connections and never answers, inside netns `ns`, until the
/// guard is dropped.
pub struct Silent {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn silent(ns: &str, addr: SocketAddr) -> Silent {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let ns = ns.to_owned();
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        enter(&ns);
        let l = std::net::TcpListener::bind(addr).expect("bind silent collector");
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let mut held = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match l.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    });
    ready.recv().expect("silent collector started");
    Silent {
        stop,
        thread: Some(thread),
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
