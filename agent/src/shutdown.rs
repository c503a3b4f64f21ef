//! SIGTERM (Kubernetes) and SIGINT (a terminal) mean: detach and exit cleanly. So do
//! SIGHUP, SIGUSR1, SIGUSR2 and SIGALRM, whose default action would kill the agent with no
//! final records and, in netlink mode, leave its filters attached.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal kind and the name the log gives it.
type Named = (fn() -> SignalKind, &'static str);

/// The signals handled.
const SIGNALS: [Named; 6] = [
    (SignalKind::terminate, "SIGTERM"),
    (SignalKind::interrupt, "SIGINT"),
    (SignalKind::hangup, "SIGHUP"),
    (SignalKind::user_defined1, "SIGUSR1"),
    (SignalKind::user_defined2, "SIGUSR2"),
    (SignalKind::alarm, "SIGALRM"),
];

/// Handlers installed up front: a signal that arrives while the agent is still loading or
/// attaching must not kill it with the default action (legacy clsact filters would outlive
/// it); it is acted on once the main loop runs.
pub struct Shutdown {
    handlers: Vec<(Signal, &'static str)>,
}

impl Shutdown {
    /// Installs the handlers now (needs a running Tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        let handlers = SIGNALS
            .iter()
            .map(|(kind, name)| Ok((signal(kind())?, *name)))
            .collect::<std::io::Result<_>>()?;
        Ok(Self { handlers })
    }

    /// Resolves on the first of them, including one received before this call.
    pub async fn signalled(&mut self) -> &'static str {
        let waits = self.handlers.iter_mut().map(|(s, name)| {
            Box::pin(async move {
                s.recv().await;
                *name
            })
        });
        futures::future::select_all(waits).await.0
    }
}
