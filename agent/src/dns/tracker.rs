//! The DNS traffic of the node's pods, as their own interfaces carried it: a query a pod
//! sent is remembered until its answer comes back; an answer is believed only if it
//! answers such a query (same resolver, ports and id), and its addresses are then named
//! for that pod. Answers nobody asked for (spoofing, or a resolver answering for another)
//! are ignored and counted; so are messages that do not parse.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::{Direction, DNS_PORT};

use super::{parse, DnsError, Names, NamesLimits, Parsed, Rcode};
use crate::{
    datapath::{DnsMessage, Role},
    net::{FastMap, FlowTuple, PROTO_TCP},
};

/// How long a query waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Most queries waiting at once on the node.
const PENDING_MAX: usize = 65_536;

/// (pod, pod port, resolver, resolver port, message id).
type QueryKey = (IpAddr, u16, IpAddr, u16, u16);

/// What happened to the messages seen so far (cumulative, for the metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsCounts {
    pub queries: u64,
    /// Answers that named addresses (or said there were none).
    pub answers: u64,
    pub nxdomain: u64,
    /// Answers to no query of the pod's: ignored.
    pub unsolicited: u64,
    pub malformed: u64,
    /// TCP messages longer than the captured bytes.
    pub incomplete: u64,
    /// Queries not remembered because too many were waiting.
    pub pending_dropped: u64,
    /// Queries to a resolver that is not the cluster's (unmediated DNS).
    pub unapproved: u64,
}

/// One NXDOMAIN answer a pod received: the pod and the name it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NxDomain {
    pub pod: IpAddr,
    pub asked: Arc<str>,
}

/// What a batch of messages says about the pods, for the per-namespace signals.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Signals {
    pub nxdomain: Vec<NxDomain>,
    /// (pod, resolver) of each query to a resolver that is not the cluster's.
    pub unapproved: Vec<(IpAddr, IpAddr)>,
}

#[derive(Debug, Default)]
pub struct DnsTracker {
    names: Names,
    pending: FastMap<QueryKey, (Arc<str>, Instant)>,
    pub counts: DnsCounts,
}

impl DnsTracker {
    pub fn new(limits: NamesLimits) -> Self {
        Self {
            names: Names::new(limits),
            ..Self::default()
        }
    }

    /// Take a harvest's DNS messages, oldest first. Only those on pod interfaces count:
    /// there the pod's own address is on the packet, before any NAT. `approved` says
    /// whether a resolver is the cluster's. Returns the signals, for the per-namespace
    /// metrics.
    pub fn absorb(
        &mut self,
        msgs: &[DnsMessage],
        role: impl Fn(u32) -> Option<Role>,
        approved: impl Fn(IpAddr) -> bool,
        now: Instant,
    ) -> Signals {
        let mut out = Signals::default();
        for m in msgs {
            if role(m.key.ifindex) != Some(Role::Pod) {
                continue;
            }
            let t = FlowTuple::from(&m.key);
            // The host side of a pod's veth: ingress is what the pod sent, egress what it
            // receives.
            let from_pod = m.key.direction == Direction::Ingress as u8;
            // Only the pod as a client: its queries out, answers to it. A pod serving DNS
            // (CoreDNS) sees the mirror image of its clients' traffic, which names nothing
            // and would count every message twice.
            let as_client = if from_pod {
                t.dport == DNS_PORT
            } else {
                t.sport == DNS_PORT
            };
            if !as_client {
                continue;
            }
            match parse(&m.payload, t.proto == PROTO_TCP) {
                Ok(Parsed::Query { id, name }) if from_pod && t.dport == DNS_PORT => {
                    if !approved(t.dst) {
                        self.counts.unapproved += 1;
                        out.unapproved.push((t.src, t.dst));
                    }
                    self.query((t.src, t.sport, t.dst, t.dport, id), name, now)
                }
                Ok(Parsed::Answer(a)) if !from_pod && t.sport == DNS_PORT => {
                    let key = (t.dst, t.dport, t.src, t.sport, a.id);
                    if self.pending.remove(&key).is_none() {
                        self.counts.unsolicited += 1;
                        continue;
                    }
                    self.counts.answers += 1;
                    if a.rcode == Rcode::NxDomain {
                        self.counts.nxdomain += 1;
                        out.nxdomain.push(NxDomain {
                            pod: t.dst,
                            asked: a.asked.clone(),
                        });
                    }
                    self.names.learn(m.key.ifindex, &a, now);
                }
                // A query arriving at the pod or an answer it sends: not a client's message.
                Ok(_) => self.counts.malformed += 1,
                Err(DnsError::Incomplete { .. }) => self.counts.incomplete += 1,
                Err(_) => self.counts.malformed += 1,
            }
        }
        out
    }

    fn query(&mut self, key: QueryKey, name: Arc<str>, now: Instant) {
        self.counts.queries += 1;
        if self.pending.len() >= PENDING_MAX {
            self.expire(now);
            if self.pending.len() >= PENDING_MAX {
                self.counts.pending_dropped += 1;
                return;
            }
        }
        self.pending.insert(key, (name, now));
    }

    /// Forget unanswered queries and expired names.
    pub fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, (_, at)| now.duration_since(*at) < QUERY_TIMEOUT);
        self.names.expire(now);
    }

    /// The name the pod behind interface `pod` resolved `addr` from, while valid.
    pub fn name_of(&self, pod: u32, addr: IpAddr, now: Instant) -> Option<Arc<str>> {
        self.names.name_of(pod, addr, now)
    }

    /// (pod, address) names kept, and how many did not fit.
    pub fn names(&self) -> (usize, u64) {
        (self.names.len(), self.names.dropped)
    }

    /// Queries waiting for their answer.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests;
