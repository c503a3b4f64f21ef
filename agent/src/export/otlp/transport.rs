//! Sending one ExportLogsServiceRequest to the collector, over gRPC or HTTP/protobuf, and
//! telling a failure worth retrying from one that is not (OTLP specification, "Failures").

use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_client::LogsServiceClient, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message as _;
use tonic::{
    metadata::{MetadataKey, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    Code,
};

use super::{OtlpConfig, OtlpError, OtlpProtocol};

/// Why a request failed.
#[derive(Debug)]
pub struct Failure {
    /// The collector may accept the same request later (unavailable, throttled, timed
    /// out); otherwise the records are dropped as `rejected`.
    pub retryable: bool,
    pub reason: String,
}

pub enum Transport {
    Grpc {
        client: LogsServiceClient<Channel>,
        headers: Vec<(
            MetadataKey<tonic::metadata::Ascii>,
            MetadataValue<tonic::metadata::Ascii>,
        )>,
    },
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Transport {
    /// Connects lazily: a collector that is down at start-up is retried like one that
    /// went down later.
    pub fn new(cfg: &OtlpConfig) -> Result<Self, OtlpError> {
        let ca = match &cfg.ca {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| OtlpError::Ca(path.clone(), e.to_string()))?)
            }
            None => None,
        };
        let https = cfg.endpoint.starts_with("https://");
        if !https && !cfg.endpoint.starts_with("http://") {
            return Err(OtlpError::Endpoint(
                cfg.endpoint.clone(),
                "it must start with http:// or https://".into(),
            ));
        }
        if https && ca.is_none() {
            return Err(OtlpError::Endpoint(
                cfg.endpoint.clone(),
                "https needs --otlp-ca (the collector's CA bundle; /etc/ssl/certs/ca-certificates.crt for public CAs)".into(),
            ));
        }
        match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut ep = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| OtlpError::Endpoint(cfg.endpoint.clone(), e.to_string()))?
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout.min(Duration::from_secs(5)));
                if let Some(pem) = &ca {
                    ep = ep
                        .tls_config(
                            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
                        )
                        .map_err(|e| OtlpError::Endpoint(cfg.endpoint.clone(), e.to_string()))?;
                }
                let headers = cfg
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                            .map_err(|e| OtlpError::Header(k.clone(), e.to_string()))?;
                        let value = MetadataValue::try_from(v.as_str())
                            .map_err(|e| OtlpError::Header(k.clone(), e.to_string()))?;
                        Ok((key, value))
                    })
                    .collect::<Result<_, OtlpError>>()?;
                Ok(Transport::Grpc {
                    client: LogsServiceClient::new(ep.connect_lazy()),
                    headers,
                })
            }
            OtlpProtocol::HttpProtobuf => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| OtlpError::Header(k.clone(), e.to_string()))?;
                    let mut value = reqwest::header::HeaderValue::from_str(v)
                        .map_err(|e| OtlpError::Header(k.clone(), e.to_string()))?;
                    value.set_sensitive(true);
                    headers.insert(name, value);
                }
                let mut b = reqwest::Client::builder()
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
                    .default_headers(headers);
                if let Some(pem) = &ca {
                    for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                        OtlpError::Ca(cfg.ca.clone().unwrap_or_default(), e.to_string())
                    })? {
                        b = b.add_root_certificate(cert);
                    }
                }
                let client = b
                    .build()
                    .map_err(|e| OtlpError::Endpoint(cfg.endpoint.clone(), e.to_string()))?;
                Ok(Transport::Http {
                    client,
                    url: logs_url(&cfg.endpoint),
                })
            }
        }
    }

    /// Sends `req`; on success, how many records the collector rejected (partial success).
    pub async fn export(&mut self, req: ExportLogsServiceRequest) -> Result<u64, Failure> {
        let resp = match self {
            Transport::Grpc { client, headers } => {
                let mut r = tonic::Request::new(req);
                for (k, v) in headers.iter() {
                    r.metadata_mut().insert(k.clone(), v.clone());
                }
                client
                    .export(r)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| Failure {
                        retryable: grpc_retryable(s.code()),
                        reason: format!("{:?}: {}", s.code(), s.message()),
                    })?
            }
            Transport::Http { client, url } => {
                let sent = client
                    .post(url.as_str())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(req.encode_to_vec())
                    .send()
                    .await
                    .map_err(|e| Failure {
                        retryable: true,
                        reason: e.to_string(),
                    })?;
                let status = sent.status();
                if !status.is_success() {
                    return Err(Failure {
                        retryable: matches!(status.as_u16(), 429 | 502 | 503 | 504),
                        reason: format!("HTTP {status}"),
                    });
                }
                let body = sent.bytes().await.map_err(|e| Failure {
                    retryable: true,
                    reason: e.to_string(),
                })?;
                ExportLogsServiceResponse::decode(body).unwrap_or_default()
            }
        };
        Ok(resp
            .partial_success
            .map(|p| p.rejected_log_records.max(0) as u64)
            .unwrap_or(0))
    }
}

/// The OTLP/HTTP logs path under a base endpoint, unless the endpoint already names it.
fn logs_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/logs") {
        base.to_owned()
    } else {
        format!("{base}/v1/logs")
    }
}

/// The gRPC codes the OTLP specification lists as retryable (RESOURCE_EXHAUSTED is, as
/// collectors send it when their own queue is full).
fn grpc_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_path_is_added_once() {
        assert_eq!(logs_url("http://c:4318"), "http://c:4318/v1/logs");
        assert_eq!(logs_url("http://c:4318/"), "http://c:4318/v1/logs");
        assert_eq!(logs_url("http://c:4318/v1/logs"), "http://c:4318/v1/logs");
    }

    #[test]
    fn only_transient_grpc_codes_are_retried() {
        assert!(grpc_retryable(Code::Unavailable));
        assert!(!grpc_retryable(Code::InvalidArgument));
        assert!(!grpc_retryable(Code::Unauthenticated));
    }
}
