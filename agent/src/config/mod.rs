//! The agent's YAML config file: identity source, tenancy, network ranges, egress
//! mediation and sensitive targets. Unknown fields are rejected; every error names the
//! field and how to fix it (exit code 64).

mod egress;
mod raw;

pub use egress::Outbound;

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use ipnet::IpNet;

use crate::net::NamePattern;

pub use raw::{RawConfig, DEFAULT_PLATFORM_NAMESPACES};

/// A config problem: which field, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: field `{field}`: {message}")]
pub struct ConfigError {
    pub file: String,
    pub field: String,
    pub message: String,
}

/// An approved egress path outside the cluster: a proxy or firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub net: IpNet,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.net.contains(&ip) && self.port.is_none_or(|p| p == port)
    }
}

#[derive(Clone, Debug)]
pub struct Gateway {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug)]
pub struct Tenancy {
    pub namespace_label: Option<String>,
    pub namespace_annotation: Option<String>,
    pub namespace_map: BTreeMap<String, String>,
    pub namespace_regex: Option<regex::Regex>,
    pub platform_namespaces: Vec<glob::Pattern>,
    pub platform_is_cross_tenant: bool,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub snapshot: Option<String>,
    pub tenancy: Tenancy,
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub private_cidrs: Vec<IpNet>,
    pub gateways: Vec<Gateway>,
    pub proxies: Vec<Endpoint>,
    /// Names whose addresses are proxies or firewalls, judged on the name the source pod
    /// resolved the destination from.
    pub proxy_names: Vec<NamePattern>,
    pub exempt: Vec<IpNet>,
    /// Names exempt from mediation, judged the same way.
    pub exempt_names: Vec<NamePattern>,
    pub outbound: Outbound,
    /// Resolvers pods may ask besides addresses in `service_cidrs` (`dns.resolvers`).
    pub dns_resolvers: Vec<IpNet>,
    pub sensitive_ports: BTreeMap<u16, String>,
    pub sensitive_addresses: Vec<(String, IpNet)>,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_raw(RawConfig::default(), "<defaults>").expect("defaults are valid")
    }
}

