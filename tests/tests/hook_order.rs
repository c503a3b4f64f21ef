//! Observers stay first beside a datapath whose TC programs end the chain (Cilium's return
//! TC_ACT_OK / TC_ACT_REDIRECT, so nothing after them runs): the lab's chain-ender sits on
//! every node-1 hook, placed before the agent starts or after it (a Cilium restart), with
//! tcx and as a legacy clsact filter at priority 1. Counts at the pod side stay exact.
//! Each test runs on kubenet (`veth*`, a bridge) and on the Cilium model (`lxc*`, no
//! bridge, routed), where the lab's own Cilium-like programs are taken off node 1 first so
//! each test places the variant it is about (tcx or legacy, before or after the agent).

use std::time::Duration;

use serde_json::Value;
use tenantflow_tests::{
    agent::wait_flow, eventually, in_ns, lab_agent, lab_model, udp_from_pod, Agent, LabGuard, Model,
};
use xtask::lab::chain_end::{self, Placement};

/// Every node-1 interface the agent observes: the pod veths and the uplink.
fn node1_ifaces(lab: &LabGuard) -> Vec<String> {
    let mut v: Vec<String> = lab
        .topo
        .pods
        .iter()
        .filter(|p| p.node == 1)
        .map(|p| p.host_iface())
        .collect();
    v.push("eth0".into());
    v
}

/// Hooks on node 1 (interfaces × two directions).
fn hooks(lab: &LabGuard) -> f64 {
    (node1_ifaces(lab).len() * 2) as f64
}

fn place(lab: &LabGuard, at: Placement) {
    let ns = lab.topo.node_ns(1);
    for iface in node1_ifaces(lab) {
        for ingress in [true, false] {
            chain_end::attach(&lab.topo.prefix, &ns, &iface, ingress, at)
                .unwrap_or_else(|e| panic!("chain-ender on {iface}: {e:#}"));
        }
    }
}

fn remove(lab: &LabGuard, at: Placement) {
    let ns = lab.topo.node_ns(1);
    for iface in node1_ifaces(lab) {
        for ingress in [true, false] {
            chain_end::detach(&lab.topo.prefix, &ns, &iface, ingress, at)
                .unwrap_or_else(|e| panic!("removing chain-ender on {iface}: {e:#}"));
        }
    }
}

/// A lab of `model` with nothing on node 1's hooks yet: the Cilium model's own tcx
/// programs (first, ending the chain) are taken off node 1, so each test places what it
/// tests.
fn bare_lab(tag: &str, model: Model) -> LabGuard {
    let lab = lab_model(tag, model);
    if model == Model::Cilium {
        remove(&lab, Placement::TcxFirst);
    }
    lab
}

/// `name` on kubenet and on the Cilium model.
macro_rules! kubenet_and_cilium {
    ($name:ident) => {
        mod $name {
            #[test]
            fn kubenet() {
                super::$name(tenantflow_tests::Model::Kubenet)
            }
            #[test]
            fn cilium() {
                super::$name(tenantflow_tests::Model::Cilium)
            }
        }
    };
}

fn udp_to(dst: String, dport: u16, src: String, sport: u16) -> impl Fn(&Value) -> bool {
    move |f| {
        f["proto"] == "udp"
            && f["src"] == src.as_str()
            && f["src_port"] == sport
            && f["dst"] == dst.as_str()
            && f["dst_port"] == dport
    }
}

/// Five datagrams web-1 → web-2 (cross node) and five api-1 → web-1 (same node), from
/// source ports unique to `round`: each hook they cross must have counted them exactly.
fn exact_round(lab: &LabGuard, agent: &Agent, round: u16) {
    let t = &lab.topo;
    let (web1, web2, api1) = (t.pod("web-1"), t.pod("web-2"), t.pod("api-1"));
    let sport = 4000 + round;
    let to_web2 = format!("{}:5000", web2.ip());
    let sent = udp_from_pod(lab, "web-1", sport, &t.pod_ns(web2), &to_web2, 5, 100);
    let cross = udp_to(web2.ip(), 5000, web1.ip(), sport);
    for (iface, hook) in [(web1.host_iface(), "ingress"), ("eth0".into(), "egress")] {
        assert_eq!(
            wait_flow(agent, &iface, hook, &cross, sent),
            sent,
            "round {round}: web-1 → web-2 at {iface}/{hook}"
        );
    }
    let to_web1 = format!("{}:5001", web1.ip());
    let sent = udp_from_pod(lab, "api-1", sport, &t.pod_ns(web1), &to_web1, 5, 100);
    let local = udp_to(web1.ip(), 5001, api1.ip(), sport);
    for (iface, hook) in [
        (api1.host_iface(), "ingress"),
        (web1.host_iface(), "egress"),
    ] {
        assert_eq!(
            wait_flow(agent, &iface, hook, &local, sent),
            sent,
            "round {round}: api-1 → web-1 at {iface}/{hook}"
        );
    }
}

fn moves(agent: &Agent, reason: &str) -> f64 {
    ["ingress", "egress"]
        .iter()
        .map(|d| {
            agent
                .metric(&format!(
                    "tenantflow_hook_moves_total{{direction=\"{d}\",reason=\"{reason}\"}}"
                ))
                .expect("hook moves exported")
        })
        .sum()
}

fn not_first(agent: &Agent) -> f64 {
    agent
        .metric("tenantflow_hooks_not_first")
        .expect("tenantflow_hooks_not_first exported")
}

