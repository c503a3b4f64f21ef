//! Kernel-side health counters, one slot each in a per-CPU array.

/// Index into the `COUNTERS` per-CPU array. Values are stable and never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the programs looked at.
    Packets = 0,
    /// Flow-map inserts that failed (map full of entries another CPU is updating, or ENOMEM).
    InsertFailures = 1,
    /// IP packets whose headers could not be parsed (truncated, unknown extension chain).
    Unparsable = 2,
    /// Non-IP frames (ARP, LLDP...): passed through, not counted as flows.
    NonIp = 3,
}

/// Number of slots in the counter array.
pub const COUNTER_SLOTS: u32 = 4;

impl Counter {
    /// Every counter, in index order (for harvesting and metric registration).
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Packets,
        Counter::InsertFailures,
        Counter::Unparsable,
        Counter::NonIp,
    ];

    /// Stable snake_case name used in metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::InsertFailures => "insert_failures",
            Counter::Unparsable => "unparsable",
            Counter::NonIp => "non_ip",
        }
    }
}
