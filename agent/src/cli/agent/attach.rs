//! The agent's kernel side at start-up and while running: load, attach to the interfaces
//! present and to those that come, the cgroup hooks, and one way to detach on failure.

use futures::StreamExt;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{info, warn};

use super::AgentArgs;
use crate::cli::UsageError;
use crate::{
    datapath::{
        self, AttachMode, Attachments, DatapathError, Harvester, KernelClock, Link, LinkEvent,
        Programs, Selector,
    },
    export::Shared,
    nat::socket_lb::SocketLb,
    nat::{self},
    process::{self, Attribution},
};

/// The kernel side, loaded and attached to the interfaces present at start.
pub(super) struct Datapath {
    /// Declared before `harvester`, so dropped before it (fields drop in order): its fd
    /// is the harvester's DNS ring's. (The eviction ring has a thread of its own.)
    pub(super) dns: AsyncFd<datapath::RingFd>,
    pub(super) harvester: Harvester,
    pub(super) loaded: datapath::Loaded,
    pub(super) mode: AttachMode,
    pub(super) selector: Selector,
    pub(super) attachments: Attachments,
    pub(super) events: futures::stream::BoxStream<'static, LinkEvent>,
}

/// Load the programs, start the kernel clock and the harvester, then attach to the
/// interfaces present now. Everything that can fail without touching interfaces fails
/// first; a failed attach detaches what it attached.
pub(super) async fn start_datapath(args: &AgentArgs) -> anyhow::Result<Datapath> {
    let programs = if args.bench_noop {
        Programs::Noop
    } else {
        Programs::Observers
    };
    let mut loaded = datapath::load(programs, args.idle_timeout, args.flow_cache_sets)?;
    KernelClock::start(&mut loaded.ebpf)?.spawn();
    let harvester = Harvester::new(&mut loaded.ebpf)?;
    // SAFETY: the fd belongs to the harvester's DNS ring buffer, which outlives this
    // AsyncFd (see `Datapath`) and never closes or replaces it.
    let dns = unsafe { AsyncFd::register_with_interest(harvester.dns_fd(), Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the DNS ring: {e}"))?;
    let mode = args.attach_mode.resolve(loaded.tcx_available);
    if mode == AttachMode::Tcx && !loaded.tcx_available {
        return Err(UsageError(
            "--attach-mode tcx needs kernel 6.6 or later: use --attach-mode auto".into(),
        )
        .into());
    }
    let uplinks = resolve_uplinks(&args.uplinks).await?;
    let selector = Selector::new(uplinks, &args.pod_patterns)
        .map_err(|e| UsageError(format!("--pod-iface: invalid glob ({e})")))?;
    info!(uplinks = ?selector.uplinks(), ?mode, "starting");
    let (initial, events) = datapath::watch_links().await?;
    let attachments = Attachments::new(&mut loaded.ebpf, mode, programs, loaded.tcx_available)?;
    let mut dp = Datapath {
        dns,
        harvester,
        loaded,
        mode,
        selector,
        attachments,
        events: events.boxed(),
    };
    let attached = attach_initial(
        &mut dp.loaded.ebpf,
        &mut dp.attachments,
        &dp.selector,
        &initial,
    );
    undo_on_err(attached.map_err(anyhow::Error::from), &mut dp).await?;
    Ok(dp)
}

/// Detach from every interface and remove the clsact qdiscs we added.
pub(super) async fn detach(dp: &mut Datapath) {
    let qdiscs = dp.attachments.detach_all(&mut dp.loaded.ebpf);
    datapath::remove_clsact(&qdiscs).await;
}

/// `r`, after detaching everything if it is an error: a start-up step that fails once
/// interfaces are attached must not leave them attached.
pub(super) async fn undo_on_err<T>(r: anyhow::Result<T>, dp: &mut Datapath) -> anyhow::Result<T> {
    if r.is_err() {
        detach(dp).await;
    }
    r
}

pub(super) fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Tcx => "tcx",
        AttachMode::Netlink => "netlink",
        AttachMode::Auto => "auto",
    }
}

pub(super) async fn resolve_uplinks(given: &[String]) -> anyhow::Result<Vec<String>> {
    let links = datapath::list_links().await?;
    for name in given {
        if !links.iter().any(|l| l.name == *name) {
            return Err(DatapathError::UnknownInterface { name: name.clone() }.into());
        }
    }
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let found = datapath::default_route_interfaces().await?;
    if found.is_empty() {
        return Err(DatapathError::NoUplink.into());
    }
    Ok(found)
}

pub(super) fn attach_initial(
    ebpf: &mut aya::Ebpf,
    attachments: &mut Attachments,
    selector: &Selector,
    links: &[Link],
) -> Result<(), DatapathError> {
    for link in links {
        if let Some(role) = selector.role(link) {
            attachments.attach(ebpf, link.index, &link.name, role)?;
        }
    }
    Ok(())
}

