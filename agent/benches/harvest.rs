//! A harvest's userspace work at node scale, without a kernel: N active masqueraded UDP
//! connections from one pod to the internet (the shape of `cargo xtask bench --scale`),
//! each seen at the pod's veth before SNAT and at the uplink after it, each carrying one
//! datagram per harvest. Conntrack's entries arrive first, as on a node; then every
//! harvest hands [`Pipeline::ingest`] one delta per observation point: join, classify,
//! settle, metrics, NAT-mapping and fan-out sinks. Reading the kernel's cache is not in it
//! (the lab bench measures that too).
//!
//! `cargo bench -p tenantflow --bench harvest [-- --connections N --rounds R]`. The last
//! lines are `key=value`: connections, ingest_ms_p50, ingest_ms_max, heap_mib (live heap
//! after the last harvest, counted by allocator), nat_heap_mib (conntrack's entries alone),
//! peak_heap_mib (the most live at any moment: the harvests that place every connection),
//! heap_bytes_per_connection.

mod common;

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration, time::Instant};

use agent_common::{Direction, FlowKey, FlowStats};
use common::{live, mib, PEAK};
use tenantflow::{
    config::Config,
    datapath::{Delta, Harvest, Role},
    export::{AgentMetrics, FlowMetrics, FlowMetricsConfig, NatMappings, Shared},
    identity::{snapshot, Name, SharedStore, Store},
    lateral::{EdgeConfig, Edges, Fanout, FanoutConfig},
    nat::{Mechanism, NatEntry, NatEvent},
    net::{monotonic_ns, FlowTuple, PROTO_UDP},
    pipeline::{Pipeline, Sinks},
};

const POD_IF: u32 = 10;
const UPLINK_IF: u32 = 2;
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(10, 224, 0, 4);
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn args() -> (u32, usize) {
    let mut connections = 100_000;
    let mut rounds = 10;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--connections" => connections = value("--connections"),
            "--rounds" => rounds = value("--rounds") as usize,
            _ => {} // cargo bench passes --bench
        }
    }
    (connections, rounds)
}

fn ip_word(ip: Ipv4Addr) -> [u64; 2] {
    [u64::from(u32::from_ne_bytes(ip.octets())), 0]
}

/// Connection `i`: the pod's port and the port masquerade gave it.
fn ports(i: u32) -> (u16, u16, u16) {
    let sport = 1024 + (i % 60_000) as u16;
    let dport = 5000 + (i / 60_000) as u16;
    let snat_port = 1024 + ((i + 7) % 60_000) as u16;
    (sport, dport, snat_port)
}

fn key(ifindex: u32, direction: Direction, src: Ipv4Addr, sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        ifindex,
        direction: direction as u8,
        family: 4,
        proto: PROTO_UDP,
        _pad0: 0,
        src_addr: ip_word(src),
        dst_addr: ip_word(REMOTE),
        src_port: sport,
        dst_port: dport,
        generation: 0,
    }
}

fn nat_entry(i: u32) -> NatEntry {
    let (sport, dport, snat_port) = ports(i);
    let t = |src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16| FlowTuple {
        proto: PROTO_UDP,
        src: src.into(),
        sport,
        dst: dst.into(),
        dport,
    };
    NatEntry {
        orig: t(POD, sport, REMOTE, dport),
        reply: t(REMOTE, dport, NODE, snat_port),
    }
}

/// One datagram per connection at each of its two observation points.
fn harvest(connections: u32) -> Harvest {
    let now = monotonic_ns();
    let stats = FlowStats {
        packets: 1,
        bytes: 60,
        first_seen_ns: now,
        last_seen_ns: now,
        ..FlowStats::default()
    };
    let mut deltas = Vec::with_capacity(connections as usize * 2);
    for i in 0..connections {
        let (sport, dport, snat_port) = ports(i);
        deltas.push(Delta {
            key: key(POD_IF, Direction::Ingress, POD, sport, dport),
            stats,
            slot: 2 * i,
            evicted: false,
        });
        deltas.push(Delta {
            key: key(UPLINK_IF, Direction::Egress, NODE, snat_port, dport),
            stats,
            slot: 2 * i + 1,
            evicted: false,
        });
    }
    Harvest {
        deltas,
        occupied: connections as usize * 2,
        counters: Default::default(),
        dns: Vec::new(),
    }
}

