//! Our legacy cls_bpf filters on an interface, as the kernel lists them: an agent killed in
//! netlink (clsact) mode leaves them behind, whatever mode the next one runs in, so they
//! are found by program name to be shown (`tenantflow hooks`) and removed.

use futures::TryStreamExt as _;
use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};

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

/// Our cls_bpf filters on interface `index`, both directions.
pub async fn filters(
    handle: &rtnetlink::Handle,
    index: u32,
) -> Result<Vec<LegacyFilter>, rtnetlink::Error> {
    let mut out = Vec::new();
    for hook in ["ingress", "egress"] {
        let get = handle.traffic_filter(index as i32).get();
        let get = if hook == "ingress" {
            get.ingress()
        } else {
            get.egress()
        };
        let msgs: Vec<_> = get.execute().try_collect().await?;
        for m in msgs {
            let mut program = None;
            let mut prog_id = None;
            for a in &m.attributes {
                if let TcAttribute::Options(opts) = a {
                    for o in opts {
                        match o {
                            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => {
                                program = Some(n.clone())
                            }
                            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => prog_id = Some(*id),
                            _ => {}
                        }
                    }
                }
            }
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
