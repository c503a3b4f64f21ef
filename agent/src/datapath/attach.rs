//! Attach the observers to interfaces and take them off again, leaving nothing behind.
//!
//! tcx links (kernel >= 6.6) belong to the agent's file descriptors: they disappear when the
//! process does, even after `kill -9`. Legacy clsact filters outlive the process, so in
//! netlink mode a start-up sweep removes filters a killed predecessor left, and a clean
//! exit removes the clsact qdiscs the agent itself added.

use std::collections::BTreeMap;

use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use rtnetlink::packet_route::tc::TcHandle;
use tracing::{debug, info, warn};

use super::{
    load::{Programs, PROG_EGRESS, PROG_INGRESS, PROG_NOOP},
    load_err, program, DatapathError, Role,
};

/// How programs are hooked into TC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// tcx where the kernel has it (>= 6.6), legacy clsact otherwise.
    Auto,
    /// tcx links only (kernel >= 6.6).
    Tcx,
    /// Legacy clsact qdisc + cls_bpf filters (any kernel), as on 5.15 nodes.
    Netlink,
}

impl AttachMode {
    /// The concrete mode for this kernel.
    pub fn resolve(self, tcx_available: bool) -> AttachMode {
        match self {
            AttachMode::Auto if tcx_available => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Netlink,
            other => other,
        }
    }
}

/// One observed interface.
#[derive(Debug)]
pub struct Attached {
    pub name: String,
    pub role: Role,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// The set of interfaces the observers are attached to, keyed by ifindex.
pub struct Attachments {
    mode: AttachMode,
    /// (ingress, egress) program names.
    progs: (&'static str, &'static str),
    by_index: BTreeMap<u32, Attached>,
}

impl Attachments {
    /// `mode` must already be resolved (not `Auto`); `programs` must be the loaded set.
    pub fn new(mode: AttachMode, programs: Programs) -> Self {
        Self {
            mode,
            progs: programs.names(),
            by_index: BTreeMap::new(),
        }
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn get(&self, index: u32) -> Option<&Attached> {
        self.by_index.get(&index)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u32, &Attached)> {
        self.by_index.iter()
    }

    pub fn len(&self) -> usize {
        self.by_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_index.is_empty()
    }

    /// Attach both directions to `name`. Idempotent per ifindex.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        index: u32,
        name: &str,
        role: Role,
    ) -> Result<(), DatapathError> {
        if self.by_index.contains_key(&index) {
            return Ok(());
        }
        if self.mode == AttachMode::Netlink {
            remove_stale_filters(name);
            add_clsact(name)?;
        }
        let (prog_in, prog_eg) = self.progs;
        let ingress = attach_one(ebpf, prog_in, name, TcAttachType::Ingress, self.mode)?;
        let egress = match attach_one(ebpf, prog_eg, name, TcAttachType::Egress, self.mode) {
            Ok(id) => id,
            Err(e) => {
                let _ = classifier(ebpf, prog_in)
                    .and_then(|p| p.detach(ingress).map_err(load_err(prog_in)));
                return Err(e);
            }
        };
        info!(iface = name, index, ?role, mode = ?self.mode, "attached");
        self.by_index.insert(
            index,
            Attached {
                name: name.to_owned(),
                role,
                ingress,
                egress,
            },
        );
        Ok(())
    }

    /// Forget an interface the kernel already removed (its hooks went with it).
    /// Returns the forgotten interface's name.
    pub fn forget(&mut self, ebpf: &mut Ebpf, index: u32) -> Option<String> {
        let gone = self.by_index.remove(&index)?;
        // The links are dead; taking them drops aya's bookkeeping without a detach syscall.
        if let Ok(p) = classifier(ebpf, self.progs.0) {
            let _ = p.take_link(gone.ingress);
        }
        if let Ok(p) = classifier(ebpf, self.progs.1) {
            let _ = p.take_link(gone.egress);
        }
        info!(iface = gone.name, index, "interface removed, forgotten");
        Some(gone.name)
    }

