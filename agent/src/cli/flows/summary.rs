//! `tenantflow flows --summary`: connections folded by source workload → destination
//! workload (or kind) and port, flagged rows first. A busy pod's hundred identical short
//! connections become one row, and the cross-tenant, unmediated, sensitive, failed or new
//! paths a security team looks for stay on top instead of scrolling away.
//!
//! Failed attempts (refused, unanswered, unreplied) from one source to one destination fold
//! into one row over all ports they tried: a port scan is one line saying how many ports,
//! not a hundred.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    classify::{EndpointIdentity, EndpointKind},
    export::ConnectionView,
    flow::Outcome,
};

/// One folded row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SummaryRow {
    pub source: String,
    pub destination: String,
    pub proto: String,
    /// The destination port; absent on a row of failed attempts over several ports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Distinct destination ports in the row.
    pub ports: usize,
    pub connections: u64,
    /// Connections per outcome (those not known yet are not listed).
    pub outcomes: BTreeMap<String, u64>,
    pub bytes: u64,
    pub verdicts: Vec<String>,
    /// Connections in the row that were the first on their edge.
    pub new_edges: u64,
}

impl SummaryRow {
    /// Worth a look first: any verdict, a failed attempt or a new edge.
    pub fn flagged(&self) -> bool {
        !self.verdicts.is_empty()
            || self.new_edges > 0
            || self.outcomes.keys().any(|o| failed_name(o))
    }
}

fn failed(o: Outcome) -> bool {
    matches!(
        o,
        Outcome::Refused | Outcome::Unanswered | Outcome::Unreplied
    )
}

fn failed_name(o: &str) -> bool {
    Outcome::ALL.iter().any(|x| x.as_str() == o && failed(*x))
}

/// `tenant:namespace/Kind/name` (the pod's name when it has no owner), `tenant:svc/ns/name`,
/// `node:name`, or the kind.
fn workload(id: &EndpointIdentity) -> String {
    let tenant = id.tenant.as_deref().unwrap_or("?");
    let ns = id.namespace.as_deref().unwrap_or_default();
    match id.kind {
        EndpointKind::Pod => match (&id.workload, &id.pod) {
            (Some(w), _) => format!("{tenant}:{ns}/{w}"),
            (None, Some(p)) => format!("{tenant}:{ns}/{p}"),
            _ => "pod".into(),
        },
        EndpointKind::Service => format!(
            "{tenant}:svc/{ns}/{}",
            id.service.as_deref().unwrap_or_default()
        ),
        EndpointKind::Node => format!("node:{}", id.node.as_deref().unwrap_or_default()),
        k => k.as_str().into(),
    }
}

/// The destination workload, and the name its source resolved it from: connections to
/// two names behind one address are two rows.
fn destination(c: &ConnectionView) -> String {
    let k = &c.class;
    let to = match (&k.dst_identity.kind, &k.backend_identity) {
        (EndpointKind::Service, Some(b)) => {
            format!("{} -> {}", workload(&k.dst_identity), workload(b))
        }
        _ => workload(&k.dst_identity),
    };
    match &c.dst_fqdn {
        Some(n) => format!("{to} [{n}]"),
        None => to,
    }
}

