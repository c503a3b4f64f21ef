//! `tenantflow flows --all-nodes`: one query through the identity index's relay, every
//! node's records with a NODE column, and the nodes that did not answer named.

use anyhow::Context as _;
use serde::Deserialize;

use super::{
    client::{client, records_url, token},
    emit, render, summary, FlowsArgs, Output,
};
use crate::{
    export::ConnectionView,
    relay::{Merged, NodeStatus},
};

/// One relayed record: the node that saw it and the connection.
#[derive(Deserialize)]
struct NodeRecord {
    node: String,
    #[serde(flatten)]
    view: ConnectionView,
}

pub(super) async fn show(args: &FlowsArgs) -> anyhow::Result<()> {
    let client = client(args)?;
    let token = token(args)?;
    let url = records_url(args)?;
    let merged = tokio::time::timeout(args.timeout, ask(&client, &url, token.as_deref()))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the index at {url} did not answer within --timeout {}",
                humantime::format_duration(args.timeout)
            )
        })??;
    for n in merged.nodes.iter().filter(|n| n.status != NodeStatus::Ok) {
        eprintln!(
            "tenantflow: node {} did not answer ({}): {}",
            n.node,
            n.status.as_str(),
            n.error.as_deref().unwrap_or("")
        );
    }
    if merged.omitted > 0 || !merged.truncated.is_empty() {
        eprintln!(
            "tenantflow: the answer is full (the index's --relay-max-records): {} records left out{}; narrow the query",
            merged.omitted,
            if merged.truncated.is_empty() {
                String::new()
            } else {
                format!(", and more not read from {}", merged.truncated.join(", "))
            }
        );
    }
    let answered = merged
        .nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Ok)
        .count();
    if answered == 0 && !merged.nodes.is_empty() {
        anyhow::bail!(
            "no node answered (of {}): see the reasons above",
            merged.nodes.len()
        );
    }
    if matches!(args.output, Output::Json) && !args.summary {
        emit(&(serde_json::to_string_pretty(&merged)? + "\n"))?;
        return Ok(());
    }
    let mut rows: Vec<NodeRecord> = merged
        .records
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .context("the index sent a record that is not a connection")?;
    if args.summary {
        let views: Vec<ConnectionView> = rows.into_iter().map(|r| r.view).collect();
        let mut folded = summary::summarize(&views);
        if let Some(n) = args.limit {
            folded.truncate(n);
        }
        let text = match args.output {
            Output::Json => serde_json::to_string_pretty(&folded)? + "\n",
            Output::Table => summary::render(&folded),
        };
        emit(&text)?;
        return Ok(());
    }
    if let Some(n) = args.limit {
        rows.sort_by_key(|r| std::cmp::Reverse(r.view.forward.bytes + r.view.reply.bytes));
        rows.truncate(n);
    } else {
        rows.sort_by(|a, b| (&a.node, a.view.id).cmp(&(&b.node, b.view.id)));
    }
    emit(&with_nodes(&rows))?;
    Ok(())
}

async fn ask(client: &reqwest::Client, url: &str, token: Option<&str>) -> anyhow::Result<Merged> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the index at {url} (--index, --cacert)"))?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("the index answered {status}: {}", body.trim());
    }
    resp.json().await.with_context(|| {
        format!("the index at {url} sent no relayed answer: is --index a tenantflow index?")
    })
}

/// The connection table with the node first.
fn with_nodes(rows: &[NodeRecord]) -> String {
    let views: Vec<&ConnectionView> = rows.iter().map(|r| &r.view).collect();
    let table = render::render_connections(&views);
    let nodes: Vec<&str> = std::iter::once("NODE")
        .chain(rows.iter().map(|r| r.node.as_str()))
        .collect();
    let width = nodes.iter().map(|n| n.len()).max().unwrap_or(0);
    table
        .lines()
        .zip(nodes)
        .map(|(line, node)| format!("{node:<width$}  {line}\n"))
        .collect()
}
