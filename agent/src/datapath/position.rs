//! Where the observers sit in each hook's program chain.
//!
//! An observer only sees a packet if every program before it passed the packet on. Cilium's
//! programs on `lxc*` and the uplink end the chain (TC_ACT_OK / TC_ACT_REDIRECT), and Cilium
//! re-attaches them on every restart, so being first once is not enough: the agent reads the
//! chain of every hook it owns and moves itself back when someone went ahead of it.
//!
//! - tcx (>= 6.6): `BPF_PROG_QUERY` lists the programs in run order.
//! - legacy clsact: a filter dump lists filters by priority, and within one priority in the
//!   order cls_bpf runs them (newest first).
//!
//! On a kernel with tcx, legacy filters run only after every tcx program passed the packet
//! on, so in netlink mode a tcx program on the hook puts the observer behind it for good.

use std::io;

use rtnetlink::packet_route::tc::{TcFilterBpfOption, TcMessage};

const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// More programs than any datapath stacks on one hook; a longer chain is reported as such.
const MAX_CHAIN: usize = 64;

/// Program ids on a tcx hook, in run order (empty when none is attached).
pub fn tcx_chain(ifindex: u32, ingress: bool) -> io::Result<Vec<u32>> {
    let attach_type = if ingress {
        BPF_TCX_INGRESS
    } else {
        BPF_TCX_EGRESS
    };
    super::sys_bpf::prog_query(ifindex, attach_type, MAX_CHAIN)
}

/// Program ids of the cls_bpf filters on a clsact hook, in run order. Filters of other
/// kinds (u32, flower...) are reported as id 0: they are ahead of us all the same.
pub async fn legacy_chain(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ingress: bool,
) -> Result<Vec<u32>, rtnetlink::Error> {
    let msgs = super::legacy::dump(handle, ifindex, ingress).await?;
    Ok(order_filters(&msgs))
}

/// Filters in run order: lower priority value first, then dump order (which, for cls_bpf,
/// is its run list). The per-priority header messages (handle 0) carry no filter.
fn order_filters(msgs: &[TcMessage]) -> Vec<u32> {
    let mut filters: Vec<(u16, usize, u32)> = msgs
        .iter()
        .enumerate()
        .filter(|(_, m)| u32::from(m.header.handle) != 0)
        .map(|(i, m)| ((m.header.info >> 16) as u16, i, prog_id(m)))
        .collect();
    filters.sort_by_key(|&(prio, i, _)| (prio, i));
    filters.into_iter().map(|(_, _, id)| id).collect()
}

fn prog_id(m: &TcMessage) -> u32 {
    super::legacy::bpf_option(m, |o| match o {
        TcFilterBpfOption::ProgId(id) => Some(*id),
        _ => None,
    })
    .unwrap_or(0)
}

/// The id the kernel gave a loaded program (what the chains above list).
pub fn program_id(prog: &aya::programs::SchedClassifier) -> io::Result<u32> {
    prog.info()
        .map(|i| i.id())
        .map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpf, TcHandle, TcOption};

    fn filter(prio: u16, handle: u32, id: Option<u32>) -> TcMessage {
        let mut m = TcMessage::default();
        m.header.info = (u32::from(prio) << 16) | 0x0300;
        m.header.handle = TcHandle::from(handle);
        m.attributes
            .push(TcAttribute::Kind(TcFilterBpf::KIND.into()));
        if let Some(id) = id {
            m.attributes.push(TcAttribute::Options(vec![TcOption::Bpf(
                TcFilterBpfOption::ProgId(id),
            )]));
        }
        m
    }

    #[test]
    fn filters_run_by_priority_then_dump_order() {
        let msgs = [
            filter(49152, 0, None),
            filter(49152, 1, Some(30)),
            filter(1, 0, None),
            filter(1, 0x8000_0001, Some(10)),
            filter(1, 1, Some(20)),
        ];
        assert_eq!(order_filters(&msgs), vec![10, 20, 30]);
    }

    #[test]
    fn a_filter_of_another_kind_counts_as_ahead() {
        let msgs = [filter(1, 5, None), filter(2, 1, Some(7))];
        assert_eq!(order_filters(&msgs), vec![0, 7]);
    }
}
