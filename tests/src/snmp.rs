//! The kernel's own per-namespace protocol counters (/proc/net/snmp): an independent
//! reference for what endpoints really sent and received.

use std::collections::HashMap;

/// `Proto:Field` → value, e.g. `Tcp:OutSegs`, `Udp:InDatagrams`.
pub fn read(ns: &str) -> HashMap<String, u64> {
    let text = crate::in_ns(ns, &["cat", "/proc/net/snmp"]);
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (proto, names) = names.split_once(':').unwrap_or(("", names));
        let (_, values) = values.split_once(':').unwrap_or(("", values));
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<i64>() {
                out.insert(format!("{proto}:{n}"), v.max(0) as u64);
            }
        }
    }
    out
}

/// Difference of one counter between two readings.
pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    let get = |m: &HashMap<String, u64>| {
        *m.get(key)
            .unwrap_or_else(|| panic!("no {key} in /proc/net/snmp"))
    };
    get(after) - get(before)
}

/// IP bytes of `segs` TCP segments carrying `payload` bytes behind `ip_hdr`-byte IP
/// headers: one SYN or SYN-ACK with a 40-byte TCP header, the rest 32 bytes (timestamps
/// on, as Linux defaults).
pub fn tcp_bytes(segs: u64, payload: u64, ip_hdr: u64) -> u64 {
    segs * ip_hdr + 40 + (segs - 1) * 32 + payload
}
