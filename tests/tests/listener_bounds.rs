//! What one careless or hostile caller can hold of the agent's listeners: slow readers of
//! large `/flows` pages hold one chunk each and the sixteenth-plus get a prompt 503, with
//! memory bounded and counting exact; idle and half-sent connections from a pod are capped
//! per source, closed within the header timeout, and the kubelet's probe keeps answering.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::fd::FromRawFd,
    sync::mpsc,
    time::{Duration, Instant},
};

use tenantflow_tests::{agent::counts, eventually, lab, traffic, udp_from_pod, Agent};

fn rss_kib(pid: u32) -> u64 {
    tenantflow_tests::proc_status_kib(pid, "VmRSS")
}

/// Enter network namespace `ns` on this thread.
fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns on a valid namespace fd; it affects only this thread.
    assert_eq!(
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) },
        0
    );
}

/// A TCP connection to `to` whose receive buffer is 4 KiB (set before connecting, so the
/// window the agent sees stays small): a client that reads slowly.
fn slow_client(to: std::net::SocketAddrV4) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor this function owns until it is wrapped.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// Read a response's head byte by byte (nothing of the body): its status and, for a short
/// body, the body.
fn head(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => raw.push(b[0]),
            _ => return (0, String::from_utf8_lossy(&raw).into_owned()),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[test]
fn slow_readers_of_large_pages_hold_one_chunk_each_and_the_rest_are_busy() {
    let lab = lab("sr");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let agent = tenantflow_tests::lab_agent(&lab, 1, &["--idle-timeout", "10m"]);
    let pid = agent.pid().unwrap();
    // 10,000 connections in the table: a page of /flows is about 12 MB of JSON, far more
    // than the socket buffers between a slow reader and the agent hold.
    let web2 = t.pod("web-2");
    traffic(
        &t.pod_ns(t.pod("web-1")),
        &["udp-spray", &format!("{}:20000", web2.ip()), "10000", "16"],
    );
    let filled = eventually(Duration::from_secs(30), || {
        (agent.connections("").len() >= 10_000).then_some(())
    });
    assert!(filled.is_some(), "{}", agent.log_text());
    let before = rss_kib(pid);

    // 100 clients ask for a full page at once and then read nothing more.
    let (status_tx, status_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let (node, status_tx, release) = (node.clone(), status_tx.clone(), release_rx.clone());
            std::thread::spawn(move || {
                enter(&node);
                let mut s = slow_client("127.0.0.1:9991".parse().unwrap());
                s.write_all(b"GET /flows HTTP/1.1\r\nHost: slow\r\n\r\n")
                    .unwrap();
                let (status, text) = head(&mut s);
                status_tx.send((status, text)).unwrap();
                // Hold the connection, unread, until released.
                let _ = release.lock().unwrap().recv();
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = (0..100)
        .map(|_| status_rx.recv_timeout(Duration::from_secs(30)).unwrap())
        .collect();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let busy = answers.iter().filter(|(s, _)| *s == 503).count();
    let during = rss_kib(pid);
    let (probe, _) = agent.get("/healthz").unwrap();
    for _ in 0..100 {
        let _ = release_tx.send(());
    }
    drop(release_tx);
    for r in readers {
        r.join().unwrap();
    }
    // The sixteen in flight hold their permits while their responses are being read;
    // everyone else is told at once.
    assert_eq!((ok, busy), (16, 84), "{:?}", &answers[..3]);
    assert_eq!(probe, 200, "probes answered while the readers held on");
    assert!(
        during < before + 64 * 1024,
        "RSS grew from {before} KiB to {during} KiB with 16 slow readers of 12 MB pages"
    );

    // Counting went on exactly (the new connection is past the first page: asked by port).
    let to = format!("{}:5000", web2.ip());
    let sent = udp_from_pod(&lab, "web-1", 4402, &t.pod_ns(web2), &to, 3, 20);
    let c = eventually(Duration::from_secs(6), || {
        let hits = agent.connections("?port=4402");
        (hits.len() == 1 && counts(&hits[0], "forward") == sent).then(|| hits[0].clone())
    });
    let c = c.unwrap_or_else(|| panic!("{:#?}", agent.connections("?port=4402")));
    assert_eq!(counts(&c, "forward"), sent);
}

#[test]
fn idle_connections_from_a_pod_are_capped_and_closed_and_probes_stay_answered() {
    let lab = lab("ic");
    let t = &lab.topo;
    let node = t.node_ns(1);
    let cfg = xtask::lab::manifest::config_path(&t.prefix);
    let agent = Agent::start_on(
        &node,
        "0.0.0.0:9990",
        "200ms",
        &["--config", cfg.to_str().unwrap()],
    );
    let metrics = format!("{}:9990", t.node(1).ip());
    // A pod opens 600 connections to the node's metrics port: half send nothing, half
    // half a request.
    let web = t.pod_ns(t.pod("web-1"));
    let (tx, rx) = mpsc::channel();
    let (opened_tx, opened_rx) = mpsc::channel();
    std::thread::spawn(move || {
        enter(&web);
        let started = Instant::now();
        let mut conns: Vec<TcpStream> = (0..600)
            .map(|i| {
                let mut s = TcpStream::connect(&metrics).unwrap();
                if i % 2 == 1 {
                    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: idle\r\n");
                }
                s
            })
            .collect();
        opened_tx.send(()).unwrap();
        // Each connection ends when the agent closes it: at once past the cap, after the
        // header timeout otherwise.
        let mut closed_at = Vec::new();
        for s in &mut conns {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
            closed_at.push(started.elapsed());
        }
        tx.send(closed_at).unwrap();
    });
    // While the pod holds its connections, the node's probe is answered.
    opened_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let probe_started = Instant::now();
    let (probe, _) = agent.get("/healthz").unwrap();
    let probe_took = probe_started.elapsed();
    let closed_at = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(probe, 200);
    assert!(probe_took < Duration::from_secs(2), "{probe_took:?}");
    assert_eq!(
        agent.metric(
            "tenantflow_http_connections_refused_total{listener=\"public\",reason=\"per_source\"}"
        ),
        Some(344.0),
        "600 from one address: 256 kept, the rest closed at once"
    );
    // Every kept connection was closed by the agent within the header timeout (10 s).
    assert!(
        closed_at.iter().all(|d| *d < Duration::from_secs(15)),
        "{:?}",
        closed_at.iter().max()
    );
    let open = eventually(Duration::from_secs(5), || {
        (agent.metric("tenantflow_http_connections{listener=\"public\"}") == Some(1.0))
            .then_some(())
    });
    assert!(open.is_some(), "only the scrape itself is open");
}
