//! Keep every observer first in its hook's chain: another datapath that attaches or
//! re-attaches later (Cilium does on every restart) goes ahead of it, and a program ahead
//! of it that ends the chain blinds it. Checked on a timer; a displaced observer is moved
//! back, a removed one attached again, and both are reported.
//!
//! Moving costs a short gap on tcx: the kernel refuses the same program twice on one hook,
//! so the old link goes before the new one comes (a few microseconds in which a packet that
//! the program ahead passes on is not seen). On clsact the new filter comes first and the
//! old one goes after, so nothing is missed there.

use aya::{programs::TcAttachType, Ebpf};
use tracing::{debug, info, warn};

use super::{
    attach::{attach_one, classifier},
    position::{legacy_chain, tcx_chain},
    AttachMode, Attachments,
};

/// Why an observer had to be put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moved {
    /// Another program had gone ahead of it.
    Displaced,
    /// Its link or filter was gone (removed by another tool) while the interface stayed.
    Removed,
}

impl Moved {
    pub fn as_str(self) -> &'static str {
        match self {
            Moved::Displaced => "displaced",
            Moved::Removed => "removed",
        }
    }
}

/// One check over every hook.
#[derive(Debug, Default)]
pub struct Positions {
    /// Hooks put back first: (interface, direction, why).
    pub moved: Vec<(String, &'static str, Moved)>,
    /// Hooks where the observer still is not first after trying.
    pub not_first: usize,
}

fn direction(ingress: bool) -> &'static str {
    if ingress {
        "ingress"
    } else {
        "egress"
    }
}

impl Attachments {
    /// Check every hook and move the observer back to first where it is not. `nl` is needed
    /// in netlink mode (filter dumps).
    pub async fn stay_first(
        &mut self,
        ebpf: &mut Ebpf,
        nl: Option<&rtnetlink::Handle>,
    ) -> Positions {
        let mut out = Positions::default();
        let hooks: Vec<(u32, bool)> = self
            .by_index
            .keys()
            .flat_map(|&i| [(i, true), (i, false)])
            .collect();
        for (index, ingress) in hooks {
            let Some(chain) = self.chain(index, ingress, nl).await else {
                continue;
            };
            let ours = if ingress { self.ids.0 } else { self.ids.1 };
            let why = match chain.iter().position(|&id| id == ours) {
                Some(0) => None,
                Some(_) => Some(Moved::Displaced),
                None => Some(Moved::Removed),
            };
            if let Some(why) = why {
                if self.move_first(ebpf, index, ingress) {
                    let name = self.by_index[&index].name.to_string();
                    info!(
                        iface = name,
                        direction = direction(ingress),
                        reason = why.as_str(),
                        "observer put back first"
                    );
                    out.moved.push((name, direction(ingress), why));
                }
            }
            let first = match why {
                None => true,
                Some(_) => self
                    .chain(index, ingress, nl)
                    .await
                    .is_some_and(|c| c.first() == Some(&ours)),
            };
            // On a kernel with tcx, clsact filters run only if every tcx program passed the
            // packet on: a tcx program there is ahead of a netlink-mode observer for good.
            let behind_tcx = self.mode == AttachMode::Netlink
                && self.tcx_available
                && tcx_chain(index, ingress).is_ok_and(|c| !c.is_empty());
            let is_first = first && !behind_tcx;
            self.note_position(index, ingress, is_first, behind_tcx);
            if !is_first {
                out.not_first += 1;
            }
        }
        out
    }

    /// The hook's chain in run order, or None when it cannot be read (interface gone).
    async fn chain(
        &self,
        index: u32,
        ingress: bool,
        nl: Option<&rtnetlink::Handle>,
    ) -> Option<Vec<u32>> {
        let read = match (self.mode, nl) {
            (AttachMode::Netlink, Some(h)) => legacy_chain(h, index, ingress)
                .await
                .map_err(|e| e.to_string()),
            (AttachMode::Netlink, None) => Err("no rtnetlink handle".to_owned()),
            _ => tcx_chain(index, ingress).map_err(|e| e.to_string()),
        };
        read.map_err(
            |e| debug!(index, error = %e, "cannot read hook chain (interface may be gone)"),
        )
        .ok()
    }

    /// Re-attach the observer at the head of the hook. Returns whether it is attached again.
    fn move_first(&mut self, ebpf: &mut Ebpf, index: u32, ingress: bool) -> bool {
        let (prog, at) = if ingress {
            (self.progs.0, TcAttachType::Ingress)
        } else {
            (self.progs.1, TcAttachType::Egress)
        };
        let mode = self.mode;
        let Some(a) = self.by_index.get_mut(&index) else {
            return false;
        };
        let Ok(p) = classifier(ebpf, prog) else {
            return false;
        };
        // The old link leaves aya's bookkeeping now; dropping it detaches it. tcx refuses
        // the same program twice on a hook, so there the old link goes first; on clsact the
        // new filter goes ahead and the old one after, so nothing is missed.
        let mut old = a
            .link_mut(ingress)
            .take()
            .and_then(|id| p.take_link(id).ok());
        if mode != AttachMode::Netlink {
            drop(old.take());
        }
        let result = attach_one(ebpf, prog, &a.name, at, mode);
        drop(old);
        match result {
            Ok(new) => {
                *a.link_mut(ingress) = Some(new);
                true
            }
            Err(e) => {
                warn!(iface = &*a.name, direction = direction(ingress), error = %e, "could not put the observer back first");
                false
            }
        }
    }

    /// Log only when a hook's standing changes, so a permanent condition is said once.
    fn note_position(&mut self, index: u32, ingress: bool, first: bool, behind_tcx: bool) {
        let key = (index, ingress);
        let changed = if first {
            self.not_first.remove(&key)
        } else {
            self.not_first.insert(key)
        };
        if changed && !first {
            let name = &self.by_index[&index].name;
            if behind_tcx {
                warn!(iface = &**name, direction = direction(ingress), "a tcx program runs before every clsact filter here, so this observer sees only what it passes on: use --attach-mode tcx");
            } else {
                warn!(iface = &**name, direction = direction(ingress), "observer is not first on this hook and cannot be moved: programs ahead of it may hide packets");
            }
        } else if changed {
            info!(
                iface = &*self.by_index[&index].name,
                direction = direction(ingress),
                "observer first again"
            );
        }
    }
}
