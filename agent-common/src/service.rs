//! Services under socket load-balancing (Cilium's kube-proxy replacement): the ClusterIP is
//! rewritten to a backend inside connect() or sendmsg(), so no packet ever carries it. The
//! kernel programs record, per TCP connection and per UDP flow, the address the
//! application asked for next to the 4-tuple the packets really have; the agent joins
//! them like a DNAT.

/// Capacity of both service maps (LRU).
pub const MAX_SERVICE_SOCKETS: u32 = 16_384;

/// An IPv4 address and port as the socket hooks see them: the address in network byte
/// order (its bytes as on the wire), the port in host byte order.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcAddr {
    pub ip4: u32,
    pub port: u32,
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
