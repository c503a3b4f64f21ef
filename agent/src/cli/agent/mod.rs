//! `tenantflow agent`: the long-running observer.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::StreamExt;
use tracing::info;

mod args;
mod attach;
mod bounds;
mod otlp_args;
mod outputs;
mod sources;

use attach::{
    attach_processes, attach_socket_lb, detach, mode_name, on_link_event, publish_attachments,
    publish_positions, rtnetlink_handle, start_datapath, undo_on_err, Datapath,
};
use outputs::{access, bind, open_flow_log, sinks, start_otlp};
use sources::{identity_sources, load_identity, node_name, probe_nat, spawn_watches};

pub use args::{AgentArgs, AuthMode};

use super::UsageError;
use crate::{
    datapath::{self, Attachments, Harvester},
    export::{self, AgentMetrics, Shared},
    identity::SharedStore,
    inventory::{self, Inventory},
    nat::{self},
    pipeline::{gateway_label_keys, Pipeline},
    shutdown::Shutdown,
};

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    super::block_on(run_async(args))
}

/// Start-up in phases, each failing before the next touches anything; once interfaces are
/// attached, every failure (and the end) detaches through [`detach`].
async fn run_async(args: AgentArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::install().context("installing SIGTERM/SIGINT handlers")?;
    bounds::check(&args)?;
    let node = node_name(&args);
    let otlp = args
        .otlp
        .config(&node, args.flow_log_update_interval)?
        .map(export::otlp::prepare)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let access = access(&args).await?;
    // Before anything is attached or removed: a second agent must not touch the first's hooks.
    let _lock = datapath::lock_agent().map_err(|e| UsageError(e.to_string()))?;
    let (listener, records_listener) = bind(&args).await?;
    let config = super::load_config(args.config.as_deref())?;
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let (mut store, source, kube_client) =
        load_identity(&config, &args.identity_index, reload_tx).await?;
    if source != "snapshot" {
        store.keep_uids_of(&node);
    }
    let identity = SharedStore::new(store);
    let gateway_labels = gateway_label_keys(&config);
    let inventory = Inventory {
        store: identity.clone(),
        source,
        tenancy: config.tenancy.clone(),
        pod_label_keys: gateway_labels.clone(),
        journal: None,
        sources: identity_sources(source, kube_client.is_some()),
    };
    let flow_log = open_flow_log(&args)?;
    let mut dp = start_datapath(&args).await?;

    let (nat_tx, mut nat_rx) = tokio::sync::mpsc::unbounded_channel();
    let mechanism = probe_nat(&args, nat_tx);
    let shared = Arc::new(Shared::new(AgentMetrics::new(
        mode_name(dp.mode),
        mechanism.as_str(),
    )));
    shared
        .metrics
        .flow_map_capacity
        .set(dp.harvester.capacity() as i64);
    let processes = undo_on_err(attach_processes(&mut dp.loaded.ebpf, &args), &mut dp).await?;
    shared
        .metrics
        .process_attribution
        .set(i64::from(processes.is_some()));
    let mut socket_lb = undo_on_err(attach_socket_lb(&mut dp.loaded.ebpf, &args), &mut dp).await?;
    publish_attachments(&shared, &dp.attachments);
    let server = tokio::spawn(export::serve(listener, shared.clone(), access.metrics));
    let records_server = tokio::spawn(export::serve_records(
        records_listener,
        shared.clone(),
        access.records,
    ));
    let cert_watch = access.cert.map(|cert| {
        let reloads = shared.metrics.tls_reloads.clone();
        tokio::spawn(cert.watch(args.tls_reload_interval, reloads))
    });
    info!(listen = %args.listen, flows_listen = %args.flows_listen, interfaces = dp.attachments.len(), "ready");

    let (otlp, otlp_sender) = undo_on_err(start_otlp(otlp, &shared), &mut dp).await?;
    let (sinks, edges) = undo_on_err(sinks(&args, &shared, flow_log, otlp), &mut dp).await?;
    let otlp_task = otlp_sender.map(|s| (s.closer(), tokio::spawn(s.run())));
    let mut pipeline = Pipeline::new(
        mechanism,
        args.idle_timeout,
        config,
        identity,
        sinks,
        processes,
        edges,
    );
    pipeline.set_dns_limits(crate::dns::NamesLimits {
        max_entries: args.dns_max_names,
        grace: args.dns_name_grace,
    });
    let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(inventory::QUEUE);
    spawn_watches(
        &args,
        source,
        kube_client,
        &node,
        gateway_labels,
        &shared,
        watch_tx,
    );
    let identity_task = tokio::spawn(inventory.run(watch_rx, reload_rx, shared.clone()));
    shared.set_stall_limit(stall_limit(args.harvest_interval));
    shared.mark_harvest();
    let outcome = observe(
        &args,
        shutdown,
        &mut dp,
        &mut pipeline,
        &mut nat_rx,
        &mut socket_lb,
        &shared,
    )
    .await;
    identity_task.abort();
    shared.set_ready(false);
    pipeline.shutdown(&dp.attachments, &shared);
    // The pipeline's end closes the OTLP queue; the sender sends what is left in time.
    drop(pipeline);
    if let Some((closer, task)) = otlp_task {
        closer.cancel();
        let _ = tokio::time::timeout(args.otlp.otlp_shutdown_timeout * 2, task).await;
    }
    server.abort();
    records_server.abort();
    if let Some(w) = cert_watch {
        w.abort();
    }
    detach(&mut dp).await;
    info!("detached from all interfaces");
    outcome
}

