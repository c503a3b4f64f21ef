//! Per pod, the name each address was resolved from: "which name did *this* pod ask for
//! when it got this address". Another pod that dialled the same address without resolving
//! it gets no name. A pod is its interface (the host side of its veth): a dual-stack pod
//! resolves over one family and connects over the other, and both are the same veth;
//! the kernel does not reuse an interface index soon. Entries live for the answer's TTL plus a grace period (clients keep
//! using an address a little past its TTL, and a connection opened just before expiry
//! keeps the name it started with); the total is capped and what does not fit is counted.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::Answer;
use crate::net::FastMap;

#[derive(Debug, Clone, Copy)]
pub struct NamesLimits {
    /// Most (pod, address) entries kept on the node.
    pub max_entries: usize,
    /// How long past its TTL an entry still names flows.
    pub grace: Duration,
}

impl Default for NamesLimits {
    fn default() -> Self {
        Self {
            max_entries: 65_536,
            grace: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Entry {
    name: Arc<str>,
    expires: Instant,
}

#[derive(Debug, Default)]
pub struct Names {
    /// Pod interface (ifindex) → address → name.
    by_pod: FastMap<u32, FastMap<IpAddr, Entry>>,
    entries: usize,
    limits: NamesLimits,
    /// Addresses not kept because the cap was reached (`tenantflow_dns_names_dropped_total`).
    pub dropped: u64,
}

impl Names {
    pub fn new(limits: NamesLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Remember what `answer` told `pod`. A newer answer for an address replaces the older
    /// name. Returns how many addresses were kept.
    pub fn learn(&mut self, pod: u32, answer: &Answer, now: Instant) -> usize {
        let mut kept = 0;
        for &(addr, ttl) in &answer.addrs {
            let expires = now + Duration::from_secs(ttl.into()) + self.limits.grace;
            let known = self.by_pod.get(&pod).is_some_and(|m| m.contains_key(&addr));
            if !known && self.entries >= self.limits.max_entries {
                self.expire(now);
                if self.entries >= self.limits.max_entries {
                    self.dropped += 1;
                    continue;
                }
            }
            let entry = Entry {
                name: answer.asked.clone(),
                expires,
            };
            if self
                .by_pod
                .entry(pod)
                .or_default()
                .insert(addr, entry)
                .is_none()
            {
                self.entries += 1;
            }
            kept += 1;
        }
        kept
    }

    /// The name `pod` resolved `addr` from, while it is still valid.
    pub fn name_of(&self, pod: u32, addr: IpAddr, now: Instant) -> Option<Arc<str>> {
        let e = self.by_pod.get(&pod)?.get(&addr)?;
        (now <= e.expires).then(|| e.name.clone())
    }

    /// Drop every entry past its TTL and grace.
    pub fn expire(&mut self, now: Instant) {
        let mut removed = 0;
        self.by_pod.retain(|_, m| {
            let before = m.len();
            m.retain(|_, e| now <= e.expires);
            removed += before - m.len();
            !m.is_empty()
        });
        self.entries -= removed;
    }

    /// Entries kept (`tenantflow_dns_names`).
    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Rcode;

    fn answer(name: &str, addrs: &[(&str, u32)]) -> Answer {
        Answer {
            id: 1,
            asked: name.into(),
            rcode: Rcode::NoError,
            addrs: addrs
                .iter()
                .map(|(a, t)| (a.parse().unwrap(), *t))
                .collect(),
            truncated: false,
        }
    }

    const POD: u32 = 11;
    const OTHER_POD: u32 = 12;

    #[test]
    fn a_name_is_the_resolving_pods_only_and_lives_for_ttl_plus_grace() {
        let limits = NamesLimits {
            max_entries: 10,
            grace: Duration::from_secs(5),
        };
        let mut n = Names::new(limits);
        let t0 = Instant::now();
        let pod = POD;
        let api = answer(
            "api.example.test",
            &[("198.51.100.7", 30), ("198.51.100.8", 30)],
        );
        assert_eq!(n.learn(pod, &api, t0), 2);
        let addr = "198.51.100.7".parse().unwrap();
        assert_eq!(
            n.name_of(pod, addr, t0).as_deref(),
            Some("api.example.test")
        );
        assert_eq!(n.name_of(OTHER_POD, addr, t0), None);
        let at = |s| t0 + Duration::from_secs(s);
        assert!(n.name_of(pod, addr, at(35)).is_some(), "within the grace");
        assert_eq!(n.name_of(pod, addr, at(36)), None, "past TTL and grace");
        n.expire(at(36));
        assert!(n.is_empty());
    }

    #[test]
    fn a_newer_answer_renames_and_the_cap_counts_what_does_not_fit() {
        let mut n = Names::new(NamesLimits {
            max_entries: 2,
            grace: Duration::ZERO,
        });
        let t0 = Instant::now();
        let pod = POD;
        n.learn(pod, &answer("a.test", &[("192.0.2.1", 10)]), t0);
        n.learn(pod, &answer("b.test", &[("192.0.2.1", 10)]), t0);
        assert_eq!(
            n.name_of(pod, "192.0.2.1".parse().unwrap(), t0).as_deref(),
            Some("b.test")
        );
        assert_eq!(n.len(), 1);
        let kept = n.learn(
            pod,
            &answer("c.test", &[("192.0.2.2", 10), ("192.0.2.3", 10)]),
            t0,
        );
        assert_eq!((kept, n.len(), n.dropped), (1, 2, 1));
        // Expired entries make room before anything is refused.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            n.learn(pod, &answer("d.test", &[("192.0.2.4", 10)]), later),
            1
        );
        assert_eq!((n.len(), n.dropped), (1, 1));
    }
}