/// Wait until the agent has put back `want` hooks for `reason`, then check it is exact.
fn wait_moves(agent: &Agent, reason: &str, want: f64) {
    eventually(Duration::from_secs(5), || {
        (moves(agent, reason) >= want).then_some(())
    });
    assert_eq!(moves(agent, reason), want, "hooks put back ({reason})");
    assert_eq!(not_first(agent), 0.0, "every observer first again");
}

kubenet_and_cilium!(tcx_first_although_a_chain_ender_was_there_before);
fn tcx_first_although_a_chain_ender_was_there_before(model: Model) {
    let lab = bare_lab("ho1", model);
    place(&lab, Placement::TcxFirst);
    let agent = lab_agent(&lab, 1, &["--attach-mode", "tcx"]);
    exact_round(&lab, &agent, 1);
    assert_eq!(moves(&agent, "displaced"), 0.0);
    assert_eq!(not_first(&agent), 0.0);
}

kubenet_and_cilium!(
    tcx_moves_back_first_after_a_chain_ender_goes_ahead_and_again_after_it_reattaches
);
fn tcx_moves_back_first_after_a_chain_ender_goes_ahead_and_again_after_it_reattaches(model: Model) {
    let lab = bare_lab("ho2", model);
    let agent = lab_agent(
        &lab,
        1,
        &["--attach-mode", "tcx", "--hook-check-interval", "200ms"],
    );
    exact_round(&lab, &agent, 1);
    place(&lab, Placement::TcxFirst);
    wait_moves(&agent, "displaced", hooks(&lab));
    exact_round(&lab, &agent, 2);
    // A Cilium restart: its links go and come back ahead of everything.
    remove(&lab, Placement::TcxFirst);
    place(&lab, Placement::TcxFirst);
    wait_moves(&agent, "displaced", 2.0 * hooks(&lab));
    exact_round(&lab, &agent, 3);
    // A program placed last is behind the observer: nothing to move.
    remove(&lab, Placement::TcxFirst);
    place(&lab, Placement::TcxLast);
    // Three hook checks' worth: harvests and hook checks both run every 200 ms here.
    agent.wait_harvests(3);
    assert_eq!(moves(&agent, "displaced"), 2.0 * hooks(&lab));
    exact_round(&lab, &agent, 4);
}

kubenet_and_cilium!(clsact_first_although_a_prio_1_chain_ender_was_there_before);
fn clsact_first_although_a_prio_1_chain_ender_was_there_before(model: Model) {
    let lab = bare_lab("ho3", model);
    place(&lab, Placement::Legacy);
    let agent = lab_agent(&lab, 1, &["--attach-mode", "netlink"]);
    exact_round(&lab, &agent, 1);
    assert_eq!(moves(&agent, "displaced"), 0.0);
    assert_eq!(not_first(&agent), 0.0);
}

kubenet_and_cilium!(clsact_moves_back_first_and_reattaches_a_removed_filter);
fn clsact_moves_back_first_and_reattaches_a_removed_filter(model: Model) {
    let lab = bare_lab("ho4", model);
    let agent = lab_agent(
        &lab,
        1,
        &["--attach-mode", "netlink", "--hook-check-interval", "200ms"],
    );
    exact_round(&lab, &agent, 1);
    place(&lab, Placement::Legacy);
    wait_moves(&agent, "displaced", hooks(&lab));
    exact_round(&lab, &agent, 2);
    // Someone deletes every priority-1 filter on web-1's veth, ours included.
    let veth = lab.topo.pod("web-1").host_iface();
    in_ns(
        &lab.topo.node_ns(1),
        &["tc", "filter", "del", "dev", &veth, "ingress", "pref", "1"],
    );
    wait_moves(&agent, "removed", 1.0);
    exact_round(&lab, &agent, 3);
    assert!(
        agent.log_text().contains("observer put back first"),
        "the move is logged:\n{}",
        agent.log_text()
    );
}

kubenet_and_cilium!(a_netlink_observer_behind_a_tcx_program_says_so);
fn a_netlink_observer_behind_a_tcx_program_says_so(model: Model) {
    let lab = bare_lab("ho5", model);
    place(&lab, Placement::TcxFirst);
    let agent = lab_agent(
        &lab,
        1,
        &["--attach-mode", "netlink", "--hook-check-interval", "200ms"],
    );
    eventually(Duration::from_secs(5), || {
        (not_first(&agent) == hooks(&lab)).then_some(())
    });
    assert_eq!(not_first(&agent), hooks(&lab));
    assert_eq!(moves(&agent, "displaced"), 0.0);
    // The chain-ender really ends the chain: behind it the observers see nothing at all.
    let t = &lab.topo;
    let to_web2 = format!("{}:5000", t.pod("web-2").ip());
    udp_from_pod(
        &lab,
        "web-1",
        4000,
        &t.pod_ns(t.pod("web-2")),
        &to_web2,
        5,
        100,
    );
    // Five harvests later, anything an observer had seen would be in the table.
    agent.wait_harvests(5);
    assert_eq!(
        agent.observations("").len(),
        0,
        "nothing observed behind the chain-ender"
    );
    let log = agent.log_text();
    assert_eq!(
        log.matches("use --attach-mode tcx").count() as f64,
        hooks(&lab),
        "said once per hook:\n{log}"
    );
}
