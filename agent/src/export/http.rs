//! HTTP endpoints: /metrics, /healthz, /readyz on the public listener; /flows and
//! /observations on the loopback-only records listener.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Query, State},
    http::{header, StatusCode},
    middleware,
    response::IntoResponse,
    routing::get,
    Extension, Router,
};
use serde::Deserialize;
use tokio::net::TcpListener;

use super::{ConnectionView, Shared};
use crate::{
    access::{Guard, KubeReview, Review, Scope},
    classify::{Egress, FlowClass},
    flow::FlowView,
    net::Protocol,
};

/// Filters accepted by `/flows` and `/observations`; unknown parameters are rejected
/// with 400.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    pub iface: Option<String>,
    pub proto: Option<Protocol>,
    /// Matches either end (and, for connections, the translated addresses).
    pub ip: Option<std::net::IpAddr>,
    /// Matches either port (and, for connections, the translated ports).
    pub port: Option<u16>,
    /// Connections with this namespace at either end (or as the Service backend's).
    pub namespace: Option<String>,
    /// Connections with this tenant at either end.
    pub tenant: Option<String>,
    pub class: Option<FlowClass>,
    pub egress: Option<Egress>,
    pub cross_tenant: Option<bool>,
    /// A sensitive target name (imds, kubelet…), or `any`.
    pub sensitive: Option<String>,
    /// Connections whose attempt went this way (established, refused, unanswered, reset,
    /// replied, unreplied).
    pub outcome: Option<crate::flow::Outcome>,
    /// Connections whose destination the source pod resolved from a name this pattern
    /// covers (`api.example.com`, `*.blob.core.windows.net`).
    pub fqdn: Option<crate::dns::NamePattern>,
    /// Most records in one response (at most [`MAX_RECORDS`]); the rest follow with `after`.
    pub limit: Option<usize>,
    /// Only connections with an id above this (the `x-tenantflow-next-after` of the last page).
    pub after: Option<u64>,
}

/// Most records one `/flows` response carries; a larger answer is paged.
pub const MAX_RECORDS: usize = 10_000;
/// Header naming the `after` value of the next page, when there is one.
pub const NEXT_AFTER: &str = "x-tenantflow-next-after";

impl FlowQuery {
    /// A connection matches when any of its sightings is on `iface`.
    pub fn matches_connection(&self, c: &ConnectionView) -> bool {
        let k = &c.class;
        let ends = || {
            [
                Some(&k.src_identity),
                Some(&k.dst_identity),
                k.backend_identity.as_ref(),
            ]
            .into_iter()
            .flatten()
        };
        self.namespace
            .as_ref()
            .is_none_or(|n| ends().any(|e| e.namespace.as_deref() == Some(n.as_str())))
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| ends().any(|e| e.tenant.as_deref() == Some(t.as_str())))
            && self.class.is_none_or(|x| x == k.flow_class)
            && self.egress.is_none_or(|x| x == k.egress)
            && self.cross_tenant.is_none_or(|x| x == k.cross_tenant)
            && self.outcome.is_none_or(|o| c.outcome == Some(o))
            && self
                .fqdn
                .as_ref()
                .is_none_or(|p| c.dst_fqdn.as_deref().is_some_and(|n| p.matches(n)))
            && self.sensitive.as_ref().is_none_or(|x| match &k.sensitive {
                Some(s) => x == "any" || x == s,
                None => false,
            })
            && self
                .iface
                .as_ref()
                .is_none_or(|i| c.sightings.iter().any(|s| *s.iface == **i))
            && self.proto.is_none_or(|p| p == c.proto)
            && self.ip.is_none_or(|ip| c.addresses().any(|a| a == ip))
            && self.port.is_none_or(|p| c.ports().any(|x| x == p))
    }

    /// Identity filters need a connection: they match no per-hook observation.
    pub fn has_identity_filters(&self) -> bool {
        self.namespace.is_some()
            || self.tenant.is_some()
            || self.class.is_some()
            || self.egress.is_some()
            || self.cross_tenant.is_some()
            || self.sensitive.is_some()
            || self.outcome.is_some()
            || self.fqdn.is_some()
    }

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

/// /metrics, /healthz and /readyz (`metrics_route` is the /metrics route, guarded or not).
pub fn public_router(
    shared: Arc<Shared>,
    metrics_route: axum::routing::MethodRouter<Arc<Shared>>,
) -> Router {
    Router::new()
        .route("/metrics", metrics_route)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// The open /metrics route.
pub fn metrics_route() -> axum::routing::MethodRouter<Arc<Shared>> {
    get(metrics)
}

/// What Prometheus and the kubelet need, on the node address: counts by namespace and
/// tenant, no pod names, addresses or processes.
/// With `guarded`, served over TLS and `/metrics` needs a reviewed token; the probes stay
/// open (the kubelet sends none).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    guarded: Option<(Arc<Guard<KubeReview>>, Arc<rustls::ServerConfig>)>,
) -> std::io::Result<()> {
    let mut metrics_route = metrics_route();
    if let Some((guard, _)) = &guarded {
        metrics_route = metrics_route.route_layer(middleware::from_fn_with_state(
            guard.clone(),
            super::guarded::path_authorized::<KubeReview>,
        ));
    }
    let conns = super::listener::ConnMetrics::from(&shared.metrics);
    let app = public_router(shared, metrics_route);
    let tls = guarded.map(|(_, tls)| tls);
    super::listener::serve(
        "public",
        listener,
        app,
        tls,
        conns,
        super::listener::Protocol::Http1,
    )
    .await
}

