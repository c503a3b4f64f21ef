//! Attach the observers to interfaces and take them off again, leaving nothing behind.
//!
//! tcx links (kernel >= 6.6) belong to the agent's file descriptors: they disappear when the
//! process does, even after `kill -9`. Legacy clsact filters outlive the process, so in
//! netlink mode a start-up sweep removes filters a killed predecessor left, and a clean
//! exit removes the clsact qdiscs the agent itself added.
//!
//! Observers go first: a tcx link before every other link, a clsact filter at priority 1
//! (cls_bpf runs the newest filter of a priority first). A program ahead of an observer
//! that ends the chain, as Cilium's do, would blind it; `stay_first` keeps it there.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    Ebpf,
};
use rtnetlink::packet_route::tc::TcHandle as NlTcHandle;
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
    pub name: Arc<str>,
    pub role: Role,
    /// None only while putting it back first failed; the next position check retries.
    pub(super) ingress: Option<SchedClassifierLinkId>,
    pub(super) egress: Option<SchedClassifierLinkId>,
}

impl Attached {
    /// The link of one direction (None only while putting it back first failed).
    pub(super) fn link_mut(&mut self, ingress: bool) -> &mut Option<SchedClassifierLinkId> {
        if ingress {
            &mut self.ingress
        } else {
            &mut self.egress
        }
    }
}

/// The set of interfaces the observers are attached to, keyed by ifindex.
pub struct Attachments {
    pub(super) mode: AttachMode,
    /// (ingress, egress) program names.
    pub(super) progs: (&'static str, &'static str),
    /// (ingress, egress) kernel program ids, as hook chains list them.
    pub(super) ids: (u32, u32),
    pub(super) tcx_available: bool,
    pub(super) by_index: BTreeMap<u32, Attached>,
    /// Hooks (ifindex, ingress) last found with the observer not first.
    pub(super) not_first: BTreeSet<(u32, bool)>,
    /// Interfaces whose clsact qdisc held a predecessor's filters (tcx mode): removed at
    /// exit if nobody else's filters are there.
    pub(super) stale_qdiscs: Vec<u32>,
}

impl Attachments {
    /// `mode` must already be resolved (not `Auto`); `programs` must be the loaded set.
    pub fn new(
        ebpf: &mut Ebpf,
        mode: AttachMode,
        programs: Programs,
        tcx_available: bool,
    ) -> Result<Self, DatapathError> {
        let progs = programs.names();
        let id = |ebpf: &mut Ebpf, name: &'static str| {
            let p = classifier(ebpf, name)?;
            super::position::program_id(p).map_err(|source| DatapathError::ProgramId {
                program: name,
                source,
            })
        };
        let ids = (id(ebpf, progs.0)?, id(ebpf, progs.1)?);
        Ok(Self {
            mode,
            progs,
            ids,
            tcx_available,
            by_index: BTreeMap::new(),
            not_first: BTreeSet::new(),
            stale_qdiscs: Vec::new(),
        })
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
        // Whatever mode this run is in: a predecessor killed in netlink mode left its
        // filters, and in tcx mode nothing else would ever remove them.
        let removed = remove_stale_filters(name);
        if self.mode == AttachMode::Netlink {
            add_clsact(name)?;
        } else if removed {
            self.stale_qdiscs.push(index);
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
                name: name.into(),
                role,
                ingress: Some(ingress),
                egress: Some(egress),
            },
        );
        Ok(())
    }

    /// Forget an interface the kernel already removed (its hooks went with it).
    /// Returns the forgotten interface's name.
    pub fn forget(&mut self, ebpf: &mut Ebpf, index: u32) -> Option<String> {
        let gone = self.by_index.remove(&index)?;
        self.not_first.retain(|&(i, _)| i != index);
        // The links are dead; taking them drops aya's bookkeeping without a detach syscall.
        for (prog, id) in [(self.progs.0, gone.ingress), (self.progs.1, gone.egress)] {
            if let (Ok(p), Some(id)) = (classifier(ebpf, prog), id) {
                let _ = p.take_link(id);
            }
        }
        info!(iface = &*gone.name, index, "interface removed, forgotten");
        Some(gone.name.to_string())
    }

    /// Detach from every interface (clean shutdown). In netlink mode returns the ifindexes
    /// whose clsact qdisc may now be empty, for [`remove_clsact`].
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) -> Vec<u32> {
        let all = std::mem::take(&mut self.by_index);
        let mut qdiscs = Vec::new();
        for (index, a) in all {
            for (prog, id) in [(self.progs.0, a.ingress), (self.progs.1, a.egress)] {
                if let (Ok(p), Some(id)) = (classifier(ebpf, prog), id) {
                    if let Err(e) = p.detach(id) {
                        debug!(iface = &*a.name, index, error = %e, "detach (interface may be gone)");
                    }
                }
            }
            if self.mode == AttachMode::Netlink {
                qdiscs.push(index);
            }
        }
        // A predecessor's clsact qdiscs this run emptied: removed if still empty.
        qdiscs.extend(std::mem::take(&mut self.stale_qdiscs));
        qdiscs
    }
}

pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    program(ebpf, name)
}

/// Our clsact filter handles at priority 1: fixed, so another datapath's filter (Cilium's is
/// handle 1) is never replaced by ours nor ours by it; two, so a new filter can go ahead of
/// the old one while moving back first.
const FILTER_HANDLES: [u32; 2] = [0x7466_0001, 0x7466_0002];

/// Attach `prog` first on the hook: before every tcx link, or at clsact priority 1. When
/// priority 1 holds filters of another kind (the kernel refuses to mix kinds within one
/// priority), the filter goes where the kernel puts it and the position check reports it.
pub(super) fn attach_one(
    ebpf: &mut Ebpf,
    prog: &'static str,
    iface: &str,
    at: TcAttachType,
    mode: AttachMode,
) -> Result<SchedClassifierLinkId, DatapathError> {
    let p = classifier(ebpf, prog)?;
    let result = if mode == AttachMode::Netlink {
        attach_prio1(p, iface, at)
    } else {
        p.attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::first()))
    };
    result.map_err(|source| match source {
        aya::programs::ProgramError::UnknownInterface { .. } => DatapathError::UnknownInterface {
            name: iface.to_owned(),
        },
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

fn attach_prio1(
    p: &mut SchedClassifier,
    iface: &str,
    at: TcAttachType,
) -> Result<SchedClassifierLinkId, aya::programs::ProgramError> {
    let exists = |e: &aya::programs::ProgramError| {
        matches!(e, aya::programs::ProgramError::TcError(tc::TcError::NetlinkError(n))
            if n.raw_os_error() == Some(libc::EEXIST))
    };
    let mut last = None;
    for handle in FILTER_HANDLES {
        let options = TcAttachOptions::Netlink(NlOptions {
            priority: 1,
            handle: TcHandle::new((handle >> 16) as u16, handle as u16),
            ..NlOptions::default()
        });
        match p.attach_with_options(iface, at, options) {
            Err(e) if exists(&e) => last = Some(e),
            Err(aya::programs::ProgramError::TcError(e)) => {
                warn!(iface, error = %e, "clsact priority 1 refused our filter; attaching at the kernel's choice");
                return p.attach_with_options(
                    iface,
                    at,
                    TcAttachOptions::Netlink(NlOptions::default()),
                );
            }
            other => return other,
        }
    }
    Err(last.expect("both handles tried"))
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
/// True if any was there.
pub fn remove_stale_filters(iface: &str) -> bool {
    let mut removed = false;
    for (at, name) in [
        (TcAttachType::Ingress, PROG_INGRESS),
        (TcAttachType::Egress, PROG_EGRESS),
        (TcAttachType::Ingress, PROG_NOOP),
        (TcAttachType::Egress, PROG_NOOP),
    ] {
        match tc::qdisc_detach_program(iface, at, name) {
            Ok(()) => {
                removed = true;
                warn!(
                    iface,
                    program = name,
                    "removed a stale filter left by an earlier agent"
                )
            }
            Err(e) => debug!(iface, program = name, error = %e, "no stale filter"),
        }
    }
    removed
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
        req.message_mut().header.parent = NlTcHandle::CLSACT;
        req.message_mut().header.handle = NlTcHandle::from(0xFFFF_0000u32);
        if let Err(e) = req.execute().await {
            debug!(index, error = %e, "clsact qdisc not removed (interface may be gone)");
        }
    }
}

async fn filters_left(handle: &rtnetlink::Handle, index: u32) -> Result<usize, rtnetlink::Error> {
    let ingress = super::legacy::dump(handle, index, true).await?;
    let egress = super::legacy::dump(handle, index, false).await?;
    Ok(ingress.len() + egress.len())
}
