//! HTTP endpoints: /metrics, /healthz, /readyz, /flows.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::Shared;
use crate::flow::{FlowView, Protocol};

/// Filters accepted by `/flows`; unknown parameters are rejected with 400.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    pub iface: Option<String>,
    pub proto: Option<Protocol>,
    /// Matches either end.
    pub ip: Option<std::net::IpAddr>,
    /// Matches either port.
    pub port: Option<u16>,
}

impl FlowQuery {
    pub fn matches(&self, f: &FlowView) -> bool {
        self.iface.as_ref().is_none_or(|i| *i == f.iface)
            && self.proto.is_none_or(|p| p == f.proto)
            && self.ip.is_none_or(|ip| ip == f.src || ip == f.dst)
            && self.port.is_none_or(|p| p == f.src_port || p == f.dst_port)
    }
}

/// Bind early, before anything is attached, so a taken port fails start-up cleanly.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/flows", get(flows))
        .with_state(shared);
    axum::serve(listener, app).await
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached yet\n",
        )
    }
}

async fn flows(
    State(s): State<Arc<Shared>>,
    query: Result<Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "bad /flows query: {}; accepted parameters: iface, proto (tcp|udp|icmp|icmpv6), ip, port\n",
                    e.body_text()
                ),
            )
                .into_response()
        }
    };
    let out: Vec<FlowView> = s.flows(|all| all.iter().filter(|f| q.matches(f)).cloned().collect());
    Json(out).into_response()
}