fn pipeline(shared: &Shared) -> Pipeline {
    let store = Store::from_objects(
        snapshot::parse(&format!(
            "kind: List\nitems:\n\
             - {{apiVersion: v1, kind: Namespace, metadata: {{name: alpha-web, labels: {{tenant: alpha}}}}}}\n\
             - {{apiVersion: v1, kind: Node, metadata: {{name: n1}}, status: {{addresses: [{{type: InternalIP, address: {NODE}}}]}}}}\n\
             - {{apiVersion: v1, kind: Pod, metadata: {{name: web-1, namespace: alpha-web}}, spec: {{nodeName: n1, containers: []}}, status: {{podIP: {POD}}}}}\n",
        ))
        .expect("fixture parses"),
    );
    let r = &shared.metrics.registry;
    let metrics = FlowMetrics::new(
        r,
        FlowMetricsConfig {
            workload_labels: false,
            max_series: 10_000,
            grace: Duration::from_secs(300),
        },
    );
    let fanout = Fanout::new(
        r,
        FanoutConfig {
            window: Duration::from_secs(60),
            max_sources: 1024,
            workload_labels: false,
        },
    )
    .expect("fan-out metrics register");
    let (edges, _) = Edges::open(
        r,
        EdgeConfig {
            learning: Duration::from_secs(86_400),
            max_edges: 65_536,
            file: None,
        },
    )
    .expect("edge metrics register");
    Pipeline::new(
        Mechanism::Conntrack,
        Duration::from_secs(60),
        Config::default(),
        SharedStore::new(store),
        Sinks {
            metrics,
            nat_mappings: NatMappings::new(r, 2_000),
            log: None,
            otlp: None,
            fanout,
        },
        None,
        edges,
    )
}

fn main() {
    let (connections, rounds) = args();
    let interfaces: BTreeMap<u32, (Name, Role)> = [
        (POD_IF, ("veth10".into(), Role::Pod)),
        (UPLINK_IF, ("eth0".into(), Role::Uplink)),
    ]
    .into();
    let shared = Shared::new(AgentMetrics::new("tcx", "conntrack"));
    let base = live();
    PEAK.store(base, std::sync::atomic::Ordering::Relaxed);
    let mut p = pipeline(&shared);
    for i in 0..connections {
        p.on_nat(NatEvent::New(nat_entry(i)), &shared);
    }
    let nat_heap = live() - base;
    // The first harvests place, join and report every connection; the rest are the
    // steady state measured.
    let warmup = 3;
    let mut times = Vec::new();
    for round in 0..warmup + rounds {
        let h = harvest(connections);
        let t = Instant::now();
        p.ingest(&h, &interfaces, &shared);
        if round >= warmup {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let reported = shared.metrics.connections.get();
    assert_eq!(
        reported,
        i64::from(connections),
        "every connection is reported once, joined"
    );
    assert_eq!(shared.metrics.held_connections.get(), 0);
    let heap = live() - base;
    times.sort_by(f64::total_cmp);
    println!("harvest bench: {connections} connections, {rounds} measured harvests");
    println!("connections={reported}");
    println!("ingest_ms_p50={:.1}", times[times.len() / 2]);
    println!("ingest_ms_max={:.1}", times[times.len() - 1]);
    println!("heap_mib={:.1}", mib(heap));
    println!("nat_heap_mib={:.1}", mib(nat_heap));
    println!(
        "peak_heap_mib={:.1}",
        mib(PEAK.load(std::sync::atomic::Ordering::Relaxed) - base)
    );
    println!(
        "heap_bytes_per_connection={}",
        heap / connections.max(1) as usize
    );
}
