//! `tenantflow agent`'s OTLP export flags (docs/otlp.md), and the exporter they configure.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::UsageError;
use crate::export::{
    otlp::{OtlpConfig, OtlpProtocol},
    LogFilter,
};

#[derive(Debug, Clone, Args)]
pub struct OtlpArgs {
    /// Send flow records as OTLP logs to this collector (`http://host:4317`,
    /// `https://…`). Default: no OTLP export.
    #[arg(long, value_name = "URL", env = "TENANTFLOW_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc (port 4317) or http-protobuf (port 4318, path /v1/logs).
    #[arg(long, value_enum, default_value = "grpc")]
    pub otlp_protocol: OtlpProtocol,
    /// A header sent with every request, NAME=VALUE (repeatable), e.g. an API key. Also
    /// from TENANTFLOW_OTLP_HEADERS as NAME=VALUE,NAME=VALUE (for values kept in a Secret).
    #[arg(
        long = "otlp-header",
        value_name = "NAME=VALUE",
        env = "TENANTFLOW_OTLP_HEADERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub otlp_headers: Vec<String>,
    /// CA bundle (PEM) the collector's certificate must chain to; required for https.
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    /// Which connections are sent (as the flow log's --flow-log-filter).
    #[arg(long, value_enum, default_value = "all")]
    pub otlp_filter: LogFilter,
    /// Records waiting for the collector, at most (about 1.5 KiB each, encoded); past it new records
    /// are dropped and counted (tenantflow_otlp_records_dropped_total{reason="queue_full"}).
    #[arg(long, default_value_t = 4096)]
    pub otlp_queue: usize,
    /// Records per request, at most.
    #[arg(long, default_value_t = 512)]
    pub otlp_batch: usize,
    /// One request's time limit; a collector that does not answer in it is retried.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub otlp_timeout: Duration,
    /// How long a stopping agent keeps sending what is queued; the rest is counted as
    /// dropped (reason="shutdown").
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub otlp_shutdown_timeout: Duration,
    /// A resource attribute, KEY=VALUE (repeatable), added to `service.name`,
    /// `k8s.node.name` and `k8s.cluster.name`.
    #[arg(long = "otlp-resource", value_name = "KEY=VALUE")]
    pub otlp_resource: Vec<String>,
    /// The cluster's name, sent as the `k8s.cluster.name` resource attribute (one
    /// workspace often holds many clusters' records).
    #[arg(long, value_name = "NAME", env = "TENANTFLOW_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
}

impl OtlpArgs {
    /// The exporter's settings, or `None` without `--otlp-endpoint`. `update_interval` is
    /// the flow log's, so both sinks send long-lived connections' updates alike.
    pub fn config(
        &self,
        node: &str,
        update_interval: Duration,
    ) -> Result<Option<OtlpConfig>, UsageError> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        if self.otlp_queue == 0 || self.otlp_batch == 0 {
            return Err(UsageError(
                "--otlp-queue and --otlp-batch must be at least 1".into(),
            ));
        }
        let headers = pairs("--otlp-header", &self.otlp_headers)?;
        let mut resource = vec![
            ("service.name".to_owned(), "tenantflow".to_owned()),
            ("k8s.node.name".to_owned(), node.to_owned()),
        ];
        if let Some(c) = &self.cluster_name {
            resource.push(("k8s.cluster.name".to_owned(), c.clone()));
        }
        for (k, v) in pairs("--otlp-resource", &self.otlp_resource)? {
            resource.retain(|(key, _)| *key != k);
            resource.push((k, v));
        }
        Ok(Some(OtlpConfig {
            endpoint: endpoint.clone(),
            protocol: self.otlp_protocol,
            headers,
            ca: self.otlp_ca.clone(),
            filter: self.otlp_filter,
            update_interval,
            queue: self.otlp_queue,
            batch: self.otlp_batch,
            timeout: self.otlp_timeout,
            shutdown_timeout: self.otlp_shutdown_timeout,
            resource,
        }))
    }
}

/// `NAME=VALUE` items, each checked.
fn pairs(flag: &str, items: &[String]) -> Result<Vec<(String, String)>, UsageError> {
    items
        .iter()
        .filter(|i| !i.trim().is_empty())
        .map(|i| match i.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            // Only the name is shown: the value may be a secret.
            _ => Err(UsageError(format!(
                "{flag} {}: expected NAME=VALUE",
                i.split(['=', ':', ' ']).next().unwrap_or_default()
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        otlp: OtlpArgs,
    }

    fn parse(args: &[&str]) -> OtlpArgs {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .otlp
    }

    #[test]
    fn resource_attributes_name_the_node_and_cluster_and_users_may_override() {
        let a = parse(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--cluster-name",
            "prod-weu",
            "--otlp-resource",
            "service.name=flows",
            "--otlp-resource",
            "deployment.environment=prod",
        ]);
        let c = a
            .config("node-7", Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(
            c.resource,
            [
                ("k8s.node.name".to_owned(), "node-7".to_owned()),
                ("k8s.cluster.name".into(), "prod-weu".into()),
                ("service.name".into(), "flows".into()),
                ("deployment.environment".into(), "prod".into()),
            ]
        );
    }

    #[test]
    fn a_header_without_a_value_is_named_in_the_error_and_not_echoed() {
        let a = parse(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--otlp-header",
            "authorization",
        ]);
        let e = a
            .config("n", Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--otlp-header authorization: expected NAME=VALUE");
        let a = parse(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--otlp-header",
            "x-api-key=s3cret",
        ]);
        let c = a.config("n", Duration::from_secs(60)).unwrap().unwrap();
        assert_eq!(c.headers, [("x-api-key".to_owned(), "s3cret".to_owned())]);
        assert!(parse(&[])
            .config("n", Duration::from_secs(60))
            .unwrap()
            .is_none());
    }
}
