//! Read the kernel flow cache: drain the eviction ring, then read every slot of every CPU
//! in place ([`super::cache_map`]), and turn both into per-flow deltas (see
//! [`super::slots`]).
//!
//! The ring is drained first so an occupation's final record usually lands before its
//! slot is read again; the order does not matter for correctness, only for how long a
//! displaced occupation's baseline is kept. A thread empties the ring whenever the kernel
//! signals it is filling up ([`super::evictions`]), also while a harvest runs, so churn
//! beyond the ring's size per harvest interval loses nothing. The records reach their
//! connections at the start of the next harvest, or earlier through
//! [`Harvester::fold_evictions`], always before the cache is read again.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use agent_common::{counters::COUNTER_SLOTS, Counter, DnsCapture, FlowKey, FlowSet, CACHE_WAYS};
use aya::{
    maps::{Array, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    Ebpf,
};

use super::{
    cache_map::CacheMap,
    evictions::Evictions,
    map_err,
    slots::{Delta, SlotDeltas},
    take_map, take_raw_map, DatapathError,
};

/// How far ahead of the eviction record being applied its slot's bookkeeping is loaded.
const RECORDS_AHEAD: usize = 8;

/// Deltas handed on at once while the cache is read (about 400 KiB).
const BATCH_DELTAS: usize = 4_096;

const CACHE_MAP: &str = "TF_FLOW_CACHE";
const EVICTIONS_MAP: &str = "TF_EVICTIONS";
const COUNTERS_MAP: &str = "TF_COUNTERS";
const DNS_MAP: &str = "TF_DNS";

/// Most DNS messages held between harvests (the ring itself holds ~800); past it they are
/// dropped and counted like a full ring.
const DNS_PENDING_MAX: usize = 65_536;

/// A DNS message one of our interfaces carried (`agent_common::dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    /// Addresses, ports, protocol, interface and direction of its packet.
    pub key: FlowKey,
    /// The transport payload, cut at `agent_common::DNS_CAPTURE_BYTES`.
    pub payload: Vec<u8>,
}

/// Kernel health counters, cumulative since the programs were loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelCounters {
    pub packets: u64,
    pub evictions: u64,
    pub evictions_lost: u64,
    pub unparsable: u64,
    pub non_ip: u64,
    pub dns_captured: u64,
    pub dns_lost: u64,
}

/// One pass over the kernel cache.
#[derive(Debug, Default)]
pub struct Harvest {
    /// New traffic since the last harvest, per flow and observation point (a flow may
    /// appear once per CPU that carried it), for `Pipeline::ingest` (the harvest bench).
    /// [`Harvester::harvest_with`] hands its deltas on in batches and leaves this empty.
    pub deltas: Vec<Delta>,
    /// Slots holding a flow, over all CPUs.
    pub occupied: usize,
    pub counters: KernelCounters,
    /// DNS messages since the last harvest, oldest first.
    pub dns: Vec<DnsMessage>,
}

pub struct Harvester {
    cache: MapData,
    sets: u32,
    reader: CacheMap,
    evictions: Evictions,
    dns: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    slots: SlotDeltas,
    cpus: usize,
    /// Deltas read from the cache, handed on every [`BATCH_DELTAS`].
    batch: Vec<Delta>,
    pending_dns: Vec<DnsMessage>,
    /// DNS messages dropped because `pending_dns` was full.
    pub dns_dropped: u64,
}

