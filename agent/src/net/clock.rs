//! Kernel timestamps are CLOCK_MONOTONIC; users want wall-clock time.

use std::time::{SystemTime, UNIX_EPOCH};

/// CLOCK_MONOTONIC in nanoseconds: the clock the agent feeds the kernel programs (they
/// stamp flows with it, at 100 ms resolution) and compares their stamps against.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a stack value; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock Unix time in whole seconds (what timestamp gauges and persisted state carry).
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Offset between the two clocks, sampled once per harvest so suspend/NTP steps are followed.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Self {
        let mono = monotonic_ns() as i128;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        Self {
            offset_ns: wall - mono,
        }
    }

    /// For tests: a fixed offset.
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Unix time in milliseconds of a monotonic timestamp.
    pub fn unix_ms(&self, mono_ns: u64) -> u64 {
        ((mono_ns as i128 + self.offset_ns).max(0) / 1_000_000) as u64
    }
}
