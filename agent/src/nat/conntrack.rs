//! Conntrack over netlink: a dump of the current table, then NEW and DESTROY events.
//!
//! Runs on its own thread with blocking sockets: the kernel pushes events whenever it
//! likes, and a slow reader loses them (ENOBUFS), which we count and repair with a dump.

use std::{
    io,
    net::IpAddr,
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use netlink_packet_netfilter::{
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple},
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload, Nla, NLM_F_DUMP, NLM_F_REQUEST},
    sys::{protocols::NETLINK_NETFILTER, Socket},
};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, warn};

use super::NatEntry;
use crate::net::{FlowTuple, PROTO_ICMP, PROTO_ICMPV6};

/// Multicast groups of nfnetlink_conntrack.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;
/// Large enough to ride out bursts of short connections without ENOBUFS.
const RCVBUF: usize = 8 << 20;

/// CTA_PROTO_ICMP{,V6}_{ID,TYPE,CODE}: ICMP tuples carry no ports.
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

/// What the conntrack thread reports.
#[derive(Debug)]
pub enum NatEvent {
    New(NatEntry),
    Destroy(NatEntry),
    /// The full table (at start, and after lost events).
    Resync(Vec<NatEntry>),
    /// The kernel dropped events because we read too slowly.
    Lost,
    /// A translation from another source (Cilium's SNAT maps, socket-LB), and its end.
    /// Conntrack resyncs leave these alone.
    Mapped(NatEntry),
    Unmapped(NatEntry),
}

#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(
        "cannot open a netfilter netlink socket ({0}): conntrack netlink is unavailable \
         (kernel without nf_conntrack_netlink, or missing CAP_NET_ADMIN)"
    )]
    Open(#[source] io::Error),
    #[error("cannot subscribe to conntrack events ({0}): CAP_NET_ADMIN is needed")]
    Subscribe(#[source] io::Error),
    #[error("conntrack dump failed: {0}")]
    Dump(#[source] io::Error),
}

/// Faults the tests inject (hidden agent flags, documented in docs/testing.md); both off
/// in production.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Hand every event (and dump) to the agent this much later than it arrived.
    pub delay: Option<Duration>,
    /// Event socket buffer in bytes instead of [`RCVBUF`]; the event loop then also pauses
    /// [`STALL`] after every read until the buffer has overflowed once (reading as fast
    /// as events come, a small buffer may still keep up).
    pub rcvbuf: Option<usize>,
}

/// The pause after each read while an injected small buffer has not overflowed yet.
const STALL: Duration = Duration::from_millis(200);

/// Where the conntrack thread's events go: straight to the agent, or through a delay.
#[derive(Clone)]
enum Out {
    Direct(UnboundedSender<NatEvent>),
    Delayed(
        mpsc::Sender<(Instant, NatEvent)>,
        Arc<UnboundedSender<NatEvent>>,
    ),
}

impl Out {
    fn send(&self, ev: NatEvent) -> bool {
        match self {
            Out::Direct(tx) => tx.send(ev).is_ok(),
            Out::Delayed(tx, _) => tx.send((Instant::now(), ev)).is_ok(),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Out::Direct(tx) => tx.is_closed(),
            Out::Delayed(_, tx) => tx.is_closed(),
        }
    }
}

fn delayed(tx: UnboundedSender<NatEvent>, by: Duration) -> io::Result<Out> {
    let (dtx, drx) = mpsc::channel::<(Instant, NatEvent)>();
    let tx = Arc::new(tx);
    let out = Out::Delayed(dtx, tx.clone());
    thread::Builder::new()
        .name("conntrack-delay".into())
        .spawn(move || {
            for (at, ev) in drx {
                thread::sleep((at + by).saturating_duration_since(Instant::now()));
                if tx.send(ev).is_err() {
                    return;
                }
            }
        })?;
    Ok(out)
}

/// Subscribe, dump, and hand both to `tx` from a background thread. Fails (and leaves no
/// thread) when conntrack netlink cannot be used at all.
pub fn spawn_conntrack(tx: UnboundedSender<NatEvent>, faults: Faults) -> Result<(), NatError> {
    // Subscribe before dumping, so nothing created in between is missed.
    let mut events = Socket::new(NETLINK_NETFILTER).map_err(NatError::Open)?;
    events.bind_auto().map_err(NatError::Open)?;
    for group in [NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY] {
        events.add_membership(group).map_err(NatError::Subscribe)?;
    }
    if let Err(e) = force_rcvbuf(&events, faults.rcvbuf.unwrap_or(RCVBUF)) {
        warn!(error = %e, "could not size the conntrack event buffer: bursts may lose events");
    }
    let initial = dump().map_err(NatError::Dump)?;
    let out = match faults.delay {
        Some(by) => delayed(tx, by).map_err(NatError::Open)?,
        None => Out::Direct(tx),
    };
    out.send(NatEvent::Resync(initial));
    let stall = faults.rcvbuf.is_some();
    thread::Builder::new()
        .name("conntrack".into())
        .spawn(move || event_loop(events, out, stall))
        .map_err(NatError::Open)?;
    Ok(())
}

/// SO_RCVBUFFORCE: plain SO_RCVBUF is capped by net.core.rmem_max (208 KiB by default),
/// which a burst of a few thousand connections overruns; we hold CAP_NET_ADMIN anyway.
fn force_rcvbuf(s: &Socket, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a socket we own, with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn event_loop(events: Socket, tx: Out, mut stall: bool) {
    let mut buf = vec![0u8; 1 << 16];
    while !tx.is_closed() {
        let n = {
            let mut slice = &mut buf[..];
            events.recv(&mut slice, 0)
        };
        match n {
            Ok(n) => {
                if stall {
                    thread::sleep(STALL);
                }
                for msg in parse_all(&buf[..n]) {
                    let ev = match msg {
                        Parsed::Entry(e, true) => NatEvent::New(e),
                        Parsed::Entry(e, false) => NatEvent::Destroy(e),
                        Parsed::Done => continue,
                    };
                    if !tx.send(ev) {
                        return;
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                stall = false;
                warn!("conntrack events lost (socket buffer full): resyncing from a dump");
                tx.send(NatEvent::Lost);
                match dump() {
                    Ok(all) => {
                        tx.send(NatEvent::Resync(all));
                    }
                    Err(e) => warn!(error = %e, "conntrack resync dump failed"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "conntrack event socket failed; NAT joins stop");
                return;
            }
        }
    }
}

/// The whole conntrack table of this network namespace (both families).
fn dump() -> io::Result<Vec<NatEntry>> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    let mut req = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
        ConntrackMessage::Get(vec![]),
    ));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    sock.send(&out, 0)?;
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = {
            let mut slice = &mut buf[..];
            sock.recv(&mut slice, 0)?
        };
        for msg in parse_all(&buf[..n]) {
            match msg {
                Parsed::Entry(e, _) => entries.push(e),
                Parsed::Done => return Ok(entries),
            }
        }
        if n == 0 {
            return Ok(entries);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// An entry; `true` for NEW (and dump records), `false` for DESTROY.
    Entry(NatEntry, bool),
    Done,
}

/// Every conntrack message in one netlink datagram; malformed ones are skipped.
fn parse_all(mut bytes: &[u8]) -> Vec<Parsed> {
    let mut out = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            break;
        }
        match NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[..len]) {
            Ok(msg) => match msg.payload {
                NetlinkPayload::InnerMessage(NetfilterMessage {
                    inner: NetfilterMessageInner::Conntrack(ct),
                    ..
                }) => match ct {
                    ConntrackMessage::New(attrs) => {
                        out.extend(entry(&attrs).map(|e| Parsed::Entry(e, true)))
                    }
                    ConntrackMessage::Delete(attrs) => {
                        out.extend(entry(&attrs).map(|e| Parsed::Entry(e, false)))
                    }
                    _ => {}
                },
                NetlinkPayload::Done(_) => out.push(Parsed::Done),
                NetlinkPayload::Error(e) => {
                    debug!(error = ?e, "conntrack netlink error message");
                    out.push(Parsed::Done);
                }
                _ => {}
            },
            Err(e) => debug!(error = %e, "unparsable conntrack message skipped"),
        }
        // Messages are 4-byte aligned within a datagram.
        let step = ((len + 3) & !3).min(bytes.len());
        bytes = &bytes[step..];
    }
    out
}

