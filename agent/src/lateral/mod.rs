//! Signals of lateral movement beyond a single connection's outcome: how widely a source
//! fans out ([`fanout`]) and which paths are new ([`edges`]).

pub mod distinct;
pub mod edges;
pub mod fanout;

pub use edges::{EdgeConfig, EdgeFileError, Edges};
pub use fanout::{Fanout, FanoutConfig};

use crate::classify::{EndpointIdentity, EndpointKind};

/// An endpoint at workload level: `namespace/Kind/name` for a pod with an owner (its pod
/// name otherwise), `node/NAME`, `namespace/svc/NAME`, else its kind (`internet`, …). What
/// fan-out and edges count by: pods of one Deployment are one source.
pub fn principal(e: &EndpointIdentity) -> String {
    let ns = e.namespace.as_deref().unwrap_or_default();
    match e.kind {
        EndpointKind::Pod => match (&e.workload, &e.pod) {
            (Some(w), _) => format!("{ns}/{w}"),
            (None, Some(p)) => format!("{ns}/{p}"),
            (None, None) => "pod".into(),
        },
        EndpointKind::Node => format!("node/{}", e.node.as_deref().unwrap_or_default()),
        EndpointKind::Service => format!("{ns}/svc/{}", e.service.as_deref().unwrap_or_default()),
        k => k.as_str().into(),
    }
}
