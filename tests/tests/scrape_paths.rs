//! Every way the chart lets Prometheus find the agents gives the `up` series the agent-down
//! alert selects. A real Prometheus scrapes a real agent in the lab through each path's own
//! relabeling: the annotation job of Azure Managed Prometheus (`kubernetes-pods`, as its
//! collector ships it) and the chart's PodMonitor as the Prometheus Operator turns one into
//! a scrape job (the Azure flavor's PodMonitor is the same but for its API group). The
//! Kubernetes metadata each path reads (pod labels, annotations, port names) is taken from
//! the rendered chart. The alert's expression, read from the rules file, selects exactly one
//! series per path, all 0 once the agent stops; another app's pod scraped the same way is
//! never selected.

use std::time::Duration;

use serde_json::Value;
use tenantflow_tests::{
    chart::{documents, find, rules_file, template},
    eventually, lab, lab_agent,
    prometheus::Prometheus,
};

/// The chart's objects with `monitoring.flavor` set.
fn rendered(flavor: &str) -> Vec<Value> {
    documents(&template(&[
        "--set",
        &format!("monitoring.flavor={flavor}"),
    ]))
}

/// A label or annotation name as Kubernetes service discovery writes it in `__meta_*`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The `__meta_kubernetes_pod_*` labels service discovery gives a pod with `labels` and
/// `annotations`, its container port `http`, on node lab-node1.
fn pod_meta(name: &str, labels: &Value, annotations: &Value) -> String {
    let mut meta = vec![
        (
            "__meta_kubernetes_namespace".to_owned(),
            "tenantflow".to_owned(),
        ),
        ("__meta_kubernetes_pod_name".to_owned(), name.to_owned()),
        ("__meta_kubernetes_pod_node_name".into(), "lab-node1".into()),
        (
            "__meta_kubernetes_pod_container_port_name".into(),
            "http".into(),
        ),
    ];
    for (prefix, map) in [("label", labels), ("annotation", annotations)] {
        for (k, v) in map.as_object().unwrap() {
            let key = format!("__meta_kubernetes_pod_{prefix}_{}", sanitize(k));
            meta.push((key, v.as_str().unwrap().to_owned()));
        }
    }
    let pairs: Vec<String> = meta.iter().map(|(k, v)| format!("{k}: '{v}'")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Azure Managed Prometheus' pod-annotation job (its podannotationsDefault.yml), with
/// `podannotationnamespaceregex: tenantflow`.
fn annotation_job(targets: &str) -> String {
    format!(
        r#"  - job_name: kubernetes-pods
    static_configs:
{targets}
    relabel_configs:
    - {{source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape], action: keep, regex: 'true'}}
    - {{source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path], action: replace, target_label: __metrics_path__, regex: (.+)}}
    - {{source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port], action: replace, regex: '([^:]+)(?::\d+)?;(\d+)', replacement: '$1:$2', target_label: __address__}}
    - {{action: labelmap, regex: __meta_kubernetes_pod_label_(.+)}}
    - {{source_labels: [__meta_kubernetes_namespace], action: replace, target_label: kubernetes_namespace}}
    - {{source_labels: [__meta_kubernetes_pod_name], action: replace, target_label: kubernetes_pod_name}}
    - {{source_labels: [__meta_kubernetes_namespace], action: keep, regex: tenantflow}}
"#
    )
}

/// The scrape job the Prometheus Operator generates for `pm` (a PodMonitor): selector and
/// port kept, namespace/pod labels, job `<namespace>/<name>`, podTargetLabels, then the
/// monitor's own relabelings, which come last and so win.
fn pod_monitor_job(pm: &Value, targets: &str) -> String {
    let spec = &pm["spec"];
    let ep = &spec["podMetricsEndpoints"][0];
    let mut rules = Vec::new();
    for (k, v) in spec["selector"]["matchLabels"].as_object().unwrap() {
        rules.push(format!(
            "{{source_labels: [__meta_kubernetes_pod_label_{}], action: keep, regex: '{}'}}",
            sanitize(k),
            v.as_str().unwrap()
        ));
    }
    rules.push(format!(
        "{{source_labels: [__meta_kubernetes_pod_container_port_name], action: keep, regex: {}}}",
        ep["port"].as_str().unwrap()
    ));
    rules.push("{source_labels: [__meta_kubernetes_namespace], target_label: namespace}".into());
    rules.push("{source_labels: [__meta_kubernetes_pod_name], target_label: pod}".into());
    rules.push(format!(
        "{{target_label: job, replacement: 'tenantflow/{}'}}",
        pm["metadata"]["name"].as_str().unwrap()
    ));
    for l in spec["podTargetLabels"].as_array().unwrap() {
        let l = sanitize(l.as_str().unwrap());
        rules.push(format!(
            "{{source_labels: [__meta_kubernetes_pod_label_{l}], target_label: {l}, regex: (.+), replacement: '$1'}}"
        ));
    }
    for r in ep["relabelings"].as_array().unwrap() {
        let mut parts = vec![format!(
            "target_label: {}",
            r["targetLabel"].as_str().unwrap()
        )];
        if let Some(src) = r["sourceLabels"].as_array() {
            let src: Vec<&str> = src.iter().map(|s| s.as_str().unwrap()).collect();
            parts.push(format!("source_labels: [{}]", src.join(", ")));
        }
        if let Some(rep) = r["replacement"].as_str() {
            parts.push(format!("replacement: '{rep}'"));
        }
        rules.push(format!("{{{}}}", parts.join(", ")));
    }
    let rules: Vec<String> = rules.iter().map(|r| format!("    - {r}")).collect();
    format!(
        "  - job_name: podMonitor/tenantflow/{}/0\n    metrics_path: {}\n    static_configs:\n{targets}\n    relabel_configs:\n{}\n",
        pm["metadata"]["name"].as_str().unwrap(),
        ep["path"].as_str().unwrap(),
        rules.join("\n")
    )
}