fn entry(attrs: &[ConntrackAttribute]) -> Option<NatEntry> {
    let mut orig = None;
    let mut reply = None;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = tuple(t),
            ConntrackAttribute::CtaTupleReply(t) => reply = tuple(t),
            _ => {}
        }
    }
    Some(NatEntry {
        orig: orig?,
        reply: reply?,
    })
}

/// A conntrack tuple in the datapath's form (ICMP: id as source port, type/code as dest).
fn tuple(parts: &[Tuple]) -> Option<FlowTuple> {
    let (mut src, mut dst): (Option<IpAddr>, Option<IpAddr>) = (None, None);
    let (mut proto, mut sport, mut dport) = (None, 0u16, 0u16);
    let (mut icmp_type, mut icmp_code) = (0u8, 0u8);
    for part in parts {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => src = Some(*a),
                        IPTuple::DestinationAddress(a) => dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for p in ps {
                    match p {
                        ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(v) => sport = *v,
                        ProtoTuple::DestinationPort(v) => dport = *v,
                        ProtoTuple::Other(nla) => {
                            let mut v = vec![0u8; nla.value_len()];
                            nla.emit_value(&mut v);
                            match (nla.kind(), v.as_slice()) {
                                (CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID, [a, b, ..]) => {
                                    sport = u16::from_be_bytes([*a, *b])
                                }
                                (CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE, [t, ..]) => {
                                    icmp_type = *t
                                }
                                (CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE, [c, ..]) => {
                                    icmp_code = *c
                                }
                                _ => {}
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let proto = proto?;
    if proto == PROTO_ICMP || proto == PROTO_ICMPV6 {
        dport = (icmp_type as u16) << 8 | icmp_code as u16;
    }
    Some(FlowTuple {
        proto,
        src: src?,
        sport,
        dst: dst?,
        dport,
    })
}

#[cfg(test)]
mod tests;