    /// Detach from every interface (clean shutdown). In netlink mode returns the ifindexes
    /// whose clsact qdisc may now be empty, for [`remove_clsact`].
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) -> Vec<u32> {
        let all = std::mem::take(&mut self.by_index);
        let mut qdiscs = Vec::new();
        for (index, a) in all {
            for (prog, id) in [(self.progs.0, a.ingress), (self.progs.1, a.egress)] {
                if let Ok(p) = classifier(ebpf, prog) {
                    if let Err(e) = p.detach(id) {
                        debug!(iface = a.name, index, error = %e, "detach (interface may be gone)");
                    }
                }
            }
            if self.mode == AttachMode::Netlink {
                qdiscs.push(index);
            }
        }
        qdiscs
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    program(ebpf, name)
}

fn attach_one(
    ebpf: &mut Ebpf,
    prog: &'static str,
    iface: &str,
    at: TcAttachType,
    mode: AttachMode,
) -> Result<SchedClassifierLinkId, DatapathError> {
    let options = match mode {
        AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
        _ => TcAttachOptions::TcxOrder(LinkOrder::default()),
    };
    classifier(ebpf, prog)?
        .attach_with_options(iface, at, options)
        .map_err(|source| match source {
            aya::programs::ProgramError::UnknownInterface { .. } => {
                DatapathError::UnknownInterface {
                    name: iface.to_owned(),
                }
            }
            source => DatapathError::Attach {
                iface: iface.to_owned(),
                direction: if at == TcAttachType::Ingress {
                    "ingress"
                } else {
                    "egress"
                },
                source,
            },
        })
}

/// Add the clsact qdisc unless it is already there (another tool's, or a predecessor's).
fn add_clsact(iface: &str) -> Result<(), DatapathError> {
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => Ok(()),
        Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(DatapathError::Attach {
            iface: iface.to_owned(),
            direction: "clsact qdisc",
            source: aya::programs::ProgramError::TcError(e),
        }),
    }
}

/// A predecessor killed with SIGKILL leaves its cls_bpf filters behind; remove them by name.
fn remove_stale_filters(iface: &str) {
    for (at, name) in [
        (TcAttachType::Ingress, PROG_INGRESS),
        (TcAttachType::Egress, PROG_EGRESS),
        (TcAttachType::Ingress, PROG_NOOP),
        (TcAttachType::Egress, PROG_NOOP),
    ] {
        match tc::qdisc_detach_program(iface, at, name) {
            Ok(()) => warn!(
                iface,
                program = name,
                "removed a stale filter left by an earlier agent"
            ),
            Err(e) => debug!(iface, program = name, error = %e, "no stale filter"),
        }
    }
}

/// Remove clsact qdiscs that hold no filter any more, so a legacy-mode run leaves no
/// trace even after a SIGKILLed predecessor; a qdisc with someone else's filters stays.
pub async fn remove_clsact(indexes: &[u32]) {
    if indexes.is_empty() {
        return;
    }
    let Ok((conn, handle, _)) = rtnetlink::new_connection() else {
        warn!("rtnetlink unavailable: clsact qdiscs left in place");
        return;
    };
    tokio::spawn(conn);
    for &index in indexes {
        match filters_left(&handle, index).await {
            Ok(0) => {}
            Ok(n) => {
                debug!(index, filters = n, "clsact qdisc still in use, kept");
                continue;
            }
            Err(e) => {
                debug!(index, error = %e, "cannot list filters (interface may be gone)");
                continue;
            }
        }
        let mut req = handle.qdisc().del(index as i32);
        req.message_mut().header.parent = TcHandle::CLSACT;
        req.message_mut().header.handle = TcHandle::from(0xFFFF_0000u32);
        if let Err(e) = req.execute().await {
            debug!(index, error = %e, "clsact qdisc not removed (interface may be gone)");
        }
    }
}

async fn filters_left(handle: &rtnetlink::Handle, index: u32) -> Result<usize, rtnetlink::Error> {
    use futures::TryStreamExt;
    let ingress: Vec<_> = handle
        .traffic_filter(index as i32)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await?;
    let egress: Vec<_> = handle
        .traffic_filter(index as i32)
        .get()
        .egress()
        .execute()
        .try_collect()
        .await?;
    Ok(ingress.len() + egress.len())
}
