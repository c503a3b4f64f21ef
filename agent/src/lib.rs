//! tenantflow: a node-level eBPF flow observer for multi-tenant Kubernetes.
//!
//! Data flows one way: `datapath` (kernel maps) → `flow` (table) → `export` (metrics, API).

pub mod access;
pub mod backoff;
pub mod classify;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod dns;
pub mod event;
pub mod export;
pub mod flow;
#[cfg(test)]
mod fuzz_support;
pub mod identity;
pub mod index;
pub mod input;
pub mod inventory;
pub mod lateral;
pub mod logging;
pub mod memory;
pub mod metric;
pub mod nat;
pub mod net;
pub mod pipeline;
pub mod prefetch;
pub mod process;
pub mod relay;
pub mod shutdown;
#[cfg(test)]
mod test_support;
pub mod yaml_shape;
