//! Read the kernel flow cache: drain the eviction ring, then read every slot of every CPU,
//! and turn both into per-flow deltas (see [`super::slots`]).
//!
//! The ring is drained first so an occupation's final record usually lands before its
//! slot is read again; the order does not matter for correctness, only for how long a
//! displaced occupation's baseline is kept.

use agent_common::{counters::COUNTER_SLOTS, Counter, Evicted, FlowSet, CACHE_WAYS};
use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues, RingBuf},
    Ebpf,
};

use super::{
    slots::{Delta, SlotDeltas},
    DatapathError,
};

const CACHE_MAP: &str = "TF_FLOW_CACHE";
const EVICTIONS_MAP: &str = "TF_EVICTIONS";
const COUNTERS_MAP: &str = "TF_COUNTERS";

/// Kernel health counters, cumulative since the programs were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub packets: u64,
    pub evictions: u64,
    pub evictions_lost: u64,
    pub unparsable: u64,
    pub non_ip: u64,
}

/// One pass over the kernel cache.
#[derive(Debug, Default)]
pub struct Harvest {
    /// New traffic since the last harvest, per flow and observation point (a flow may
    /// appear once per CPU that carried it).
    pub deltas: Vec<Delta>,
    /// Slots holding a flow, over all CPUs.
    pub occupied: usize,
    pub counters: KernelCounters,
}

pub struct Harvester {
    cache: PerCpuArray<MapData, FlowSet>,
    evictions: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    slots: SlotDeltas,
    cpus: usize,
}

impl Harvester {
    /// Takes the maps out of `ebpf`: the harvester becomes their only reader.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DatapathError::MissingMap(name));
        let (cache, evictions, counters) =
            (take(CACHE_MAP)?, take(EVICTIONS_MAP)?, take(COUNTERS_MAP)?);
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
        Ok(Self {
            cache: PerCpuArray::try_from(cache).map_err(map_err(CACHE_MAP))?,
            evictions: RingBuf::try_from(evictions).map_err(map_err(EVICTIONS_MAP))?,
            counters: PerCpuArray::try_from(counters).map_err(map_err(COUNTERS_MAP))?,
            slots: SlotDeltas::new(),
            cpus,
        })
    }

    /// Flows the cache holds before it evicts, over all CPUs.
    pub fn capacity(&self) -> usize {
        self.cache.len() as usize * CACHE_WAYS * self.cpus
    }

    pub fn harvest(&mut self) -> Result<Harvest, DatapathError> {
        let mut out = Harvest::default();
        while let Some(item) = self.evictions.next() {
            if item.len() < size_of::<Evicted>() {
                continue;
            }
            // SAFETY: the kernel wrote an `Evicted` (repr(C), every bit pattern valid) at the
            // start of the record; read_unaligned makes no alignment assumption.
            let e: Evicted = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            out.deltas.extend(self.slots.evicted(&e));
        }
        for set in 0..self.cache.len() {
            let per_cpu: PerCpuValues<FlowSet> =
                self.cache.get(&set, 0).map_err(map_err(CACHE_MAP))?;
            for (cpu, value) in per_cpu.iter().enumerate() {
                for (way, slot) in value.ways.iter().enumerate() {
                    let index = set * CACHE_WAYS as u32 + way as u32;
                    out.deltas
                        .extend(self.slots.observed(cpu as u32, index, slot));
                }
            }
        }
        self.slots.end_round();
        out.occupied = self.slots.occupied();
        out.counters = self.read_counters()?;
        Ok(out)
    }

    fn read_counters(&self) -> Result<KernelCounters, DatapathError> {
        let mut slots = [0u64; COUNTER_SLOTS as usize];
        for c in Counter::ALL {
            let values: PerCpuValues<u64> = self
                .counters
                .get(&(c as u32), 0)
                .map_err(map_err(COUNTERS_MAP))?;
            slots[c as usize] = values.iter().sum();
        }
        Ok(KernelCounters {
            packets: slots[Counter::Packets as usize],
            evictions: slots[Counter::Evictions as usize],
            evictions_lost: slots[Counter::EvictionsLost as usize],
            unparsable: slots[Counter::Unparsable as usize],
            non_ip: slots[Counter::NonIp as usize],
        })
    }
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}
