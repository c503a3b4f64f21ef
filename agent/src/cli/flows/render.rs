//! How records are shown: the flow and connection tables, the cells both they and the
//! summary use, and what `--follow` and `--limit` need of a row.

use serde::de::DeserializeOwned;

use crate::{
    classify::{Classification, Egress, EndpointIdentity, EndpointKind},
    export::ConnectionView,
    flow::FlowView,
    net::Protocol,
};

/// How a record type is shown: identity (for --follow), size (for --limit), table.
pub(super) trait Row: serde::Serialize + DeserializeOwned {
    fn identity(&self) -> String;
    fn activity(&self) -> u64;
    fn bytes(&self) -> u64;
    fn table(rows: &[&Self]) -> String;
}

impl Row for FlowView {
    fn identity(&self) -> String {
        identity(self)
    }
    fn activity(&self) -> u64 {
        self.packets
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn table(rows: &[&Self]) -> String {
        render_table(rows)
    }
}

impl Row for ConnectionView {
    /// The connection's id: a tuple reused by a new connection is a new row.
    fn identity(&self) -> String {
        format!(
            "{}#{}/{}:{}/{}:{}",
            self.id, self.proto, self.src, self.src_port, self.dst, self.dst_port
        )
    }
    fn activity(&self) -> u64 {
        self.forward.packets + self.reply.packets
    }
    fn bytes(&self) -> u64 {
        self.forward.bytes + self.reply.bytes
    }
    fn table(rows: &[&Self]) -> String {
        render_connections(rows)
    }
}

pub(super) fn identity(f: &FlowView) -> String {
    format!(
        "{}/{}/{}/{}:{}/{}:{}",
        f.ifindex, f.hook, f.proto, f.src, f.src_port, f.dst, f.dst_port
    )
}

pub(super) fn endpoint(ip: &std::net::IpAddr, port: u16, icmp: bool) -> String {
    match (ip, icmp) {
        (_, true) => ip.to_string(),
        (std::net::IpAddr::V6(_), false) => format!("[{ip}]:{port}"),
        (std::net::IpAddr::V4(_), false) => format!("{ip}:{port}"),
    }
}

/// Aligned columns; the first row is the header.
pub(super) fn align<const N: usize>(rows: Vec<[String; N]>) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Connections, largest first: initiator's pre-NAT tuple, the translation, both directions.
pub fn render_connections(conns: &[&ConnectionView]) -> String {
    let mut rows: Vec<[String; 11]> = vec![[
        "PROTO".into(),
        "SOURCE".into(),
        "FROM".into(),
        "DESTINATION".into(),
        "TO".into(),
        "CLASS".into(),
        "OUTCOME".into(),
        "VERDICTS".into(),
        "NAT".into(),
        "FWD PKTS/BYTES".into(),
        "REPLY PKTS/BYTES".into(),
    ]];
    let mut sorted = conns.to_vec();
    sorted.sort_by_key(|c| {
        (
            std::cmp::Reverse(c.forward.bytes + c.reply.bytes),
            c.identity(),
        )
    });
    for c in sorted {
        let icmp = matches!(c.proto, Protocol::Icmp | Protocol::Icmpv6);
        let mut nat = Vec::new();
        if let Some(e) = c.snat {
            nat.push(format!("snat {}", endpoint(&e.ip, e.port, icmp)));
        }
        if let Some(e) = c.dnat {
            nat.push(format!("dnat {}", endpoint(&e.ip, e.port, icmp)));
        }
        let k = &c.class;
        let to = match &k.backend_identity {
            Some(b) if k.dst_identity.kind == EndpointKind::Service => {
                format!("{} -> {}", who(&k.dst_identity), who(b))
            }
            _ => who(&k.dst_identity),
        };
        // The name the source pod resolved the destination from.
        let to = match &c.dst_fqdn {
            Some(n) => format!("{to} [{n}]"),
            None => to,
        };
        // A node-local process names itself (and its pod, for an escaped container).
        let from = match &c.process {
            Some(p) => {
                let pod = p
                    .pod
                    .as_deref()
                    .map(|p| format!(" pod {p}"))
                    .unwrap_or_default();
                format!("{} ({}[{}]{pod})", who(&k.src_identity), p.command, p.pid)
            }
            None => who(&k.src_identity),
        };
        rows.push([
            c.proto.to_string(),
            endpoint(&c.src, c.src_port, icmp),
            from,
            endpoint(&c.dst, c.dst_port, icmp),
            to,
            format!("{}/{}", k.flow_class.as_str(), k.scope.as_str()),
            c.outcome.map_or("-", |o| o.as_str()).to_owned(),
            verdicts(k),
            if nat.is_empty() {
                "-".into()
            } else {
                nat.join(" ")
            },
            format!("{}/{}", c.forward.packets, c.forward.bytes),
            format!("{}/{}", c.reply.packets, c.reply.bytes),
        ]);
    }
    align(rows)
}

/// `tenant:namespace/pod`, `svc:namespace/name`, `node:name`, or the endpoint kind.
pub(super) fn who(id: &EndpointIdentity) -> String {
    let tenant = id.tenant.as_deref().unwrap_or("?");
    match (id.kind, &id.namespace, &id.pod, &id.service, &id.node) {
        (EndpointKind::Pod, Some(ns), Some(pod), _, _) => format!("{tenant}:{ns}/{pod}"),
        (EndpointKind::Service, Some(ns), _, Some(svc), _) => format!("{tenant}:svc/{ns}/{svc}"),
        (EndpointKind::Node, _, _, _, Some(node)) => format!("node:{node}"),
        (kind, ..) => kind.as_str().to_owned(),
    }
}

/// The flags a security team acts on.
pub(super) fn verdict_list(k: &Classification) -> Vec<String> {
    let mut v = Vec::new();
    if k.cross_tenant {
        v.push("CROSS-TENANT".to_owned());
    }
    if k.egress != Egress::None {
        v.push(format!("egress={}", k.egress.as_str()));
    }
    if let Some(s) = &k.sensitive {
        v.push(format!("SENSITIVE={s}"));
    }
    v
}

/// The flags a security team acts on, or `-`.
pub(super) fn verdicts(k: &Classification) -> String {
    let v = verdict_list(k);
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// Per-hook sightings, largest first.
pub fn render_table(flows: &[&FlowView]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "IFACE".into(),
        "HOOK".into(),
        "PROTO".into(),
        "SOURCE".into(),
        "DESTINATION".into(),
        "PACKETS".into(),
        "BYTES".into(),
    ]];
    let mut sorted = flows.to_vec();
    sorted.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| identity(a).cmp(&identity(b)))
    });
    for f in sorted {
        let icmp = matches!(
            f.proto,
            crate::net::Protocol::Icmp | crate::net::Protocol::Icmpv6
        );
        rows.push([
            f.iface.clone(),
            f.hook.clone(),
            f.proto.to_string(),
            endpoint(&f.src, f.src_port, icmp),
            endpoint(&f.dst, f.dst_port, icmp),
            f.packets.to_string(),
            f.bytes.to_string(),
        ]);
    }
    align(rows)
}
