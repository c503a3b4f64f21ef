//! Our legacy cls_bpf filters on an interface, as the kernel lists them: an agent killed in
//! netlink (clsact) mode leaves them behind, whatever mode the next one runs in, so they
//! are found by program name to be shown (`tenantflow hooks`) and removed.

use futures::TryStreamExt as _;
use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption};

use super::load::{PROG_EGRESS, PROG_INGRESS, PROG_NOOP};

/// One filter of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyFilter {
    pub hook: &'static str,
    pub program: String,
    pub prog_id: Option<u32>,
}

/// Is this program name one of our observers (or the benchmark's no-op)?
pub fn is_ours(name: &str) -> bool {
    // The kernel may report `name:[id]` for a filter added by fd.
    let base = name.split(':').next().unwrap_or(name);
    [PROG_INGRESS, PROG_EGRESS, PROG_NOOP].contains(&base)
}

/// The filter messages on one clsact hook of interface `index`, in dump order (per
/// priority a header message with handle 0, then its filters). The one dump every reader
/// of legacy hooks uses: the chain order, the filters left, ours.
pub async fn dump(
    handle: &rtnetlink::Handle,
    index: u32,
    ingress: bool,
) -> Result<Vec<TcMessage>, rtnetlink::Error> {
    let get = handle.traffic_filter(index as i32).get();
    let get = if ingress { get.ingress() } else { get.egress() };
    get.execute().try_collect().await
}

/// The first cls_bpf option of filter `m` that `pick` takes.
pub fn bpf_option<T>(m: &TcMessage, pick: impl Fn(&TcFilterBpfOption) -> Option<T>) -> Option<T> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Bpf(b) => pick(b),
            _ => None,
        }),
        _ => None,
    })
}

/// Our cls_bpf filters on interface `index`, both directions.
pub async fn filters(
    handle: &rtnetlink::Handle,
    index: u32,
) -> Result<Vec<LegacyFilter>, rtnetlink::Error> {
    let mut out = Vec::new();
    for (hook, ingress) in [("ingress", true), ("egress", false)] {
        for m in dump(handle, index, ingress).await? {
            let program = bpf_option(&m, |o| match o {
                TcFilterBpfOption::ProgName(n) => Some(n.clone()),
                _ => None,
            });
            let prog_id = bpf_option(&m, |o| match o {
                TcFilterBpfOption::ProgId(id) => Some(*id),
                _ => None,
            });
            if let Some(program) = program.filter(|p| is_ours(p)) {
                out.push(LegacyFilter {
                    hook,
                    program,
                    prog_id,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_programs_are_known_by_name_with_or_without_an_id() {
        assert!(is_ours(PROG_INGRESS));
        assert!(is_ours(&format!("{PROG_EGRESS}:[42]")));
        assert!(!is_ours("cil_from_container"));
        assert!(!is_ours(""));
    }
}
