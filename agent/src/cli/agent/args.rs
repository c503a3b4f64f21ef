//! `tenantflow agent`'s flags, parsed and described for `--help`.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use crate::{
    datapath::{self, AttachMode},
    export::LogFilter,
    identity,
    index::follow,
};

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
    /// PEM CA that signed an `https://` index's certificate (the chart mounts ca.crt of
    /// its TLS Secret): the token is only ever shown to an index it verifies.
    #[arg(long, value_name = "FILE")]
    pub identity_index_ca: Option<std::path::PathBuf>,
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
    /// How often the --tls-cert and --tls-key files are re-read: a renewed or replaced
    /// Secret is served from the next read on, without a restart.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_reload_interval: Duration,
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
    /// Add src_workload/dst_workload labels to flow metrics (more series). Names other
    /// tenants' workloads: needs --metrics-auth kubernetes or --metrics-public-names.
    #[arg(long)]
    pub metrics_workload_labels: bool,
    /// Accept pod and workload names (--metrics-workload-labels,
    /// --metrics-max-nat-mappings) on a /metrics that anyone reaching --listen can read.
    #[arg(long)]
    pub metrics_public_names: bool,
    /// Most series per flow-metric family; beyond it traffic is counted in `_overflow`.
    #[arg(long, default_value_t = 10_000)]
    pub metrics_max_series: usize,
    /// Series of a deleted namespace or workload (flow families, DNS counters) are dropped
    /// after this.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub metrics_grace: Duration,
    /// Most (pod, address) names kept from the pods' DNS answers (about 100 bytes each);
    /// past it new ones are dropped and counted (tenantflow_dns_names_dropped_total).
    #[arg(long, default_value_t = 65_536)]
    pub dns_max_names: usize,
    /// How long past its TTL a resolved name still names new connections (clients use an
    /// address a little past its TTL).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub dns_name_grace: Duration,
    /// Most open SNAT mappings exported as tenantflow_snat_mapping_info (0 turns it off).
    /// Default: 2000 with --metrics-auth kubernetes, else off: the family names the pod
    /// behind each mapping.
    #[arg(long, value_name = "N")]
    pub metrics_max_nat_mappings: Option<usize>,
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
    #[command(flatten)]
    pub otlp: super::otlp_args::OtlpArgs,
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

/// SNAT mappings exported when /metrics is behind tokens and no limit was given.
const NAT_MAPPINGS_WITH_AUTH: usize = 2_000;

impl AgentArgs {
    /// Whether /metrics may carry pod and workload names: only when reading it takes a
    /// token, or when the operator accepted them being public.
    pub fn metrics_names_allowed(&self) -> bool {
        self.metrics_auth == AuthMode::Kubernetes || self.metrics_public_names
    }

    /// Most SNAT mappings on /metrics: the flag, else on only where names are allowed.
    pub fn nat_mappings_limit(&self) -> usize {
        self.metrics_max_nat_mappings
            .unwrap_or(if self.metrics_names_allowed() {
                NAT_MAPPINGS_WITH_AUTH
            } else {
                0
            })
    }
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
