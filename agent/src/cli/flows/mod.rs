//! `tenantflow flows`: query a running agent, the way `hubble observe` users expect.

mod all_nodes;
mod client;
mod render;
mod summary;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use client::{client, fetch, fetch_following, records_url, token, wait_or_closed};
use render::Row;

use crate::{export::ConnectionView, flow::FlowView};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON array (or, with --follow, one JSON object per line).
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct FlowsArgs {
    /// Base URL of the agent's records endpoint (its --flows-listen, loopback only: run this
    /// on the node, e.g. `kubectl exec`, or through `kubectl port-forward`).
    #[arg(
        long,
        env = "TENANTFLOW_AGENT",
        default_value = "http://127.0.0.1:9991"
    )]
    pub agent: String,
    /// Only flows on this interface.
    #[arg(long)]
    pub iface: Option<String>,
    /// Only this protocol (tcp, udp, icmp, icmpv6).
    #[arg(long)]
    pub proto: Option<String>,
    /// Only flows with this address at either end.
    #[arg(long)]
    pub ip: Option<String>,
    /// Only flows with this port at either end.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only connections with this namespace at either end.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only connections with this tenant at either end.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this flow class (pod_to_pod, pod_to_egress, …).
    #[arg(long)]
    pub class: Option<String>,
    /// Only this egress verdict (none, mediated, exempt, unmediated).
    #[arg(long)]
    pub egress: Option<String>,
    /// Only cross-tenant connections.
    #[arg(long)]
    pub cross_tenant: bool,
    /// Only attempts that went this way (established, refused, unanswered, reset,
    /// replied, unreplied).
    #[arg(long)]
    pub outcome: Option<String>,
    /// Only connections to a destination resolved from a name this pattern covers
    /// (api.example.com, *.blob.core.windows.net).
    #[arg(long, value_name = "PATTERN")]
    pub fqdn: Option<String>,
    /// Only connections to a sensitive target (a name such as imds, or any).
    #[arg(long, num_args = 0..=1, default_missing_value = "any")]
    pub sensitive: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// Show at most this many flows (largest by bytes first).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep polling and print flows as they change.
    #[arg(short, long)]
    pub follow: bool,
    /// Show raw per-hook sightings instead of connections.
    #[arg(long, conflicts_with = "summary")]
    pub observations: bool,
    /// Fold connections by source workload → destination workload (or kind) and port,
    /// flagged rows (verdicts, failed attempts, new edges) first. With --follow, the whole
    /// summary is printed again every --interval.
    #[arg(long)]
    pub summary: bool,
    /// Poll interval with --follow.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Give up on an answer the agent has not finished in this long (all its pages
    /// together). With --follow, an agent that does not answer (restarting, busy) is
    /// waited for, with a note on stderr.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// A Kubernetes bearer token for an agent that checks them (--flows-auth kubernetes),
    /// e.g. `kubectl create token <serviceaccount> > token`. Default: the token (or token
    /// file) of the current kubeconfig user, when it has one.
    #[arg(long, env = "TENANTFLOW_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// PEM CA certificate that signed the agent's TLS certificate (https --agent URLs).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// The name the agent's certificate carries, when it is not the --agent host (the
    /// chart's certificate names the listener, e.g. tenantflow-records, not each node).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Ask every node at once, through the identity index (--index): the answers are
    /// merged with a NODE column, and nodes that did not answer are named on stderr. Your
    /// token goes to each node's agent, which answers with what it lets you read.
    #[arg(long, conflicts_with_all = ["follow", "observations"])]
    pub all_nodes: bool,
    /// Base URL of the identity index for --all-nodes (the chart's
    /// https://tenantflow-index.tenantflow.svc:9993, or a port-forward to it); --cacert and
    /// --tls-server-name then apply to it.
    #[arg(long, env = "TENANTFLOW_INDEX", value_name = "URL")]
    pub index: Option<String>,
}

impl FlowsArgs {
    /// Who is asked: the index with --all-nodes, else the agent.
    fn base(&self) -> &str {
        match (&self.index, self.all_nodes) {
            (Some(index), true) => index,
            _ => &self.agent,
        }
    }

