//! What the agent reads besides the kernel: its NAT sources and its identity inputs (the
//! API, the identity index, or a snapshot file).

use std::time::Duration;

use tracing::{info, warn};

use super::AgentArgs;
use crate::cli::UsageError;
use crate::{
    config::Config,
    export::Shared,
    identity::{self, reload::Reloaded, snapshot, watch::Source, Store},
    index::follow,
    nat::{self, Mechanism},
};

/// Start conntrack's and Cilium's NAT sources; which ones answered.
pub(super) fn probe_nat(
    args: &AgentArgs,
    tx: tokio::sync::mpsc::UnboundedSender<nat::NatEvent>,
) -> Mechanism {
    let faults = nat::Faults {
        delay: args.test_conntrack_delay,
        rcvbuf: args.test_conntrack_rcvbuf,
    };
    let conntrack = match nat::spawn_conntrack(tx.clone(), faults) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "conntrack unavailable: netfilter NAT will not be joined");
            false
        }
    };
    let cilium = cilium_snat(args, tx);
    let mechanism = Mechanism::of(conntrack, cilium);
    if mechanism == Mechanism::None {
        warn!("no NAT source: flows will carry no pre/post-NAT addresses");
    }
    info!(nat_mechanism = mechanism.as_str(), "NAT source probed");
    mechanism
}

/// Cilium's BPF masquerade maps, when pinned under --cilium-bpffs: probed, then polled every
/// half harvest. A map of an unknown layout is reported and left alone.
pub(super) fn cilium_snat(
    args: &AgentArgs,
    tx: tokio::sync::mpsc::UnboundedSender<nat::NatEvent>,
) -> bool {
    if args.no_cilium_snat {
        return false;
    }
    let maps = match nat::cilium::open(&args.cilium_bpffs) {
        Ok(m) if m.is_empty() => return false,
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "Cilium's SNAT maps cannot be used");
            return false;
        }
    };
    let names: Vec<String> = maps.iter().map(|m| m.path.display().to_string()).collect();
    match nat::cilium::spawn(maps, tx, args.harvest_interval / 2) {
        Ok(()) => {
            info!(maps = ?names, "reading SNAT from Cilium's BPF masquerade maps");
            true
        }
        Err(e) => {
            warn!(error = %e, "cannot start the Cilium SNAT reader");
            false
        }
    }
}

/// How often the snapshot file is checked for changes.
pub(super) const SNAPSHOT_POLL: Duration = Duration::from_secs(1);

/// The identity source: the snapshot file the config names; else the Kubernetes API
/// (in-cluster service account or kubeconfig); else none, with a warning.
pub(super) async fn load_identity(
    config: &Config,
    index: &[String],
    reload: tokio::sync::mpsc::UnboundedSender<Reloaded>,
) -> anyhow::Result<(Store, &'static str, Option<kube::Client>)> {
    if !index.is_empty() {
        if config.snapshot.is_some() {
            return Err(UsageError(
                "--identity-index and identity.snapshot name two identity sources: keep one".into(),
            )
            .into());
        }
        // The API is needed only for this node's pods; without it the index serves them too.
        let client = crate::identity::client::connect().await.ok();
        if client.is_none() {
            warn!("identity: no Kubernetes API client; this node's pods come from the index only");
        }
        return Ok((Store::new(), "index", client));
    }
    if let Some(path) = &config.snapshot {
        let path = std::path::PathBuf::from(path);
        // Watching starts before the first read, so a rewrite during it is not missed.
        identity::reload::spawn(path.clone(), SNAPSHOT_POLL, reload);
        let objects =
            snapshot::load(&path).map_err(|e| UsageError(format!("identity.snapshot: {e}")))?;
        let store = Store::from_objects(objects);
        info!(file = %path.display(), objects = store.len(), "identity snapshot loaded");
        return Ok((store, "snapshot", None));
    }
    match crate::identity::client::connect().await {
        Ok(client) => {
            info!("identity: watching the Kubernetes API");
            Ok((Store::new(), "kubernetes", Some(client)))
        }
        Err(e) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => Err(UsageError(format!(
            "identity: running in a cluster but the Kubernetes API client cannot be configured ({e}): mount the service account token (automountServiceAccountToken: true)"
        ))
        .into()),
        Err(e) => {
            warn!(error = %e, "no identity source (no identity.snapshot, no kubeconfig, not in a cluster): flows carry addresses only");
            Ok((Store::new(), "none", None))
        }
    }
}

/// Feed the identity task: the index (plus this node's own pods from the API), or the
/// API's cluster-wide watches, or nothing (a snapshot file is already loaded).
pub(super) fn spawn_watches(
    args: &AgentArgs,
    source: &str,
    kube_client: Option<kube::Client>,
    node: &str,
    wanted_labels: std::collections::BTreeSet<String>,
    shared: &Shared,
    watch_tx: tokio::sync::mpsc::Sender<identity::watch::WatchEvent>,
) {
    match (source, kube_client) {
        ("index", client) => {
            let m = &shared.metrics;
            let metrics = follow::FollowMetrics {
                connected: m.index_connected.clone(),
                last_frame: m.index_last_frame.clone(),
                resyncs: m.index_resyncs.clone(),
                errors: m.metadata_errors.clone(),
                wanted_labels,
            };
            if let Some(client) = client {
                identity::watch::spawn_local_pods(
                    client,
                    node,
                    args.initial_list,
                    watch_tx.clone(),
                );
            }
            tokio::spawn(follow::follow(
                args.identity_index.clone(),
                args.identity_index_token_file.clone(),
                args.identity_index_ca.clone(),
                watch_tx,
                metrics,
            ));
        }
        (_, Some(client)) => identity::watch::spawn_all(client, args.initial_list, watch_tx),
        (_, None) => drop(watch_tx),
    }
}

/// This node's name: --node-name / $NODE_NAME (the chart sets it), else the hostname.
pub(super) fn node_name(args: &AgentArgs) -> String {
    args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
}

/// What must be listed and healthy for this agent's inventory to be current: the index
/// stream and (with API access) the own-node pod watch beside it, or the four cluster-wide
/// watches; a snapshot file needs nothing once loaded.
pub(super) fn identity_sources(source: &str, api: bool) -> Vec<Source> {
    match source {
        "index" if api => vec![Source::Index, Source::LocalPods],
        "index" => vec![Source::Index],
        "kubernetes" => Source::CLUSTER.to_vec(),
        _ => Vec::new(),
    }
}
