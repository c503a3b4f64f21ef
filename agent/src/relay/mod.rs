//! One query over every node, like Hubble Relay: the index knows every node, so it asks
//! each node's agent (its records listener) with the caller's own token, so each agent's
//! tenant scoping still applies, and merges the answers with node names. Concurrency and
//! time per node are bounded; a node that does not answer is named in the answer instead
//! of holding it.

mod metrics;
pub mod pages;
pub mod route;
mod tls;

pub use metrics::RelayMetrics;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::identity::{Object, Store};
use pages::{fetch_while, Hints};

/// Records per page asked of each agent: what the relay holds beyond its budget is at most
/// one such page per node being read.
const PAGE: usize = 1_000;

/// The index's flags, named in per-node failures.
const HINTS: Hints = Hints {
    address: "the node's address in the Node object and --agent-records-port",
    tls: "--agent-ca, --agent-server-name",
};

#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The agents' records listener port (their --flows-listen).
    pub port: u16,
    /// PEM CA the agents' certificates chain to; `None`: plain HTTP (agents on a trusted
    /// network without `--flows-auth`, e.g. a lab).
    pub ca: Option<PathBuf>,
    /// The name the agents' certificate carries (the chart's: `<release>-agent`); `None`:
    /// each node's address must be in its certificate.
    pub server_name: Option<String>,
    /// Nodes asked at once, at most.
    pub concurrency: usize,
    /// One node's whole answer (every page), at most.
    pub timeout: Duration,
    /// Records in one merged answer, at most: nodes stop being read past it, and what is
    /// left out is said (`truncated`, `omitted`).
    pub max_records: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("--agent-ca {path}: {1}", path = .0.display())]
    Ca(PathBuf, String),
    #[error("building the relay's HTTP client: {0}")]
    Client(String),
}

/// One node to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub addr: IpAddr,
}

/// How one node's agent answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ok,
    /// 401 or 403: the caller may not read this node's records (or not these).
    Denied,
    /// Nothing within the per-node timeout.
    Timeout,
    /// Unreachable, refused, or a broken answer.
    Failed,
}

impl NodeStatus {
    /// As serialized: the relay's metric label and what the CLI prints.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ok => "ok",
            NodeStatus::Denied => "denied",
            NodeStatus::Timeout => "timeout",
            NodeStatus::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAnswer {
    pub node: String,
    pub status: NodeStatus,
    /// Records this node contributed.
    pub records: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every node's answer and their records, each with `node` set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Merged {
    pub nodes: Vec<NodeAnswer>,
    pub records: Vec<Value>,
    /// Records read but left out past `max_records`.
    #[serde(default)]
    pub omitted: usize,
    /// Nodes whose further pages were not read because the answer was full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
}

pub struct Relay {
    client: reqwest::Client,
    scheme: &'static str,
    cfg: RelayConfig,
}

impl Relay {
    pub fn new(cfg: RelayConfig) -> Result<Self, RelayError> {
        // No request timeout of the client's own: the per-node bound covers every page, and
        // a node that runs it out is reported as timed out, not as failed.
        let b = reqwest::Client::builder().connect_timeout(cfg.timeout.min(Duration::from_secs(5)));
        let (b, scheme) = match &cfg.ca {
            Some(path) => {
                let pem = crate::input::read(path, 1 << 20, "a CA bundle is a few KiB")
                    .map_err(|e| RelayError::Ca(path.clone(), e.to_string()))?;
                let tls = tls::client_config(pem.as_bytes(), cfg.server_name.as_deref())
                    .map_err(|e| RelayError::Ca(path.clone(), e))?;
                (b.use_preconfigured_tls(tls), "https")
            }
            None => (b, "http"),
        };
        let client = b.build().map_err(|e| RelayError::Client(e.to_string()))?;
        Ok(Self {
            client,
            scheme,
            cfg,
        })
    }

