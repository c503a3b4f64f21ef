//! The TCP generators: servers, clients, probes, churn, held connections, sinks and relays.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;

use super::*;

/// `tf-traffic tcp-serve`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpServe {
    pub bind: SocketAddr,
    pub reply: usize,
    #[arg(long, default_value_t = 1)]
    pub conns: u32,
    /// Print `BYTES ADDR:PORT` per connection instead of `BYTES`.
    #[arg(long)]
    pub peers: bool,
}

impl TcpServe {
    pub fn run(self) -> Result<()> {
        let Self {
            bind,
            reply,
            conns,
            peers,
        } = self;
        let listener = listen(bind)?;
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
}

/// `tf-traffic tcp-send`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpSend {
    pub to: SocketAddr,
    pub bytes: usize,
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// Keep the connection open this long (ms) before sending (for mid-flow starts).
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
}

impl TcpSend {
    pub fn run(self) -> Result<()> {
        let Self {
            to,
            bytes,
            bind,
            hold_ms,
        } = self;
        let mut s = connect(to, bind)?;
        std::thread::sleep(Duration::from_millis(hold_ms));
        s.write_all(&vec![0x5au8; bytes])?;
        s.shutdown(Shutdown::Write)?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        println!("{}", answer.len());
        Ok(())
    }
}

/// `tf-traffic tcp-try`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpTry {
    pub to: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

impl TcpTry {
    pub fn run(self) -> Result<()> {
        let Self { to, timeout_ms } = self;
        println!("{}", try_connect(to, timeout_ms)?);
        Ok(())
    }
}

/// `tf-traffic tcp-probe`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpProbe {
    pub addr: std::net::IpAddr,
    pub first: u16,
    pub last: u16,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

impl TcpProbe {
    pub fn run(self) -> Result<()> {
        let Self {
            addr,
            first,
            last,
            timeout_ms,
        } = self;
        let ports: Vec<u16> = (first..=last).collect();
        let mut counts = [0u32; 3];
        for chunk in ports.chunks(32) {
            let tries: Vec<_> = chunk
                .iter()
                .map(|&p| {
                    std::thread::spawn(move || try_connect(SocketAddr::new(addr, p), timeout_ms))
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
}

/// `tf-traffic tcp-churn`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpChurn {
    pub to: SocketAddr,
    pub count: u32,
    pub bytes: usize,
}

impl TcpChurn {
    pub fn run(self) -> Result<()> {
        let Self { to, count, bytes } = self;
        let payload = vec![0x5au8; bytes];
        for i in 0..count {
            let mut s =
                TcpStream::connect(to).with_context(|| format!("connection {i} to {to}"))?;
            send_and_close(&mut s, &payload)?;
        }
        println!("{count}");
        Ok(())
    }
}

/// `tf-traffic tcp-hold`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpHold {
    pub to: SocketAddr,
    pub count: u32,
    pub bytes: usize,
    #[arg(long)]
    pub go: std::path::PathBuf,
}

impl TcpHold {
    pub fn run(self) -> Result<()> {
        let Self {
            to,
            count,
            bytes,
            go,
        } = self;
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
            send_and_close(&mut s, &payload)?;
        }
        println!("{count}");
        Ok(())
    }
}

/// `tf-traffic tcp-sink`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpSink {
    pub bind: SocketAddr,
    #[arg(long)]
    pub conns: Option<u32>,
}

impl TcpSink {
    pub fn run(self) -> Result<()> {
        let Self { bind, conns } = self;
        let listener = listen(bind)?;
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
}

/// `tf-traffic relay`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct Relay {
    pub bind: SocketAddr,
    pub to: SocketAddr,
    #[arg(long, default_value_t = 1)]
    pub conns: u32,
}

impl Relay {
    pub fn run(self) -> Result<()> {
        let Self { bind, to, conns } = self;
        let listener = listen(bind)?;
        for _ in 0..conns {
            let (mut client, _) = listener.accept()?;
            let mut upstream = TcpStream::connect(to).with_context(|| format!("connect {to}"))?;
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

/// Send `payload`, half-close, and wait for the server's close, so no segment is still in
/// flight when the caller reports.
fn send_and_close(s: &mut TcpStream, payload: &[u8]) -> Result<()> {
    s.write_all(payload)?;
    s.shutdown(Shutdown::Write)?;
    let _ = s.read(&mut [0u8; 1]);
    Ok(())
}
