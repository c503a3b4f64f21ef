//! Exact, small traffic for the lab: every byte and datagram is known in advance, so tests
//! can assert what the observer must have counted. Runs inside a namespace via `ip netns exec`.

use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Subcommand;

mod reuse;
mod tcp;
mod udp;

#[derive(Debug, Subcommand)]
pub enum TrafficCmd {
    /// Send COUNT datagrams of SIZE payload bytes to TO.
    UdpSend(udp::UdpSend),
    /// Send one datagram of SIZE payload bytes to each of FLOWS consecutive ports from
    /// TO's port up: FLOWS distinct flows of exactly one packet each.
    UdpSpray(udp::UdpSpray),
    /// Keep FLOWS UDP flows active for SECONDS: every second one datagram of SIZE bytes per
    /// flow, from SOURCES sockets to consecutive ports from TO's port up (the scale bench).
    UdpFlows(udp::UdpFlows),
    /// Receive COUNT datagrams on BIND (or until TIMEOUT_MS of silence); print how many.
    UdpRecv(udp::UdpRecv),
    /// Send one DNS answer (one A record for NAME) from BIND to TO, asked or not: a
    /// spoofing attempt's packet.
    DnsAnswer(udp::DnsAnswer),
    /// Accept CONNS connections on BIND; from each read to EOF, answer REPLY bytes, close.
    TcpServe(tcp::TcpServe),
    /// Connect to TO, send BYTES, half-close, read the answer to EOF; print bytes read.
    TcpSend(tcp::TcpSend),
    /// Try to connect to TO within TIMEOUT_MS and close; print `connected`, `refused` or
    /// `timeout` (how an attempt went, from the client's side).
    TcpTry(tcp::TcpTry),
    /// Try every port FIRST..=LAST of ADDR (a port scan, 32 at a time), each within
    /// TIMEOUT_MS; print `connected=N refused=N timeout=N`.
    TcpProbe(tcp::TcpProbe),
    /// Open COUNT short connections to TO one after another: connect, send BYTES, close.
    /// Prints how many completed.
    TcpChurn(tcp::TcpChurn),
    /// Open COUNT connections to TO and keep them all open: send BYTES on each, wait until
    /// the file GO exists, send BYTES on each again, close all. Prints how many completed.
    TcpHold(tcp::TcpHold),
    /// Accept connections on BIND until killed (or CONNS), reading each to EOF (each on its
    /// own thread, so held connections do not block others) and closing: the far end of
    /// `tcp-churn` and `tcp-hold`.
    TcpSink(tcp::TcpSink),
    /// Open COUNT connections to TO one after another, all from source BIND (one 5-tuple
    /// reused), connection i carrying DSCP i+1 and a line of BYTES+i bytes; even ones end with
    /// FINs, odd ones are aborted with a RST. Pauses PAUSE_MS after every PAUSE_EVERY. The far
    /// end is `tcp-reuse-serve`. Prints how many completed.
    TcpReuse(reuse::TcpReuse),
    /// Accept CONNS connections on BIND one at a time: echo each one's line, then close
    /// first (FIN) or wait for the client's abort, as the line's first byte asks.
    TcpReuseServe(reuse::TcpReuseServe),
    /// Accept connections on BIND and relay each to TO (an egress gateway or proxy).
    Relay(tcp::Relay),
}

pub fn run(cmd: TrafficCmd) -> Result<()> {
    match cmd {
        TrafficCmd::UdpSend(c) => c.run(),
        TrafficCmd::UdpSpray(c) => c.run(),
        TrafficCmd::UdpFlows(c) => c.run(),
        TrafficCmd::UdpRecv(c) => c.run(),
        TrafficCmd::DnsAnswer(c) => c.run(),
        TrafficCmd::TcpServe(c) => c.run(),
        TrafficCmd::TcpSend(c) => c.run(),
        TrafficCmd::TcpTry(c) => c.run(),
        TrafficCmd::TcpProbe(c) => c.run(),
        TrafficCmd::TcpChurn(c) => c.run(),
        TrafficCmd::TcpHold(c) => c.run(),
        TrafficCmd::TcpSink(c) => c.run(),
        TrafficCmd::TcpReuse(c) => c.run(),
        TrafficCmd::TcpReuseServe(c) => c.run(),
        TrafficCmd::Relay(c) => c.run(),
    }
}

