//! `tenantflow index`: the cluster-wide watches, run once for the whole cluster, serving
//! every agent the inventory as a snapshot plus deltas (see `index/`). Same config, same
//! store and the same identity task as an agent in direct mode.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use tracing::info;

use super::UsageError;
use crate::{
    access::{tls::ReloadingCert, Guard, KubeReview},
    export::{self, guarded::path_authorized, AgentMetrics, Shared},
    identity::SharedStore,
    identity::{watch, Store},
    index::{
        journal::{Journal, JournalMetrics},
        serve,
    },
    inventory::{self, Inventory},
    pipeline::gateway_label_keys,
    shutdown::Shutdown,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FollowerAuth {
    Kubernetes,
    None,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Where followers connect (HTTP/2, over TLS with --tls-cert), and where /metrics,
    /// /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9993")]
    pub listen: SocketAddr,
    /// Serve /metrics, /healthz and /readyz here (plain HTTP/1.1) instead of on --listen:
    /// with TLS on --listen, scrapers and probes then need no CA.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate (chain) to serve followers over TLS: their service-account tokens
    /// then never cross the network in clear text. Without it, plain HTTP/2.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate files are re-read (a renewed Secret is served without a
    /// restart).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: std::time::Duration,
    /// The agents' config file: tenancy and egress-gateway selectors decide what of each
    /// pod is kept, exactly as an agent would keep it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How the watchers (re)list (see `tenantflow agent --help`).
    #[arg(long, value_enum, default_value = "cache")]
    pub initial_list: watch::InitialList,
    /// Who may follow: `kubernetes` (a bearer token the API accepts, whose user RBAC grants
    /// `get` on the non-resource URL /v1/identity: the chart grants it to the agents' service
    /// account) or `none` (anyone who can reach --listen: the inventory of every pod).
    #[arg(long, value_enum, default_value = "kubernetes")]
    pub auth: FollowerAuth,
    /// How long a token's review is reused.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: std::time::Duration,
    /// Bytes of recent changes kept so a follower that reconnects resumes instead of
    /// taking a full snapshot.
    #[arg(long, default_value_t = 64 << 20)]
    pub resume_bytes: usize,
    #[command(flatten)]
    pub relay: RelayArgs,
}

/// `/v1/flows`: one query relayed to every node's agent (docs/all-nodes.md).
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The agents' records port (their --flows-listen), asked at each node's address.
    #[arg(long, default_value_t = 9991)]
    pub agent_records_port: u16,
    /// PEM CA the agents' records certificates chain to: the relay then speaks https to
    /// them (agents with --flows-auth kubernetes serve TLS). Without it, plain http.
    #[arg(long, value_name = "FILE")]
    pub agent_ca: Option<PathBuf>,
    /// The name the agents' certificate carries (the chart's: <release>-agent); without
    /// it each node's address must be in the certificate.
    #[arg(long, value_name = "NAME", requires = "agent_ca")]
    pub agent_server_name: Option<String>,
    /// Nodes asked at once, at most.
    #[arg(long, default_value_t = 32)]
    pub relay_concurrency: usize,
    /// One node's whole answer, at most; a node slower than this is named as timed out.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub relay_timeout: std::time::Duration,
    /// Records in one relayed answer, at most (more are counted as omitted).
    #[arg(long, default_value_t = 100_000)]
    pub relay_max_records: usize,
}

impl RelayArgs {
    fn relay(&self) -> Result<crate::relay::Relay, UsageError> {
        super::usage::within(
            "--relay-timeout",
            self.relay_timeout,
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(600),
            "5s",
        )?;
        if self.relay_concurrency == 0 || self.relay_max_records == 0 {
            return Err(UsageError(
                "--relay-concurrency and --relay-max-records must be at least 1".into(),
            ));
        }
        crate::relay::Relay::new(crate::relay::RelayConfig {
            port: self.agent_records_port,
            ca: self.agent_ca.clone(),
            server_name: self.agent_server_name.clone(),
            concurrency: self.relay_concurrency,
            timeout: self.relay_timeout,
            max_records: self.relay_max_records,
        })
        .map_err(|e| UsageError(e.to_string()))
    }
}

pub fn run(args: IndexArgs) -> anyhow::Result<()> {
    super::block_on(run_async(args))
}