    fn url(&self) -> String {
        let mut params = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                params.push(format!("{k}={v}"));
            }
        };
        add("iface", self.iface.clone());
        add("proto", self.proto.clone());
        add("ip", self.ip.clone());
        add("port", self.port.map(|p| p.to_string()));
        add("namespace", self.namespace.clone());
        add("tenant", self.tenant.clone());
        add("class", self.class.clone());
        add("egress", self.egress.clone());
        add("cross_tenant", self.cross_tenant.then(|| "true".to_owned()));
        add("sensitive", self.sensitive.clone());
        add("outcome", self.outcome.clone());
        add("fqdn", self.fqdn.clone());
        let base = self.base().trim_end_matches('/');
        let path = if self.all_nodes {
            crate::relay::route::PATH.trim_start_matches('/')
        } else if self.observations {
            "observations"
        } else {
            "flows"
        };
        if params.is_empty() {
            format!("{base}/{path}")
        } else {
            format!("{base}/{path}?{}", params.join("&"))
        }
    }
}

pub fn run(args: FlowsArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

/// Write to stdout; `false` once the reader went away (`| head`): the CLI then stops
/// quietly instead of panicking on a broken pipe.
fn emit(text: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
}

async fn run_async(args: FlowsArgs) -> anyhow::Result<()> {
    if let Err(e) = reqwest::Url::parse(&args.agent) {
        return Err(super::UsageError(format!(
            "--agent {:?}: not a URL ({e}); give one like http://127.0.0.1:9991",
            args.agent
        ))
        .into());
    }
    if args.all_nodes {
        match &args.index {
            None => {
                return Err(super::UsageError(
                    "--all-nodes asks through the identity index: give --index URL (or TENANTFLOW_INDEX), e.g. https://tenantflow-index.tenantflow.svc:9993".into(),
                )
                .into())
            }
            Some(i) if reqwest::Url::parse(i).is_err() => {
                return Err(super::UsageError(format!(
                    "--index {i:?}: not a URL; give one like https://tenantflow-index.tenantflow.svc:9993"
                ))
                .into())
            }
            Some(_) => return all_nodes::show(&args).await,
        }
    }
    if args.observations {
        show::<FlowView>(&args).await
    } else if args.summary {
        show_summary(&args).await
    } else {
        show::<ConnectionView>(&args).await
    }
}

async fn show_summary(args: &FlowsArgs) -> anyhow::Result<()> {
    let client = client(args)?;
    let token = token(args)?;
    let url = records_url(args)?;
    loop {
        let conns: Vec<ConnectionView> = if args.follow {
            match fetch_following(&client, &url, token.as_deref(), args).await? {
                Some(c) => c,
                None => return Ok(()),
            }
        } else {
            fetch(&client, &url, token.as_deref(), args.timeout).await?
        };
        let mut rows = summary::summarize(&conns);
        if let Some(n) = args.limit {
            rows.truncate(n);
        }
        let text = match args.output {
            Output::Json if args.follow => serde_json::to_string(&rows)? + "\n",
            Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
            Output::Table if args.follow => summary::render(&rows) + "\n",
            Output::Table => summary::render(&rows),
        };
        if !emit(&text)? || !args.follow || wait_or_closed(args.interval).await {
            return Ok(());
        }
    }
}

async fn show<T: Row>(args: &FlowsArgs) -> anyhow::Result<()> {
    let client = client(args)?;
    let token = token(args)?;
    let token = token.as_deref();
    let url = records_url(args)?;
    if !args.follow {
        let mut rows: Vec<T> = fetch(&client, &url, token, args.timeout).await?;
        if let Some(n) = args.limit {
            rows.sort_by_key(|r| std::cmp::Reverse(r.bytes()));
            rows.truncate(n);
        }
        let text = match args.output {
            Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
            Output::Table => T::table(&rows.iter().collect::<Vec<_>>()),
        };
        emit(&text)?;
        return Ok(());
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut header = true;
    loop {
        let Some(rows) = fetch_following::<T>(&client, &url, token, args).await? else {
            return Ok(());
        };
        let changed: Vec<&T> = rows
            .iter()
            .filter(|r| seen.get(&r.identity()) != Some(&r.activity()))
            .collect();
        // Only what is still listed is remembered: the memory of a long --follow stays
        // bounded by the agent's current answer, not by every connection ever shown.
        seen = rows.iter().map(|r| (r.identity(), r.activity())).collect();
        let text = match args.output {
            Output::Json => changed
                .iter()
                .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
                .collect::<Result<String, _>>()?,
            Output::Table if !changed.is_empty() => {
                let table = T::table(&changed);
                let body = if header {
                    table
                } else {
                    table.split_once('\n').map_or("", |(_, b)| b).to_owned()
                };
                header = false;
                body
            }
            Output::Table => String::new(),
        };
        if !emit(&text)? || wait_or_closed(args.interval).await {
            return Ok(());
        }
    }
}
