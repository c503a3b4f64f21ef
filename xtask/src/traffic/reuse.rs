//! One 5-tuple reused by successive connections, the way clients that pin their source
//! port and busy NAT gateways reuse them: each connection must still be its own record.
//! Connection i carries DSCP i+1, so a firewall counter per DSCP value is an independent
//! per-connection oracle even though all of them share addresses and ports.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::Args;

/// The line's first byte: the server closes first (both ends send FINs).
const CLOSE: u8 = b'F';
/// The line's first byte: the client aborts with a RST once it has the echo.
const ABORT: u8 = b'R';

/// Attempts at reconnecting while the previous connection's last ACK is still in flight
/// (its socket still holds the tuple: EADDRNOTAVAIL).
const RECONNECT_TRIES: u32 = 400;

pub fn client(
    to: SocketAddr,
    bind: SocketAddr,
    count: u32,
    bytes: usize,
    (pause_every, pause): (u32, Duration),
) -> Result<()> {
    anyhow::ensure!(count <= 63, "at most 63 connections: one DSCP value each");
    for i in 0..count {
        let tos = ((i + 1) as u8) << 2;
        let mut s = reconnect(to, bind, tos).with_context(|| format!("connection {i}"))?;
        let kind = if i % 2 == 0 { CLOSE } else { ABORT };
        let mut line = vec![b'x'; bytes + i as usize];
        line[0] = kind;
        *line.last_mut().context("BYTES must be at least 1")? = b'\n';
        s.write_all(&line)?;
        if kind == CLOSE {
            let mut echo = Vec::new();
            s.read_to_end(&mut echo)?;
            anyhow::ensure!(echo == line, "connection {i}: echo differs");
        } else {
            let mut echo = vec![0u8; line.len()];
            s.read_exact(&mut echo)?;
            abort(&s)?;
        }
        drop(s);
        if pause_every > 0 && (i + 1) % pause_every == 0 {
            std::thread::sleep(pause);
        }
    }
    Ok(())
}

/// Connect from `bind`, retrying while the tuple's previous connection is still closing.
fn reconnect(to: SocketAddr, bind: SocketAddr, tos: u8) -> Result<TcpStream> {
    let mut tries = 0;
    loop {
        match super::connect_from(to, bind, Some(tos)) {
            Ok(s) => return Ok(s),
            Err(e) if tries < RECONNECT_TRIES && format!("{e}").contains("not available") => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Close with a RST: SO_LINGER on with a zero timeout.
fn abort(s: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as u32,
        )
    };
    anyhow::ensure!(rc == 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    Ok(())
}

pub fn serve(bind: SocketAddr, conns: u32) -> Result<()> {
    let listener = super::listen(bind)?;
    for _ in 0..conns {
        let (s, _) = listener.accept()?;
        let mut r = BufReader::new(s);
        let mut line = Vec::new();
        r.read_until(b'\n', &mut line)?;
        let mut s = r.into_inner();
        s.write_all(&line)?;
        if line.first() == Some(&ABORT) {
            // Wait for the client's RST (a read error) or, should it close, its FIN.
            let _ = s.read(&mut [0u8; 1]);
        }
    }
    Ok(())
}

/// `tf-traffic tcp-reuse`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpReuse {
    pub to: SocketAddr,
    pub count: u32,
    pub bytes: usize,
    #[arg(long)]
    pub bind: SocketAddr,
    #[arg(long, default_value_t = 0)]
    pub pause_every: u32,
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
}

impl TcpReuse {
    pub fn run(self) -> Result<()> {
        let Self {
            to,
            count,
            bytes,
            bind,
            pause_every,
            pause_ms,
        } = self;
        let pause = (pause_every, Duration::from_millis(pause_ms));
        client(to, bind, count, bytes, pause)?;
        println!("{count}");
        Ok(())
    }
}

/// `tf-traffic tcp-reuse-serve`: see [`super::TrafficCmd`].
#[derive(Debug, Args)]
pub struct TcpReuseServe {
    pub bind: SocketAddr,
    pub conns: u32,
}

impl TcpReuseServe {
    pub fn run(self) -> Result<()> {
        let Self { bind, conns } = self;
        serve(bind, conns)
    }
}
