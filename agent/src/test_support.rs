//! Kernel map values for unit tests of the code that consumes them.

use agent_common::{FlowKey, FlowStats};

/// A UDP flow 10.0.0.1:`port` → 10.0.0.2:53 at ifindex 3, egress.
pub fn udp_key(port: u16) -> FlowKey {
    FlowKey {
        ifindex: 3,
        direction: 1,
        family: 4,
        proto: 17,
        _pad0: 0,
        src_addr: [0x0100_000a, 0],
        dst_addr: [0x0200_000a, 0],
        src_port: port,
        dst_port: 53,
        _pad1: 0,
    }
}

pub fn stats(packets: u64, bytes: u64, first: u64, last: u64, tcp_flags: u8) -> FlowStats {
    FlowStats {
        packets,
        bytes,
        first_seen_ns: first,
        last_seen_ns: last,
        tcp_flags,
        opened: u8::from(tcp_flags & 0x12 == 0x02),
        _pad1: 0,
        syn_seq: 0,
    }
}
