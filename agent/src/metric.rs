//! Registering the agent's Prometheus metrics: every module does it through [`register`],
//! so a metric is defined and registered in one expression and a clash of names is one
//! error naming it.

use prometheus::{core::Collector, Registry};

/// Why a registration of a statically defined metric cannot fail (its `expect` message).
pub const STATIC: &str = "static metric definitions are valid and registered once";

/// Register the metric `m` (as its constructor returned it) in `r` and hand it back.
pub fn register<M: Collector + Clone + 'static>(
    r: &Registry,
    m: prometheus::Result<M>,
) -> prometheus::Result<M> {
    let m = m?;
    r.register(Box::new(m.clone()))?;
    Ok(m)
}