/// The expression of `alert` in the shipped rules file.
fn alert_expr(alert: &str) -> String {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let rules: Value = serde_norway::from_str(&text).unwrap();
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == alert)
        .unwrap_or_else(|| panic!("no alert {alert}"))["expr"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// (job, value) of every series `expr` selects, sorted.
fn jobs(prom: &Prometheus, expr: &str) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = prom
        .query(expr)
        .into_iter()
        .map(|(l, v)| (l["job"].as_str().unwrap_or("").to_owned(), v))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn the_agent_down_alert_selects_the_agents_on_every_scrape_path() {
    let lab = lab("scp");
    let t = &lab.topo;
    let mut agent = lab_agent(&lab, 1, &[]);
    let ds = find(&rendered("annotations"), "DaemonSet").clone();
    let tpl = &ds["spec"]["template"]["metadata"];
    let ours = pod_meta("tenantflow-lab1", &tpl["labels"], &tpl["annotations"]);
    // Another app, annotated the same way, whose port answers nothing: always down.
    let other_labels = serde_json::json!({"app.kubernetes.io/name": "other"});
    let mut other_annotations = tpl["annotations"].clone();
    other_annotations["prometheus.io/port"] = "1".into();
    let other = pod_meta("other-1", &other_labels, &other_annotations);
    let targets = format!(
        "      - {{targets: ['127.0.0.1'], labels: {ours}}}\n      - {{targets: ['127.0.0.1'], labels: {other}}}"
    );
    let with_port = |port: &str| {
        format!(
            "      - {{targets: ['127.0.0.1:{port}'], labels: {ours}}}\n      - {{targets: ['127.0.0.1:1'], labels: {other}}}"
        )
    };
    let pm = find(&rendered("prometheus-operator"), "PodMonitor").clone();
    let jobs_yaml = annotation_job(&targets) + &pod_monitor_job(&pm, &with_port("9990"));
    let prom = Prometheus::start_jobs(&t.node_ns(1), &[], &jobs_yaml);
    let expr = alert_expr("TenantflowAgentDown");
    let selected = expr.trim_end_matches(" == 0").to_owned();
    assert_ne!(selected, expr, "the alert is `<selector> == 0`: {expr}");

    let want_up = vec![
        ("kubernetes-pods".to_owned(), 1.0),
        ("tenantflow".into(), 1.0),
    ];
    let mut last = Vec::new();
    let up = eventually(Duration::from_secs(20), || {
        last = jobs(&prom, &selected);
        (last == want_up).then_some(())
    });
    assert!(up.is_some(), "{selected}: {last:?}\n{}", prom.log());
    assert_eq!(jobs(&prom, &expr), [], "nothing down while the agent runs");
    // The other app is scraped and down, on both paths' terms, but never selected.
    assert_eq!(
        jobs(&prom, r#"up{app_kubernetes_io_name="other"}"#),
        [("kubernetes-pods".to_owned(), 0.0)]
    );

    agent.stop_with(libc::SIGTERM);
    let want_down = vec![
        ("kubernetes-pods".to_owned(), 0.0),
        ("tenantflow".into(), 0.0),
    ];
    let down = eventually(Duration::from_secs(20), || {
        last = jobs(&prom, &expr);
        (last == want_down).then_some(())
    });
    assert!(down.is_some(), "{expr} after the agent stopped: {last:?}");
}
