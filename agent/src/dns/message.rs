//! One DNS message, reduced to what naming flows needs: a query's id and name, or an
//! answer's id, the name the client asked for, its response code and the addresses the
//! answer gives for that name (following CNAME chains), each with its TTL.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{Name, RData},
};

/// At most this many addresses are kept from one answer; DNS answers are small, and a
/// crafted one must not cost more.
const MAX_ADDRS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("not a DNS message: {0}")]
    Malformed(String),
    #[error("a DNS message without a question")]
    NoQuestion,
    #[error("a TCP DNS message longer ({want} bytes) than what was captured ({have})")]
    Incomplete { want: usize, have: usize },
}

/// The response codes that matter to the signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError,
    NxDomain,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub id: u16,
    /// The name the client asked for (lowercase, no trailing dot).
    pub asked: Arc<str>,
    pub rcode: Rcode,
    /// Addresses of the asked name, through any CNAMEs, with the smallest TTL on the way.
    pub addrs: Vec<(IpAddr, u32)>,
    /// The server set TC: the client will ask again over TCP.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Query { id: u16, name: Arc<str> },
    Answer(Answer),
}

/// A name as flows carry it: lowercase, without the root's dot.
fn plain(n: &Name) -> String {
    let mut s = n.to_lowercase().to_ascii();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

/// Parse a DNS payload; over TCP it starts with the message's two-byte length.
pub fn parse(payload: &[u8], tcp: bool) -> Result<Parsed, DnsError> {
    let body = if tcp {
        let Some((len, rest)) = payload.split_first_chunk::<2>() else {
            return Err(DnsError::Malformed("no TCP length prefix".into()));
        };
        let want = u16::from_be_bytes(*len) as usize;
        if rest.len() < want {
            return Err(DnsError::Incomplete {
                want,
                have: rest.len(),
            });
        }
        &rest[..want]
    } else {
        payload
    };
    let msg = Message::from_vec(body).map_err(|e| DnsError::Malformed(e.to_string()))?;
    let question = msg.queries.first().ok_or(DnsError::NoQuestion)?;
    let asked = plain(&question.name);
    let id = msg.metadata.id;
    if msg.metadata.message_type == MessageType::Query {
        return Ok(Parsed::Query {
            id,
            name: asked.into(),
        });
    }
    let rcode = match msg.metadata.response_code {
        ResponseCode::NoError => Rcode::NoError,
        ResponseCode::NXDomain => Rcode::NxDomain,
        _ => Rcode::Other,
    };
    Ok(Parsed::Answer(Answer {
        id,
        addrs: addresses(&msg, &asked),
        asked: asked.into(),
        rcode,
        truncated: msg.metadata.truncation,
    }))
}

/// The A/AAAA records of `asked` and of every name a CNAME chain from it leads to; each
/// address's TTL is the smallest along its chain (the answer is only as fresh as that).
fn addresses(msg: &Message, asked: &str) -> Vec<(IpAddr, u32)> {
    // name → smallest TTL of the chain reaching it.
    let mut reached: Vec<(String, u32)> = vec![(asked.to_owned(), u32::MAX)];
    let mut seen: HashSet<String> = HashSet::from([asked.to_owned()]);
    // Chains are short; a loop or a long chain ends when nothing new is reached.
    loop {
        let mut grew = false;
        for r in &msg.answers {
            let RData::CNAME(target) = &r.data else {
                continue;
            };
            let owner = plain(&r.name);
            let Some(ttl) = reached.iter().find(|(n, _)| *n == owner).map(|(_, t)| *t) else {
                continue;
            };
            let to = plain(target);
            if seen.insert(to.clone()) {
                reached.push((to, ttl.min(r.ttl)));
                grew = true;
            }
        }
        if !grew || reached.len() > MAX_ADDRS {
            break;
        }
    }
    let mut out = Vec::new();
    for r in &msg.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        let owner = plain(&r.name);
        if let Some((_, ttl)) = reached.iter().find(|(n, _)| *n == owner) {
            if out.len() < MAX_ADDRS {
                out.push((ip, r.ttl.min(*ttl)));
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
