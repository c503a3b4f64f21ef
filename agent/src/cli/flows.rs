//! `tenantflow flows`: query a running agent, the way `hubble observe` users expect.

use std::{collections::HashMap, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use serde::de::DeserializeOwned;

use crate::{
    classify::{Classification, Egress, EndpointIdentity, EndpointKind},
    export::ConnectionView,
    flow::{FlowView, Protocol},
};

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
        add("namespace", self.namespace.clone());
        add("tenant", self.tenant.clone());
        add("class", self.class.clone());
        add("egress", self.egress.clone());
        add("cross_tenant", self.cross_tenant.then(|| "true".to_owned()));
        add("sensitive", self.sensitive.clone());
        add("outcome", self.outcome.clone());
        let base = self.agent.trim_end_matches('/');
        let path = if self.observations {
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

/// Every page of `url` (the agent pages large answers; see `x-tenantflow-next-after`),
/// within `deadline` for all of them together: a server that pages forever or drips its
/// answer cannot hold the CLI longer than `--timeout`.
async fn fetch<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<Vec<T>> {
    match tokio::time::timeout(deadline, fetch_all(client, url, token)).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "the agent at {url} did not answer in time: one answer, every page of it, must arrive within --timeout {}",
            humantime::format_duration(deadline)
        ),
    }
}

async fn fetch_all<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let page_url = match after {
            None => url.to_owned(),
            Some(a) if url.contains('?') => format!("{url}&after={a}"),
            Some(a) => format!("{url}?after={a}"),
        };
        let (page, next) = fetch_page(client, &page_url, token).await?;
        all.extend(page);
        let Some(next) = next else {
            return Ok(all);
        };
        let next: u64 = next.parse().map_err(|_| {
            anyhow::anyhow!("the agent's next-page marker {next:?} is not a record id: is --agent a tenantflow agent?")
        })?;
        // Pages move forward by record id; a marker that does not is a loop.
        if let Some(a) = after.filter(|&a| next <= a) {
            anyhow::bail!(
                "the agent sent next-page marker {next} after {a}: pages would repeat forever; stopping (is --agent a tenantflow agent?)"
            );
        }
        after = Some(next);
    }
}

/// A failure that may pass (the agent restarting, busy, briefly unreachable).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transient(String);

