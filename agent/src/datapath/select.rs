//! Which interfaces to observe, decided from what rtnetlink tells about a link. Pure.

use glob::Pattern;

use super::Link;

/// Why an interface is observed; the flow table uses it to pick one counting point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The node's interface towards the VNet: sees cross-node and egress traffic after NAT.
    Uplink,
    /// The host side of a pod's veth: sees the pod's own addresses, before any NAT.
    Pod,
}

/// Interface selection rules.
#[derive(Clone, Debug)]
pub struct Selector {
    uplinks: Vec<String>,
    pod_patterns: Vec<Pattern>,
}

/// Host-side veth prefixes of the CNIs on AKS: kubenet/bridge (`veth*`), Azure CNI (`azv*`),
/// Cilium (`lxc*`).
pub const DEFAULT_POD_PATTERNS: [&str; 3] = ["veth*", "azv*", "lxc*"];

impl Selector {
    /// `uplinks` are exact names; `pod_patterns` are shell globs.
    pub fn new(uplinks: Vec<String>, pod_patterns: &[String]) -> Result<Self, glob::PatternError> {
        let pod_patterns = pod_patterns
            .iter()
            .map(|p| Pattern::new(p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            uplinks,
            pod_patterns,
        })
    }

    pub fn uplinks(&self) -> &[String] {
        &self.uplinks
    }

    /// The role of `link`, or `None` when it is not observed. Uplinks win over patterns so
    /// an uplink that happens to be a veth (as in the lab) is not counted as a pod.
    pub fn role(&self, link: &Link) -> Option<Role> {
        if self.uplinks.contains(&link.name) {
            return Some(Role::Uplink);
        }
        if link.is_loopback {
            return None;
        }
        let by_name = self.pod_patterns.iter().any(|p| p.matches(&link.name));
        // kubenet-style bridges enslave pod veths whatever their name.
        let bridged_veth = link.kind.as_deref() == Some("veth") && link.master_is_bridge;
        (by_name || bridged_veth).then_some(Role::Pod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>, bridged: bool) -> Link {
        Link {
            index: 7,
            name: name.into(),
            kind: kind.map(str::to_owned),
            master_is_bridge: bridged,
            is_loopback: false,
        }
    }

    fn selector() -> Selector {
        let patterns: Vec<String> = DEFAULT_POD_PATTERNS.iter().map(|s| s.to_string()).collect();
        Selector::new(vec!["eth0".into()], &patterns).unwrap()
    }

    #[test]
    fn classifies_cni_interfaces() {
        let s = selector();
        let cases = [
            (link("eth0", Some("veth"), false), Some(Role::Uplink)),
            (link("veth1a2b", Some("veth"), true), Some(Role::Pod)),
            (link("azv3f00", Some("veth"), false), Some(Role::Pod)),
            (link("lxc12ab", Some("veth"), false), Some(Role::Pod)),
            (link("pod-a", Some("veth"), true), Some(Role::Pod)),
            (link("pod-a", Some("veth"), false), None),
            (link("cbr0", Some("bridge"), false), None),
            (link("eth1", None, false), None),
        ];
        for (l, want) in cases {
            assert_eq!(s.role(&l), want, "interface {}", l.name);
        }
    }

    #[test]
    fn loopback_is_never_a_pod() {
        let mut l = link("veth-lo", None, false);
        l.is_loopback = true;
        assert_eq!(selector().role(&l), None);
    }

    #[test]
    fn bad_pattern_is_an_error() {
        assert!(Selector::new(vec![], &["veth[".into()]).is_err());
    }
}
