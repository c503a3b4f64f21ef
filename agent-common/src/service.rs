//! Services under socket load-balancing (Cilium's kube-proxy replacement): the ClusterIP is
//! rewritten to a backend inside connect(), so no packet ever carries it. The kernel
//! programs record, per TCP connection, the address the application asked for next to the
//! 4-tuple the connection really has; the agent joins them like a DNAT.

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

/// A TCP connection's 4-tuple once its source port is chosen (pod → backend).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcTuple {
    pub local: SvcAddr,
    pub remote: SvcAddr,
}
