//! `tenantflow index`: the cluster-wide watches, run once for the whole cluster, serving
//! every agent the inventory as a snapshot plus deltas (see `index/`). Same config, same
//! store and the same identity task as an agent in direct mode.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use tracing::info;

use super::UsageError;
use crate::{
    access::{Guard, KubeReview},
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
    /// Where followers connect (HTTP/2 without TLS, inside the cluster), and where
    /// /metrics, /healthz and /readyz are served.
    #[arg(long, default_value = "0.0.0.0:9993")]
    pub listen: SocketAddr,
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
    let shared = Arc::new(Shared::new(AgentMetrics::new("none", "none")));
    let mut store = Store::new();
    store.keep_journal();
    let store = SharedStore::new(store);
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
    watch::spawn_all(client, args.initial_list, tx);
    // No snapshot file to reload.
    let (_, reload) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(inventory.run(rx, reload, shared.clone()));
    let conns = export::listener::ConnMetrics::from(&shared.metrics);
    let app = followers.merge(export::public_router(shared, export::metrics_route()));
    info!(listen = %args.listen, "index: serving followers");
    // The same bounded accept loop as the agent's listeners, speaking HTTP/2 too (agents
    // follow over h2c). Followers' streams end with the process; they resume elsewhere.
    tokio::select! {
        served = export::listener::serve("index", listener, app, None, conns, export::listener::Protocol::Auto) => {
            served.context("serving followers")
        }
        s = shutdown.signalled() => {
            info!(signal = s, "index: shutting down");
            Ok(())
        }
    }
}