    /// Asks every target for `path_and_query` (e.g. `/flows?tenant=alpha`) as the caller
    /// `token`, at most `concurrency` at once, each within `timeout`.
    pub async fn query(
        &self,
        targets: Vec<Target>,
        path_and_query: &str,
        token: Option<&str>,
    ) -> Merged {
        // Pages of PAGE records, unless the caller chose a size.
        let paged = if path_and_query.contains("limit=") {
            path_and_query.to_owned()
        } else if path_and_query.contains('?') {
            format!("{path_and_query}&limit={PAGE}")
        } else {
            format!("{path_and_query}?limit={PAGE}")
        };
        // Records read so far over every node: past the budget no node reads another page.
        let read = AtomicUsize::new(0);
        let (read, paged) = (&read, &paged);
        let budget = self.cfg.max_records;
        let asks = futures::stream::iter(targets.into_iter().map(|t| {
            let host = match t.addr {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            let url = format!("{}://{host}:{}{paged}", self.scheme, self.cfg.port);
            async move {
                let seen = AtomicUsize::new(0);
                let more = |so_far: usize| {
                    let new = so_far - seen.swap(so_far, Ordering::Relaxed);
                    read.fetch_add(new, Ordering::Relaxed) + new < budget
                };
                let got = tokio::time::timeout(
                    self.cfg.timeout,
                    fetch_while::<Value>(&self.client, &url, token, HINTS, more),
                )
                .await;
                (t.node, got)
            }
        }))
        .buffer_unordered(self.cfg.concurrency.max(1));
        let answers: Vec<_> = asks.collect().await;
        let mut merged = Merged::default();
        for (node, got) in answers {
            let (status, records, error) = match got {
                Err(_) => (
                    NodeStatus::Timeout,
                    Vec::new(),
                    Some(format!(
                        "no whole answer within {}",
                        humantime::format_duration(self.cfg.timeout)
                    )),
                ),
                Ok(Err(e)) => {
                    let text = format!("{e:#}");
                    let denied = text.contains("answered 401") || text.contains("answered 403");
                    let status = if denied {
                        NodeStatus::Denied
                    } else {
                        NodeStatus::Failed
                    };
                    (status, Vec::new(), Some(text))
                }
                Ok(Ok((records, cut))) => {
                    if cut {
                        merged.truncated.push(node.clone());
                    }
                    (NodeStatus::Ok, records, None)
                }
            };
            let mut kept = 0;
            for mut r in records {
                if merged.records.len() >= self.cfg.max_records {
                    merged.omitted += 1;
                    continue;
                }
                if let Value::Object(m) = &mut r {
                    m.insert("node".into(), Value::String(node.clone()));
                }
                merged.records.push(r);
                kept += 1;
            }
            merged.nodes.push(NodeAnswer {
                node,
                status,
                records: kept,
                error,
            });
        }
        merged.nodes.sort_by(|a, b| a.node.cmp(&b.node));
        merged.truncated.sort();
        merged
    }
}

/// Every node of the inventory and the address its agent is asked at: the first IPv4
/// address (InternalIP comes first in a Node's status), else the first address.
pub fn targets(store: &Store) -> Vec<Target> {
    let mut out: Vec<Target> = store
        .objects()
        .filter_map(|o| match o {
            Object::Node(n) => {
                let addr = n
                    .ips
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| n.ips.first())
                    .copied()?;
                Some(Target {
                    node: n.name.to_string(),
                    addr,
                })
            }
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// Shared by the route's handlers.
pub type SharedRelay = Arc<Relay>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeMeta;

    /// A stand-in agent on `ip`:`port` with `n` records, paged like the real one.
    async fn fake_agent(ip: &str, port: u16, n: u64) {
        use axum::{extract::Query, http::HeaderMap, routing::get, Json, Router};
        #[derive(serde::Deserialize)]
        struct Q {
            limit: usize,
            after: Option<u64>,
        }
        let app = Router::new().route(
            "/flows",
            get(move |Query(q): Query<Q>| async move {
                let from = q.after.map_or(0, |a| a + 1);
                let ids: Vec<u64> = (from..n).take(q.limit).collect();
                let mut h = HeaderMap::new();
                if let Some(&last) = ids.last().filter(|&&l| l + 1 < n) {
                    h.insert(crate::export::NEXT_AFTER, last.to_string().parse().unwrap());
                }
                let body: Vec<Value> = ids.iter().map(|i| serde_json::json!({"id": i})).collect();
                (h, Json(body))
            }),
        );
        let l = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
    }

    #[tokio::test]
    async fn a_full_answer_stops_reading_and_says_which_nodes_had_more() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        fake_agent("127.0.0.1", port, 2_500).await;
        fake_agent("127.0.0.2", port, 2_500).await;
        let relay = Relay::new(RelayConfig {
            port,
            ca: None,
            server_name: None,
            concurrency: 2,
            timeout: Duration::from_secs(5),
            max_records: 1_500,
        })
        .unwrap();
        let targets = vec![
            Target {
                node: "a".into(),
                addr: "127.0.0.1".parse().unwrap(),
            },
            Target {
                node: "b".into(),
                addr: "127.0.0.2".parse().unwrap(),
            },
        ];
        let m = relay.query(targets, "/flows", Some("t")).await;
        assert_eq!(m.records.len(), 1_500, "the answer is full");
        // Each node stops after the page that filled it: at most one page each beyond.
        let read = m.records.len() + m.omitted;
        assert!((2_000..=3_000).contains(&read), "{read} read");
        assert_eq!(m.truncated, ["a", "b"], "both had pages left");
        assert!(m.nodes.iter().all(|n| n.status == NodeStatus::Ok));
        assert!(m
            .records
            .iter()
            .all(|r| r["node"] == "a" || r["node"] == "b"));
    }

    fn node(name: &str, ips: &[&str]) -> Object {
        Object::Node(NodeMeta {
            name: name.into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        })
    }

    #[test]
    fn a_status_is_named_alike_in_json_metrics_and_the_cli() {
        for s in [
            NodeStatus::Ok,
            NodeStatus::Denied,
            NodeStatus::Timeout,
            NodeStatus::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn every_node_is_asked_at_its_first_ipv4_address_in_name_order() {
        let store = Store::from_objects(vec![
            node("b", &["fd00::5", "10.0.0.5"]),
            node("a", &["10.0.0.4", "10.0.1.4"]),
            node("v6-only", &["fd00::6"]),
            node("no-address", &[]),
        ]);
        let got: Vec<(String, String)> = targets(&store)
            .into_iter()
            .map(|t| (t.node, t.addr.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".to_owned(), "10.0.0.4".to_owned()),
                ("b".into(), "10.0.0.5".into()),
                ("v6-only".into(), "fd00::6".into()),
            ]
        );
    }
}
