//! The metric families flows are counted in: names, help and label sets.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Family {
    Flows,
    Bytes,
    Packets,
    CrossTenant,
    Unmediated,
    Sensitive,
    Attempts,
    UnmediatedNames,
}

impl Family {
    pub(super) const ALL: [Family; 8] = [
        Family::Flows,
        Family::Bytes,
        Family::Packets,
        Family::CrossTenant,
        Family::Unmediated,
        Family::Sensitive,
        Family::Attempts,
        Family::UnmediatedNames,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Family::Flows => "tenantflow_flows_total",
            Family::Bytes => "tenantflow_flow_bytes_total",
            Family::Packets => "tenantflow_flow_packets_total",
            Family::CrossTenant => "tenantflow_cross_tenant_flows_total",
            Family::Unmediated => "tenantflow_unmediated_egress_flows_total",
            Family::Sensitive => "tenantflow_sensitive_flows_total",
            Family::Attempts => "tenantflow_connection_attempts_total",
            Family::UnmediatedNames => "tenantflow_unmediated_egress_names_total",
        }
    }

    pub(super) fn help(self) -> &'static str {
        match self {
            Family::Flows => "Connections seen, counted once each when first seen.",
            Family::Bytes => "IP bytes of connections, by direction from the initiator's view (tx: initiator to responder).",
            Family::Packets => "Packets of connections, by direction from the initiator's view (tx: initiator to responder).",
            Family::CrossTenant => "Connections between two different known tenants.",
            Family::Unmediated => "Egress connections that bypassed every approved gateway, proxy and firewall.",
            Family::Sensitive => "Connections to sensitive targets (IMDS, wireserver, kubelet, node SSH).",
            Family::Attempts => "Connection attempts by outcome (established, refused, unanswered, reset, replied, unreplied), counted once when the outcome is first known.",
            Family::UnmediatedNames => "Unmediated egress connections by the name the source pod resolved the destination from (only connections with a name; capped like every family).",
        }
    }

    pub(super) fn labels(self, workloads: bool) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = match self {
            Family::Flows | Family::Bytes | Family::Packets => vec![
                "src_namespace",
                "src_tenant",
                "dst_namespace",
                "dst_tenant",
                "flow_class",
                "scope",
                "cross_tenant",
                "egress",
            ],
            Family::CrossTenant => vec![
                "src_namespace",
                "src_tenant",
                "dst_namespace",
                "dst_tenant",
                "flow_class",
            ],
            Family::Unmediated => vec!["src_namespace", "src_tenant", "flow_class", "scope"],
            // Per name only for flagged egress: the one family whose cardinality grows with
            // the internet, so it stays inside --metrics-max-series like the others.
            Family::UnmediatedNames => vec!["src_namespace", "src_tenant", "dst_fqdn"],
            // The node name is bounded by the cluster size; IMDS/wireserver are fixed.
            Family::Sensitive => vec![
                "src_namespace",
                "src_tenant",
                "flow_class",
                "target",
                "dst_node",
            ],
            // Destination tenant and kind, not namespace: a scan's fan-out must not multiply
            // series.
            Family::Attempts => vec![
                "src_namespace",
                "src_tenant",
                "dst_tenant",
                "dst_kind",
                "cross_tenant",
                "outcome",
            ],
        };
        if workloads {
            v.push("src_workload");
            if matches!(
                self,
                Family::Flows | Family::Bytes | Family::Packets | Family::CrossTenant
            ) {
                v.push("dst_workload");
            }
        }
        if matches!(self, Family::Bytes | Family::Packets) {
            v.push("direction");
        }
        v
    }
}
