//! `tenantflow agent`: the long-running observer.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use futures::StreamExt;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{info, warn};

use crate::{
    access::{Guard, KubeReview},
    config::Config,
    datapath::{
        self, AttachMode, Attachments, DatapathError, Harvester, KernelClock, Link, LinkEvent,
        Programs, Selector,
    },
    export::{
        self, AgentMetrics, FlowLog, FlowLogConfig, FlowMetrics, FlowMetricsConfig, LogFilter,
        NatMappings, Shared,
    },
    identity::{self, reload::Reloaded, snapshot, watch::Source, Store},
    index::follow,
    inventory::{self, Inventory, SharedStore},
    lateral::{EdgeConfig, Edges, Fanout, FanoutConfig},
    nat::socket_lb::SocketLb,
    nat::{self, Mechanism},
    pipeline::{gateway_label_keys, Pipeline, Sinks},
    process::{self, Attribution},
    shutdown::Shutdown,
};

/// Input the user must fix (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Uplink interface (repeatable). Default: the interface(s) of the default route.
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,
    /// Glob for host-side pod interfaces (repeatable). Veths enslaved to a bridge are
    /// always observed.
    #[arg(long = "pod-iface", value_name = "GLOB", default_values_t = datapath_defaults())]
    pub pod_patterns: Vec<String>,
    /// How to hook into TC: tcx needs kernel 6.6; netlink (clsact) works everywhere.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
    /// How often the kernel flow map is read.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub harvest_interval: Duration,
    /// Index mode: follow the identity index at these base URLs (replicas, tried in turn;
    /// comma-separated) instead of watching the whole cluster. The agent still watches
    /// its own node's pods.
    #[arg(long, value_delimiter = ',')]
    pub identity_index: Vec<String>,
    /// The token shown to the identity index (its RBAC decides: `get` on the non-resource
    /// URL /v1/identity). Default: the pod's service account token.
    #[arg(long, default_value = follow::TOKEN)]
    pub identity_index_token_file: std::path::PathBuf,
    /// How the Kubernetes API watchers (re)list: `cache` (from the API server's watch
    /// cache, no etcd read, one response per kind), `paged` (500 per page, may read etcd)
    /// or `streaming` (watch-list: Kubernetes 1.27+ with the WatchList feature on).
    #[arg(long, value_enum, default_value = "cache")]
    pub initial_list: identity::watch::InitialList,
    /// How often every hook is checked for the observer still running first (another
    /// datapath attaching later goes ahead of it); a displaced observer is moved back.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub hook_check_interval: Duration,
    /// A flow silent this long is finished and leaves the table.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Address for /metrics, /healthz and /readyz (Prometheus, the kubelet's probes).
    #[arg(long, default_value = "0.0.0.0:9990")]
    pub listen: SocketAddr,
    /// Address for /flows and /observations (what `tenantflow flows` reads). Records name
    /// every tenant's pods, addresses and processes: loopback, unless --flows-auth
    /// kubernetes puts them behind TLS and Kubernetes authorization.
    #[arg(long, default_value = "127.0.0.1:9991")]
    pub flows_listen: SocketAddr,
    /// Who may read records: `none` (loopback only) or `kubernetes` (bearer token →
    /// TokenReview, then SubjectAccessReview for get on flows.tenantflow.io; TLS required).
    #[arg(long, value_enum, default_value = "none")]
    pub flows_auth: AuthMode,
    /// Who may scrape /metrics: `none` (anyone who reaches --listen) or `kubernetes`
    /// (TLS, and a bearer token granted get on the non-resource URL /metrics, as
    /// Prometheus' ClusterRole has). /healthz and /readyz stay open for the kubelet.
    #[arg(long, value_enum, default_value = "none")]
    pub metrics_auth: AuthMode,
    /// PEM certificate (chain) for the listeners with `kubernetes` auth.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// How long a token review or access decision is reused (a revoked token or binding
    /// stops working within this).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Duration,
    /// Config file (YAML): identity source, tenancy, network ranges, egress mediation,
    /// sensitive targets. See docs/configuration.md. Default: built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// This node's name (written on flow-log records). Default: $NODE_NAME, else hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Add src_workload/dst_workload labels to flow metrics (more series).
    #[arg(long)]
    pub metrics_workload_labels: bool,
    /// Most series per flow-metric family; beyond it traffic is counted in `_overflow`.
    #[arg(long, default_value_t = 10_000)]
    pub metrics_max_series: usize,
    /// Series of a deleted namespace or workload are dropped after this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub metrics_grace: Duration,
    /// Most open SNAT mappings exported as tenantflow_snat_mapping_info (0 turns it off).
    #[arg(long, default_value_t = 2_000)]
    pub metrics_max_nat_mappings: usize,
    /// Write the JSON flow log to FILE (`-` for stdout). Default: no flow log.
    #[arg(long, value_name = "FILE")]
    pub flow_log: Option<String>,
    /// Which connections the flow log records.
    #[arg(long, value_enum, default_value = "all")]
    pub flow_log_filter: LogFilter,
    /// Rotate the flow-log file past this many bytes.
    #[arg(long, default_value_t = 100 * 1024 * 1024)]
    pub flow_log_max_bytes: u64,
    /// Rotated flow-log files kept (FILE.1 … FILE.N).
    #[arg(long, default_value_t = 5)]
    pub flow_log_keep: usize,
    /// Long-lived connections get an `update` record this often.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub flow_log_update_interval: Duration,
    /// cgroup v2 root to attach the process-attribution hooks to (the host's, mounted
    /// into the container). Default: the cgroup2 mount of /proc/self/mountinfo.
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<std::path::PathBuf>,
    /// Fan-out is the number of distinct destinations a source workload opened connections
    /// to within this sliding window (tenantflow_fanout_destinations).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub fanout_window: Duration,
    /// Most source workloads whose fan-out is tracked (6 KiB each at most); past it the
    /// one idle longest is replaced.
    #[arg(long, default_value_t = 1024)]
    pub fanout_max_sources: usize,
    /// Where the set of known edges (source workload → destination, port) persists across
    /// restarts; the chart mounts a hostPath here. Default: memory only.
    #[arg(long, value_name = "FILE")]
    pub edge_file: Option<std::path::PathBuf>,
    /// Edges first seen this soon after the first start are learned, not flagged as new.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub edge_learning: Duration,
    /// Most edges kept (about 24 bytes each); past it the least recently used go.
    #[arg(long, default_value_t = 65_536)]
    pub edge_limit: usize,
    /// bpffs where Cilium pins its maps (the host's /sys/fs/bpf, mounted read-only): SNAT
    /// of Cilium's BPF masquerade is read from `tc/globals/cilium_snat_v4_external` (and
    /// v6) there when present.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf")]
    pub cilium_bpffs: std::path::PathBuf,
    /// Do not look for Cilium's SNAT maps.
    #[arg(long)]
    pub no_cilium_snat: bool,
    /// The cgroup holding the pods (default: kubepods.slice or kubepods under the cgroup2
    /// root). Hooks there see the Service address a pod's connect() asked for before
    /// socket-LB (Cilium's kube-proxy replacement) rewrites it to a backend.
    #[arg(long, value_name = "DIR")]
    pub pods_cgroup: Option<std::path::PathBuf>,
    /// Do not attribute node-originated flows to processes (no cgroup hooks).
    #[arg(long)]
    pub no_process_attribution: bool,
    /// Attach a program that does nothing instead of the observers: the benchmark's floor.
    #[arg(long, hide = true)]
    pub bench_noop: bool,
    /// Flow-cache sets per CPU (a power of two; two flows each, 192 bytes per set per
    /// CPU). More sets hold more concurrently active flows before the cache evicts.
    #[arg(long, default_value_t = agent_common::CACHE_SETS, value_parser = parse_sets)]
    pub flow_cache_sets: u32,
    /// Test only: hold every conntrack event this long before the agent sees it.
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    pub test_conntrack_delay: Option<Duration>,
    /// Test only: conntrack event socket receive buffer in bytes (small ones overflow:
    /// ENOBUFS and a resync).
    #[arg(long, hide = true)]
    pub test_conntrack_rcvbuf: Option<usize>,
}