/// With --follow, an agent that restarts is waited for (said once on stderr) instead of
/// ending the follow; None when stdout closed meanwhile.
async fn fetch_following<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    args: &FlowsArgs,
) -> anyhow::Result<Option<Vec<T>>> {
    let mut waiting = false;
    let mut backoff = crate::backoff::Backoff::up_to(Duration::from_secs(5));
    loop {
        match fetch(client, url, token, args.timeout).await {
            Ok(rows) => {
                if waiting {
                    eprintln!("tenantflow: the agent answers again");
                }
                return Ok(Some(rows));
            }
            Err(e) if e.downcast_ref::<Transient>().is_some() => {
                if !waiting {
                    eprintln!("tenantflow: {e}; retrying until it answers (Ctrl-C stops)");
                    waiting = true;
                }
                if wait_or_closed(backoff.delay()).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Wait `d`, or less if stdout's reader went away (`| head -1` has what it wanted):
/// true then, so --follow stops at once instead of at its next write.
async fn wait_or_closed(d: Duration) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        if stdout_closed() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return false;
        }
        tokio::time::sleep((until - now).min(Duration::from_millis(100))).await;
    }
}

/// A pipe whose reader closed reports POLLERR on the write end; a terminal or file never.
fn stdout_closed() -> bool {
    let mut p = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd on our own stdout, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Most bytes one page may carry: a full page of 10,000 records is about 12 MB.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// The body, at most [`MAX_PAGE_BYTES`]: an endless or huge answer is an error, not memory.
async fn body(resp: reqwest::Response, url: &str) -> anyhow::Result<Vec<u8>> {
    use futures::StreamExt as _;
    let mut out = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(c) = chunks.next().await {
        let c = c.with_context(|| format!("reading the answer from {url}"))?;
        if out.len() + c.len() > MAX_PAGE_BYTES {
            anyhow::bail!(
                "the agent at {url} sent more than {} MiB in one page: not a tenantflow agent, or a broken one (--agent)",
                MAX_PAGE_BYTES >> 20
            );
        }
        out.extend_from_slice(&c);
    }
    Ok(out)
}

async fn fetch_page<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<(Vec<T>, Option<String>)> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| {
        // The innermost cause says what really failed (refused, certificate, timeout).
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        let tls = cause.to_string().to_lowercase().contains("certificate");
        let why = if e.is_timeout() {
            "it did not answer in time"
        } else if tls {
            "its TLS certificate was not accepted (--cacert, --tls-server-name)"
        } else if e.is_connect() {
            "nothing accepted the connection: is the agent running there?"
        } else {
            "the request failed"
        };
        anyhow::Error::new(Transient(format!(
            "cannot reach the agent at {url}: {why} (--agent) ({e}: {cause})"
        )))
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let hint = match status.as_u16() {
            401 if token.is_none() => {
                " (this agent checks tokens: pass --token-file, or use a kubeconfig with a token)"
            }
            401 => " (the token in --token-file was refused)",
            403 => " (ask for a namespace you may read: --namespace or --tenant)",
            _ => "",
        };
        let msg = format!("agent answered {status}: {}{hint}", body.trim());
        // Busy, starting or restarting: worth waiting for with --follow.
        if status.is_server_error() {
            return Err(anyhow::Error::new(Transient(msg)));
        }
        anyhow::bail!(msg);
    }
    let next = resp
        .headers()
        .get(crate::export::NEXT_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = body(resp, url).await?;
    let rows = serde_json::from_slice(&bytes).context("agent sent malformed JSON")?;
    Ok((rows, next))
}

/// How a record type is shown: identity (for --follow), size (for --limit), table.
trait Row: serde::Serialize + DeserializeOwned {
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

/// Connecting is bounded (and answering by `--timeout`): an agent port that accepts and
/// never answers must not hang the CLI.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
        return Err(super::agent::UsageError(format!(
            "--agent {:?}: not a URL ({e}); give one like http://127.0.0.1:9991",
            args.agent
        ))
        .into());
    }
    if args.observations {
        show::<FlowView>(&args).await
    } else if args.summary {
        show_summary(&args).await
    } else {
        show::<ConnectionView>(&args).await
    }
}

/// The bearer token: --token-file, else the current kubeconfig user's static token.
fn token(args: &FlowsArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.token_file else {
        return Ok(kubeconfig_token());
    };
    let text = crate::input::read(path, 64 * 1024, "a bearer token is a few KiB")
        .map_err(|e| super::agent::UsageError(format!("--token-file {}: {e}", path.display())))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(super::agent::UsageError(format!(
            "--token-file {}: it is empty: write a token into it (kubectl create token …)",
            path.display()
        ))
        .into());
    }
    Ok(Some(t.to_owned()))
}

/// The current kubeconfig user's `token` or `tokenFile`, if it has one (exec plugins such
/// as kubelogin are not run: pass --token-file with `kubectl create token` instead).
fn kubeconfig_token() -> Option<String> {
    use secrecy::ExposeSecret;
    let cfg = kube::config::Kubeconfig::read().ok()?;
    let ctx = cfg.current_context.as_ref()?;
    let user = cfg
        .contexts
        .iter()
        .find(|c| &c.name == ctx)?
        .context
        .as_ref()?
        .user
        .clone()?;
    let auth = cfg
        .auth_infos
        .iter()
        .find(|a| a.name == user)?
        .auth_info
        .as_ref()?;
    if let Some(t) = &auth.token {
        return Some(t.expose_secret().trim().to_owned());
    }
    let file = auth.token_file.as_ref()?;
    let text = crate::input::read(
        std::path::Path::new(file),
        64 * 1024,
        "a token is a few KiB",
    )
    .ok()?;
    Some(text.trim().to_owned())
}

