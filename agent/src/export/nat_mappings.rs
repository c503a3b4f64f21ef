//! `tenantflow_snat_mapping_info`: one series per open SNATed connection, labelled with both
//! sides, so a firewall or NSG log line (node IP:port → destination) can be traced back to
//! the pod in Prometheus/Grafana. Series leave when the connection does; the count is capped.

use std::collections::HashSet;

use prometheus::{IntCounter, IntGaugeVec, Opts, Registry};

use crate::{classify::Classification, flow::Connection};

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
    current: HashSet<Vec<String>>,
}

impl NatMappings {
    pub fn new(r: &Registry, max: usize) -> Self {
        let info = IntGaugeVec::new(
            Opts::new(
                "tenantflow_snat_mapping_info",
                "Open connections this node masqueraded: the post-SNAT source (what firewalls see) and the pod behind it. Always 1.",
            ),
            &LABELS,
        )
        .expect("static metric definition");
        r.register(Box::new(info.clone()))
            .expect("metric registered once");
        let overflow = IntCounter::new(
            "tenantflow_snat_mappings_dropped_total",
            "SNAT mappings not exported because --metrics-max-nat-mappings was reached (still in /flows and the flow log).",
        )
        .expect("static metric definition");
        r.register(Box::new(overflow.clone()))
            .expect("metric registered once");
        Self {
            info,
            overflow,
            max,
            current: HashSet::new(),
        }
    }

    pub fn observe(&mut self, conns: &[(Connection, Classification)]) {
        let mut next = HashSet::new();
        for (c, k) in conns {
            let Some((ip, port)) = c.snat else { continue };
            let src = &k.src_identity;
            let labels = vec![
                crate::flow::Protocol::from(c.tuple.proto).to_string(),
                ip.to_string(),
                port.to_string(),
                c.tuple.dst.to_string(),
                c.tuple.dport.to_string(),
                c.tuple.src.to_string(),
                c.tuple.sport.to_string(),
                src.namespace.clone().unwrap_or_default(),
                src.pod.clone().unwrap_or_default(),
                src.tenant.clone().unwrap_or_default(),
            ];
            if !self.current.contains(&labels) && self.current.len() + next.len() >= self.max {
                self.overflow.inc();
                continue;
            }
            next.insert(labels);
        }
        for gone in self.current.difference(&next) {
            let v: Vec<&str> = gone.iter().map(String::as_str).collect();
            let _ = self.info.remove_label_values(&v);
        }
        for new in next.difference(&self.current) {
            let v: Vec<&str> = new.iter().map(String::as_str).collect();
            self.info.with_label_values(&v).set(1);
        }
        self.current = next;
    }
}
