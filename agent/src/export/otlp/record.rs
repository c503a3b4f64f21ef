//! A flow record as an OpenTelemetry LogRecord.
//!
//! The 5-tuple and the source pod carry OpenTelemetry's semantic-convention names
//! (`source.address`, `destination.port`, `network.transport`, `k8s.pod.name`, …), so
//! collectors and backends that know them index them; every other field of the flow log
//! record (docs/flow-log.md) follows as `tenantflow.<field>`, nested fields joined with
//! dots (`tenantflow.snat.ip`, `tenantflow.src_identity.tenant`), so a query written
//! against the flow log carries over field by field.

use std::time::SystemTime;

use opentelemetry_proto::tonic::{
    common::v1::{any_value::Value as Av, AnyValue, ArrayValue, KeyValue, KeyValueList},
    logs::v1::{LogRecord, SeverityNumber},
};
use serde_json::Value;

use crate::export::{ConnectionView, RecordType};

/// The LogRecord's event name: one per kind of record tenantflow sends.
pub const EVENT_NAME: &str = "tenantflow.flow";
/// Prefix of tenantflow's own attributes.
pub const PREFIX: &str = "tenantflow.";

/// Flow-log fields carried under a semantic-convention name instead of `tenantflow.*`.
const SEMCONV: [(&str, &str); 5] = [
    ("src", "source.address"),
    ("src_port", "source.port"),
    ("dst", "destination.address"),
    ("dst_port", "destination.port"),
    ("proto", "network.transport"),
];

/// `view` as a LogRecord written at `time`; `flagged` records (what `--otlp-filter
/// flagged` keeps) are WARN, the rest INFO, so a backend can filter on severity alone.
pub fn log_record(
    kind: RecordType,
    view: &ConnectionView,
    flagged: bool,
    time: SystemTime,
) -> LogRecord {
    let nanos = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut attributes = Vec::with_capacity(48);
    let kind = serde_json::to_value(kind).unwrap_or(Value::Null);
    push(&mut attributes, "tenantflow.type", &kind);
    let network_type = if view.src.is_ipv4() { "ipv4" } else { "ipv6" };
    attributes.push(kv("network.type", Av::StringValue(network_type.into())));
    if let Some(pod) = &view.class.src_identity.pod {
        attributes.push(kv("k8s.pod.name", Av::StringValue(pod.to_string())));
    }
    if let Some(ns) = &view.class.src_identity.namespace {
        attributes.push(kv("k8s.namespace.name", Av::StringValue(ns.to_string())));
    }
    if let Ok(Value::Object(fields)) = serde_json::to_value(view) {
        for (field, value) in &fields {
            match SEMCONV.iter().find(|(f, _)| f == field) {
                Some((_, name)) => push(&mut attributes, name, value),
                None => push(&mut attributes, &format!("{PREFIX}{field}"), value),
            }
        }
    }
    let (severity, text) = if flagged {
        (SeverityNumber::Warn, "WARN")
    } else {
        (SeverityNumber::Info, "INFO")
    };
    LogRecord {
        time_unix_nano: nanos,
        observed_time_unix_nano: nanos,
        severity_number: severity as i32,
        severity_text: text.into(),
        event_name: EVENT_NAME.into(),
        body: Some(AnyValue {
            value: Some(Av::StringValue(summary(view))),
        }),
        attributes,
        ..Default::default()
    }
}

/// One line a person reads in a log view: `tcp 10.0.0.1:4242 -> 203.0.113.9:443 pod_to_egress`.
fn summary(v: &ConnectionView) -> String {
    let proto = serde_json::to_value(v.proto).unwrap_or(Value::Null);
    format!(
        "{} {} -> {} {}",
        proto
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| proto.to_string()),
        std::net::SocketAddr::new(v.src, v.src_port),
        std::net::SocketAddr::new(v.dst, v.dst_port),
        v.class.flow_class.as_str()
    )
}

fn kv(key: &str, value: Av) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// `value` under `key`: objects flattened into `key.field`, nulls left out.
fn push(out: &mut Vec<KeyValue>, key: &str, value: &Value) {
    match value {
        Value::Null => {}
        Value::Object(fields) => {
            for (field, v) in fields {
                push(out, &format!("{key}.{field}"), v);
            }
        }
        other => {
            if let Some(v) = any(other) {
                out.push(kv(key, v));
            }
        }
    }
}

/// A JSON value as an OTLP value (arrays of objects, such as the sightings, as arrays of
/// key-value lists).
fn any(v: &Value) -> Option<Av> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => Av::BoolValue(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Av::IntValue(i),
            // Counters past i64::MAX do not occur; keep the value rather than wrap it.
            (None, Some(u)) => Av::DoubleValue(u as f64),
            _ => Av::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Av::StringValue(s.clone()),
        Value::Array(items) => Av::ArrayValue(ArrayValue {
            values: items
                .iter()
                .filter_map(|i| any(i).map(|v| AnyValue { value: Some(v) }))
                .collect(),
        }),
        Value::Object(fields) => Av::KvlistValue(KeyValueList {
            values: fields
                .iter()
                .filter_map(|(k, v)| any(v).map(|v| kv(k, v)))
                .collect(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn a_record_names_the_tuple_by_convention_and_stays_small_on_the_queue() {
        let mut view = crate::test_support::egress_view();
        // Two observation points, as a masqueraded connection has.
        view.sightings.push(view.sightings[0].clone());
        let r = log_record(RecordType::End, &view, true, SystemTime::now());
        let attr = |k: &str| {
            r.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| a.value.as_ref()?.value.clone())
        };
        assert_eq!(
            attr("source.address"),
            Some(Av::StringValue("10.244.1.10".into()))
        );
        assert_eq!(attr("destination.port"), Some(Av::IntValue(443)));
        assert_eq!(
            attr("network.transport"),
            Some(Av::StringValue("tcp".into()))
        );
        assert_eq!(attr("k8s.pod.name"), Some(Av::StringValue("web-1".into())));
        assert_eq!(attr("tenantflow.snat.port"), Some(Av::IntValue(40001)));
        assert_eq!(attr("tenantflow.type"), Some(Av::StringValue("end".into())));
        assert_eq!(
            attr("src"),
            None,
            "the 5-tuple only under its convention name"
        );
        assert_eq!(r.severity_text, "WARN");
        // What the queue holds per record, encoded (docs/otlp.md: about 1.5 KiB).
        let len = r.encoded_len();
        assert!((1000..2048).contains(&len), "{len} bytes encoded");
    }
}
