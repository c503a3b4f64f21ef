//! SIGTERM (Kubernetes) and SIGINT (a terminal) both mean: detach and exit cleanly.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Handlers installed up front: a signal that arrives while the agent is still loading or
/// attaching must not kill it with the default action (legacy clsact filters would outlive
/// it); it is acted on once the main loop runs.
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers now (needs a running Tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM or SIGINT, including one received before this call.
    pub async fn signalled(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
