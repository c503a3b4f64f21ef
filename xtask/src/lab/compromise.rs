//! The "compromised pod" scenario: web-1 (tenant alpha) probes its way around. It scans
//! [`SCAN`] on api-2 (tenant beta, other node), where only [`OPEN`] listen; tries [`DROPPED`]
//! on api-1 (tenant beta, same node), where a rule drops every SYN as a NetworkPolicy would;
//! and knocks on node 2's kubelet port. Shared by the demo and the tests, so both show the
//! same thing and the tests prove what the demo shows.

use std::{ops::RangeInclusive, process::Child};

use anyhow::Result;

use super::topology::Topology;
use crate::exec;

/// Ports scanned on api-2: a hundred.
pub const SCAN: RangeInclusive<u16> = 7100..=7199;
/// Of those, the ones something listens on.
pub const OPEN: [u16; 3] = [7110, 7150, 7190];
/// Ports tried on api-1, where SYNs are dropped.
pub const DROPPED: RangeInclusive<u16> = 7300..=7304;
pub const KUBELET: u16 = 10250;
/// How long a probe waits for an answer (the dropped ports take this long).
pub const TIMEOUT_MS: &str = "1000";

/// What the scenario started; the listeners stop on drop.
pub struct Prepared {
    listeners: Vec<Child>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for c in &mut self.listeners {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Listeners on api-2's open ports (and node 2's kubelet port when `kubelet`), and the
/// drop rule on api-1. `traffic` is how to run the traffic generator (program and leading
/// arguments).
pub fn prepare(t: &Topology, traffic: &[&str], kubelet: bool) -> Result<Prepared> {
    let api2 = t.pod("api-2");
    let mut binds: Vec<(String, String)> = OPEN
        .iter()
        .map(|p| (t.pod_ns(api2), format!("{}:{p}", api2.ip())))
        .collect();
    if kubelet {
        binds.push((t.node_ns(2), format!("{}:{KUBELET}", t.node(2).ip())));
    }
    let mut prepared = Prepared {
        listeners: Vec::new(),
    };
    for (ns, bind) in binds {
        let mut args = vec!["netns", "exec", &ns];
        args.extend_from_slice(traffic);
        args.extend_from_slice(&["tcp-sink", &bind]);
        prepared
            .listeners
            .push(std::process::Command::new("ip").args(&args).spawn()?);
    }
    let api1 = t.pod_ns(t.pod("api-1"));
    let ports = format!("{}:{}", DROPPED.start(), DROPPED.end());
    let rule = ["INPUT", "-p", "tcp", "--dport", &ports, "-j", "DROP"];
    // Idempotent: the demo prepares once per lab, a test once per lab too.
    if exec::in_ns(&api1, &[&["iptables", "-C"][..], &rule].concat()).is_err() {
        exec::in_ns(&api1, &[&["iptables", "-A"][..], &rule].concat())?;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    Ok(prepared)
}

/// Run the three probes from web-1; returns each probe's `connected=… refused=… timeout=…`
/// (scan of api-2, dropped ports of api-1, node 2's kubelet).
pub fn probe(t: &Topology, traffic: &[&str]) -> Result<[String; 3]> {
    let web1 = t.pod_ns(t.pod("web-1"));
    let run = |addr: String, range: RangeInclusive<u16>| -> Result<String> {
        let mut args: Vec<&str> = traffic.to_vec();
        let (first, last) = (range.start().to_string(), range.end().to_string());
        args.extend_from_slice(&[
            "tcp-probe",
            &addr,
            &first,
            &last,
            "--timeout-ms",
            TIMEOUT_MS,
        ]);
        Ok(exec::in_ns(&web1, &args)?.trim().to_owned())
    };
    Ok([
        run(t.pod("api-2").ip(), SCAN)?,
        run(t.pod("api-1").ip(), DROPPED)?,
        run(t.node(2).ip(), KUBELET..=KUBELET)?,
    ])
}
