//! Who and what, in the lab: the agent reads the lab's kubectl-style snapshot and config
//! and flags cross-tenant traffic, unmediated, mediated and exempt egress, IMDS access, a
//! kubelet probe and a host process's egress, each on exactly one connection record.

use serde_json::{json, Value};
use tenantflow_tests::{
    agent::{counts, wait_connection},
    finish, lab, lab_agent, per_model, traffic, traffic_bg, udp_from_pod, Agent, LabGuard, Model,
};
use xtask::lab::topology::{IMDS, INTERNET_HOST, PRIVATE_ENDPOINT};

fn agent_with_lab_config(lab: &LabGuard, node: u8) -> Agent {
    lab_agent(lab, node, &[])
}

fn verdicts(c: &Value) -> Value {
    json!({
        "flow_class": c["flow_class"], "scope": c["scope"], "tenants": c["tenants"],
        "cross_tenant": c["cross_tenant"], "egress": c["egress"], "sensitive": c["sensitive"],
    })
}

fn pod_id(lab: &LabGuard, name: &str, tenant: &str) -> Value {
    let t = &lab.topo;
    let p = t.pod(name);
    json!({
        "kind": "pod", "pod": name, "namespace": p.namespace, "tenant": tenant,
        "node": t.node(p.node).name, "workload": format!("ReplicaSet/{}-rs", p.labels[0].1),
    })
}

fn conn_from(agent: &Agent, src: &str, sport: u16, dst: &str, want: (u64, u64)) -> Value {
    wait_connection(
        agent,
        |c| c["src"] == src && c["src_port"] == sport && c["dst"] == dst,
        |c| counts(c, "forward") == want,
    )
}

per_model!(
    cross_tenant_and_same_tenant_pod_traffic,
    super::cross_tenant_and_same_tenant_pod_traffic
);
fn cross_tenant_and_same_tenant_pod_traffic(model: Model) {
    let lab = tenantflow_tests::lab_model("ix", model);
    let t = &lab.topo;
    let agent = agent_with_lab_config(&lab, 1);
    let api2 = t.pod("api-2");
    let jobs = t.pod("jobs-1");

    let sent = udp_from_pod(
        &lab,
        "web-1",
        7001,
        &t.pod_ns(api2),
        &format!("{}:7000", api2.ip()),
        4,
        100,
    );
    let c = conn_from(&agent, &t.pod("web-1").ip(), 7001, &api2.ip(), sent);
    assert_eq!(counts(&c, "forward"), (4, 512));
    assert_eq!(c["src_identity"], pod_id(&lab, "web-1", "alpha"));
    assert_eq!(c["dst_identity"], pod_id(&lab, "api-2", "beta"));
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "pod_to_pod", "scope": "cross_node", "tenants": "cross",
               "cross_tenant": true, "egress": "none", "sensitive": null})
    );

    let sent = udp_from_pod(
        &lab,
        "web-1",
        7002,
        &t.pod_ns(jobs),
        &format!("{}:7000", jobs.ip()),
        3,
        50,
    );
    let c = conn_from(&agent, &t.pod("web-1").ip(), 7002, &jobs.ip(), sent);
    assert_eq!(counts(&c, "forward"), (3, 234));
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "pod_to_pod", "scope": "same_node", "tenants": "same",
               "cross_tenant": false, "egress": "none", "sensitive": null})
    );
}

#[test]
fn egress_unmediated_exempt_and_imds_keep_the_pod_identity_behind_snat() {
    let lab = lab("ie");
    let t = &lab.topo;
    let agent = agent_with_lab_config(&lab, 1);
    let jobs_ip = t.pod("jobs-1").ip();

    let sent = udp_from_pod(
        &lab,
        "jobs-1",
        7101,
        &t.internet_ns(),
        &format!("{INTERNET_HOST}:5353"),
        5,
        100,
    );
    let c = conn_from(&agent, &jobs_ip, 7101, INTERNET_HOST, sent);
    assert_eq!(counts(&c, "forward"), (5, 640));
    assert_eq!(
        c["snat"]["ip"],
        t.node(1).ip(),
        "translated to the node address"
    );
    assert_eq!(
        c["src_identity"],
        pod_id(&lab, "jobs-1", "alpha"),
        "pre-SNAT identity"
    );
    assert_eq!(c["dst_identity"], json!({"kind": "internet"}));
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "pod_to_egress", "scope": "internet", "tenants": "none",
               "cross_tenant": false, "egress": "unmediated", "sensitive": null})
    );

    let sent = udp_from_pod(
        &lab,
        "jobs-1",
        7102,
        &t.vnet_ns(),
        &format!("{PRIVATE_ENDPOINT}:443"),
        2,
        10,
    );
    let c = conn_from(&agent, &jobs_ip, 7102, PRIVATE_ENDPOINT, sent);
    assert_eq!(counts(&c, "forward"), (2, 76));
    assert_eq!(c["dst_identity"], json!({"kind": "private"}));
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "pod_to_egress", "scope": "private", "tenants": "none",
               "cross_tenant": false, "egress": "exempt", "sensitive": null})
    );

    let sent = udp_from_pod(
        &lab,
        "jobs-1",
        7103,
        &t.vnet_ns(),
        &format!("{IMDS}:80"),
        1,
        60,
    );
    let c = conn_from(&agent, &jobs_ip, 7103, IMDS, sent);
    assert_eq!(counts(&c, "forward"), (1, 88));
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "pod_to_egress", "scope": "azure_platform", "tenants": "none",
               "cross_tenant": false, "egress": "unmediated", "sensitive": "imds"})
    );
}

