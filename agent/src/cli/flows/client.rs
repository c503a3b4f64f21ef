//! Talking to an agent's records listener: the client (TLS, token), pages, and following.

use std::time::Duration;

use anyhow::Context as _;

use serde::de::DeserializeOwned;

use super::FlowsArgs;
use crate::cli::UsageError;

/// Every page of `url` (the agent pages large answers; see `x-tenantflow-next-after`),
/// within `deadline` for all of them together: a server that pages forever or drips its
/// answer cannot hold the CLI longer than `--timeout`.
pub(super) async fn fetch<T: DeserializeOwned>(
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

pub(super) async fn fetch_all<T: DeserializeOwned>(
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
pub(super) struct Transient(String);

/// With --follow, an agent that restarts is waited for (said once on stderr) instead of
/// ending the follow; None when stdout closed meanwhile.
pub(super) async fn fetch_following<T: DeserializeOwned>(
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
pub(super) async fn wait_or_closed(d: Duration) -> bool {
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
pub(super) fn stdout_closed() -> bool {
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
pub(super) const MAX_PAGE_BYTES: usize = 64 << 20;

/// The body, at most [`MAX_PAGE_BYTES`]: an endless or huge answer is an error, not memory.
pub(super) async fn body(resp: reqwest::Response, url: &str) -> anyhow::Result<Vec<u8>> {
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

pub(super) async fn fetch_page<T: DeserializeOwned>(
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

/// Connecting is bounded (and answering by `--timeout`): an agent port that accepts and
/// never answers must not hang the CLI.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The bearer token: --token-file, else the current kubeconfig user's static token.
pub(super) fn token(args: &FlowsArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.token_file else {
        return Ok(kubeconfig_token());
    };
    let text = crate::input::read(path, 64 * 1024, "a bearer token is a few KiB")
        .map_err(|e| UsageError(format!("--token-file {}: {e}", path.display())))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(UsageError(format!(
            "--token-file {}: it is empty: write a token into it (kubectl create token …)",
            path.display()
        ))
        .into());
    }
    Ok(Some(t.to_owned()))
}

/// The current kubeconfig user's `token` or `tokenFile`, if it has one (exec plugins such
/// as kubelogin are not run: pass --token-file with `kubectl create token` instead).
pub(super) fn kubeconfig_token() -> Option<String> {
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

pub(super) fn client(args: &FlowsArgs) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(args.timeout)
        .tls_built_in_root_certs(false);
    if let Some(ca) = &args.cacert {
        let pem = crate::input::read(ca, 1 << 20, "a CA certificate is a few KiB")
            .map_err(|e| UsageError(format!("--cacert {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(|e| {
            UsageError(format!(
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
                    UsageError(format!("--agent {}: cannot resolve its host", args.agent))
                })?;
            b = b.resolve(name, addr);
        }
    } else if args.agent.starts_with("https:") {
        return Err(UsageError(
            "an https --agent needs --cacert: the CA that signed the agent's certificate (the \
             chart's tenantflow-records-tls Secret holds it as ca.crt)"
                .into(),
        )
        .into());
    }
    b.build().context("building the HTTP client")
}

/// The records URL, asking for (and verifying) the certificate's name when given.
pub(super) fn records_url(args: &FlowsArgs) -> anyhow::Result<String> {
    Ok(match &args.tls_server_name {
        // Connect to the --agent address, but ask for (and verify) the certificate's name.
        Some(name) => {
            let mut u = reqwest::Url::parse(&args.url())?;
            u.set_host(Some(name)).map_err(|e| {
                UsageError(format!("--tls-server-name {name}: not a host name ({e})"))
            })?;
            u.to_string()
        }
        None => args.url(),
    })
}
