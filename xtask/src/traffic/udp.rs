//! The UDP generators: senders, sprays, many flows, and the receiver that counts them.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;

use super::*;

/// `tf-traffic udp-send`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct UdpSend {
    pub to: SocketAddr,
    pub count: u32,
    pub size: usize,
    /// Source address:port (fixes the 5-tuple).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Pause between datagrams, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub gap_us: u64,
    /// connect() the socket to TO and send() (as glibc's resolver does) instead of
    /// sendto() on an unconnected socket.
    #[arg(long)]
    pub connect: bool,
}

impl UdpSend {
    pub fn run(self) -> Result<()> {
        let Self {
            to,
            count,
            size,
            bind,
            gap_us,
            connect,
        } = self;
        let sock = udp_sender(bind, &to)?;
        if connect {
            sock.connect(to)
                .with_context(|| format!("connect to {to}"))?;
        }
        let payload = vec![0x5au8; size];
        for _ in 0..count {
            let sent = if connect {
                sock.send(&payload)
            } else {
                sock.send_to(&payload, to)
            };
            sent.with_context(|| format!("send to {to}"))?;
            if gap_us > 0 {
                std::thread::sleep(Duration::from_micros(gap_us));
            }
        }
        Ok(())
    }
}

/// `tf-traffic udp-spray`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct UdpSpray {
    pub to: SocketAddr,
    pub flows: u16,
    pub size: usize,
    #[arg(long)]
    pub bind: Option<SocketAddr>,
}

impl UdpSpray {
    pub fn run(self) -> Result<()> {
        let Self {
            to,
            flows,
            size,
            bind,
        } = self;
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
}

/// `tf-traffic udp-flows`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct UdpFlows {
    pub to: SocketAddr,
    pub flows: u32,
    pub seconds: u64,
    #[arg(long, default_value_t = 4)]
    pub sources: u32,
    #[arg(long, default_value_t = 16)]
    pub size: usize,
}

impl UdpFlows {
    pub fn run(self) -> Result<()> {
        let Self {
            to,
            flows,
            seconds,
            sources,
            size,
        } = self;
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
}

/// `tf-traffic udp-recv`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct UdpRecv {
    pub bind: SocketAddr,
    pub count: u32,
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Also print one `ADDR:PORT COUNT` line per sender (what a firewall would see).
    #[arg(long)]
    pub peers: bool,
}

impl UdpRecv {
    pub fn run(self) -> Result<()> {
        let Self {
            bind,
            count,
            timeout_ms,
            peers,
        } = self;
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
}

/// `tf-traffic dns-answer`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct DnsAnswer {
    /// Where the answer goes (a pod's query port).
    pub to: SocketAddr,
    /// Source address:port of the answer (e.g. a pod's own address, port 53).
    #[arg(long)]
    pub bind: SocketAddr,
    /// The DNS message id.
    #[arg(long, default_value_t = 4242)]
    pub id: u16,
    /// The name answered for.
    #[arg(long)]
    pub name: String,
    /// The IPv4 address the answer gives.
    #[arg(long)]
    pub addr: std::net::Ipv4Addr,
}

impl DnsAnswer {
    pub fn run(self) -> Result<()> {
        let sock = udp_sender(Some(self.bind), &self.to)?;
        let msg = a_answer(self.id, &self.name, self.addr);
        sock.send_to(&msg, self.to)
            .with_context(|| format!("send to {}", self.to))?;
        Ok(())
    }
}

/// A DNS answer (RFC 1035 wire format) giving `name` one A record, TTL 300.
fn a_answer(id: u16, name: &str, addr: std::net::Ipv4Addr) -> Vec<u8> {
    // Header: id, QR|RD|RA, one question, one answer.
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    // Root, type A, class IN; the answer names the question by pointer (offset 12).
    m.extend_from_slice(&[0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1]);
    m.extend_from_slice(&300u32.to_be_bytes());
    m.extend_from_slice(&4u16.to_be_bytes());
    m.extend_from_slice(&addr.octets());
    m
}