/// Who may read a listener's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No check (records: the listener must then be on loopback).
    None,
    /// Kubernetes TokenReview + SubjectAccessReview, over TLS.
    Kubernetes,
}

/// `--flow-cache-sets`: a power of two up to 2^20 (1 is for tests that force evictions).
fn parse_sets(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of sets (e.g. 4096)"))?;
    if n.is_power_of_two() && n <= 1 << 20 {
        Ok(n)
    } else {
        Err(format!(
            "{n} is not a power of two from 1 to 1048576 (e.g. 4096, 65536)"
        ))
    }
}

fn datapath_defaults() -> Vec<String> {
    datapath::DEFAULT_POD_PATTERNS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    super::block_on(run_async(args))
}

async fn run_async(args: AgentArgs) -> anyhow::Result<()> {
    let mut shutdown = Shutdown::install().context("installing SIGTERM/SIGINT handlers")?;
    super::bounds::check(&args)?;
    let (metrics_guard, exposed) = access(&args).await?;
    // Before anything is attached or removed: a second agent must not touch the first's hooks.
    let _lock = datapath::lock_agent().map_err(|e| UsageError(e.to_string()))?;
    let listener = export::bind(args.listen).await.map_err(|e| {
        UsageError(format!(
            "--listen {}: cannot bind ({e}); pick a free address, e.g. --listen 127.0.0.1:9991",
            args.listen
        ))
    })?;
    let records_listener = export::bind(args.flows_listen).await.map_err(|e| {
        UsageError(format!(
            "--flows-listen {}: cannot bind ({e}); pick a free loopback port, e.g. --flows-listen 127.0.0.1:9992",
            args.flows_listen
        ))
    })?;
    let config = super::load_config(args.config.as_deref())?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let node = node_name(&args);
    let (mut store, source, kube_client) =
        load_identity(&config, &args.identity_index, reload_tx).await?;
    if source != "snapshot" {
        store.keep_uids_of(&node);
    }
    let identity = SharedStore::new(store);
    let gateway_labels = gateway_label_keys(&config);
    let inventory = Inventory {
        store: identity.clone(),
        source,
        tenancy: config.tenancy.clone(),
        pod_label_keys: gateway_labels.clone(),
        journal: None,
        sources: identity_sources(source, kube_client.is_some()),
    };
    let flow_log = open_flow_log(&args)?;
    let programs = if args.bench_noop {
        Programs::Noop
    } else {
        Programs::Observers
    };
    let mut loaded = datapath::load(programs, args.idle_timeout, args.flow_cache_sets)?;
    let _clock = KernelClock::start(&mut loaded.ebpf)?.spawn();
    // Everything that can fail without touching interfaces happens before attaching.
    let mut harvester = Harvester::new(&mut loaded.ebpf)?;
    // SAFETY: the fd belongs to the harvester's ring buffer, which is declared before (so
    // dropped after) this AsyncFd and never closes or replaces it.
    let evictions =
        unsafe { AsyncFd::register_with_interest(harvester.evictions_fd(), Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the eviction ring: {e}"))?;
    let mode = args.attach_mode.resolve(loaded.tcx_available);
    if mode == AttachMode::Tcx && !loaded.tcx_available {
        return Err(UsageError(
            "--attach-mode tcx needs kernel 6.6 or later: use --attach-mode auto".into(),
        )
        .into());
    }
    let uplinks = resolve_uplinks(&args.uplinks).await?;
    let selector = Selector::new(uplinks, &args.pod_patterns)
        .map_err(|e| UsageError(format!("--pod-iface: invalid glob ({e})")))?;
    info!(uplinks = ?selector.uplinks(), ?mode, "starting");

    let (initial, mut events) = datapath::watch_links().await?;
    let mut attachments = Attachments::new(&mut loaded.ebpf, mode, programs, loaded.tcx_available)?;
    if let Err(e) = attach_initial(&mut loaded.ebpf, &mut attachments, &selector, &initial) {
        let qdiscs = attachments.detach_all(&mut loaded.ebpf);
        datapath::remove_clsact(&qdiscs).await;
        return Err(e.into());
    }

    let (nat_tx, mut nat_rx) = tokio::sync::mpsc::unbounded_channel();
    let faults = nat::Faults {
        delay: args.test_conntrack_delay,
        rcvbuf: args.test_conntrack_rcvbuf,
    };
    let conntrack = match nat::spawn_conntrack(nat_tx.clone(), faults) {
        Ok(()) => true,
        Err(e) => {
            warn!(error = %e, "conntrack unavailable: netfilter NAT will not be joined");
            false
        }
    };
    let cilium = cilium_snat(&args, nat_tx);
    let mechanism = Mechanism::of(conntrack, cilium);
    if mechanism == Mechanism::None {
        warn!("no NAT source: flows will carry no pre/post-NAT addresses");
    }
    info!(nat_mechanism = mechanism.as_str(), "NAT source probed");
    let shared = Arc::new(Shared::new(AgentMetrics::new(
        mode_name(mode),
        mechanism.as_str(),
    )));
    shared
        .metrics
        .flow_map_capacity
        .set(harvester.capacity() as i64);
    let processes = match attach_processes(&mut loaded.ebpf, &args) {
        Ok(p) => p,
        Err(e) => {
            let qdiscs = attachments.detach_all(&mut loaded.ebpf);
            datapath::remove_clsact(&qdiscs).await;
            return Err(e);
        }
    };
    shared
        .metrics
        .process_attribution
        .set(i64::from(processes.is_some()));
    let mut socket_lb = match attach_socket_lb(&mut loaded.ebpf, &args) {
        Ok(s) => s,
        Err(e) => {
            let qdiscs = attachments.detach_all(&mut loaded.ebpf);
            datapath::remove_clsact(&qdiscs).await;
            return Err(e);
        }
    };
    publish_attachments(&shared, &attachments);
    let server = tokio::spawn(export::serve(listener, shared.clone(), metrics_guard));
    let records_server = tokio::spawn(export::serve_records(
        records_listener,
        shared.clone(),
        exposed,
    ));
    info!(listen = %args.listen, flows_listen = %args.flows_listen, interfaces = attachments.len(), "ready");

    let flow_metrics = FlowMetrics::new(
        &shared.metrics.registry,
        FlowMetricsConfig {
            workload_labels: args.metrics_workload_labels,
            max_series: args.metrics_max_series,
            grace: args.metrics_grace,
        },
    );
    let registry = &shared.metrics.registry;
    let fanout = Fanout::new(
        registry,
        FanoutConfig {
            window: args.fanout_window,
            max_sources: args.fanout_max_sources,
            workload_labels: args.metrics_workload_labels,
        },
    )
    .context("registering fan-out metrics")?;
    let (edges, edge_problem) = Edges::open(
        registry,
        EdgeConfig {
            learning: args.edge_learning,
            max_edges: args.edge_limit,
            file: args.edge_file.clone(),
        },
    )
    .context("registering edge metrics")?;
    if let Some(e) = edge_problem {
        warn!(error = %e, "edges: starting without the saved set");
    }
    let mut pipeline = Pipeline::new(
        mechanism,
        args.idle_timeout,
        config,
        identity,
        Sinks {
            metrics: flow_metrics,
            nat_mappings: NatMappings::new(&shared.metrics.registry, args.metrics_max_nat_mappings),
            log: flow_log,
            fanout,
        },
        processes,
        edges,
    );
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(inventory::QUEUE);
    match (source, kube_client) {
        ("index", client) => {
            let m = &shared.metrics;
            let metrics = follow::FollowMetrics {
                connected: m.index_connected.clone(),
                last_frame: m.index_last_frame.clone(),
                resyncs: m.index_resyncs.clone(),
                errors: m.metadata_errors.clone(),
                wanted_labels: gateway_labels.clone(),
            };
            if let Some(client) = client {
                identity::watch::spawn_local_pods(
                    client,
                    &node,
                    args.initial_list,
                    watch_tx.clone(),
                );
            }
            tokio::spawn(follow::follow(
                args.identity_index.clone(),
                args.identity_index_token_file.clone(),
                watch_tx,
                metrics,
            ));
        }
        (_, Some(client)) => identity::watch::spawn_all(client, args.initial_list, watch_tx),
        (_, None) => drop(watch_tx),
    }
    let identity_task = tokio::spawn(inventory.run(watch_rx, reload_rx, shared.clone()));
    shared.set_stall_limit(stall_limit(args.harvest_interval));
    shared.mark_harvest();
    let mut tick = tokio::time::interval(args.harvest_interval);
    // A slow harvest must not be followed by a burst of catch-up harvests: the join
    // window is counted in harvests, and a burst would close it before events are read.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hook_check = tokio::time::interval(args.hook_check_interval);
    hook_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let nl = rtnetlink_handle(mode);
    let signal = shutdown.signalled();
    tokio::pin!(signal);
    let outcome = loop {
        tokio::select! {
            s = &mut signal => {
                info!(signal = s, "shutting down");
                break Ok(());
            }
            ev = events.next() => match ev {
                Some(ev) => {
                    on_link_event(&mut loaded.ebpf, &mut attachments, &selector, ev);
                    publish_attachments(&shared, &attachments);
                }
                None => break Err(anyhow::anyhow!("rtnetlink link event stream ended")),
            },
            Some(ev) = nat_rx.recv() => pipeline.on_nat(ev, &shared),
            _ = tick.tick() => {
                // Conntrack events already queued belong to this harvest: joining them
                // first is what keeps a pod's post-SNAT half from being held too long.
                while let Ok(ev) = nat_rx.try_recv() {
                    pipeline.on_nat(ev, &shared);
                }
                if let Some(s) = &mut socket_lb {
                    for e in s.drain() {
                        pipeline.on_nat(nat::NatEvent::Mapped(e), &shared);
                    }
                }
                pipeline.harvest(&mut harvester, &attachments, &shared);
                shared.mark_harvest();
            }
            _ = hook_check.tick() => {
                let positions = attachments.stay_first(&mut loaded.ebpf, nl.as_ref()).await;
                publish_positions(&shared, &positions);
            }
            ready = evictions.readable() => match ready {
                Ok(mut guard) => {
                    harvester.drain_evictions();
                    guard.clear_ready();
                }
                Err(e) => break Err(anyhow::anyhow!("eviction ring wait failed: {e}")),
            },
        }
    };
    identity_task.abort();
    shared.set_ready(false);
    pipeline.shutdown(&attachments, &shared);
    server.abort();
    records_server.abort();
    let qdiscs = attachments.detach_all(&mut loaded.ebpf);
    datapath::remove_clsact(&qdiscs).await;
    info!("detached from all interfaces");
    outcome
}

/// The Service-intent hooks on the pods' cgroup: a cgroup given with --pods-cgroup must
/// work; an auto-detected one that does not (or none) only leaves socket-LB Services
/// unjoined.
fn attach_socket_lb(ebpf: &mut aya::Ebpf, args: &AgentArgs) -> anyhow::Result<Option<SocketLb>> {
    if args.bench_noop {
        if let Some(d) = &args.pods_cgroup {
            nat::socket_lb::attach_floor(ebpf, d)
                .map_err(|e| UsageError(format!("--pods-cgroup: {e}")))?;
        }
        return Ok(None);
    }
    let (dir, explicit) = match &args.pods_cgroup {
        Some(d) => (d.clone(), true),
        None => {
            let root = args.cgroup_root.clone().or_else(process::default_root);
            match root
                .as_deref()
                .and_then(nat::socket_lb::default_pods_cgroup)
            {
                Some(d) => (d, false),
                None => {
                    info!("no kubepods cgroup: Services behind socket-LB will show their backend only");
                    return Ok(None);
                }
            }
        }
    };
    match nat::socket_lb::attach(ebpf, &dir) {
        Ok(s) => {
            info!(pods_cgroup = %dir.display(), "Service-intent hooks on");
            Ok(Some(s))
        }
        Err(e) if explicit => Err(UsageError(format!("--pods-cgroup: {e}")).into()),
        Err(e) => {
            warn!(error = %e, "Service-intent hooks off: Services behind socket-LB will show their backend only");
            Ok(None)
        }
    }
}

/// Cilium's BPF masquerade maps, when pinned under --cilium-bpffs: probed, then polled every
/// half harvest. A map of an unknown layout is reported and left alone.
fn cilium_snat(args: &AgentArgs, tx: tokio::sync::mpsc::UnboundedSender<nat::NatEvent>) -> bool {
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

/// The identity source: the snapshot file the config names; else the Kubernetes API
/// (in-cluster service account or kubeconfig); else none, with a warning.
async fn load_identity(
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

/// Process attribution: the cgroup hooks on the cgroup2 root. A root given on the command
/// line must work; an auto-detected one that does not only turns the feature off.
fn attach_processes(ebpf: &mut aya::Ebpf, args: &AgentArgs) -> anyhow::Result<Option<Attribution>> {
    if args.no_process_attribution || args.bench_noop {
        return Ok(None);
    }
    let (root, explicit) = match &args.cgroup_root {
        Some(r) => (r.clone(), true),
        None => match process::default_root() {
            Some(r) => (r, false),
            None => {
                warn!("no cgroup v2 mount: node-originated flows will carry no process");
                return Ok(None);
            }
        },
    };
    match process::attach(ebpf, &root).and_then(|()| Attribution::new(ebpf, root.clone())) {
        Ok(a) => {
            info!(cgroup_root = %root.display(), "process attribution on");
            Ok(Some(a))
        }
        Err(e) if explicit => Err(UsageError(format!("--cgroup-root: {e}")).into()),
        Err(e) => {
            warn!(error = %e, "process attribution off");
            Ok(None)
        }
    }
}

/// This node's name: --node-name / $NODE_NAME (the chart sets it), else the hostname.
fn node_name(args: &AgentArgs) -> String {
    args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    })
}

fn open_flow_log(args: &AgentArgs) -> anyhow::Result<Option<FlowLog>> {
    let Some(target) = &args.flow_log else {
        return Ok(None);
    };
    let node = node_name(args);
    let cfg = FlowLogConfig {
        path: (target != "-").then(|| target.into()),
        max_bytes: args.flow_log_max_bytes,
        keep: args.flow_log_keep,
        filter: args.flow_log_filter,
        update_interval: args.flow_log_update_interval,
        node,
    };
    let log = FlowLog::open(cfg).map_err(|e| {
        UsageError(format!(
            "--flow-log {target}: cannot open it ({e}); give a writable path or - for stdout"
        ))
    })?;
    Ok(Some(log))
}

type Guarded = Option<(Arc<Guard<KubeReview>>, Arc<rustls::ServerConfig>)>;

/// The listeners' protection: (metrics, records). Records: none on loopback, TLS and
/// Kubernetes review otherwise; metrics: open unless asked. One guard (one decision cache)
/// serves both. Every inconsistent combination is bad input naming the fix.
async fn access(args: &AgentArgs) -> anyhow::Result<(Guarded, Guarded)> {
    if args.flows_auth == AuthMode::None && !args.flows_listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "--flows-listen {}: flow records name every tenant's pods, addresses and processes, \
             so without --flows-auth kubernetes they are served on loopback only (e.g. \
             127.0.0.1:9991; read them with `kubectl exec` or `kubectl port-forward`, \
             docs/security.md)",
            args.flows_listen
        ))
        .into());
    }
    if args.flows_auth == AuthMode::None && args.metrics_auth == AuthMode::None {
        return Ok((None, None));
    }
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Err(UsageError(
            "--flows-auth / --metrics-auth kubernetes need --tls-cert and --tls-key: bearer \
             tokens are never accepted in clear text"
                .into(),
        )
        .into());
    };
    let tls = crate::access::tls::load(cert, key).map_err(|e| UsageError(e.to_string()))?;
    let client = kube::Client::try_default().await.map_err(|e| {
        UsageError(format!(
            "--flows-auth / --metrics-auth kubernetes: no Kubernetes API client ({e}): run in \
             the cluster with the service account token mounted, or set KUBECONFIG"
        ))
    })?;
    let guard = Arc::new(Guard::new(KubeReview::new(client), args.auth_cache_ttl));
    let pick =
        |mode: AuthMode| (mode == AuthMode::Kubernetes).then(|| (guard.clone(), tls.clone()));
    let (metrics, records) = (pick(args.metrics_auth), pick(args.flows_auth));
    info!(
        metrics = metrics.is_some(),
        records = records.is_some(),
        "listeners behind TLS and Kubernetes authorization"
    );
    Ok((metrics, records))
}

