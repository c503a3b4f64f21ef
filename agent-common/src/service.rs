//! Services under socket load-balancing (Cilium's kube-proxy replacement): the ClusterIP is
//! rewritten to a backend inside connect() or sendmsg(), so no packet ever carries it. The
//! kernel programs record, per TCP connection and per UDP flow, the address the
//! application asked for next to the 4-tuple the packets really have; the agent joins
//! them like a DNAT.

/// Capacity of both service maps (LRU).
pub const MAX_SERVICE_SOCKETS: u32 = 16_384;

/// An address and port as the socket hooks see them: the address's bytes as on the wire,
/// read as native u32 words (IPv4 in `ip[0]`, the rest 0), the port in host byte order.
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack socket talking IPv4) is
/// stored as the IPv4 address it maps, since its packets are IPv4.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcAddr {
    pub ip: [u32; 4],
    pub port: u32,
    /// 4 or 6.
    pub family: u32,
}

impl SvcAddr {
    pub const fn v4(ip4: u32, port: u32) -> Self {
        Self {
            ip: [ip4, 0, 0, 0],
            port,
            family: 4,
        }
    }

    /// `ip6` as `user_ip6` or `remote_ip6` hold it; IPv4-mapped becomes IPv4.
    pub const fn v6(ip6: [u32; 4], port: u32) -> Self {
        // ::ffff:0:0/96, as native words of network-order bytes (little-endian hosts).
        if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffff_0000 {
            return Self::v4(ip6[3], port);
        }
        Self {
            ip: ip6,
            port,
            family: 6,
        }
    }
}

/// A TCP connection's or UDP flow's 4-tuple once its source port is chosen (pod →
/// backend), and its IP protocol (6 or 17).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcTuple {
    pub local: SvcAddr,
    pub remote: SvcAddr,
    pub proto: u32,
}