#[test]
fn egress_through_the_gateway_pod_is_mediated() {
    let lab = lab("ig");
    let t = &lab.topo;
    let agent = agent_with_lab_config(&lab, 1);
    let gw = t.pod("egress-gw-1");
    let jobs = t.pod("jobs-1");
    let upstream = format!("{INTERNET_HOST}:443");
    let srv = traffic_bg(&t.internet_ns(), &["tcp-serve", &upstream, "700"]);
    let relay = traffic_bg(
        &t.pod_ns(gw),
        &["relay", &format!("{}:3128", gw.ip()), &upstream],
    );
    let got = traffic(
        &t.pod_ns(jobs),
        &[
            "tcp-send",
            &format!("{}:3128", gw.ip()),
            "900",
            "--bind",
            &format!("{}:7201", jobs.ip()),
        ],
    );
    assert_eq!(
        got.trim(),
        "700",
        "the answer came back through the gateway"
    );
    finish(relay);
    assert_eq!(finish(srv).trim(), "900");

    let leg1 = wait_connection(
        &agent,
        |c| c["src"] == jobs.ip() && c["src_port"] == 7201,
        |c| c["reply"]["packets"].as_u64() > Some(0),
    );
    assert_eq!(leg1["dst_identity"]["mediator"], true);
    assert_eq!(
        leg1["dst_identity"]["tenant"], "platform",
        "egress-system is mapped to platform"
    );
    assert_eq!(
        verdicts(&leg1),
        json!({"flow_class": "pod_to_pod", "scope": "same_node", "tenants": "platform",
               "cross_tenant": false, "egress": "none", "sensitive": null})
    );
    let leg2 = wait_connection(
        &agent,
        |c| c["src"] == gw.ip() && c["dst"] == INTERNET_HOST && c["dst_port"] == 443,
        |c| c["reply"]["packets"].as_u64() > Some(0),
    );
    assert_eq!(leg2["src_identity"]["pod"], "egress-gw-1");
    assert_eq!(leg2["src_identity"]["mediator"], true);
    assert_eq!(
        verdicts(&leg2),
        json!({"flow_class": "pod_to_egress", "scope": "internet", "tenants": "none",
               "cross_tenant": false, "egress": "mediated", "sensitive": null})
    );
    // Nothing left the node from jobs-1 except through the gateway.
    let direct: Vec<Value> = agent
        .connections("")
        .into_iter()
        .filter(|c| c["src"] == jobs.ip() && c["dst"] == INTERNET_HOST)
        .collect();
    assert_eq!(direct, Vec::<Value>::new());
}

#[test]
fn kubelet_probe_and_host_process_egress() {
    let lab = lab("ik");
    let t = &lab.topo;
    let agent = agent_with_lab_config(&lab, 1);
    let api = t.pod("api-1");
    let node2 = t.node(2).ip();
    let kubelet = format!("{node2}:10250");
    let srv = traffic_bg(&t.node_ns(2), &["tcp-serve", &kubelet, "10"]);
    traffic(
        &t.pod_ns(api),
        &[
            "tcp-send",
            &kubelet,
            "20",
            "--bind",
            &format!("{}:7301", api.ip()),
        ],
    );
    finish(srv);
    let c = wait_connection(
        &agent,
        |c| c["src"] == api.ip() && c["src_port"] == 7301,
        |c| c["reply"]["packets"].as_u64() > Some(0),
    );
    assert_eq!(
        c["dst_identity"],
        json!({"kind": "node", "node": t.node(2).name})
    );
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "pod_to_node", "scope": "cross_node", "tenants": "none",
               "cross_tenant": false, "egress": "none", "sensitive": "kubelet"})
    );

    // A process in the node's own namespace (not a pod).
    let rx = traffic_bg(
        &t.internet_ns(),
        &["udp-recv", &format!("{INTERNET_HOST}:5400"), "3"],
    );
    traffic(
        &t.node_ns(1),
        &[
            "udp-send",
            &format!("{INTERNET_HOST}:5400"),
            "3",
            "30",
            "--bind",
            &format!("{}:7302", t.node(1).ip()),
        ],
    );
    assert_eq!(finish(rx).trim(), "3");
    let c = conn_from(&agent, &t.node(1).ip(), 7302, INTERNET_HOST, (3, 174));
    assert_eq!(counts(&c, "forward"), (3, 174));
    assert_eq!(
        c["src_identity"],
        json!({"kind": "node", "node": t.node(1).name})
    );
    assert_eq!(
        verdicts(&c),
        json!({"flow_class": "node_to_egress", "scope": "internet", "tenants": "none",
               "cross_tenant": false, "egress": "unmediated", "sensitive": null})
    );
}

