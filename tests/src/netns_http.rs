//! Plain HTTP/1.0 GET from inside a network namespace: a thread `setns`es into it, so the
//! test process itself stays in the root namespace.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    time::Duration,
};

/// GET `path` from `addr` as seen inside netns `ns`; returns (status, body).
pub fn get(ns: &str, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let ns = ns.to_owned();
    let addr = addr.to_owned();
    let path = path.to_owned();
    std::thread::spawn(move || -> std::io::Result<(u16, String)> {
        let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
        // SAFETY: setns on a valid namespace fd; it affects only this thread.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    })
    .join()
    .expect("http thread panicked")
}