/// How often the snapshot file is checked for changes.
const SNAPSHOT_POLL: Duration = Duration::from_secs(1);

/// A harvest this overdue means the loop is stuck: ten intervals, at least 10 s (well inside
/// the chart's liveness probe: three failures 20 s apart).
fn stall_limit(harvest: Duration) -> Duration {
    (harvest * 10).max(Duration::from_secs(10))
}

fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tcx => "tcx",
        AttachMode::Netlink => "netlink",
        AttachMode::Auto => "auto",
    }
}

async fn resolve_uplinks(given: &[String]) -> anyhow::Result<Vec<String>> {
    let links = datapath::list_links().await?;
    for name in given {
        if !links.iter().any(|l| l.name == *name) {
            return Err(DatapathError::UnknownInterface { name: name.clone() }.into());
        }
    }
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let found = datapath::default_route_interfaces().await?;
    if found.is_empty() {
        return Err(DatapathError::NoUplink.into());
    }
    Ok(found)
}

fn attach_initial(
    ebpf: &mut aya::Ebpf,
    attachments: &mut Attachments,
    selector: &Selector,
    links: &[Link],
) -> Result<(), DatapathError> {
    for link in links {
        if let Some(role) = selector.role(link) {
            attachments.attach(ebpf, link.index, &link.name, role)?;
        }
    }
    Ok(())
}