/// The lab's snapshot plus `extra` pods in alpha-web (addresses 10.250.x.y) and two pods
/// claiming one address, as JSON (which is YAML).
fn bigger_snapshot(lab: &LabGuard, extra: u32) -> String {
    let mut snap = xtask::lab::manifest::snapshot(&lab.topo);
    let items = snap["items"].as_array_mut().unwrap();
    let pod = |name: String, ip: String| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "alpha-web", "labels": {"app": "filler"}},
            "spec": {"nodeName": lab.topo.node(2).name, "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip},
        })
    };
    for i in 0..extra {
        items.push(pod(
            format!("filler-{i}"),
            format!("10.250.{}.{}", i / 250, i % 250 + 1),
        ));
    }
    for twin in ["twin-a", "twin-b"] {
        items.push(pod(twin.into(), "10.251.0.1".into()));
    }
    serde_json::to_string(&snap).unwrap()
}

fn pods(agent: &Agent) -> f64 {
    agent
        .metric("tenantflow_metadata_objects{kind=\"pod\",source=\"snapshot\"}")
        .expect("pod count exported")
}

/// A snapshot rewritten in pieces (as `kubectl … > file` does) is taken only once whole,
/// parsed off the harvest path (traffic sent after the rewrite is counted before the new
/// inventory is in), reports its address conflict, and SIGTERM does not wait for a reload.
#[test]
fn snapshot_rewrites_are_applied_whole_and_off_the_harvest_path() {
    let lab = lab("rl");
    let mut agent = agent_with_lab_config(&lab, 1);
    let before = lab.topo.pods.len() as f64;
    assert_eq!(pods(&agent), before);
    let path = xtask::lab::manifest::snapshot_path(&lab.topo.prefix);
    let text = bigger_snapshot(&lab, 30_000);

    // Truncate, then append in pieces 300 ms apart: never still for a whole poll.
    let pieces = 8;
    let step = text.len() / pieces + 1;
    std::fs::write(&path, "").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for chunk in text.as_bytes().chunks(step) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(chunk).unwrap();
        drop(f);
        std::thread::sleep(std::time::Duration::from_millis(300));
        seen.insert(pods(&agent) as u64);
    }
    // The harvest keeps going while the big file is parsed: traffic sent now is counted
    // while the agent still has the old inventory.
    let t = &lab.topo;
    let web2 = t.pod("web-2");
    let sent = udp_from_pod(
        &lab,
        "web-1",
        4100,
        &t.pod_ns(web2),
        &format!("{}:5000", web2.ip()),
        3,
        50,
    );
    let c = conn_from(&agent, &t.pod("web-1").ip(), 4100, &web2.ip(), sent);
    assert_eq!(counts(&c, "forward"), sent);
    assert_eq!(pods(&agent), before, "counted before the reload finished");

    let after = before + 30_002.0;
    tenantflow_tests::eventually(std::time::Duration::from_secs(60), || {
        // One reading per round: reading twice let the reload land between the reading
        // kept and the one checked, and the test missed the count it waited for.
        let now = pods(&agent);
        seen.insert(now as u64);
        (now == after).then_some(())
    });
    assert_eq!(pods(&agent), after);
    assert_eq!(
        seen,
        [before as u64, after as u64].into_iter().collect(),
        "never a partial inventory"
    );
    assert_eq!(agent.metric("tenantflow_metadata_errors_total"), Some(0.0));
    assert_eq!(agent.metric("tenantflow_metadata_ip_conflicts"), Some(1.0));

    // Back to the small file, and stop while that reload may still be running.
    std::fs::write(
        &path,
        serde_json::to_string(&xtask::lab::manifest::snapshot(t)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        agent.stop_with(libc::SIGTERM),
        Some(0),
        "{}",
        agent.log_text()
    );
}
