//! Reading an agent's records listener: every page of one answer (the agent pages large
//! answers, see `x-tenantflow-next-after`), each page bounded in size, failures said in
//! terms of the flags of whoever asked (the CLI's or the index's).

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// Most bytes one page may carry: a full page of 10,000 records is about 12 MB.
pub const MAX_PAGE_BYTES: usize = 64 << 20;

/// Which settings a failure points at, in the asker's words.
#[derive(Clone, Copy, Debug)]
pub struct Hints {
    /// Where the agent's address came from (`--agent`).
    pub address: &'static str,
    /// What decides whether its certificate is accepted (`--cacert, --tls-server-name`).
    pub tls: &'static str,
}

/// A failure that may pass (the agent restarting, busy, briefly unreachable).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// Every page of `url`, in order.
pub async fn fetch_all<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    hints: Hints,
) -> anyhow::Result<Vec<T>> {
    Ok(fetch_while(client, url, token, hints, |_| true).await?.0)
}

/// Pages of `url` while `more(records so far)` says so; true in the second place when it
/// stopped with pages left.
pub async fn fetch_while<T: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    hints: Hints,
    more: impl Fn(usize) -> bool,
) -> anyhow::Result<(Vec<T>, bool)> {
    let mut all = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let page_url = match after {
            None => url.to_owned(),
            Some(a) if url.contains('?') => format!("{url}&after={a}"),
            Some(a) => format!("{url}?after={a}"),
        };
        let (page, next) = fetch_page(client, &page_url, token, hints).await?;
        all.extend(page);
        let Some(next) = next else {
            return Ok((all, false));
        };
        if !more(all.len()) {
            return Ok((all, true));
        }
        let next: u64 = next.parse().map_err(|_| {
            anyhow::anyhow!(
                "the agent's next-page marker {next:?} is not a record id: is {} a tenantflow agent?",
                hints.address
            )
        })?;
        // Pages move forward by record id; a marker that does not is a loop.
        if let Some(a) = after.filter(|&a| next <= a) {
            anyhow::bail!(
                "the agent sent next-page marker {next} after {a}: pages would repeat forever; stopping (is {} a tenantflow agent?)",
                hints.address
            );
        }
        after = Some(next);
    }
}

/// The body, at most [`MAX_PAGE_BYTES`]: an endless or huge answer is an error, not memory.
async fn body(resp: reqwest::Response, url: &str, hints: Hints) -> anyhow::Result<Vec<u8>> {
    use futures::StreamExt as _;
    let mut out = Vec::new();
    let mut chunks = resp.bytes_stream();
    while let Some(c) = chunks.next().await {
        let c = c.with_context(|| format!("reading the answer from {url}"))?;
        if out.len() + c.len() > MAX_PAGE_BYTES {
            anyhow::bail!(
                "the agent at {url} sent more than {} MiB in one page: not a tenantflow agent, or a broken one ({})",
                MAX_PAGE_BYTES >> 20,
                hints.address
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
    hints: Hints,
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
            "it did not answer in time".to_owned()
        } else if tls {
            format!("its TLS certificate was not accepted ({})", hints.tls)
        } else if e.is_connect() {
            "nothing accepted the connection: is the agent running there?".to_owned()
        } else {
            "the request failed".to_owned()
        };
        anyhow::Error::new(Transient(format!(
            "cannot reach the agent at {url}: {why} ({}) ({e}: {cause})",
            hints.address
        )))
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let hint = match status.as_u16() {
            401 if token.is_none() => {
                " (this agent checks tokens: pass --token-file, or use a kubeconfig with a token)"
            }
            401 => " (the token was refused)",
            403 => " (ask for a namespace you may read: --namespace or --tenant)",
            _ => "",
        };
        let msg = format!("agent answered {status}: {}{hint}", body.trim());
        // Busy, starting or restarting: worth waiting for.
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
    let bytes = body(resp, url, hints).await?;
    let rows = serde_json::from_slice(&bytes).context("agent sent malformed JSON")?;
    Ok((rows, next))
}
