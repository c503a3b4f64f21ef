//! One accept loop for the agent's HTTP listeners (metrics and probes on the node address,
//! flow records), plain or TLS, with what a listener reachable from every pod needs:
//! - open connections are capped per source address and in total, the excess closed at
//!   once, counted and logged, so one pod cannot hold every slot and the kubelet's probe
//!   (from the node address) keeps getting in;
//! - a client has [`HEADER_TIMEOUT`] to send a request's headers, which also closes idle
//!   keep-alive connections and half-sent requests;
//! - a TLS handshake has [`HANDSHAKE`].
//!
//! What one response may hold is bounded where responses are made (`guarded.rs`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tracing::{debug, warn};

/// A client gets this long to send a request's headers (and an idle keep-alive connection
/// this long before it is closed).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to finish the TLS handshake.
pub const HANDSHAKE: Duration = Duration::from_secs(10);
/// Open connections from one source address.
pub const PER_SOURCE: usize = 256;
/// Open connections in total, per listener.
pub const TOTAL: usize = 1024;

/// What a listener speaks.
#[derive(Clone, Copy, Debug)]
pub enum Protocol {
    /// HTTP/1.1 (metrics, probes, records).
    Http1,
    /// HTTP/1.1 or HTTP/2 with prior knowledge (the index's follower streams).
    Auto,
}

/// The listener's connection series (registered with the agent's metrics).
#[derive(Clone)]
pub struct ConnMetrics {
    /// `tenantflow_http_connections{listener}`.
    pub open: IntGaugeVec,
    /// `tenantflow_http_connections_refused_total{listener,reason}`.
    pub refused: IntCounterVec,
}

impl From<&super::AgentMetrics> for ConnMetrics {
    fn from(m: &super::AgentMetrics) -> Self {
        Self {
            open: m.http_connections.clone(),
            refused: m.http_refused.clone(),
        }
    }
}

/// Who holds how many connections now.
struct Slots {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
    last_warning: Option<Instant>,
}

/// One open connection's slot, given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    source: IpAddr,
    open: prometheus::IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        s.total -= 1;
        if let Some(n) = s.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                s.by_source.remove(&self.source);
            }
        }
        self.open.dec();
    }
}

/// Serve `app` on `listener` (over TLS with `tls`) until the task is aborted.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    m: ConnMetrics,
    protocol: Protocol,
) -> std::io::Result<()> {
    let slots = Arc::new(Mutex::new(Slots {
        total: 0,
        by_source: HashMap::new(),
        last_warning: None,
    }));
    let open = m.open.with_label_values(&[name]);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            // Out of file descriptors and the like: the listener itself is fine.
            Err(e) => {
                warn!(listener = name, error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = peer.ip().to_canonical();
        let slot = match take_slot(&slots, source, &open) {
            Ok(s) => s,
            Err(reason) => {
                m.refused.with_label_values(&[name, reason]).inc();
                warn_refused(&slots, name, source, reason);
                drop(tcp);
                continue;
            }
        };
        let app = app.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => connection(tcp, app, name, peer, protocol).await,
                Some(a) => match tokio::time::timeout(HANDSHAKE, a.accept(tcp)).await {
                    Ok(Ok(tls)) => connection(tls, app, name, peer, protocol).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
}

fn take_slot(
    slots: &Arc<Mutex<Slots>>,
    source: IpAddr,
    open: &prometheus::IntGauge,
) -> Result<Slot, &'static str> {
    let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
    if s.total >= TOTAL {
        return Err("total");
    }
    let n = s.by_source.entry(source).or_default();
    if *n >= PER_SOURCE {
        return Err("per_source");
    }
    *n += 1;
    s.total += 1;
    open.inc();
    Ok(Slot {
        slots: slots.clone(),
        source,
        open: open.clone(),
    })
}

/// At most one line every ten seconds, however fast connections are refused.
fn warn_refused(slots: &Mutex<Slots>, name: &str, source: IpAddr, reason: &str) {
    let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
    if s.last_warning
        .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
    {
        return;
    }
    s.last_warning = Some(Instant::now());
    let held = s.by_source.get(&source).copied().unwrap_or(0);
    warn!(
        listener = name,
        %source,
        held,
        open = s.total,
        reason,
        "connection refused: at the cap of {PER_SOURCE} per source / {TOTAL} in total (tenantflow_http_connections_refused_total counts them)"
    );
}

async fn connection<I>(
    io: I,
    app: axum::Router,
    name: &str,
    peer: std::net::SocketAddr,
    protocol: Protocol,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let io = TokioIo::new(io);
    let ended = match protocol {
        Protocol::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            b.serve_connection(io, service)
                .await
                .map_err(|e| e.to_string())
        }
        Protocol::Auto => {
            let mut b =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            b.serve_connection(io, service)
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = ended {
        debug!(listener = name, %peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_source_and_given_back() {
        let slots = Arc::new(Mutex::new(Slots {
            total: 0,
            by_source: HashMap::new(),
            last_warning: None,
        }));
        let open = prometheus::IntGauge::new("o", "o").unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<Slot> = (0..PER_SOURCE)
            .map(|_| take_slot(&slots, a, &open).unwrap())
            .collect();
        assert_eq!(take_slot(&slots, a, &open).err(), Some("per_source"));
        let other = take_slot(&slots, b, &open).expect("another source gets in");
        assert_eq!(open.get(), PER_SOURCE as i64 + 1);
        drop(held);
        drop(other);
        assert_eq!(open.get(), 0);
        assert!(slots.lock().unwrap().by_source.is_empty());
        take_slot(&slots, a, &open).expect("free again");
    }
}
