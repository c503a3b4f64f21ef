//! The agent's own health metrics. Names are a public interface (alerts use them).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::datapath::KernelCounters;
use crate::dns::DnsCounts;
use crate::metric::{register, STATIC};

pub struct AgentMetrics {
    pub registry: Registry,
    pub attached_interfaces: IntGaugeVec,
    pub flow_map_entries: IntGauge,
    pub flow_map_capacity: IntGauge,
    pub tracked_flows: IntGauge,
    pub harvest_duration: Histogram,
    pub harvest_errors: IntCounter,
    pub connections: IntGauge,
    pub nat_entries: IntGauge,
    pub nat_events_lost: IntCounter,
    pub nat_join_misses: IntCounterVec,
    pub hook_moves: IntCounterVec,
    pub hooks_not_first: IntGauge,
    pub nat_unjoined: IntGauge,
    pub held_connections: IntGauge,
    pub ready: IntGauge,
    pub process_attribution: IntGauge,
    pub metadata_objects: IntGaugeVec,
    pub metadata_last_sync: IntGauge,
    pub metadata_stale: IntGauge,
    pub metadata_ip_conflicts: IntGauge,
    pub metadata_errors: IntCounter,
    pub identity_queue: IntGauge,
    pub http_connections: IntGaugeVec,
    pub http_refused: IntCounterVec,
    pub tls_reloads: IntCounterVec,
    pub identity_relists: IntCounterVec,
    pub identity_relists_completed: IntCounterVec,
    pub identity_source_current: IntGaugeVec,
    pub identity_queue_capacity: IntGauge,
    pub index_connected: IntGauge,
    pub index_last_frame: IntGauge,
    pub index_resyncs: IntCounter,
    pub flow_log_records: IntCounter,
    pub flow_log_errors: IntCounter,
    kernel_packets: IntCounter,
    kernel_evictions: IntCounter,
    kernel_evictions_lost: IntCounter,
    kernel_unparsable: IntCounter,
    kernel_non_ip: IntCounter,
    kernel_dns_captured: IntCounter,
    kernel_dns_lost: IntCounter,
    last_kernel: std::sync::Mutex<KernelCounters>,
    dns_messages: IntCounterVec,
    pub dns_nxdomain: IntCounterVec,
    pub dns_unapproved: IntCounterVec,
    dns_names: IntGauge,
    dns_names_dropped: IntCounter,
    last_dns: std::sync::Mutex<(DnsCounts, u64)>,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help)).expect(STATIC)
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels)).expect(STATIC)
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels)).expect(STATIC)
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help)).expect(STATIC)
}