/// The DNS ring's file descriptor, for waiting on it
/// (`tokio::io::unix::AsyncFd`); valid while the [`Harvester`] it came from lives.
pub struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Harvester {
    /// Takes the maps out of `ebpf`: the harvester becomes their only reader.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let cache = take_raw_map(ebpf, CACHE_MAP)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Cpus(e))?;
        // Checks the value size against FlowSet before the in-place reads rely on it.
        let rows = Array::<_, FlowSet>::try_from(&cache)
            .map_err(map_err(CACHE_MAP))?
            .len();
        let sets = rows / cpus.max(1) as u32;
        let Map::Array(cache) = cache else {
            return Err(map_err(CACHE_MAP)(MapError::InvalidMapType { map_type: 0 }));
        };
        Ok(Self {
            cache,
            sets,
            reader: CacheMap::new(sets as usize, cpus),
            evictions: Evictions::start(take_map(ebpf, EVICTIONS_MAP)?)?,
            dns: take_map(ebpf, DNS_MAP)?,
            counters: take_map(ebpf, COUNTERS_MAP)?,
            slots: SlotDeltas::new(sets as usize * CACHE_WAYS),
            cpus,
            batch: Vec::with_capacity(BATCH_DELTAS + CACHE_WAYS),
            pending_dns: Vec::new(),
            dns_dropped: 0,
        })
    }

    /// Flows the cache holds before it evicts, over all CPUs.
    pub fn capacity(&self) -> usize {
        self.sets as usize * CACHE_WAYS * self.cpus
    }

    /// The kernel wakes this for every DNS message.
    pub fn dns_fd(&self) -> RingFd {
        RingFd(self.dns.as_raw_fd())
    }

    /// Take every waiting DNS message into the next harvest, freeing the ring.
    pub fn drain_dns(&mut self) {
        while let Some(item) = self.dns.next() {
            if item.len() < size_of::<DnsCapture>() {
                continue;
            }
            if self.pending_dns.len() >= DNS_PENDING_MAX {
                self.dns_dropped += 1;
                continue;
            }
            // SAFETY: the kernel wrote a `DnsCapture` (repr(C), every bit pattern valid) at
            // the start of the record; read_unaligned makes no alignment assumption.
            let c: DnsCapture = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let len = usize::from(c.len).min(c.data.len());
            self.pending_dns.push(DnsMessage {
                key: c.key,
                payload: c.data[..len].to_vec(),
            });
        }
    }

    /// Read the cache, handing its deltas to `each` a batch at a time (eviction records
    /// first) instead of keeping them: at node scale one vector of every active point
    /// would be tens of MiB held from one harvest to the next. `out` gets the rest of the
    /// harvest (DNS messages, occupancy, counters); its `deltas` are left empty.
    pub fn harvest_with(
        &mut self,
        out: &mut Harvest,
        mut each: impl FnMut(&[Delta]),
    ) -> Result<(), DatapathError> {
        self.drain_dns();
        out.dns.clear();
        out.dns.append(&mut self.pending_dns);
        out.deltas.clear();
        // Every record evicted since they were last folded first, as one drained ring
        // gave them.
        self.fold_evictions(&mut each);
        let slots = &mut self.slots;
        let batch = &mut self.batch;
        self.reader
            .read_all(self.cache.fd().as_fd(), |cpu, index, slot| {
                batch.extend(slots.observed(cpu, index, slot));
                if batch.len() >= BATCH_DELTAS {
                    each(batch);
                    batch.clear();
                }
            })
            .map_err(|e| DatapathError::Map {
                map: CACHE_MAP,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "mmap",
                    io_error: e,
                }),
            })?;
        each(batch);
        batch.clear();
        self.slots.end_round();
        out.occupied = self.slots.occupied();
        out.counters = self.read_counters()?;
        Ok(())
    }

    /// The eviction records queued since the last call, as deltas handed to `each` a batch
    /// at a time, oldest first. A harvest starts with this; between harvests the agent
    /// calls it too, so records do not pile up for a whole harvest interval (at 100k
    /// flows a thrashing cache sends 50,000–140,000 a second, 104 bytes each).
    pub fn fold_evictions(&mut self, mut each: impl FnMut(&[Delta])) {
        let records = self.evictions.take();
        let (slots, batch) = (&mut self.slots, &mut self.batch);
        batch.clear();
        for (i, e) in records.iter().enumerate() {
            if let Some(ahead) = records.get(i + RECORDS_AHEAD) {
                slots.warm(ahead);
            }
            batch.extend(slots.evicted(e));
            if batch.len() >= BATCH_DELTAS {
                each(batch);
                batch.clear();
            }
        }
        drop(records);
        if !batch.is_empty() {
            each(batch);
            batch.clear();
        }
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
            dns_captured: slots[Counter::DnsCaptured as usize],
            dns_lost: slots[Counter::DnsLost as usize],
        })
    }
}