/// A UDP socket bound to `bind`, else to the unspecified address of `to`'s family.
fn udp_sender(bind: Option<SocketAddr>, to: &SocketAddr) -> Result<UdpSocket> {
    let local = bind.unwrap_or_else(|| unspecified(to));
    UdpSocket::bind(local).with_context(|| format!("bind {local}"))
}

fn unspecified(to: &SocketAddr) -> SocketAddr {
    if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    }
}

/// Listen on `bind` with a deep accept queue. std listens with a backlog of 128: when
/// hundreds of clients connect at once the server drops a SYN (`ListenOverflows`) and the
/// client retransmits it a second later. The observer rightly counts both SYNs, but
/// conntrack, the tests' oracle, does not account a retransmitted SYN, so the exact
/// comparison would fail for a reason that is the traffic's, not the observer's.
fn listen(bind: SocketAddr) -> Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
    // Calling listen() again on a listening socket only changes its backlog (capped by
    // net.core.somaxconn, 4096 by default).
    // SAFETY: a plain syscall on a descriptor the listener owns.
    let rc = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    anyhow::ensure!(
        rc == 0,
        "listen {bind}: {}",
        std::io::Error::last_os_error()
    );
    Ok(listener)
}

/// Connect, optionally from a fixed source address:port (std has no bind-before-connect).
fn connect(to: SocketAddr, bind: Option<SocketAddr>) -> Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(to).with_context(|| format!("connect {to}"));
    };
    connect_from(to, local, None)
}

/// Connect from `local`, with IP_TOS (IPv4) or IPV6_TCLASS set to `tos` first, so every
/// packet of the connection (its SYN too) carries it.
fn connect_from(to: SocketAddr, local: SocketAddr, tos: Option<u8>) -> Result<TcpStream> {
    let domain = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor we own; addresses are valid sockaddrs.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let s = <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        if let Some(tos) = tos {
            let v = libc::c_int::from(tos);
            let (level, name) = if to.is_ipv4() {
                (libc::IPPROTO_IP, libc::IP_TOS)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
            };
            anyhow::ensure!(
                libc::setsockopt(fd, level, name, (&v as *const libc::c_int).cast(), 4) == 0,
                "set traffic class: {}",
                std::io::Error::last_os_error()
            );
        }
        let (la, ll) = sockaddr(local);
        anyhow::ensure!(
            libc::bind(fd, la.as_ptr().cast(), ll) == 0,
            "bind {local}: {}",
            std::io::Error::last_os_error()
        );
        let (ra, rl) = sockaddr(to);
        anyhow::ensure!(
            libc::connect(fd, ra.as_ptr().cast(), rl) == 0,
            "connect {to}: {}",
            std::io::Error::last_os_error()
        );
        Ok(s)
    }
}

fn sockaddr(a: SocketAddr) -> (Vec<u8>, libc::socklen_t) {
    match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let bytes = unsafe_bytes(&sin);
            (bytes, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            let bytes = unsafe_bytes(&sin6);
            (bytes, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

fn unsafe_bytes<T>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain C sockaddr struct; reading its bytes is always valid.
    unsafe {
        std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()).to_vec()
    }
}

/// How one connection attempt went, from the client's side: `connected` (then closed),
/// `refused` or `timeout`.
fn try_connect(to: SocketAddr, timeout_ms: u64) -> Result<&'static str> {
    match TcpStream::connect_timeout(&to, Duration::from_millis(timeout_ms)) {
        Ok(_) => Ok("connected"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok("refused"),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok("timeout"),
        Err(e) => Err(anyhow::anyhow!("connect {to}: {e}")),
    }
}
