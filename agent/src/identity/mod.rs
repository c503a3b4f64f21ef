//! Who owns an address: pods, namespaces, nodes and services from the Kubernetes API (or an
//! offline snapshot of it), and the tenant each namespace belongs to.

pub mod client;
pub mod health;
pub mod list;
mod objects;
pub mod reflector;
pub mod reload;
mod shared;
pub mod slim;
pub mod snapshot;
mod store;
pub mod tenant;
pub mod watch;

pub use objects::{Labels, Name, NamespaceMeta, NodeMeta, Object, PodLabels, PodMeta, ServiceMeta};
pub use shared::SharedStore;
pub use store::{Change, Kind, Owner, Store};
pub use tenant::{resolve as resolve_tenant, Tenant};

/// A problem with identity input: which object and field, and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("snapshot {file}: {message}")]
    Snapshot { file: String, message: String },
    #[error("{object}: field `{field}`: {message}")]
    Object {
        object: String,
        field: String,
        message: String,
    },
    #[error("a {kind} from the API could not be read (skipped): {message}")]
    Unreadable { kind: String, message: String },
}

#[cfg(test)]
mod tests;
