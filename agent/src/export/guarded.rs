//! What stands before the records handlers: per-caller bounds (a cap on requests in
//! flight and a deadline, both covering the whole response, written out to the slowest
//! reader) on every records listener, and on an exposed one the guard that turns a bearer
//! token into a [`Scope`] or a clear 401/403/503.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Query, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Shared;
use crate::access::{Denied, Guard, Review, Wanted};

/// Requests served at once, counted until their response is written out; more get 503 at
/// once rather than queueing.
pub const IN_FLIGHT: usize = 16;
/// A request gets this long, from arriving to the last byte of its response read by the
/// client; a reader slower than that is cut off.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Bounds {
    permits: Arc<Semaphore>,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }
}

pub async fn bounded(State(b): State<Arc<Bounds>>, req: Request, next: Next) -> Response {
    let Ok(permit) = b.permits.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            format!("busy: {IN_FLIGHT} records requests in flight; retry\n"),
        )
            .into_response();
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    match tokio::time::timeout_at(deadline, next.run(req)).await {
        Ok(r) => hold_until_sent(r, permit, deadline),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("request took longer than {}s\n", DEADLINE.as_secs()),
        )
            .into_response(),
    }
}

/// The response with its body streamed through: the in-flight permit is held until the
/// last byte is written (or the client goes), and a body still being read at `deadline`
/// is cut off (the connection is closed mid-response).
fn hold_until_sent(
    resp: Response,
    permit: OwnedSemaphorePermit,
    deadline: tokio::time::Instant,
) -> Response {
    let (parts, body) = resp.into_parts();
    let data = body.into_data_stream();
    let body = futures::stream::unfold(Some((data, permit)), move |state| async move {
        let (mut data, permit) = state?;
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some((data, permit)))),
            Ok(None) => None,
            Err(_) => Some((
                Err(axum::Error::new(format!(
                    "response not read within {}s: cut off",
                    DEADLINE.as_secs()
                ))),
                None,
            )),
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(body))
}

#[derive(serde::Deserialize, Default)]
struct Asked {
    namespace: Option<String>,
    tenant: Option<String>,
}

pub async fn authorize<R: Review>(
    State((guard, shared)): State<(Arc<Guard<R>>, Arc<Shared>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = bearer(req.headers());
    // Only what is needed to decide; the handler validates the whole query.
    let asked = Query::<Asked>::try_from_uri(req.uri())
        .map(|Query(a)| a)
        .unwrap_or_default();
    let mut wanted = Wanted::default();
    wanted.namespaces.extend(asked.namespace);
    if let Some(t) = &asked.tenant {
        wanted.namespaces.extend(shared.namespaces_of(t));
    }
    match guard.decide(token.as_deref(), &wanted).await {
        Ok(scope) => {
            req.extensions_mut().insert(scope);
            next.run(req).await
        }
        Err(d) => refusal(d),
    }
}

/// A path behind the same review: a token granted `get` on the request's path as a
/// non-resource URL (`/metrics`, what Prometheus' usual ClusterRole grants; the identity
/// index's `/v1/identity`, what the agent's ClusterRole grants).
pub async fn path_authorized<R: Review>(
    State(guard): State<Arc<Guard<R>>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    match guard
        .check_path(bearer(req.headers()).as_deref(), &path)
        .await
    {
        Ok(()) => next.run(req).await,
        Err(d) => refusal(d),
    }
}

/// The bearer token of a request's `Authorization` header, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// 401 (with `WWW-Authenticate: Bearer`), 403 or 503, saying why.
fn refusal(d: Denied) -> Response {
    let status = match d {
        Denied::NoToken | Denied::BadToken => StatusCode::UNAUTHORIZED,
        Denied::Forbidden(_) => StatusCode::FORBIDDEN,
        Denied::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = (status, format!("{d}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    resp
}