/// Fold connections into rows, flagged first, then by connections and bytes.
pub fn summarize(conns: &[ConnectionView]) -> Vec<SummaryRow> {
    type Key = (String, String, String, Option<u16>);
    let mut rows: BTreeMap<Key, (SummaryRow, std::collections::BTreeSet<u16>)> = BTreeMap::new();
    for c in conns {
        let k = &c.class;
        let fold_ports = c.outcome.is_some_and(failed);
        let key = (
            workload(&k.src_identity),
            destination(c),
            c.proto.to_string(),
            (!fold_ports).then_some(c.dst_port),
        );
        let (row, ports) = rows.entry(key.clone()).or_insert_with(|| {
            (
                SummaryRow {
                    source: key.0.clone(),
                    destination: key.1.clone(),
                    proto: key.2.clone(),
                    port: key.3,
                    ..Default::default()
                },
                Default::default(),
            )
        });
        ports.insert(c.dst_port);
        row.connections += 1;
        if let Some(o) = c.outcome {
            *row.outcomes.entry(o.as_str().to_owned()).or_default() += 1;
        }
        row.bytes += c.forward.bytes + c.reply.bytes;
        row.new_edges += u64::from(c.new_edge);
        for v in super::render::verdict_list(k) {
            if !row.verdicts.contains(&v) {
                row.verdicts.push(v);
            }
        }
    }
    let mut out: Vec<SummaryRow> = rows
        .into_values()
        .map(|(mut r, ports)| {
            r.ports = ports.len();
            if r.ports == 1 {
                r.port = ports.first().copied();
            }
            r
        })
        .collect();
    out.sort_by(|a, b| {
        b.flagged()
            .cmp(&a.flagged())
            .then(b.connections.cmp(&a.connections))
            .then(b.bytes.cmp(&a.bytes))
            .then_with(|| {
                (&a.source, &a.destination, a.port).cmp(&(&b.source, &b.destination, b.port))
            })
    });
    out
}

/// The rows as aligned columns (first line the header).
pub fn render(rows: &[SummaryRow]) -> String {
    let mut table: Vec<[String; 8]> = vec![[
        "SOURCE".into(),
        "DESTINATION".into(),
        "PROTO".into(),
        "PORT".into(),
        "CONNS".into(),
        "OUTCOMES".into(),
        "BYTES".into(),
        "FLAGS".into(),
    ]];
    for r in rows {
        let mut flags = r.verdicts.clone();
        if r.new_edges > 0 {
            flags.push(format!("NEW-EDGE={}", r.new_edges));
        }
        let outcomes: Vec<String> = r.outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
        table.push([
            r.source.clone(),
            r.destination.clone(),
            r.proto.clone(),
            match r.port {
                // ICMP carries type << 8 | code where ports would be.
                Some(p) if r.proto.starts_with("icmp") => format!("type {}", p >> 8),
                Some(p) => p.to_string(),
                None => format!("{} ports", r.ports),
            },
            r.connections.to_string(),
            if outcomes.is_empty() {
                "-".into()
            } else {
                outcomes.join(",")
            },
            r.bytes.to_string(),
            if flags.is_empty() {
                "-".into()
            } else {
                flags.join(",")
            },
        ]);
    }
    super::render::align(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::egress_view;

    #[test]
    fn identical_connections_fold_and_a_scan_is_one_flagged_row() {
        let mut quiet = Vec::new();
        for i in 0..28u16 {
            let mut v = egress_view();
            v.src_port = 40000 + i;
            v.class.egress = crate::classify::Egress::None;
            v.outcome = Some(Outcome::Established);
            quiet.push(v);
        }
        let mut scan = Vec::new();
        for port in 1..=100u16 {
            let mut v = egress_view();
            v.dst_port = port;
            v.class.egress = crate::classify::Egress::None;
            v.outcome = Some(match port {
                22 | 80 => Outcome::Established,
                1..=50 => Outcome::Refused,
                _ => Outcome::Unanswered,
            });
            scan.push(v);
        }
        let all: Vec<ConnectionView> = quiet.into_iter().chain(scan).collect();
        let rows = summarize(&all);
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[1].contains("98 ports"), "{text}");
        assert!(lines[1].contains("refused=49,unanswered=49"), "{text}");
        assert_eq!(rows[0].connections, 98);
        assert!(rows[0].flagged());
        let busy = rows.iter().find(|r| r.port == Some(443)).expect("443 row");
        assert_eq!(
            (busy.connections, busy.bytes, busy.flagged()),
            (28, 28 * 450, false)
        );
        assert_eq!(rows.len(), 4, "the failed fold, 443, 22 and 80");
    }
}
