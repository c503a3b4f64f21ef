//! `tenantflow flows`: query a running agent, the way `hubble observe` users expect.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::flow::FlowView;

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
    /// Base URL of the agent's HTTP endpoint.
    #[arg(
        long,
        env = "TENANTFLOW_AGENT",
        default_value = "http://127.0.0.1:9990"
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
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
    /// Show at most this many flows (largest by bytes first).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep polling and print flows as they change.
    #[arg(short, long)]
    pub follow: bool,
    /// Poll interval with --follow.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

impl FlowsArgs {
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
        let base = self.agent.trim_end_matches('/');
        if params.is_empty() {
            format!("{base}/flows")
        } else {
            format!("{base}/flows?{}", params.join("&"))
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

async fn fetch(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<FlowView>> {
    let resp =
        client.get(url).send().await.with_context(|| {
            format!("cannot reach the agent at {url}: is it running? (--agent)")
        })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        anyhow::bail!("agent answered {status}: {}", body.trim());
    }
    resp.json().await.context("agent sent malformed JSON")
}

async fn run_async(args: FlowsArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = args.url();
    if !args.follow {
        let mut flows = fetch(&client, &url).await?;
        if let Some(n) = args.limit {
            flows.sort_by_key(|f| std::cmp::Reverse(f.bytes));
            flows.truncate(n);
        }
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&flows)?),
            Output::Table => print!("{}", render_table(&flows)),
        }
        return Ok(());
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut header = true;
    loop {
        let flows = fetch(&client, &url).await?;
        let changed: Vec<FlowView> = flows
            .into_iter()
            .filter(|f| seen.insert(identity(f), f.packets) != Some(f.packets))
            .collect();
        match args.output {
            Output::Json => {
                for f in &changed {
                    println!("{}", serde_json::to_string(f)?);
                }
            }
            Output::Table if !changed.is_empty() => {
                let table = render_table(&changed);
                let body = if header {
                    &table[..]
                } else {
                    table.split_once('\n').map_or("", |(_, b)| b)
                };
                print!("{body}");
                header = false;
            }
            Output::Table => {}
        }
        tokio::time::sleep(args.interval).await;
    }
}

fn identity(f: &FlowView) -> String {
    format!(
        "{}/{}/{}/{}:{}/{}:{}",
        f.ifindex, f.hook, f.proto, f.src, f.src_port, f.dst, f.dst_port
    )
}

fn endpoint(ip: &std::net::IpAddr, port: u16, icmp: bool) -> String {
    match (ip, icmp) {
        (_, true) => ip.to_string(),
        (std::net::IpAddr::V6(_), false) => format!("[{ip}]:{port}"),
        (std::net::IpAddr::V4(_), false) => format!("{ip}:{port}"),
    }
}

/// Aligned text table, header first, sorted by bytes (largest first).
pub fn render_table(flows: &[FlowView]) -> String {
    let mut rows: Vec<[String; 7]> = vec![[
        "IFACE".into(),
        "HOOK".into(),
        "PROTO".into(),
        "SOURCE".into(),
        "DESTINATION".into(),
        "PACKETS".into(),
        "BYTES".into(),
    ]];
    let mut sorted: Vec<&FlowView> = flows.iter().collect();
    sorted.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| identity(a).cmp(&identity(b)))
    });
    for f in sorted {
        let icmp = matches!(
            f.proto,
            crate::flow::Protocol::Icmp | crate::flow::Protocol::Icmpv6
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
    let widths: Vec<usize> = (0..7)
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
