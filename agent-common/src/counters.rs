//! Kernel-side health counters, one slot each in a per-CPU array.

/// Index into the `COUNTERS` per-CPU array (kernel object and agent are built together).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the programs looked at.
    Packets = 0,
    /// Evicted slots the ring buffer had no room for: their counts since the last harvest
    /// are lost (the agent fell far behind).
    EvictionsLost = 1,
    /// IP packets whose headers could not be parsed (truncated, unknown extension chain).
    Unparsable = 2,
    /// Non-IP frames (ARP, LLDP...): passed through, not counted as flows.
    NonIp = 3,
    /// Slots handed to a new flow while occupied: the old flow's counts went to userspace
    /// through the ring buffer. Steady growth means the cache is smaller than the node's
    /// flow working set (costs CPU, not accuracy).
    Evictions = 4,
    /// DNS messages (port 53) copied to userspace.
    DnsCaptured = 5,
    /// DNS messages the ring had no room for: not seen by the agent (the flow itself is
    /// still counted).
    DnsLost = 6,
}

/// Number of slots in the counter array.
pub const COUNTER_SLOTS: u32 = 7;

impl Counter {
    /// Every counter, in index order (for harvesting and metric registration).
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Packets,
        Counter::EvictionsLost,
        Counter::Unparsable,
        Counter::NonIp,
        Counter::Evictions,
        Counter::DnsCaptured,
        Counter::DnsLost,
    ];

    /// Stable snake_case name used in metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::EvictionsLost => "evictions_lost",
            Counter::Unparsable => "unparsable",
            Counter::NonIp => "non_ip",
            Counter::Evictions => "evictions",
            Counter::DnsCaptured => "dns_captured",
            Counter::DnsLost => "dns_lost",
        }
    }
}
