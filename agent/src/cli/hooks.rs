//! `tenantflow hooks`: which tcx programs sit on each interface of this network namespace.
//! For operators ("is the agent attached here?") and for the lifecycle tests.

use aya::programs::{SchedClassifier, TcAttachType};
use clap::Args;

use crate::datapath;

#[derive(Debug, Clone, Args)]
pub struct HooksArgs {
    /// Only this interface.
    #[arg(long)]
    pub iface: Option<String>,
}

pub fn run(args: HooksArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let links = rt.block_on(datapath::list_links())?;
    println!("IFACE\tHOOK\tPROGRAM\tID");
    for link in links
        .iter()
        .filter(|l| args.iface.as_ref().is_none_or(|i| *i == l.name))
    {
        for (hook, at) in [
            ("ingress", TcAttachType::Ingress),
            ("egress", TcAttachType::Egress),
        ] {
            // EINVAL/ENOTSUP on kernels without tcx: nothing to list there.
            let Ok((_, progs)) = SchedClassifier::query_tcx(&link.name, at) else {
                continue;
            };
            for p in progs {
                let name = p.name_as_str().unwrap_or("?");
                println!("{}\t{hook}\t{name}\t{}", link.name, p.id());
            }
        }
    }
    Ok(())
}