fn on_link_event(
    ebpf: &mut aya::Ebpf,
    attachments: &mut Attachments,
    selector: &Selector,
    ev: LinkEvent,
) {
    match ev {
        LinkEvent::Up(link) => {
            if let Some(role) = selector.role(&link) {
                // A veth can vanish between the event and the attach (pod churn): not fatal.
                if let Err(e) = attachments.attach(ebpf, link.index, &link.name, role) {
                    warn!(iface = link.name, error = %e, "could not attach");
                }
            }
        }
        LinkEvent::Removed { index } => {
            attachments.forget(ebpf, index);
        }
    }
}

/// A filter dump needs rtnetlink; in tcx mode the chains come from a bpf syscall.
fn rtnetlink_handle(mode: AttachMode) -> Option<rtnetlink::Handle> {
    if mode != AttachMode::Netlink {
        return None;
    }
    match rtnetlink::new_connection() {
        Ok((conn, handle, _)) => {
            tokio::spawn(conn);
            Some(handle)
        }
        Err(e) => {
            warn!(error = %e, "rtnetlink unavailable: filter positions are not checked");
            None
        }
    }
}

fn publish_positions(shared: &Shared, positions: &datapath::Positions) {
    for (_, direction, why) in &positions.moved {
        shared
            .metrics
            .hook_moves
            .with_label_values(&[direction, why.as_str()])
            .inc();
    }
    shared
        .metrics
        .hooks_not_first
        .set(positions.not_first as i64);
}

fn publish_attachments(shared: &Shared, attachments: &Attachments) {
    let pods = attachments
        .iter()
        .filter(|(_, a)| a.role == datapath::Role::Pod)
        .count();
    let m = &shared.metrics.attached_interfaces;
    m.with_label_values(&["pod"]).set(pods as i64);
    m.with_label_values(&["uplink"])
        .set((attachments.len() - pods) as i64);
}

/// What must be listed and healthy for this agent's inventory to be current: the index
/// stream and (with API access) the own-node pod watch beside it, or the four cluster-wide
/// watches; a snapshot file needs nothing once loaded.
fn identity_sources(source: &str, api: bool) -> Vec<Source> {
    match source {
        "index" if api => vec![Source::Index, Source::LocalPods],
        "index" => vec![Source::Index],
        "kubernetes" => Source::CLUSTER.to_vec(),
        _ => Vec::new(),
    }
}
