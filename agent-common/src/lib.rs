//! Types shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because the same bytes
//! are written by BPF and read by userspace through map syscalls: a hidden padding byte would
//! make two identical flows hash to different keys.
#![no_std]

pub mod cache;
pub mod counters;
pub mod dns;
pub mod flow;
pub mod process;
pub mod service;

#[cfg(feature = "user")]
mod user;

pub use cache::{
    Evicted, FlowSet, FlowSlot, CACHE_SETS, CACHE_SET_BITS, CACHE_WAYS, CLOCK_TICK_MS,
    CONN_GEN_ENTRIES, EVICTIONS_BYTES, EVICTIONS_WAKE_BYTES,
};
pub use counters::Counter;
pub use dns::{DnsCapture, DNS_CAPTURE_BYTES, DNS_PORT, DNS_RING_BYTES, DNS_WAKE_BYTES};
pub use flow::{
    Direction, FlowKey, FlowStats, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    MARK_ICMP_ERROR, MARK_OPENED,
};
pub use process::{SockOwner, MAX_SOCKETS};
pub use service::{SvcAddr, SvcTuple, MAX_SERVICE_SOCKETS};