async fn run_async(args: IndexArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing SIGTERM/SIGINT handlers")?;
    let config = super::load_config(args.config.as_deref())?;
    if config.snapshot.is_some() {
        return Err(UsageError(
            "identity.snapshot: the index watches the Kubernetes API; remove identity.snapshot from its config".into(),
        )
        .into());
    }
    // Flags and certificate files first: bad input is named before the API is asked.
    let (cert, tls) = tls(&args)?;
    let relay = Arc::new(args.relay.relay()?);
    let client = crate::identity::client::connect().await.map_err(|e| {
        UsageError(format!(
            "the index needs the Kubernetes API ({e}): run it in the cluster with its service account, or set KUBECONFIG"
        ))
    })?;
    let listener = export::bind(args.listen).await.map_err(|e| {
        UsageError(format!(
            "--listen {}: cannot bind ({e}); pick a free address",
            args.listen
        ))
    })?;
    let metrics_listener = match args.metrics_listen {
        Some(addr) => Some(export::bind(addr).await.map_err(|e| {
            UsageError(format!(
                "--metrics-listen {addr}: cannot bind ({e}); pick a free address"
            ))
        })?),
        None => None,
    };
    let shared = Arc::new(Shared::new(AgentMetrics::new("none", "none")));
    if let Some(c) = cert {
        tokio::spawn(c.watch(args.tls_reload_interval, shared.metrics.tls_reloads.clone()));
    }
    let mut store = Store::new();
    store.keep_journal();
    let store = SharedStore::new(store);
    let relay_metrics = crate::relay::RelayMetrics::new(&shared.metrics.registry)
        .context("registering relay metrics")?;
    let relayed = crate::relay::route::router(relay, store.clone(), relay_metrics);
    let journal = Arc::new(Journal::new(
        store.clone(),
        args.resume_bytes,
        JournalMetrics::new(&shared.metrics.registry).context("registering index metrics")?,
    ));
    let inventory = Inventory {
        store,
        source: "kubernetes",
        tenancy: config.tenancy.clone(),
        pod_label_keys: gateway_label_keys(&config),
        journal: Some(journal.clone()),
        sources: watch::Source::CLUSTER.to_vec(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(inventory::QUEUE);
    let mut followers = serve::router(journal);
    if args.auth == FollowerAuth::Kubernetes {
        let guard = Arc::new(Guard::new(
            KubeReview::new(client.clone()),
            args.auth_cache_ttl,
        ));
        followers = followers.route_layer(axum::middleware::from_fn_with_state(
            guard,
            path_authorized::<KubeReview>,
        ));
    }
    // Outside the followers' review: each agent reviews the caller's own token.
    let followers = followers.merge(relayed);
    watch::spawn_all(client, args.initial_list, tx);
    // No snapshot file to reload.
    let (_, reload) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(inventory.run(rx, reload, shared.clone()));
    let conns = export::listener::ConnMetrics::from(&shared.metrics);
    let public = export::public_router(shared, export::metrics_route());
    info!(listen = %args.listen, tls = tls.is_some(), metrics_listen = ?args.metrics_listen, "index: serving followers");
    // Metrics and probes on their own plain listener when asked: scrapers and kubelets
    // need no CA, and followers keep TLS to themselves.
    let (app, public_server) = match metrics_listener {
        Some(l) => {
            let serve = export::listener::serve(
                "public",
                l,
                public,
                None,
                conns.clone(),
                export::listener::Protocol::Http1,
            );
            (followers, Some(tokio::spawn(serve)))
        }
        None => (followers.merge(public), None),
    };
    // The same bounded accept loop as the agent's listeners, speaking HTTP/2 too.
    // Followers' streams end with the process; they resume elsewhere.
    let outcome = tokio::select! {
        served = export::listener::serve("index", listener, app, tls, conns, export::listener::Protocol::Auto) => {
            served.context("serving followers")
        }
        s = shutdown.signalled() => {
            info!(signal = s, "index: shutting down");
            Ok(())
        }
    };
    if let Some(p) = public_server {
        p.abort();
    }
    outcome
}

type Tls = (
    Option<Arc<ReloadingCert>>,
    Option<Arc<rustls::ServerConfig>>,
);

/// The followers' TLS from --tls-cert/--tls-key, offering HTTP/2 by ALPN.
fn tls(args: &IndexArgs) -> Result<Tls, UsageError> {
    super::usage::within(
        "--tls-reload-interval",
        args.tls_reload_interval,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
        "10s",
    )?;
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok((None, None));
    };
    let usage = |e: crate::access::tls::TlsError| UsageError(e.to_string());
    let cert = ReloadingCert::load(cert, key).map_err(usage)?;
    let config = cert.server_config(&[b"h2", b"http/1.1"]).map_err(usage)?;
    Ok((Some(cert), Some(config)))
}