impl Config {
    /// Whether a pod asking `ip` for names uses a resolver of the cluster's (kube-dns behind
    /// its Service, NodeLocal DNSCache, Azure DNS, or one `dns.resolvers` names).
    pub fn approved_resolver(&self, ip: IpAddr) -> bool {
        self.service_cidrs
            .iter()
            .chain(&self.dns_resolvers)
            .any(|n| n.contains(&ip))
    }

    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        const MAX_CONFIG_BYTES: u64 = 1 << 20;
        let file = path.display().to_string();
        let text = crate::input::read_yaml(
            path,
            MAX_CONFIG_BYTES,
            "a config is a few KiB: check the path given to --config",
        )
        .map_err(|e| ConfigError {
            file: file.clone(),
            field: "<file>".into(),
            message: match e {
                crate::input::InputError::Open(_) => format!("{e} given to --config"),
                _ => e.to_string(),
            },
        })?;
        Self::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let inner = e.inner().to_string();
            // serde_norway prefixes the parent's path ("tenancy: …"); the field path we
            // report already says where.
            let message = match inner.split_once(": ") {
                Some((prefix, rest)) if !prefix.contains(' ') => rest.to_owned(),
                _ => inner,
            };
            ConfigError {
                file: file.into(),
                field: e.path().to_string(),
                message: format!("{message}; see docs/configuration.md for every field"),
            }
        })?;
        Self::from_raw(raw, file)
    }

    pub fn from_raw(raw: RawConfig, file: &str) -> Result<Config, ConfigError> {
        let err = |field: String, message: String| ConfigError {
            file: file.into(),
            field,
            message,
        };
        let nets = |field: &str, v: &[String]| -> Result<Vec<IpNet>, ConfigError> {
            v.iter()
                .enumerate()
                .map(|(i, s)| {
                    parse_net(s).map_err(|m| err(format!("{field}[{i}]"), format!("{s:?} {m}")))
                })
                .collect()
        };
        let t = raw.tenancy;
        let namespace_regex = match &t.namespace_regex {
            None => None,
            Some(r) => {
                let re = regex::Regex::new(r).map_err(|e| {
                    err(
                        "tenancy.namespace_regex".into(),
                        format!("{r:?} is not a valid regex: {e}"),
                    )
                })?;
                if !re.capture_names().any(|n| n == Some("tenant")) {
                    return Err(err(
                        "tenancy.namespace_regex".into(),
                        format!(
                            "{r:?} has no named group `tenant`: write e.g. ^(?P<tenant>[a-z0-9]+)-"
                        ),
                    ));
                }
                Some(re)
            }
        };
        let platform_namespaces = t
            .platform_namespaces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                glob::Pattern::new(p).map_err(|e| {
                    err(
                        format!("tenancy.platform_namespaces[{i}]"),
                        format!("{p:?} is not a valid glob: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let proxies = egress::proxies(&raw.egress.proxies).map_err(|(f, m)| err(f, m))?;
        let exempt = egress::exempt(&raw.egress.exempt).map_err(|(f, m)| err(f, m))?;
        for (i, g) in raw.egress.gateways.iter().enumerate() {
            if g.namespace.is_empty() {
                return Err(err(
                    format!("egress.gateways[{i}].namespace"),
                    "must name the gateway's namespace, e.g. egress-system".into(),
                ));
            }
        }
        let sensitive_addresses = raw
            .sensitive
            .addresses
            .iter()
            .map(|(name, s)| {
                parse_net(s)
                    .map(|n| (name.clone(), n))
                    .map_err(|m| err(format!("sensitive.addresses.{name}"), format!("{s:?} {m}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Config {
            snapshot: raw.identity.snapshot,
            tenancy: Tenancy {
                namespace_label: t.namespace_label,
                namespace_annotation: t.namespace_annotation,
                namespace_map: t.namespace_map,
                namespace_regex,
                platform_namespaces,
                platform_is_cross_tenant: t.platform_is_cross_tenant,
            },
            pod_cidrs: nets("network.pod_cidrs", &raw.network.pod_cidrs)?,
            service_cidrs: nets("network.service_cidrs", &raw.network.service_cidrs)?,
            private_cidrs: nets("network.private_cidrs", &raw.network.private_cidrs)?,
            gateways: raw
                .egress
                .gateways
                .into_iter()
                .map(|g| Gateway {
                    namespace: g.namespace,
                    labels: g.labels,
                })
                .collect(),
            proxies: proxies.addresses,
            proxy_names: proxies.names,
            exempt: exempt.addresses,
            exempt_names: exempt.names,
            outbound: raw.egress.outbound_type,
            dns_resolvers: nets("dns.resolvers", &raw.dns.resolvers)?,
            sensitive_ports: raw.sensitive.node_ports,
            sensitive_addresses,
        })
    }
}

/// `10.0.0.0/8`, or a bare address meaning a single host.
fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| "is not a CIDR or address: write e.g. 10.0.0.0/8 or 10.0.1.4".into())
}

/// `CIDR`, `CIDR:port`, `addr:port`, `[v6-CIDR]:port`.
fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    const FIX: &str =
        "is not CIDR[:port]: write e.g. 10.0.1.4:3128, 10.0.1.0/24 or [fd00::/64]:443";
    if let Ok(net) = parse_net(s) {
        return Ok(Endpoint { net, port: None });
    }
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or(FIX)?,
        None => s.rsplit_once(':').ok_or(FIX)?,
    };
    let net = parse_net(host).map_err(|_| FIX.to_string())?;
    let port = port.parse::<u16>().map_err(|_| FIX.to_string())?;
    Ok(Endpoint {
        net,
        port: Some(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documented_example() -> &'static str {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("## A complete example").expect("example section");
        let block = doc[start..].split("```yaml\n").nth(1).expect("yaml block");
        block.split("```").next().unwrap()
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_support::config())]
        /// Mutations of the documented example and small configs, through the same checks
        /// `agent --config` runs: no panic, whatever the input.
        #[test]
        fn fuzz_config_parser(text in crate::fuzz_support::mutated_text(&[
            documented_example(),
            "sensitive:\n  node_ports: {22: ssh}\n",
            "egress:\n  proxies: [\"[fd00:50::4]:3128\", 10.0.0.0/8]\n",
            "tenancy: {namespace_regex: '^(?P<tenant>[a-z]+)-'}\n",
        ])) {
            if crate::yaml_shape::check(&text).is_ok() {
                let _ = Config::parse(&text, "fuzz");
            }
        }
    }

    /// The example in docs/configuration.md must stay valid and mean what it says.
    #[test]
    fn the_documented_example_parses() {
        let yaml = documented_example();
        let c = Config::parse(yaml, "docs/configuration.md").unwrap();
        assert_eq!(c.snapshot.as_deref(), Some("/etc/tenantflow/snapshot.yaml"));
        assert_eq!(c.tenancy.namespace_map["legacy-billing"], "finance");
        assert_eq!(c.tenancy.platform_namespaces.len(), 8);
        assert_eq!(
            c.tenancy.namespace_annotation.as_deref(),
            Some("example.com/tenant")
        );
        assert_eq!(c.pod_cidrs.len(), 2);
        assert_eq!(c.gateways[0].labels["app"], "egress-gateway");
        assert_eq!(c.proxies.len(), 3);
        assert!(c.proxies[0].matches("10.50.0.4".parse().unwrap(), 3128));
        assert!(!c.proxies[0].matches("10.50.0.4".parse().unwrap(), 80));
        assert!(c.proxies[1].matches("10.60.0.9".parse().unwrap(), 443));
        assert_eq!(c.exempt.len(), 1);
        assert_eq!(c.sensitive_ports[&10250], "kubelet");
        assert_eq!(c.sensitive_addresses.len(), 2);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::default();
        assert_eq!(c.tenancy.namespace_label.as_deref(), Some("tenant"));
        assert_eq!(c.tenancy.platform_namespaces.len(), 8);
        assert_eq!(c.private_cidrs.len(), 4);
        assert_eq!(
            c.sensitive_ports.get(&10250).map(String::as_str),
            Some("kubelet")
        );
        assert_eq!(c.sensitive_addresses.len(), 2);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = Config::parse("tenancy:\n  namespace_lable: team\n", "c.yaml").unwrap_err();
        assert_eq!(e.field, "tenancy.namespace_lable");
        assert!(
            e.message
                .starts_with("unknown field `namespace_lable`, expected one of"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_values_name_the_field_and_the_fix() {
        let cases = [
            (
                "egress:\n  proxies: [\"10.0.1.4:abc\"]\n",
                "egress.proxies[0]",
                "is not CIDR[:port]",
            ),
            (
                "network:\n  private_cidrs: [\"10.0.0.0/33\"]\n",
                "network.private_cidrs[0]",
                "is not a CIDR",
            ),
            (
                "tenancy:\n  namespace_regex: \"^([a-z]+)-\"\n",
                "tenancy.namespace_regex",
                "has no named group `tenant`",
            ),
            (
                "tenancy:\n  namespace_regex: \"(\"\n",
                "tenancy.namespace_regex",
                "is not a valid regex",
            ),
            (
                "egress:\n  gateways: [{namespace: \"\"}]\n",
                "egress.gateways[0].namespace",
                "must name",
            ),
            (
                "sensitive:\n  node_ports: {abc: x}\n",
                "sensitive.node_ports.?",
                "invalid",
            ),
        ];
        for (yaml, field, msg) in cases {
            let e = Config::parse(yaml, "c.yaml").unwrap_err();
            assert_eq!(e.field, field, "{yaml}");
            assert!(e.message.contains(msg), "{yaml}: {}", e.message);
        }
    }

    #[test]
    fn proxies_accept_every_documented_form() {
        let ok = [
            "10.0.1.4:3128",
            "10.0.1.0/24",
            "10.0.1.4",
            "[fd00::/64]:443",
            "10.0.2.0/24:8080",
        ];
        for s in ok {
            assert!(parse_endpoint(s).is_ok(), "{s}");
        }
        let p = parse_endpoint("10.0.2.0/24:8080").unwrap();
        assert!(p.matches("10.0.2.9".parse().unwrap(), 8080));
        assert!(!p.matches("10.0.2.9".parse().unwrap(), 80));
    }
}
