//! Where the agent's results go: its two listeners (and who may read them), the flow
//! log, and the sinks every connection event reaches.

use std::sync::Arc;

use anyhow::Context as _;
use tracing::{info, warn};

use super::{sources::node_name, AgentArgs, AuthMode};
use crate::cli::UsageError;
use crate::{
    access::{tls::ReloadingCert, Guard, KubeReview},
    export::{
        self,
        otlp::{self, Otlp, OtlpMetrics},
        FlowLog, FlowLogConfig, FlowMetrics, FlowMetricsConfig, NatMappings, Shared,
    },
    lateral::{EdgeConfig, Edges, Fanout, FanoutConfig},
    pipeline::Sinks,
};

/// The metrics and records listeners, bound before anything is attached: a taken port is
/// the user's to fix.
pub(super) async fn bind(
    args: &AgentArgs,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    let listener = export::bind(args.listen).await.map_err(|e| {
        UsageError(format!(
            "--listen {}: cannot bind ({e}); pick a free address, e.g. --listen 127.0.0.1:9991",
            args.listen
        ))
    })?;
    let records_listener = export::bind(args.flows_listen).await.map_err(|e| {
        UsageError(format!(
            "--flows-listen {}: cannot bind ({e}); pick a free loopback port, e.g. --flows-listen 127.0.0.1:9992",
            args.flows_listen
        ))
    })?;
    Ok((listener, records_listener))
}

/// The listeners' protection: (metrics, records). Records: none on loopback, TLS and
/// Kubernetes review otherwise; metrics: open unless asked. One guard (one decision cache)
/// serves both. Every inconsistent combination is bad input naming the fix.
pub(super) async fn access(args: &AgentArgs) -> anyhow::Result<Access> {
    if args.flows_auth == AuthMode::None && !args.flows_listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "--flows-listen {}: flow records name every tenant's pods, addresses and processes, \
             so without --flows-auth kubernetes they are served on loopback only (e.g. \
             127.0.0.1:9991; read them with `kubectl exec` or `kubectl port-forward`, \
             docs/security.md)",
            args.flows_listen
        ))
        .into());
    }
    if args.flows_auth == AuthMode::None && args.metrics_auth == AuthMode::None {
        return Ok(Access::default());
    }
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Err(UsageError(
            "--flows-auth / --metrics-auth kubernetes need --tls-cert and --tls-key: bearer \
             tokens are never accepted in clear text"
                .into(),
        )
        .into());
    };
    let usage = |e: crate::access::tls::TlsError| UsageError(e.to_string());
    let cert = ReloadingCert::load(cert, key).map_err(usage)?;
    let tls = cert.server_config(&[]).map_err(usage)?;
    let client = kube::Client::try_default().await.map_err(|e| {
        UsageError(format!(
            "--flows-auth / --metrics-auth kubernetes: no Kubernetes API client ({e}): run in \
             the cluster with the service account token mounted, or set KUBECONFIG"
        ))
    })?;
    let guard = Arc::new(Guard::new(KubeReview::new(client), args.auth_cache_ttl));
    let pick =
        |mode: AuthMode| (mode == AuthMode::Kubernetes).then(|| (guard.clone(), tls.clone()));
    let (metrics, records) = (pick(args.metrics_auth), pick(args.flows_auth));
    info!(
        metrics = metrics.is_some(),
        records = records.is_some(),
        "listeners behind TLS and Kubernetes authorization"
    );
    Ok(Access {
        metrics,
        records,
        cert: Some(cert),
    })
}

pub(super) fn open_flow_log(args: &AgentArgs) -> anyhow::Result<Option<FlowLog>> {
    let Some(target) = &args.flow_log else {
        return Ok(None);
    };
    let node = node_name(args);
    let cfg = FlowLogConfig {
        path: (target != "-").then(|| target.into()),
        max_bytes: args.flow_log_max_bytes,
        keep: args.flow_log_keep,
        filter: args.flow_log_filter,
        update_interval: args.flow_log_update_interval,
        node,
    };
    let log = FlowLog::open(cfg).map_err(|e| {
        UsageError(format!(
            "--flow-log {target}: cannot open it ({e}); give a writable path or - for stdout"
        ))
    })?;
    Ok(Some(log))
}

/// The OTLP exporter (the harvest's side and the sender task), when configured.
pub(super) fn start_otlp(
    prepared: Option<otlp::Prepared>,
    shared: &Shared,
) -> anyhow::Result<(Option<Otlp>, Option<otlp::Sender>)> {
    let Some(prepared) = prepared else {
        return Ok((None, None));
    };
    let metrics = OtlpMetrics::new(&shared.metrics.registry).context("registering OTLP metrics")?;
    info!(endpoint = %prepared.endpoint(), "exporting flow records over OTLP");
    let (o, sender) = Otlp::new(prepared, metrics);
    Ok((Some(o), Some(sender)))
}

pub(super) type Guarded = Option<(Arc<Guard<KubeReview>>, Arc<rustls::ServerConfig>)>;

/// The listeners' access checks, and the certificate they share (re-read while running).
#[derive(Default)]
pub(super) struct Access {
    pub metrics: Guarded,
    pub records: Guarded,
    pub cert: Option<Arc<ReloadingCert>>,
}

/// Where connection events go: flow metrics, NAT mappings, the flow log, fan-out; and the
/// new-edge detector with its saved set.
pub(super) fn sinks(
    args: &AgentArgs,
    shared: &Shared,
    log: Option<FlowLog>,
    otlp: Option<Otlp>,
) -> anyhow::Result<(Sinks, Edges)> {
    let registry = &shared.metrics.registry;
    let metrics = FlowMetrics::new(
        registry,
        FlowMetricsConfig {
            workload_labels: args.metrics_workload_labels,
            max_series: args.metrics_max_series,
            grace: args.metrics_grace,
        },
    );
    let fanout = Fanout::new(
        registry,
        FanoutConfig {
            window: args.fanout_window,
            max_sources: args.fanout_max_sources,
            workload_labels: args.metrics_workload_labels,
        },
    )
    .context("registering fan-out metrics")?;
    let (edges, edge_problem) = Edges::open(
        registry,
        EdgeConfig {
            learning: args.edge_learning,
            max_edges: args.edge_limit,
            file: args.edge_file.clone(),
        },
    )
    .context("registering edge metrics")?;
    if let Some(e) = edge_problem {
        warn!(error = %e, "edges: starting without the saved set");
    }
    let sinks = Sinks {
        metrics,
        nat_mappings: NatMappings::new(registry, args.nat_mappings_limit()),
        log,
        otlp,
        fanout,
    };
    Ok((sinks, edges))
}
