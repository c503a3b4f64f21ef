//! `tenantflow_snat_mapping_info`: one series per open SNATed connection, labelled with both
//! sides, so a firewall or NSG log line (node IP:port → destination) can be traced back to
//! the pod in Prometheus/Grafana. Series leave when the connection does; the count is capped.

use std::collections::{HashMap, HashSet};

use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};

use crate::event::{ConnEvent, EventKind};
use crate::flow::ConnId;
use crate::metric::{register, STATIC};

const LABELS: [&str; 10] = [
    "proto",
    "snat_ip",
    "snat_port",
    "dst_ip",
    "dst_port",
    "src_ip",
    "src_port",
    "src_namespace",
    "src_pod",
    "src_tenant",
];

pub struct NatMappings {
    info: IntGaugeVec,
    overflow: IntCounter,
    max: usize,
    /// Exported series per open connection.
    current: HashMap<ConnId, Vec<String>>,
    /// Connections refused for the cap (counted once each).
    refused: HashSet<ConnId>,
}

impl NatMappings {
    pub fn new(r: &Registry, max: usize) -> Self {
        let info = register(
        r,
        IntGaugeVec::new(
            Opts::new(
                "tenantflow_snat_mapping_info",
                "Open connections this node masqueraded: the post-SNAT source (what firewalls see) and the pod behind it. Always 1.",
            ),
            &LABELS,
        ),
    )
        .expect(STATIC);
        let overflow = register(
        r,
        IntCounter::new(
            "tenantflow_snat_mappings_dropped_total",
            "SNAT mappings not exported because --metrics-max-nat-mappings was reached (still in /flows and the flow log).",
        ),
    )
        .expect(STATIC);
        Self {
            info,
            overflow,
            max,
            current: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    /// A mapping appears with its connection's start (or its late SNAT join) and leaves
    /// with its end.
    pub fn observe(&mut self, events: &[ConnEvent]) {
        for ev in events {
            // Only a start, an end or a change of NAT or identity can change the labels.
            if ev.kind == EventKind::Update && !ev.reclassified {
                continue;
            }
            let labels = (!ev.kind.is_final()).then(|| labels(ev)).flatten();
            let old = self.current.get(&ev.id);
            if old == labels.as_ref() {
                continue;
            }
            if let Some(old) = self.current.remove(&ev.id) {
                let v: Vec<&str> = old.iter().map(String::as_str).collect();
                let _ = self.info.remove_label_values(&v);
            }
            if ev.kind.is_final() {
                self.refused.remove(&ev.id);
            }
            let Some(new) = labels else { continue };
            if self.current.len() >= self.max {
                if self.refused.insert(ev.id) {
                    self.overflow.inc();
                }
                continue;
            }
            let v: Vec<&str> = new.iter().map(String::as_str).collect();
            self.info.with_label_values(&v).set(1);
            self.current.insert(ev.id, new);
        }
    }
}

fn labels(ev: &ConnEvent) -> Option<Vec<String>> {
    let (ip, port) = ev.conn.snat?;
    let t = &ev.conn.tuple;
    let src = &ev.class.src_identity;
    Some(vec![
        crate::net::Protocol::from(t.proto).to_string(),
        ip.to_string(),
        port.to_string(),
        t.dst.to_string(),
        t.dport.to_string(),
        t.src.to_string(),
        t.sport.to_string(),
        src.namespace.as_deref().unwrap_or_default().to_owned(),
        src.pod.as_deref().unwrap_or_default().to_owned(),
        src.tenant.as_deref().unwrap_or_default().to_owned(),
    ])
}
