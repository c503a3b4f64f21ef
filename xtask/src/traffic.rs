//! Exact, small traffic for the lab: every byte and datagram is known in advance, so tests
//! can assert what the observer must have counted. Runs inside a namespace via `ip netns exec`.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TrafficCmd {
    /// Send COUNT datagrams of SIZE payload bytes to TO.
    UdpSend {
        to: SocketAddr,
        count: u32,
        size: usize,
        /// Source address:port (fixes the 5-tuple).
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Pause between datagrams, in microseconds.
        #[arg(long, default_value_t = 0)]
        gap_us: u64,
    },
    /// Send one datagram of SIZE payload bytes to each of FLOWS consecutive ports from
    /// TO's port up: FLOWS distinct flows of exactly one packet each.
    UdpSpray {
        to: SocketAddr,
        flows: u16,
        size: usize,
        #[arg(long)]
        bind: Option<SocketAddr>,
    },
    /// Keep FLOWS UDP flows active for SECONDS: every second one datagram of SIZE bytes per
    /// flow, from SOURCES sockets to consecutive ports from TO's port up (the scale bench).
    UdpFlows {
        to: SocketAddr,
        flows: u32,
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        sources: u32,
        #[arg(long, default_value_t = 16)]
        size: usize,
    },
    /// Receive COUNT datagrams on BIND (or until TIMEOUT_MS of silence); print how many.
    UdpRecv {
        bind: SocketAddr,
        count: u32,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Also print one `ADDR:PORT COUNT` line per sender (what a firewall would see).
        #[arg(long)]
        peers: bool,
    },
    /// Accept CONNS connections on BIND; from each read to EOF, answer REPLY bytes, close.
    TcpServe {
        bind: SocketAddr,
        reply: usize,
        #[arg(long, default_value_t = 1)]
        conns: u32,
        /// Print `BYTES ADDR:PORT` per connection instead of `BYTES`.
        #[arg(long)]
        peers: bool,
    },
    /// Connect to TO, send BYTES, half-close, read the answer to EOF; print bytes read.
    TcpSend {
        to: SocketAddr,
        bytes: usize,
        #[arg(long)]
        bind: Option<SocketAddr>,
        /// Keep the connection open this long (ms) before sending (for mid-flow starts).
        #[arg(long, default_value_t = 0)]
        hold_ms: u64,
    },
    /// Try to connect to TO within TIMEOUT_MS and close; print `connected`, `refused` or
    /// `timeout` (how an attempt went, from the client's side).
    TcpTry {
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Try every port FIRST..=LAST of ADDR (a port scan, 32 at a time), each within
    /// TIMEOUT_MS; print `connected=N refused=N timeout=N`.
    TcpProbe {
        addr: std::net::IpAddr,
        first: u16,
        last: u16,
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Open COUNT short connections to TO one after another: connect, send BYTES, close.
    /// Prints how many completed.
    TcpChurn {
        to: SocketAddr,
        count: u32,
        bytes: usize,
    },
    /// Open COUNT connections to TO and keep them all open: send BYTES on each, wait until
    /// the file GO exists, send BYTES on each again, close all. Prints how many completed.
    TcpHold {
        to: SocketAddr,
        count: u32,
        bytes: usize,
        #[arg(long)]
        go: std::path::PathBuf,
    },
    /// Accept connections on BIND until killed (or CONNS), reading each to EOF (each on its
    /// own thread, so held connections do not block others) and closing: the far end of
    /// `tcp-churn` and `tcp-hold`.
    TcpSink {
        bind: SocketAddr,
        #[arg(long)]
        conns: Option<u32>,
    },
    /// Accept connections on BIND and relay each to TO (an egress gateway or proxy).
    Relay {
        bind: SocketAddr,
        to: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
    },
}

pub fn run(cmd: TrafficCmd) -> Result<()> {
    match cmd {
        TrafficCmd::UdpSend {
            to,
            count,
            size,
            bind,
            gap_us,
        } => {
            let sock = udp_sender(bind, &to)?;
            let payload = vec![0x5au8; size];
            for _ in 0..count {
                sock.send_to(&payload, to)
                    .with_context(|| format!("send to {to}"))?;
                if gap_us > 0 {
                    std::thread::sleep(Duration::from_micros(gap_us));
                }
            }
            Ok(())
        }
        TrafficCmd::UdpSpray {
            to,
            flows,
            size,
            bind,
        } => {
            let sock = udp_sender(bind, &to)?;
            let payload = vec![0x5au8; size];
            for i in 0..flows {
                let mut dst = to;
                let port = to
                    .port()
                    .checked_add(i)
                    .with_context(|| format!("{flows} ports from {to} pass 65535"))?;
                dst.set_port(port);
                sock.send_to(&payload, dst)
                    .with_context(|| format!("send to {dst}"))?;
            }
            Ok(())
        }
        TrafficCmd::UdpFlows {
            to,
            flows,
            seconds,
            sources,
            size,
        } => {
            let sources = sources.max(1);
            let per = flows.div_ceil(sources);
            anyhow::ensure!(
                u32::from(to.port()) + per <= 65536,
                "{flows} flows from {sources} sockets need {per} ports above {to}: add --sources"
            );
            let socks = (0..sources)
                .map(|_| udp_sender(None, &to))
                .collect::<Result<Vec<_>>>()?;
            let payload = vec![0x5au8; size];
            let start = std::time::Instant::now();
            for round in 0..seconds {
                for i in 0..flows {
                    let mut dst = to;
                    dst.set_port(to.port() + (i / sources) as u16);
                    // A full socket buffer drops a datagram: that flow still stays active.
                    let _ = socks[(i % sources) as usize].send_to(&payload, dst);
                }
                let next = start + Duration::from_secs(round + 1);
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
            Ok(())
        }
        TrafficCmd::UdpRecv {
            bind,
            count,
            timeout_ms,
            peers,
        } => {
            let sock = UdpSocket::bind(bind).with_context(|| format!("bind {bind}"))?;
            sock.set_read_timeout(Some(Duration::from_millis(timeout_ms)))?;
            let mut buf = vec![0u8; 65536];
            let mut got = 0u32;
            let mut from: std::collections::BTreeMap<SocketAddr, u32> = Default::default();
            while got < count {
                match sock.recv_from(&mut buf) {
                    Ok((_, peer)) => {
                        got += 1;
                        *from.entry(peer).or_default() += 1;
                    }
                    Err(_) => break,
                }
            }
            println!("{got}");
            if peers {
                for (peer, n) in from {
                    println!("{peer} {n}");
                }
            }
            Ok(())
        }
        TrafficCmd::TcpServe {
            bind,
            reply,
            conns,
            peers,
        } => {
            let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
            for _ in 0..conns {
                let (mut s, peer) = listener.accept()?;
                let mut sink = Vec::new();
                let served = s
                    .read_to_end(&mut sink)
                    .and_then(|_| s.write_all(&vec![0xa5u8; reply]))
                    .and_then(|()| s.shutdown(Shutdown::Write));
                // A peer that hung up early (a port scan) must not stop the server.
                if let Err(e) = served {
                    eprintln!("{peer}: {e}");
                    continue;
                }
                // Wait for the peer's close so our FIN is acknowledged before we exit.
                let _ = s.read(&mut [0u8; 1]);
                if peers {
                    println!("{} {peer}", sink.len());
                } else {
                    println!("{}", sink.len());
                }
            }
            Ok(())
        }
        TrafficCmd::TcpSend {
            to,
            bytes,
            bind,
            hold_ms,
        } => {
            let mut s = connect(to, bind)?;
            std::thread::sleep(Duration::from_millis(hold_ms));
            s.write_all(&vec![0x5au8; bytes])?;
            s.shutdown(Shutdown::Write)?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)?;
            println!("{}", answer.len());
            Ok(())
        }
        TrafficCmd::TcpTry { to, timeout_ms } => {
            println!("{}", try_connect(to, timeout_ms)?);
            Ok(())
        }
        TrafficCmd::TcpProbe {
            addr,
            first,
            last,
            timeout_ms,
        } => {
            let ports: Vec<u16> = (first..=last).collect();
            let mut counts = [0u32; 3];
            for chunk in ports.chunks(32) {
                let tries: Vec<_> = chunk
                    .iter()
                    .map(|&p| {
                        std::thread::spawn(move || {
                            try_connect(SocketAddr::new(addr, p), timeout_ms)
                        })
                    })
                    .collect();
                for t in tries {
                    let said = t
                        .join()
                        .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
                    counts[match said {
                        "connected" => 0,
                        "refused" => 1,
                        _ => 2,
                    }] += 1;
                }
            }
            println!(
                "connected={} refused={} timeout={}",
                counts[0], counts[1], counts[2]
            );
            Ok(())
        }
        TrafficCmd::TcpChurn { to, count, bytes } => {
            let payload = vec![0x5au8; bytes];
            for i in 0..count {
                let mut s =
                    TcpStream::connect(to).with_context(|| format!("connection {i} to {to}"))?;
                s.write_all(&payload)?;
                s.shutdown(Shutdown::Write)?;
                // Wait for the server's close, so no segment is still in flight when we report.
                let _ = s.read(&mut [0u8; 1]);
            }
            println!("{count}");
            Ok(())
        }
        TrafficCmd::TcpHold {
            to,
            count,
            bytes,
            go,
        } => {
            let payload = vec![0x5au8; bytes];
            let mut open = Vec::new();
            for i in 0..count {
                let mut s =
                    TcpStream::connect(to).with_context(|| format!("connection {i} to {to}"))?;
                s.write_all(&payload)?;
                open.push(s);
            }
            while !go.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
            for mut s in open {
                s.write_all(&payload)?;
                s.shutdown(Shutdown::Write)?;
                let _ = s.read(&mut [0u8; 1]);
            }
            println!("{count}");
            Ok(())
        }
        TrafficCmd::TcpSink { bind, conns } => {
            let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
            let mut n = 0u32;
            let mut readers = Vec::new();
            while conns.is_none_or(|c| n < c) {
                let (mut s, _) = listener.accept()?;
                readers.push(std::thread::spawn(move || {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }));
                readers.retain(|r| !r.is_finished());
                n += 1;
            }
            for r in readers {
                let _ = r.join();
            }
            Ok(())
        }
        TrafficCmd::Relay { bind, to, conns } => {
            let listener = TcpListener::bind(bind).with_context(|| format!("bind {bind}"))?;
            for _ in 0..conns {
                let (mut client, _) = listener.accept()?;
                let mut upstream =
                    TcpStream::connect(to).with_context(|| format!("connect {to}"))?;
                let mut req = Vec::new();
                client.read_to_end(&mut req)?;
                upstream.write_all(&req)?;
                upstream.shutdown(Shutdown::Write)?;
                let mut resp = Vec::new();
                upstream.read_to_end(&mut resp)?;
                client.write_all(&resp)?;
                client.shutdown(Shutdown::Write)?;
                let _ = client.read(&mut [0u8; 1]);
            }
            Ok(())
        }
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

/// Connect, optionally from a fixed source address:port (std has no bind-before-connect).
fn connect(to: SocketAddr, bind: Option<SocketAddr>) -> Result<TcpStream> {
    let Some(local) = bind else {
        return TcpStream::connect(to).with_context(|| format!("connect {to}"));
    };
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