pub(super) fn on_link_event(
    ebpf: &mut aya::Ebpf,
    attachments: &mut Attachments,
    selector: &Selector,
    ev: LinkEvent,
) {
    match ev {
        LinkEvent::Up(link) => {
            if let Some(role) = selector.role(&link) {
                // A veth can vanish between the event and the attach (pod churn): not fatal.
                if let Err(e) = attachments.attach(ebpf, link.index, &link.name, role) {
                    warn!(iface = link.name, error = %e, "could not attach");
                }
            }
        }
        LinkEvent::Removed { index } => {
            attachments.forget(ebpf, index);
        }
    }
}

/// A filter dump needs rtnetlink; in tcx mode the chains come from a bpf syscall.
pub(super) fn rtnetlink_handle(mode: AttachMode) -> Option<rtnetlink::Handle> {
    if mode != AttachMode::Netlink {
        return None;
    }
    match rtnetlink::new_connection() {
        Ok((conn, handle, _)) => {
            tokio::spawn(conn);
            Some(handle)
        }
        Err(e) => {
            warn!(error = %e, "rtnetlink unavailable: filter positions are not checked");
            None
        }
    }
}

pub(super) fn publish_positions(shared: &Shared, positions: &datapath::Positions) {
    for (_, direction, why) in &positions.moved {
        shared
            .metrics
            .hook_moves
            .with_label_values(&[direction, why.as_str()])
            .inc();
    }
    shared
        .metrics
        .hooks_not_first
        .set(positions.not_first as i64);
}

pub(super) fn publish_attachments(shared: &Shared, attachments: &Attachments) {
    let pods = attachments
        .iter()
        .filter(|(_, a)| a.role == datapath::Role::Pod)
        .count();
    let m = &shared.metrics.attached_interfaces;
    m.with_label_values(&["pod"]).set(pods as i64);
    m.with_label_values(&["uplink"])
        .set((attachments.len() - pods) as i64);
}

/// The Service-intent hooks on the pods' cgroup: a cgroup given with --pods-cgroup must
/// work; an auto-detected one that does not (or none) only leaves socket-LB Services
/// unjoined.
pub(super) fn attach_socket_lb(
    ebpf: &mut aya::Ebpf,
    args: &AgentArgs,
) -> anyhow::Result<Option<SocketLb>> {
    if args.bench_noop {
        if let Some(d) = &args.pods_cgroup {
            nat::socket_lb::attach_floor(ebpf, d)
                .map_err(|e| UsageError(format!("--pods-cgroup: {e}")))?;
        }
        return Ok(None);
    }
    let (dir, explicit) = match &args.pods_cgroup {
        Some(d) => (d.clone(), true),
        None => {
            let root = args.cgroup_root.clone().or_else(process::default_root);
            match root
                .as_deref()
                .and_then(nat::socket_lb::default_pods_cgroup)
            {
                Some(d) => (d, false),
                None => {
                    info!("no kubepods cgroup: Services behind socket-LB will show their backend only");
                    return Ok(None);
                }
            }
        }
    };
    match nat::socket_lb::attach(ebpf, &dir) {
        Ok(s) => {
            info!(pods_cgroup = %dir.display(), "Service-intent hooks on");
            Ok(Some(s))
        }
        Err(e) if explicit => Err(UsageError(format!("--pods-cgroup: {e}")).into()),
        Err(e) => {
            warn!(error = %e, "Service-intent hooks off: Services behind socket-LB will show their backend only");
            Ok(None)
        }
    }
}

/// Process attribution: the cgroup hooks on the cgroup2 root. A root given on the command
/// line must work; an auto-detected one that does not only turns the feature off.
pub(super) fn attach_processes(
    ebpf: &mut aya::Ebpf,
    args: &AgentArgs,
) -> anyhow::Result<Option<Attribution>> {
    if args.no_process_attribution || args.bench_noop {
        return Ok(None);
    }
    let (root, explicit) = match &args.cgroup_root {
        Some(r) => (r.clone(), true),
        None => match process::default_root() {
            Some(r) => (r, false),
            None => {
                warn!("no cgroup v2 mount: node-originated flows will carry no process");
                return Ok(None);
            }
        },
    };
    match process::attach(ebpf, &root).and_then(|()| Attribution::new(ebpf, root.clone())) {
        Ok(a) => {
            info!(cgroup_root = %root.display(), "process attribution on");
            Ok(Some(a))
        }
        Err(e) if explicit => Err(UsageError(format!("--cgroup-root: {e}")).into()),
        Err(e) => {
            warn!(error = %e, "process attribution off");
            Ok(None)
        }
    }
}