impl AgentMetrics {
    /// Registers every metric once; the definitions are static, so failure is a bug.
    pub fn new(attach_mode: &str, nat_mechanism: &str) -> Self {
        let r = Registry::new();
        let build = register(
            &r,
            IntGaugeVec::new(
                Opts::new("tenantflow_build_info", "Agent build; always 1."),
                &["version", "attach_mode"],
            ),
        )
        .expect(STATIC);
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), attach_mode])
            .set(1);
        let mechanism = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tenantflow_nat_mechanism",
                    "Active NAT source (conntrack or none); always 1 for the active one.",
                ),
                &["mechanism"],
            ),
        )
        .expect(STATIC);
        mechanism.with_label_values(&[nat_mechanism]).set(1);
        let attached_interfaces = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tenantflow_attached_interfaces",
                    "Interfaces the observers are attached to, by role (uplink, pod).",
                ),
                &["role"],
            ),
        )
        .expect(STATIC);
        let harvest_duration = register(
            &r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "tenantflow_harvest_duration_seconds",
                    "Time to read and fold the kernel flow map once.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            ),
        )
        .expect(STATIC);
        let metadata_objects = register(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    "tenantflow_metadata_objects",
                    "Kubernetes objects in the identity inventory, by kind.",
                ),
                &["kind", "source"],
            ),
        )
        .expect(STATIC);
        Self {
            process_attribution: gauge(
                &r,
                "tenantflow_process_attribution",
                "1 when node-originated flows are attributed to processes (cgroup hooks attached).",
            ),
            ready: gauge(
                &r,
                "tenantflow_ready",
                "1 when programs are attached and the identity inventory is listed (as /readyz).",
            ),
            metadata_objects,
            metadata_last_sync: gauge(
                &r,
                "tenantflow_metadata_last_sync_timestamp_seconds",
                "Unix time the identity inventory was last known complete and current: a snapshot \
                 loaded, or every source (each watch, the index stream) synced and healthy. It \
                 stops moving while any source is down or relisting, so its age is the staleness.",
            ),
            metadata_stale: gauge(
                &r,
                "tenantflow_metadata_stale",
                "1 while any identity source (a watch, the index stream, or the index's own \
                 watches) is unreachable or relisting and the last-known inventory is used.",
            ),
            metadata_ip_conflicts: gauge(
                &r,
                "tenantflow_metadata_ip_conflicts",
                "Addresses more than one pod, node or service claims right now; the newest claim \
                 owns each. Brief while pod IPs are reused; lasting when a snapshot is wrong.",
            ),
            metadata_errors: counter(
                &r,
                "tenantflow_metadata_errors_total",
                "Identity updates rejected as invalid (the last good inventory stays in use).",
            ),
            http_connections: gauge_vec(
                &r,
                "tenantflow_http_connections",
                "Open connections to an HTTP listener (`public`: metrics and probes, \
                 `records`: /flows).",
                &["listener"],
            ),
            http_refused: counter_vec(
                &r,
                "tenantflow_http_connections_refused_total",
                "Connections closed at once because the listener was at its cap: \
                 `per_source` (256 open from one address) or `total` (1024).",
                &["listener", "reason"],
            ),
            tls_reloads: counter_vec(
                &r,
                "tenantflow_tls_reloads_total",
                "Changes of the TLS certificate files seen while running: `replaced` (served \
                 from then on) or `failed` (not a usable pair; the previous one is still \
                 served).",
                &["result"],
            ),
            identity_relists: counter_vec(
                &r,
                "tenantflow_identity_relists_total",
                "Lists of an identity source started, by source and reason (start, expired: the \
                 watch's version was compacted away, too_large: the server was behind it, resync: \
                 the index sent a snapshot). Failed attempts are retried and counted again.",
                &["source", "reason"],
            ),
            identity_relists_completed: counter_vec(
                &r,
                "tenantflow_identity_relists_completed_total",
                "Lists of an identity source completed (the source is current again).",
                &["source"],
            ),
            identity_source_current: gauge_vec(
                &r,
                "tenantflow_identity_source_current",
                "1 while the identity source is listed and its watch (or stream) is healthy.",
                &["source"],
            ),
            identity_queue: gauge(
                &r,
                "tenantflow_identity_queue_depth",
                "Identity changes received from the watch and not applied yet. Near \
                 tenantflow_identity_queue_capacity the watch is read more slowly (never dropped).",
            ),
            identity_queue_capacity: gauge(
                &r,
                "tenantflow_identity_queue_capacity",
                "How many identity changes may wait to be applied.",
            ),
            index_connected: gauge(
                &r,
                "tenantflow_identity_index_connected",
                "1 while following an identity index (index mode), else 0.",
            ),
            index_last_frame: gauge(
                &r,
                "tenantflow_identity_index_last_frame_timestamp_seconds",
                "Unix time of the last frame from the identity index (a heartbeat arrives every \
                 2 s): time() minus this is how stale the inventory may be.",
            ),
            index_resyncs: counter(
                &r,
                "tenantflow_identity_index_resyncs_total",
                "Full snapshots received from the identity index (first connection, another \
                 replica, or too far behind to resume).",
            ),
            flow_log_records: counter(
                &r,
                "tenantflow_flow_log_records_total",
                "Records written to the flow log.",
            ),
            flow_log_errors: counter(
                &r,
                "tenantflow_flow_log_errors_total",
                "Flow log writes that failed (disk full, file removed).",
            ),
            attached_interfaces,
            flow_map_entries: gauge(
                &r,
                "tenantflow_flow_map_entries",
                "Occupied kernel flow-cache slots (all CPUs) at the last harvest.",
            ),
            flow_map_capacity: gauge(
                &r,
                "tenantflow_flow_map_capacity",
                "Flow-cache slots over all CPUs (the least recently seen flow of a set is evicted beyond this).",
            ),
            tracked_flows: gauge(
                &r,
                "tenantflow_tracked_flows",
                "Flows held in the agent's flow table.",
            ),
            connections: gauge(
                &r,
                "tenantflow_connections",
                "Connections in the agent's table (all sightings joined).",
            ),
            nat_entries: gauge(
                &r,
                "tenantflow_nat_entries",
                "Conntrack entries the agent holds for NAT joins.",
            ),
            nat_events_lost: counter(
                &r,
                "tenantflow_nat_events_lost_total",
                "Times conntrack events were lost (socket overrun); each triggers a resync dump.",
            ),
            hook_moves: {
                let v = register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tenantflow_hook_moves_total",
                        "Times an observer was put back first on a hook, by direction and reason: \
                         displaced (another program had gone ahead of it) or removed (its link or \
                         filter was gone while the interface stayed).",
                    ),
                    &["direction", "reason"],
                ),
            )
                .expect(STATIC);
                for d in ["ingress", "egress"] {
                    for reason in ["displaced", "removed"] {
                        v.with_label_values(&[d, reason]);
                    }
                }
                v
            },
            hooks_not_first: gauge(
                &r,
                "tenantflow_hooks_not_first",
                "Hooks where an observer is not first and could not be moved there: a program \
                 ahead of it can hide packets from it.",
            ),
            nat_join_misses: {
                let v = register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "tenantflow_nat_join_misses_total",
                        "Pod TCP/UDP connections that ended without a timely conntrack join, once \
                         each, by reason: late (joined after two harvests), lost (conntrack events \
                         were lost during its life), none (conntrack never knew it).",
                    ),
                    &["reason"],
                ),
            )
                .expect(STATIC);
                for reason in crate::flow::MissReason::ALL {
                    v.with_label_values(&[reason.as_str()]);
                }
                v
            },
            nat_unjoined: gauge(
                &r,
                "tenantflow_nat_unjoined_connections",
                "Open pod connections still without a conntrack join after two harvests (misses \
                 to be counted when they end).",
            ),
            held_connections: gauge(
                &r,
                "tenantflow_held_connections",
                "Uplink-only connections held back until conntrack says whether a pod made them.",
            ),
            harvest_duration,
            harvest_errors: counter(
                &r,
                "tenantflow_harvest_errors_total",
                "Harvests that failed to read the kernel map.",
            ),
            kernel_packets: counter(
                &r,
                "tenantflow_datapath_packets_total",
                "Packets the kernel programs inspected.",
            ),
            kernel_evictions: counter(
                &r,
                "tenantflow_datapath_evictions_total",
                "Flow-cache slots handed to a new flow; the old flow's counts reached the agent \
                 through the eviction ring.",
            ),
            kernel_evictions_lost: counter(
                &r,
                "tenantflow_datapath_evictions_lost_total",
                "Evicted flow-cache slots the eviction ring had no room for: their counts since \
                 the last harvest are missing.",
            ),
            kernel_unparsable: counter(
                &r,
                "tenantflow_datapath_unparsable_packets_total",
                "IP packets whose headers could not be parsed.",
            ),
            kernel_non_ip: counter(
                &r,
                "tenantflow_datapath_non_ip_packets_total",
                "Non-IP frames seen (ARP and the like).",
            ),
            kernel_dns_captured: counter(
                &r,
                "tenantflow_datapath_dns_messages_total",
                "DNS messages (port 53) the kernel programs copied to the agent.",
            ),
            kernel_dns_lost: counter(
                &r,
                "tenantflow_datapath_dns_lost_total",
                "DNS messages the capture ring had no room for: the agent did not see them \
                 (their packets are still counted in flows).",
            ),
            last_kernel: std::sync::Mutex::new(KernelCounters::default()),
            dns_messages: counter_vec(
                &r,
                "tenantflow_dns_messages_total",
                "DNS messages on pod interfaces, by what became of them: `query` (a pod asked), \
                 `answer` (it answered a pod's query and named its addresses), \
                 `unsolicited` (an answer to no query of the pod's, e.g. spoofed: ignored), \
                 `malformed` (not DNS: ignored), `incomplete` (a TCP message longer than what \
                 was captured: ignored).",
                &["kind"],
            ),
            dns_nxdomain: counter_vec(
                &r,
                "tenantflow_dns_nxdomain_total",
                "NXDOMAIN answers pods received, by the pod's namespace and tenant (names that \
                 do not exist: typos, scans, generated domains).",
                &["src_namespace", "src_tenant"],
            ),
            dns_unapproved: counter_vec(
                &r,
                "tenantflow_dns_unapproved_queries_total",
                "DNS queries pods sent to a resolver that is not the cluster's (kube-dns, \
                 NodeLocal DNSCache, Azure DNS or dns.resolvers): unmediated DNS.",
                &["src_namespace", "src_tenant"],
            ),
            dns_names: gauge(
                &r,
                "tenantflow_dns_names",
                "(pod, address) pairs with the name the pod resolved the address from.",
            ),
            dns_names_dropped: counter(
                &r,
                "tenantflow_dns_names_dropped_total",
                "Resolved addresses not kept because the name table was full: their \
                 connections carry no dst_fqdn.",
            ),
            last_dns: std::sync::Mutex::new((DnsCounts::default(), 0)),
            registry: r,
        }
    }

    /// Kernel counters are cumulative; Prometheus counters advance by the difference.
    pub fn observe_kernel(&self, now: KernelCounters) {
        let mut last = self.last_kernel.lock().unwrap_or_else(|p| p.into_inner());
        self.kernel_packets
            .inc_by(now.packets.saturating_sub(last.packets));
        self.kernel_evictions
            .inc_by(now.evictions.saturating_sub(last.evictions));
        self.kernel_evictions_lost
            .inc_by(now.evictions_lost.saturating_sub(last.evictions_lost));
        self.kernel_unparsable
            .inc_by(now.unparsable.saturating_sub(last.unparsable));
        self.kernel_non_ip
            .inc_by(now.non_ip.saturating_sub(last.non_ip));
        self.kernel_dns_captured
            .inc_by(now.dns_captured.saturating_sub(last.dns_captured));
        self.kernel_dns_lost
            .inc_by(now.dns_lost.saturating_sub(last.dns_lost));
        *last = now;
    }

    /// The DNS tracker's cumulative counts and its table's size.
    pub fn observe_dns(&self, now: DnsCounts, (names, dropped): (usize, u64)) {
        let mut last = self.last_dns.lock().unwrap_or_else(|p| p.into_inner());
        let (was, was_dropped) = *last;
        for (kind, n, before) in [
            ("query", now.queries, was.queries),
            ("answer", now.answers, was.answers),
            ("unsolicited", now.unsolicited, was.unsolicited),
            ("malformed", now.malformed, was.malformed),
            ("incomplete", now.incomplete, was.incomplete),
        ] {
            self.dns_messages
                .with_label_values(&[kind])
                .inc_by(n.saturating_sub(before));
        }
        self.dns_names.set(names as i64);
        self.dns_names_dropped
            .inc_by(dropped.saturating_sub(was_dropped));
        *last = (now, dropped);
    }

    /// Text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .expect("encoding to a String cannot fail");
        buf
    }
}