/// How often freed heap goes back to the system (`crate::memory`).
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// How often eviction records are added to their connections between harvests
/// ([`Pipeline::fold_evictions`]): at most this long's records wait in memory, whatever
/// the harvest interval.
const FOLD_INTERVAL: Duration = Duration::from_millis(250);

/// A harvest this overdue means the loop is stuck: ten intervals, at least 10 s (well inside
/// the chart's liveness probe: three failures 20 s apart).
fn stall_limit(harvest: Duration) -> Duration {
    (harvest * 10).max(Duration::from_secs(10))
}

/// The agent's life after start-up: harvest on every tick, follow links, NAT events and the
/// eviction ring, keep the hooks first, until a signal (Ok) or a lost event source (Err).
async fn observe(
    args: &AgentArgs,
    mut shutdown: Shutdown,
    dp: &mut Datapath,
    pipeline: &mut Pipeline,
    nat_rx: &mut tokio::sync::mpsc::UnboundedReceiver<nat::NatEvent>,
    socket_lb: &mut Option<nat::socket_lb::SocketLb>,
    shared: &Shared,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(args.harvest_interval);
    // A slow harvest must not be followed by a burst of catch-up harvests: the join
    // window is counted in harvests, and a burst would close it before events are read.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hook_check = tokio::time::interval(args.hook_check_interval);
    hook_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut trim = tokio::time::interval(TRIM_INTERVAL);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fold = tokio::time::interval(FOLD_INTERVAL);
    fold.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let nl = rtnetlink_handle(dp.mode);
    let signal = shutdown.signalled();
    tokio::pin!(signal);
    let Datapath {
        loaded,
        harvester,
        dns,
        attachments,
        selector,
        events,
        ..
    } = dp;
    loop {
        tokio::select! {
            s = &mut signal => {
                info!(signal = s, "shutting down");
                // One last harvest while still attached: the shutdown records then carry
                // every packet counted until the signal, not only until the last tick.
                harvest_now(pipeline, harvester, attachments, nat_rx, socket_lb, shared);
                break Ok(());
            }
            ev = events.next() => match ev {
                Some(ev) => {
                    on_link_event(&mut loaded.ebpf, attachments, selector, ev);
                    publish_attachments(shared, attachments);
                }
                None => break Err(anyhow::anyhow!("rtnetlink link event stream ended")),
            },
            Some(ev) = nat_rx.recv() => pipeline.on_nat(ev, shared),
            _ = tick.tick() => {
                harvest_now(pipeline, harvester, attachments, nat_rx, socket_lb, shared);
                shared.mark_harvest();
            }
            _ = trim.tick() => crate::memory::release_free_heap(),
            _ = fold.tick() => pipeline.fold_evictions(harvester),
            _ = hook_check.tick() => {
                let positions = attachments.stay_first(&mut loaded.ebpf, nl.as_ref()).await;
                publish_positions(shared, &positions);
            }
            ready = dns.readable() => match ready {
                Ok(mut guard) => {
                    harvester.drain_dns();
                    guard.clear_ready();
                }
                Err(e) => break Err(anyhow::anyhow!("DNS ring wait failed: {e}")),
            },
        }
    }
}

/// Join the NAT mappings already queued, then harvest. Conntrack events already queued
/// belong to this harvest: joining them first is what keeps a pod's post-SNAT half from
/// being held too long.
fn harvest_now(
    pipeline: &mut Pipeline,
    harvester: &mut Harvester,
    attachments: &Attachments,
    nat_rx: &mut tokio::sync::mpsc::UnboundedReceiver<nat::NatEvent>,
    socket_lb: &mut Option<nat::socket_lb::SocketLb>,
    shared: &Shared,
) {
    while let Ok(ev) = nat_rx.try_recv() {
        pipeline.on_nat(ev, shared);
    }
    if let Some(s) = socket_lb.as_mut() {
        for e in s.drain() {
            pipeline.on_nat(nat::NatEvent::Mapped(e), shared);
        }
    }
    pipeline.harvest(harvester, attachments, shared);
}
