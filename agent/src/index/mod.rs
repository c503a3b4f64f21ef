//! Index mode: one `tenantflow index` Deployment runs the cluster-wide watches once and
//! serves every agent the inventory as a snapshot plus deltas over one long-lived HTTP/2
//! stream, so the API server carries a handful of watches instead of four per node, and a
//! pod event is fanned out by the index, not by the API server.

pub mod follow;
pub mod journal;
pub mod protocol;
pub mod serve;
