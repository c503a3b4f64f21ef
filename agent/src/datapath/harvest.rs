//! Read the kernel flow map: sum the per-CPU copies, delete entries idle past the timeout.
//!
//! Deleting only long-idle entries keeps the map small without racing live flows: a packet
//! would have to arrive in the microseconds between the read and the delete of a flow that
//! was silent for the whole idle timeout, and a flow back from that long a silence starts
//! a new record anyway.

use std::time::Duration;

use agent_common::{counters::COUNTER_SLOTS, Counter, FlowKey, FlowStats};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    Ebpf,
};

use super::DatapathError;

const FLOWS_MAP: &str = "TF_FLOWS";
const COUNTERS_MAP: &str = "TF_COUNTERS";

/// Kernel health counters, cumulative since the programs were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub packets: u64,
    pub insert_failures: u64,
    pub unparsable: u64,
    pub non_ip: u64,
}

/// One pass over the kernel map.
#[derive(Debug, Default)]
pub struct Harvest {
    /// Cumulative counters of every entry present, summed over CPUs.
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// Entries deleted from the kernel after this read (their next sighting restarts at 0).
    pub removed: Vec<FlowKey>,
    pub counters: KernelCounters,
}

pub struct Harvester {
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    counters: PerCpuArray<MapData, u64>,
    idle_ns: u64,
}

impl Harvester {
    /// Takes the maps out of `ebpf`: the harvester becomes their only reader.
    pub fn new(ebpf: &mut Ebpf, idle: Duration) -> Result<Self, DatapathError> {
        let flows = ebpf
            .take_map(FLOWS_MAP)
            .ok_or(DatapathError::MissingMap(FLOWS_MAP))?;
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(DatapathError::MissingMap(COUNTERS_MAP))?;
        Ok(Self {
            flows: PerCpuHashMap::try_from(flows).map_err(|source| DatapathError::Map {
                map: FLOWS_MAP,
                source,
            })?,
            counters: PerCpuArray::try_from(counters).map_err(|source| DatapathError::Map {
                map: COUNTERS_MAP,
                source,
            })?,
            idle_ns: idle.as_nanos() as u64,
        })
    }

    /// Read everything; `now_ns` is CLOCK_MONOTONIC, the clock the kernel stamps flows with.
    pub fn harvest(&mut self, now_ns: u64) -> Result<Harvest, DatapathError> {
        let map_err = |source| DatapathError::Map {
            map: FLOWS_MAP,
            source,
        };
        let mut out = Harvest::default();
        for item in self.flows.iter() {
            let (key, values) = match item {
                Ok(kv) => kv,
                // An entry evicted or deleted between the key walk and the lookup.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(e)),
            };
            let stats = sum_per_cpu(values.iter());
            if now_ns.saturating_sub(stats.last_seen_ns) > self.idle_ns {
                out.removed.push(key);
            }
            out.flows.push((key, stats));
        }
        for key in &out.removed {
            match self.flows.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        out.counters = self.read_counters()?;
        Ok(out)
    }

    fn read_counters(&self) -> Result<KernelCounters, DatapathError> {
        let mut slots = [0u64; COUNTER_SLOTS as usize];
        for c in Counter::ALL {
            let values: PerCpuValues<u64> =
                self.counters
                    .get(&(c as u32), 0)
                    .map_err(|source| DatapathError::Map {
                        map: COUNTERS_MAP,
                        source,
                    })?;
            slots[c as usize] = values.iter().sum();
        }
        Ok(KernelCounters {
            packets: slots[Counter::Packets as usize],
            insert_failures: slots[Counter::InsertFailures as usize],
            unparsable: slots[Counter::Unparsable as usize],
            non_ip: slots[Counter::NonIp as usize],
        })
    }
}

/// Combine per-CPU copies: counts add, first/last seen take the extremes of CPUs that saw
/// the flow at all (an untouched CPU's copy is all zeroes).
pub fn sum_per_cpu<'a>(values: impl Iterator<Item = &'a FlowStats>) -> FlowStats {
    let mut total = FlowStats::default();
    for v in values.filter(|v| v.packets > 0) {
        total.first_seen_ns = if total.packets == 0 {
            v.first_seen_ns
        } else {
            total.first_seen_ns.min(v.first_seen_ns)
        };
        total.packets += v.packets;
        total.bytes += v.bytes;
        total.last_seen_ns = total.last_seen_ns.max(v.last_seen_ns);
        total.tcp_flags |= v.tcp_flags;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, bytes: u64, first: u64, last: u64, flags: u8) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: flags,
            _pad0: 0,
            _pad1: 0,
            _pad2: 0,
        }
    }

    #[test]
    fn sums_cpus_and_ignores_untouched_copies() {
        let cpus = [
            stats(0, 0, 0, 0, 0),
            stats(3, 180, 500, 900, 0x02),
            stats(2, 2960, 400, 1000, 0x10),
            stats(0, 0, 0, 0, 0),
        ];
        let total = sum_per_cpu(cpus.iter());
        assert_eq!(total, stats(5, 3140, 400, 1000, 0x12));
    }

    #[test]
    fn all_zero_is_zero() {
        let cpus = [FlowStats::default(); 2];
        assert_eq!(sum_per_cpu(cpus.iter()), FlowStats::default());
    }
}
