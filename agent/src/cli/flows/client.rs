//! Talking to an agent's records listener: the client (TLS, token), pages, and following.

use std::time::Duration;

use anyhow::Context as _;

use serde::de::DeserializeOwned;

use super::FlowsArgs;
use crate::cli::UsageError;
use crate::relay::pages::{fetch_all, Hints, Transient};

/// The CLI's flags, named in its failures.
pub(super) const HINTS: Hints = Hints {
    address: "--agent",
    tls: "--cacert, --tls-server-name",
};

/// Every page of `url` (the agent pages large answers; see `x-tenantflow-next-after`),
/// within `deadline` for all of them together: a server that pages forever or drips its
/// answer cannot hold the CLI longer than `--timeout`.
pub(super) async fn fetch<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    deadline: Duration,
) -> anyhow::Result<Vec<T>> {
    match tokio::time::timeout(deadline, fetch_all(client, url, token, HINTS)).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!(
            "the agent at {url} did not answer in time: one answer, every page of it, must arrive within --timeout {}",
            humantime::format_duration(deadline)
        ),
    }
}

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
            let url = reqwest::Url::parse(args.base())?;
            let addr = url
                .socket_addrs(|| Some(443))
                .ok()
                .and_then(|a| a.into_iter().next())
                .ok_or_else(|| UsageError(format!("{}: cannot resolve its host", args.base())))?;
            b = b.resolve(name, addr);
        }
    } else if args.base().starts_with("https:") {
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