/// Flow records name every tenant's pods, addresses and processes: served on a listener of
/// their own, on loopback (reached with `kubectl exec` or `kubectl port-forward`), or on the
/// node address behind TLS and Kubernetes authorization (`guard`).
pub async fn serve_records(
    listener: TcpListener,
    shared: Arc<Shared>,
    exposed: Option<(Arc<Guard<KubeReview>>, Arc<rustls::ServerConfig>)>,
) -> std::io::Result<()> {
    let conns = super::listener::ConnMetrics::from(&shared.metrics);
    let (app, tls) = match exposed {
        None => (records_router::<KubeReview>(shared, None), None),
        Some((guard, tls)) => (records_router(shared, Some(guard)), Some(tls)),
    };
    super::listener::serve(
        "records",
        listener,
        app,
        tls,
        conns,
        super::listener::Protocol::Http1,
    )
    .await
}

/// The records routes, bounded per caller, behind the guard when there is one.
pub fn records_router<R: Review>(shared: Arc<Shared>, guard: Option<Arc<Guard<R>>>) -> Router {
    let mut app = Router::new()
        .route("/flows", get(flows))
        .route("/observations", get(observations))
        .with_state(shared.clone());
    if let Some(guard) = guard {
        app = app.layer(middleware::from_fn_with_state(
            (guard, shared),
            super::guarded::authorize::<R>,
        ));
    }
    app.layer(middleware::from_fn_with_state(
        Arc::new(super::guarded::Bounds::default()),
        super::guarded::bounded,
    ))
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

/// Alive unless the harvest loop is stuck (then the kubelet restarts the agent).
async fn healthz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match s.stalled_for() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(age) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "harvest stalled: the last one finished {:.1}s ago\n",
                age.as_secs_f64()
            ),
        ),
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    if s.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached or identity inventory not listed yet\n",
        )
    }
}

type QueryResult = Result<Query<FlowQuery>, axum::extract::rejection::QueryRejection>;

/// The query, or the 400 response that names what was wrong and what is accepted.
fn parse_query(path: &str, query: QueryResult) -> Result<FlowQuery, (StatusCode, String)> {
    query.map(|Query(q)| q).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "bad {path} query: {}; accepted parameters: iface, proto (tcp|udp|icmp|icmpv6), ip, port, namespace, tenant, class (pod_to_pod|pod_to_node|pod_to_service|pod_to_egress|node_to_pod|node_to_node|node_to_service|node_to_egress|external_to_pod|external_to_node|other), egress (none|mediated|exempt|unmediated), cross_tenant (true|false), sensitive (a target name or any)\n",
                e.body_text()
            ),
        )
    })
}

/// Connections: one record each, both NAT sides, counted once per direction.
async fn flows(
    State(s): State<Arc<Shared>>,
    scope: Option<Extension<Scope>>,
    query: QueryResult,
) -> axum::response::Response {
    let q = match parse_query("/flows", query) {
        Ok(q) => q,
        Err(bad) => return bad.into_response(),
    };
    let scope = scope.map(|Extension(s)| s).unwrap_or(Scope::All);
    let limit = q.limit.unwrap_or(MAX_RECORDS).clamp(1, MAX_RECORDS);
    s.fresh_records().await;
    let mut out: Vec<Arc<ConnectionView>> = s.flows(|all| {
        all.iter()
            .filter(|c| q.after.is_none_or(|a| c.id > a))
            .filter(|c| scope.admits(&c.class) && q.matches_connection(c))
            .cloned()
            .collect()
    });
    out.sort_unstable_by_key(|c| c.id);
    let next = (out.len() > limit).then(|| out[limit - 1].id);
    out.truncate(limit);
    // Redacted and encoded as the client reads, a chunk at a time.
    let body = super::json_stream::array(out, move |c| {
        let mut c = ConnectionView::clone(c);
        scope.redact(&mut c.class, &mut c.process);
        c
    });
    let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(n) = next {
        resp.headers_mut()
            .insert(NEXT_AFTER, header::HeaderValue::from(n));
    }
    resp
}

/// Raw per-hook sightings, for debugging the datapath.
async fn observations(
    State(s): State<Arc<Shared>>,
    scope: Option<Extension<Scope>>,
    query: QueryResult,
) -> axum::response::Response {
    if matches!(scope, Some(Extension(Scope::Namespaces(_)))) {
        return (
            StatusCode::FORBIDDEN,
            "/observations (raw per-hook sightings) is for cluster-wide readers: use /flows?namespace=…\n",
        )
            .into_response();
    }
    let q = match parse_query("/observations", query) {
        Ok(q) if q.has_identity_filters() => {
            return (
                StatusCode::BAD_REQUEST,
                "bad /observations query: namespace, tenant, class, egress, cross_tenant and sensitive filter connections: use /flows\n",
            )
                .into_response()
        }
        Ok(q) => q,
        Err(bad) => return bad.into_response(),
    };
    s.fresh_records().await;
    let out: Vec<FlowView> =
        s.observations(|all| all.iter().filter(|f| q.matches(f)).cloned().collect());
    let body = super::json_stream::array(out, |f| f.clone());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests;