fn client(args: &FlowsArgs) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(args.timeout)
        .tls_built_in_root_certs(false);
    if let Some(ca) = &args.cacert {
        let pem = crate::input::read(ca, 1 << 20, "a CA certificate is a few KiB")
            .map_err(|e| super::agent::UsageError(format!("--cacert {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
            super::agent::UsageError(format!(
                "--cacert {}: not a PEM certificate ({e})",
                ca.display()
            ))
        })?;
        b = b.add_root_certificate(cert);
        if let Some(name) = &args.tls_server_name {
            let url = reqwest::Url::parse(&args.agent)?;
            let addr = url
                .socket_addrs(|| Some(443))
                .ok()
                .and_then(|a| a.into_iter().next())
                .ok_or_else(|| {
                    super::agent::UsageError(format!(
                        "--agent {}: cannot resolve its host",
                        args.agent
                    ))
                })?;
            b = b.resolve(name, addr);
        }
    } else if args.agent.starts_with("https:") {
        return Err(super::agent::UsageError(
            "an https --agent needs --cacert: the CA that signed the agent's certificate (the \
             chart's tenantflow-records-tls Secret holds it as ca.crt)"
                .into(),
        )
        .into());
    }
    b.build().context("building the HTTP client")
}

/// The records URL, asking for (and verifying) the certificate's name when given.
fn records_url(args: &FlowsArgs) -> anyhow::Result<String> {
    Ok(match &args.tls_server_name {
        // Connect to the --agent address, but ask for (and verify) the certificate's name.
        Some(name) => {
            let mut u = reqwest::Url::parse(&args.url())?;
            u.set_host(Some(name)).map_err(|e| {
                super::agent::UsageError(format!("--tls-server-name {name}: not a host name ({e})"))
            })?;
            u.to_string()
        }
        None => args.url(),
    })
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
        let mut rows = super::summary::summarize(&conns);
        if let Some(n) = args.limit {
            rows.truncate(n);
        }
        let text = match args.output {
            Output::Json if args.follow => serde_json::to_string(&rows)? + "\n",
            Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
            Output::Table if args.follow => super::summary::render(&rows) + "\n",
            Output::Table => super::summary::render(&rows),
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
fn who(id: &EndpointIdentity) -> String {
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
fn verdicts(k: &Classification) -> String {
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
    align(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::egress_view as egress;

    /// Cells of a rendered line (columns are separated by at least two spaces) and where
    /// each column starts.
    fn cells(line: &str) -> (Vec<&str>, Vec<usize>) {
        let mut starts = vec![0];
        let b = line.as_bytes();
        for i in 2..b.len() {
            if b[i] != b' ' && b[i - 1] == b' ' && b[i - 2] == b' ' {
                starts.push(i);
            }
        }
        let v = starts
            .iter()
            .enumerate()
            .map(|(n, &s)| line[s..starts.get(n + 1).copied().unwrap_or(line.len())].trim_end())
            .collect();
        (v, starts)
    }

    #[test]
    fn a_connection_row_shows_who_the_verdicts_both_nat_sides_and_counts_in_columns() {
        let mut v = egress();
        v.outcome = Some(crate::flow::Outcome::Established);
        let text = render_connections(&[&v]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let (head, head_at) = cells(lines[0]);
        let (row, row_at) = cells(lines[1]);
        assert_eq!(
            head,
            [
                "PROTO",
                "SOURCE",
                "FROM",
                "DESTINATION",
                "TO",
                "CLASS",
                "OUTCOME",
                "VERDICTS",
                "NAT",
                "FWD PKTS/BYTES",
                "REPLY PKTS/BYTES"
            ]
        );
        assert_eq!(
            row,
            [
                "tcp",
                "10.244.1.10:40000",
                "alpha:alpha-web/web-1",
                "203.0.113.10:443",
                "internet",
                "pod_to_egress/internet",
                "established",
                "egress=unmediated",
                "snat 10.224.0.4:40001",
                "3/300",
                "2/150"
            ]
        );
        assert_eq!(head_at, row_at, "columns line up:\n{text}");
    }

    #[test]
    fn a_node_process_names_itself_and_rows_go_largest_first() {
        let mut big = egress();
        big.forward.bytes = 9_000;
        big.process = Some(crate::process::ProcessInfo {
            pid: 42,
            command: "curl".into(),
            cgroup_id: 7,
            cgroup: None,
            pod: Some("alpha-jobs/jobs-1".into()),
        });
        let small = egress();
        let text = render_connections(&[&small, &big]);
        let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| cells(l).0).collect();
        assert_eq!(
            rows[0][2],
            "alpha:alpha-web/web-1 (curl[42] pod alpha-jobs/jobs-1)"
        );
        assert_eq!(rows[0][9], "3/9000");
        assert_eq!(rows[1][9], "3/300");
        assert_eq!(rows[1][6], "-", "no outcome known yet");
    }
}
