//! The Kubernetes API client the identity watches use: kube's own, from the service
//! account or KUBECONFIG, but without its built-in retry of 429/503/504. That retry waits
//! up to fifteen times inside one request, so an outage looks like a slow request instead
//! of an outage (staleness is never reported), and "too large resource version" (a 504)
//! is retried with the same version instead of relisting. The reflector retries instead,
//! with jittered backoff, and says what is happening while it does.

/// A client as `kube::Client::try_default` makes one, without the built-in retry.
pub async fn connect() -> Result<kube::Client, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config)
}
