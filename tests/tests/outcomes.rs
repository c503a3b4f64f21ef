//! How each attempt went, in the lab: a TCP handshake that completes, one refused (nothing
//! listens), one unanswered (a policy drops the SYN), a UDP datagram nobody answers and a
//! ping that is answered; a UDP datagram to a closed port and a SYN to a port that rejects
//! with ICMP, both refused by the ICMP error that answers them (counted as their reply, never
//! as an ICMP flow of its own). Each record carries its outcome, the `/flows` filter finds it,
//! and `tenantflow_connection_attempts_total` counts each attempt exactly once.

use serde_json::Value;
use tenantflow_tests::{
    agent::wait_connection, finish, in_ns, lab, lab_agent, traffic, traffic_bg,
};

fn attempts(agent: &tenantflow_tests::Agent, dst_tenant: &str, outcome: &str) -> Option<f64> {
    let cross = dst_tenant != "alpha";
    // Exposition sorts labels by name.
    agent.metric(&format!(
        "tenantflow_connection_attempts_total{{cross_tenant=\"{cross}\",dst_kind=\"pod\",dst_tenant=\"{dst_tenant}\",outcome=\"{outcome}\",src_namespace=\"alpha-web\",src_tenant=\"alpha\"}}"
    ))
}

#[test]
fn each_attempt_carries_its_outcome_and_is_counted_once() {
    let lab = lab("oc");
    let t = &lab.topo;
    let (web1, web2, api2) = (t.pod("web-1"), t.pod("web-2"), t.pod("api-2"));
    let client = t.pod_ns(web1);
    let agent = lab_agent(&lab, 1, &[]);

    // Established: a server on web-2 (same tenant).
    let srv = traffic_bg(
        &t.pod_ns(web2),
        &["tcp-serve", &format!("{}:7001", web2.ip()), "10"],
    );
    assert_eq!(
        traffic(&client, &["tcp-try", &format!("{}:7001", web2.ip())]).trim(),
        "connected"
    );
    // Refused: nothing listens on api-2:7002 (another tenant).
    assert_eq!(
        traffic(&client, &["tcp-try", &format!("{}:7002", api2.ip())]).trim(),
        "refused"
    );
    // Unanswered: api-2 drops SYNs to 7003, as a NetworkPolicy would.
    in_ns(
        &t.pod_ns(api2),
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7003", "-j", "DROP",
        ],
    );
    assert_eq!(
        traffic(
            &client,
            &[
                "tcp-try",
                &format!("{}:7003", api2.ip()),
                "--timeout-ms",
                "1500"
            ]
        )
        .trim(),
        "timeout"
    );
    // Unreplied UDP to api-2 (a receiver that never answers).
    let rx = traffic_bg(
        &t.pod_ns(api2),
        &["udp-recv", &format!("{}:7004", api2.ip()), "2"],
    );
    traffic(
        &client,
        &[
            "udp-send",
            &format!("{}:7004", api2.ip()),
            "2",
            "10",
            "--bind",
            &format!("{}:7004", web1.ip()),
        ],
    );
    assert_eq!(finish(rx).trim(), "2");
    // Refused by ICMP: a datagram to a closed port, and a SYN that a REJECT rule answers
    // with port unreachable.
    traffic(
        &client,
        &[
            "udp-send",
            &format!("{}:7005", api2.ip()),
            "1",
            "10",
            "--bind",
            &format!("{}:7005", web1.ip()),
        ],
    );
    in_ns(
        &t.pod_ns(api2),
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "7006", "-j", "REJECT",
        ],
    );
    assert_eq!(
        traffic(&client, &["tcp-try", &format!("{}:7006", api2.ip())]).trim(),
        "refused"
    );
    // A ping web-2 answers.
    in_ns(&client, &["ping", "-c", "1", "-W", "2", &web2.ip()]);
    let _ = srv;

    let by_port = |port: u16, want: &'static str| {
        wait_connection(
            &agent,
            move |c: &Value| c["dst_port"] == port && c["src"] == web1.ip().as_str(),
            move |c: &Value| c["outcome"] == want,
        )
    };
    let ping = wait_connection(
        &agent,
        |c: &Value| c["proto"] == "icmp" && c["dst"] == web2.ip().as_str(),
        |c: &Value| c["outcome"] == "replied",
    );
    assert_eq!(ping["outcome"], "replied");
    let established = by_port(7001, "established");
    assert_eq!(established["outcome"], "established");
    assert_eq!(by_port(7002, "refused")["outcome"], "refused");
    // The error (20 IP + 8 ICMP + the 38 bytes of the datagram it quotes) is the reply.
    let udp_refused = by_port(7005, "refused");
    assert_eq!(
        (&udp_refused["forward"], &udp_refused["reply"]),
        (
            &serde_json::json!({"packets": 1, "bytes": 38}),
            &serde_json::json!({"packets": 1, "bytes": 66})
        ),
        "{udp_refused:#}"
    );
    assert_eq!(by_port(7006, "refused")["outcome"], "refused");
    let icmp: Vec<Value> = agent
        .connections("")
        .into_iter()
        .filter(|c| c["proto"] == "icmp")
        .collect();
    assert_eq!(icmp.len(), 1, "only the ping: {icmp:#?}");
    // Given up on 3 s after the first SYN, and 3 s after the datagrams (`by_port` waits
    // for the outcome).
    assert_eq!(by_port(7003, "unanswered")["outcome"], "unanswered");
    assert_eq!(by_port(7004, "unreplied")["outcome"], "unreplied");

    // The filter finds exactly the failed attempts.
    let mut failed: Vec<u64> = ["refused", "unanswered"]
        .iter()
        .flat_map(|o| agent.connections(&format!("?outcome={o}&ip={}", web1.ip())))
        .map(|c| c["dst_port"].as_u64().unwrap())
        .collect();
    failed.sort_unstable();
    assert_eq!(
        failed,
        [7002, 7003, 7005, 7006],
        "{:#?}",
        agent
            .connections("")
            .iter()
            .map(|c| (
                c["dst_port"].clone(),
                c["outcome"].clone(),
                c["src"].clone(),
                c["id"].clone()
            ))
            .collect::<Vec<_>>()
    );

    // Each counted once, by source namespace, destination tenant and kind, outcome.
    let exported: Vec<String> = agent
        .get("/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("tenantflow_connection_attempts_total"))
        .map(str::to_owned)
        .collect();
    assert_eq!(exported.len(), 5, "{exported:#?}");
    assert_eq!(attempts(&agent, "alpha", "established"), Some(1.0));
    assert_eq!(attempts(&agent, "alpha", "replied"), Some(1.0));
    assert_eq!(attempts(&agent, "beta", "refused"), Some(3.0));
    assert_eq!(attempts(&agent, "beta", "unanswered"), Some(1.0));
    assert_eq!(attempts(&agent, "beta", "unreplied"), Some(1.0));
    assert_eq!(attempts(&agent, "beta", "established"), None);
}
