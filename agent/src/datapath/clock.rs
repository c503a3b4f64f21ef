//! The kernel programs' clock: the agent writes CLOCK_MONOTONIC into a one-slot array every
//! [`CLOCK_TICK_MS`], so stamping a packet is a load instead of a clock helper call (~12 ns
//! per packet measured). First/last seen resolve to the tick, well below the harvest
//! interval that the rest of the agent works at.

use agent_common::CLOCK_TICK_MS;
use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use tracing::warn;

use super::{map_err, take_map, DatapathError};
use crate::net::monotonic_ns;

const CLOCK_MAP: &str = "TF_CLOCK";

pub struct KernelClock {
    map: Array<MapData, u64>,
}

impl KernelClock {
    /// Takes the clock map out of `ebpf` and sets it once, so no packet is stamped 0.
    pub fn start(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let mut clock = Self {
            map: take_map(ebpf, CLOCK_MAP)?,
        };
        clock.tick().map_err(map_err(CLOCK_MAP))?;
        Ok(clock)
    }

    pub fn tick(&mut self) -> Result<(), aya::maps::MapError> {
        self.map.set(0, monotonic_ns(), 0)
    }

    /// Tick forever on the runtime; a failed write is logged (timestamps then stall, counts
    /// stay exact).
    pub fn spawn(mut self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(CLOCK_TICK_MS));
            let mut failing = false;
            loop {
                every.tick().await;
                match self.tick() {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        warn!(error = %e, "kernel clock write failed: flow timestamps stall");
                    }
                    Err(_) => {}
                }
            }
        })
    }
}
