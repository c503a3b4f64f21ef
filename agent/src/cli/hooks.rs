//! `tenantflow hooks`: the hooks of ours on each interface of this network namespace: tcx
//! programs, and legacy clsact (cls_bpf) filters, ours or left by an agent killed in
//! netlink mode, and (without `--iface`) our programs on the cgroup2 root. For operators ("is
//! the agent attached here? did a crash leave anything?") and for the lifecycle tests.
//! `--remove` takes away what a dead agent left: the one path for a node whose agent was
//! killed and will not start again (e.g. after `helm uninstall`).

use aya::programs::{SchedClassifier, TcAttachType};
use clap::Args;

use crate::datapath;

#[derive(Debug, Clone, Args)]
pub struct HooksArgs {
    /// Only this interface.
    #[arg(long)]
    pub iface: Option<String>,
    /// Also list our programs on this cgroup (default: the cgroup2 root the agent uses).
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<std::path::PathBuf>,
    /// Remove the clsact filters a killed agent left (and the clsact qdiscs they emptied),
    /// then list what remains. Refused while an agent runs: its hooks are no leftovers.
    /// tcx links and cgroup links die with their agent and need no removal.
    #[arg(long)]
    pub remove: bool,
}

pub fn run(args: HooksArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let links = rt.block_on(datapath::list_links())?;
    if args.remove {
        // Held while removing: no agent can start and attach meanwhile.
        let _lock = datapath::lock_agent().map_err(|e| {
            anyhow::anyhow!(
                "hooks --remove: {e}; stop that agent first (its hooks are in use, not left over)"
            )
        })?;
        let mut emptied = Vec::new();
        for link in links
            .iter()
            .filter(|l| args.iface.as_ref().is_none_or(|i| *i == l.name))
        {
            if datapath::remove_stale_filters(&link.name) {
                emptied.push(link.index);
            }
        }
        rt.block_on(datapath::remove_clsact(&emptied));
        eprintln!(
            "removed the filters of a dead agent from {} interfaces",
            emptied.len()
        );
    }
    let netlink = rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().ok()?;
        tokio::spawn(conn);
        Some(handle)
    });
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
        let Some(handle) = &netlink else { continue };
        // Interfaces without a clsact qdisc answer with an error: nothing there.
        let filters = rt
            .block_on(datapath::legacy_filters(handle, link.index))
            .unwrap_or_default();
        for f in filters {
            let id = f.prog_id.map_or("?".into(), |i| i.to_string());
            println!("{}\tclsact/{}\t{}\t{id}", link.name, f.hook, f.program);
        }
    }
    if args.iface.is_none() {
        let root = args.cgroup.clone().or_else(crate::process::default_root);
        for (hook, name, id) in root
            .as_deref()
            .and_then(|r| datapath::cgroup_hooks::list(r).ok())
            .unwrap_or_default()
        {
            let root = root
                .as_deref()
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            println!("cgroup:{root}\tcgroup/{hook}\t{name}\t{id}");
        }
    }
    Ok(())
}
