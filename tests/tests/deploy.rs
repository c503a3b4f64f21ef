//! deploy/ validated with the real tools: helm lint and template, kubernetes-validate
//! --strict for the Kubernetes versions AKS supports, the DaemonSet's security posture and
//! RBAC, the committed manifest in sync with the chart, promtool on the alert rules and
//! their unit tests, and the dashboards against @grafana/schema.

use std::{path::PathBuf, process::Command};

use serde_json::{json, Value};
use tenantflow_tests::{
    chart::{agent_args as args_of, documents, find, root, template as helm_template},
    helm_api::HelmApi,
};
use xtask::tools;

/// AKS-supported minor versions (late 2026) that kubernetes-validate has strict schemas for.
const KUBERNETES_VERSIONS: [&str; 4] = ["1.32.0", "1.33.0", "1.34.0", "1.35.0"];

fn tool(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask setup`",
        path.display()
    );
    path
}

/// Run, returning (exit code, stdout + stderr).
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The Prometheus Operator flavor: a PodMonitor and the PrometheusRule on top of the rest.
const ALL_ON: [&str; 4] = [
    "--set",
    "monitoring.flavor=prometheus-operator",
    "--set",
    "namespace.create=true",
];

#[test]
fn helm_lint_passes() {
    let (code, out) =
        run(Command::new(tool(tools::helm())).args(["lint", "--strict", "deploy/helm/tenantflow"]));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{out}"
    );
}

#[test]
fn rendered_objects_validate_strictly_for_every_aks_version() {
    let file = std::env::temp_dir().join(format!("tf-rendered-{}.yaml", std::process::id()));
    std::fs::write(&file, helm_template(&ALL_ON)).unwrap();
    for v in KUBERNETES_VERSIONS {
        let (code, out) = run(Command::new(tool(tools::kubernetes_validate()))
            .args(["--strict", "-k", v])
            .arg(&file));
        assert_eq!(code, 0, "kubernetes {v}: {out}");
        let minor = v.trim_end_matches(".0");
        for kind in [
            "namespace",
            "serviceaccount",
            "configmap",
            "clusterrole",
            "clusterrolebinding",
            "daemonset",
        ] {
            assert!(
                out.contains(&format!(
                    "passed for resource {kind}/tenantflow against version {minor}"
                )),
                "kubernetes {v}: {kind} not validated:\n{out}"
            );
        }
        // Prometheus Operator kinds have no upstream schema; they are the only ones skipped.
        let skipped: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        assert_eq!(skipped.len(), 2, "{out}");
        assert!(
            skipped
                .iter()
                .all(|l| l.contains("monitoring.coreos.com/v1")),
            "{out}"
        );
    }
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn the_committed_manifest_is_the_rendered_chart() {
    let committed =
        std::fs::read_to_string(root().join("deploy/manifests/tenantflow.yaml")).unwrap();
    let rendered = helm_template(&["--set", "namespace.create=true"]);
    assert!(
        committed == rendered,
        "deploy/manifests/tenantflow.yaml is stale: regenerate it with\n  helm template tenantflow deploy/helm/tenantflow --namespace tenantflow --set namespace.create=true > deploy/manifests/tenantflow.yaml"
    );
    // Applied to a fresh cluster, the namespace comes first, with the PSA level the agent
    // needs, and survives an uninstall.
    let docs = documents(&committed);
    assert_eq!(docs[0]["kind"], "Namespace");
    assert_eq!(docs[0]["metadata"]["name"], "tenantflow");
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            docs[0]["metadata"]["labels"][format!("pod-security.kubernetes.io/{mode}")],
            "privileged"
        );
    }
    assert_eq!(
        docs[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert!(
        documents(&helm_template(&[]))
            .iter()
            .all(|d| d["kind"] != "Namespace"),
        "helm install finds its namespace; the chart does not make it by default"
    );
}

#[test]
fn the_daemonset_has_least_privilege() {
    let docs = documents(&helm_template(&[]));
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"], true,
        "the node's interfaces and conntrack"
    );
    assert_eq!(pod["hostPID"], Value::Null);
    assert_eq!(pod["hostIPC"], Value::Null);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    // Exactly what tests/tests/privileges.rs proves necessary and sufficient.
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["BPF", "NET_ADMIN", "PERFMON"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    // Host mounts: BTF and the cgroup v2 root (process attribution), both read-only, and
    // the directory of the known-edge set, the one writable path.
    let paths: Vec<&Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !v["hostPath"].is_null())
        .map(|v| &v["hostPath"]["path"])
        .collect();
    assert_eq!(
        paths,
        [
            &json!("/sys/kernel/btf"),
            &json!("/sys/fs/cgroup"),
            &json!("/var/lib/tenantflow")
        ]
    );
    assert!(c["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--edge-file=/var/lib/tenantflow/edges")));
    assert!(c["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--cgroup-root=/run/tenantflow/cgroup")));
    let writable: Vec<&Value> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| &m["mountPath"])
        .collect();
    assert_eq!(writable, [&json!("/var/lib/tenantflow")]);
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        (
            &annotations["prometheus.io/scrape"],
            &annotations["prometheus.io/port"]
        ),
        (&json!("true"), &json!("9990"))
    );
}

#[test]
fn process_attribution_off_drops_the_cgroup_mount() {
    let docs = documents(&helm_template(&["--set", "agent.processAttribution=false"]));
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let host: Vec<&Value> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !v["hostPath"].is_null())
        .collect();
    assert_eq!(host.len(), 2, "BTF and the edge set");
    assert!(pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--no-process-attribution")));
}

#[test]
fn cilium_snat_mounts_the_hosts_bpffs_read_only() {
    let docs = documents(&helm_template(&["--set", "agent.ciliumSnat=true"]));
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert!(c["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--cilium-bpffs=/run/tenantflow/bpffs")));
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bpffs")
        .expect("bpffs mounted");
    assert_eq!(
        (&mount["mountPath"], &mount["readOnly"]),
        (&json!("/run/tenantflow/bpffs"), &json!(true))
    );
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "bpffs")
        .unwrap();
    assert_eq!(vol["hostPath"]["path"], "/sys/fs/bpf");
}

#[test]
fn otlp_export_keeps_header_secrets_out_of_the_pod_spec_and_mounts_the_ca() {
    let values = [
        "--set",
        "agent.otlp.endpoint=https://otel.observability:4317",
        "--set",
        "agent.otlp.headersSecret.name=otlp-key",
        "--set",
        "agent.otlp.caConfigMap.name=otel-ca",
        "--set",
        "clusterName=prod-weu",
    ];
    let yaml = helm_template(&values);
    validates_strictly("otlp", &yaml);
    let docs = documents(&yaml);
    let args = args_of(&docs);
    for want in [
        "--otlp-endpoint=https://otel.observability:4317",
        "--otlp-ca=/run/tenantflow/otlp-ca/ca.crt",
        "--otlp-filter=flagged",
    ] {
        assert!(args.contains(&want.to_owned()), "{want} in {args:?}");
    }
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let headers = env
        .iter()
        .find(|e| e["name"] == "TENANTFLOW_OTLP_HEADERS")
        .expect("headers from the Secret");
    assert_eq!(
        headers["valueFrom"]["secretKeyRef"],
        json!({"name": "otlp-key", "key": "headers"})
    );
    assert!(env
        .iter()
        .any(|e| e["name"] == "TENANTFLOW_CLUSTER_NAME" && e["value"] == "prod-weu"));
    let vol = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "otlp-ca")
        .expect("the CA volume");
    assert_eq!(vol["configMap"]["name"], "otel-ca");
    // Off by default: no flag, no volume.
    let plain = documents(&helm_template(&[]));
    assert!(!args_of(&plain).iter().any(|a| a.starts_with("--otlp")));
}

/// The `--flag` names of `tenantflow <command> --help`.
fn known_flags(command: &str) -> Vec<String> {
    let out = Command::new(tenantflow_tests::agent_bin())
        .args([command, "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            format!(
                "--{}",
                w.trim_end_matches([',', '.'])
                    .split(['=', ' ', '<'])
                    .next()
                    .unwrap()
            )
        })
        .collect()
}

#[test]
fn the_index_relays_all_node_queries_when_records_are_exposed_and_its_flags_exist() {
    let yaml = helm_template(&[
        "--set",
        "index.enabled=true",
        "--set",
        "agent.records.exposed=true",
        "--set",
        "agent.otlp.endpoint=http://otel:4317",
    ]);
    validates_strictly("relay", &yaml);
    let docs = documents(&yaml);
    let index = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the index Deployment");
    let args: Vec<String> = index["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    for want in [
        "--agent-records-port=9991",
        "--agent-ca=/run/tenantflow/tls/ca.crt",
        "--agent-server-name=tenantflow-agent",
    ] {
        assert!(args.contains(&want.to_owned()), "{want} in {args:?}");
    }
    let policy = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "tenantflow-index")
        .unwrap();
    assert!(
        policy["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ports"] == json!([{"port": 9991, "protocol": "TCP"}])),
        "egress to the agents' records port"
    );
    // Every flag the chart renders is one the binary knows.
    let (index_flags, agent_flags) = (known_flags("index"), known_flags("agent"));
    for (rendered, known) in [(&args, &index_flags), (&args_of(&docs), &agent_flags)] {
        for a in rendered.iter().filter(|a| a.starts_with("--")) {
            let flag = a.split('=').next().unwrap();
            if flag == "--log-format" {
                continue; // global, before the subcommand
            }
            assert!(
                known.iter().any(|k| k == flag),
                "{flag} is not a flag of the binary"
            );
        }
    }
    // Without exposed records there is nothing to relay to.
    let plain = documents(&helm_template(&["--set", "index.enabled=true"]));
    let d = plain.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert!(!d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().starts_with("--agent-")));
}

#[test]
fn rbac_is_read_only_on_four_kinds() {
    let docs = documents(&helm_template(&ALL_ON));
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 1);
    assert_eq!(
        roles[0]["rules"],
        json!([{"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services"], "verbs": ["get", "list", "watch"]}])
    );
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "tenantflow", "namespace": "tenantflow"}])
    );
    let rule = find(&docs, "PrometheusRule");
    let alerts: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| {
            g["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["alert"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        alerts,
        [
            "TenantflowCrossTenantTraffic",
            "TenantflowUnmediatedEgress",
            "TenantflowSensitiveTargetAccess",
            "TenantflowPossibleScan",
            "TenantflowFanoutJump",
            "TenantflowUnansweredCrossTenant",
            "TenantflowNewCrossTenantEdge",
            "TenantflowDnsNxdomainBurst",
            "TenantflowUnmediatedDns",
            "TenantflowAgentDown",
            "TenantflowAgentNotReady",
            "TenantflowFlowCountsLost",
            "TenantflowMetadataStale",
            "TenantflowIdentityOutOfDate",
            "TenantflowNatJoinMissesHigh",
            "TenantflowObserverNotFirst",
        ]
    );
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = tenantflow_tests::prometheus::which("promtool");
    let (code, out) = run(Command::new(&promtool).args([
        "check",
        "rules",
        "deploy/helm/tenantflow/files/tenantflow.rules.yaml",
    ]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCESS: 16 rules found"), "{out}");
    let (code, out) =
        run(Command::new(&promtool).args(["test", "rules", "deploy/prometheus/rules_test.yaml"]));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboards_validate_against_the_grafana_schema() {
    let files = dashboards();
    assert_eq!(files.len(), 5);
    let (code, out) = run(Command::new("node")
        .arg("tests/grafana/validate-dashboards.cjs")
        .args(&files)
        .env("NODE_PATH", tools::node_modules()));
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        5,
        "{out}"
    );
    // The validator rejects what Grafana would not load.
    let bad = std::env::temp_dir().join(format!("tf-bad-dashboard-{}.json", std::process::id()));
    let mut d: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    d["panels"][0]["gridPos"]["w"] = json!("wide");
    std::fs::write(&bad, d.to_string()).unwrap();
    let (code, out) = run(Command::new("node")
        .arg("tests/grafana/validate-dashboards.cjs")
        .arg(&bad)
        .env("NODE_PATH", tools::node_modules()));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/panels/0/gridPos/w must be number"), "{out}");
    std::fs::remove_file(&bad).unwrap();
}

pub fn dashboards() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

/// One Dockerfile for both builds: the default compiles and lands on distroless; the
/// offline path (`cargo xtask image`, run from tests/tests/image.rs) takes the prebuilt
/// binary onto a local base. The binary needs nothing beyond what distroless cc ships.
#[test]
fn the_dockerfile_runtime_carries_what_the_binary_needs() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile
        .lines()
        .any(|l| l == "ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12"));
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    // The build image carries exactly the stable toolchain rust-toolchain.toml pins.
    let pinned: Value = serde_norway::from_str::<Value>(
        &std::fs::read_to_string(root().join("rust-toolchain.toml"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("channel"))
            .map(|l| l.replacen(" = ", ": ", 1))
            .collect::<String>(),
    )
    .unwrap();
    let stable = pinned["channel"].as_str().unwrap();
    assert_eq!(
        froms,
        [
            format!("FROM rust:{stable}-bookworm AS build").as_str(),
            "FROM ${RUNTIME_BASE} AS prebuilt",
            "FROM ${RUNTIME_BASE}",
        ]
    );
    // The eBPF toolchain comes from toolchains.env, the file setup, CI and build.rs read:
    // no toolchain or linker version is written into the Dockerfile itself.
    assert!(dockerfile.contains("COPY toolchains.env /toolchains.env"));
    for floating in ["install nightly", "+nightly", "bpf-linker@0", "llvm-2"] {
        assert!(
            !dockerfile.contains(floating),
            "{floating} in the Dockerfile"
        );
    }
    let env = std::fs::read_to_string(root().join("toolchains.env")).unwrap();
    let nightly = env
        .lines()
        .find_map(|l| l.strip_prefix("BPF_NIGHTLY="))
        .unwrap();
    assert!(
        nightly.len() == "nightly-YYYY-MM-DD".len() && nightly.starts_with("nightly-20"),
        "a dated nightly: {nightly}"
    );
    assert_eq!(xtask::setup::pinned("BPF_NIGHTLY").unwrap(), nightly);
    assert!(dockerfile.contains("COPY --from=build /out/tenantflow /usr/local/bin/tenantflow"));
    assert!(dockerfile.contains("COPY target/image/tenantflow /usr/local/bin/tenantflow"));
    assert_eq!(
        dockerfile
            .matches(r#"ENTRYPOINT ["/usr/local/bin/tenantflow"]"#)
            .count(),
        2
    );
    let (code, out) = run(Command::new("readelf")
        .arg("-d")
        .arg(tenantflow_tests::agent_bin()));
    assert_eq!(code, 0, "{out}");
    let needed: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.strip_suffix(']'))
        .collect();
    // gcr.io/distroless/cc-debian12: glibc (libc, libm, the loader) and libgcc_s.
    let shipped = [
        "libc.so.6",
        "libm.so.6",
        "ld-linux-x86-64.so.2",
        "libgcc_s.so.1",
    ];
    assert!(!needed.is_empty());
    assert!(needed.iter().all(|n| shipped.contains(n)), "{needed:?}");
}

/// Exposed records: the agent may create token and access reviews (nothing else new), a
/// reader role exists to bind, the listener gets its TLS Secret, and every object still
/// validates strictly.
#[test]
fn exposed_records_add_only_review_rights_a_reader_role_and_tls() {
    let yaml = helm_template(&["--set", "agent.records.exposed=true"]);
    let docs = documents(&yaml);
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(roles.len(), 2);
    assert_eq!(
        roles[0]["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ])
    );
    assert_eq!(roles[1]["metadata"]["name"], "tenantflow-flows-reader");
    assert_eq!(
        roles[1]["rules"],
        json!([{"apiGroups": ["tenantflow.io"], "resources": ["flows"], "verbs": ["get"]}])
    );
    let ds = find(&docs, "DaemonSet");
    let args: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for want in [
        "--flows-listen=0.0.0.0:9991",
        "--flows-auth=kubernetes",
        "--tls-cert=/run/tenantflow/tls/tls.crt",
        "--tls-key=/run/tenantflow/tls/tls.key",
        "--auth-cache-ttl=30s",
    ] {
        assert!(args.contains(&want), "{want} in {args:?}");
    }
    let secret = find(&docs, "Secret");
    assert_eq!(secret["metadata"]["name"], "tenantflow-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    // The default keeps records on loopback, with no review rights.
    let default = documents(&helm_template(&[]));
    let ds = find(&default, "DaemonSet");
    assert!(ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .contains(&json!("--flows-listen=127.0.0.1:9991")));
    validates_strictly("exposed", &yaml);
}

/// Metrics behind tokens: TLS args, HTTPS probes (the kubelet skips verification), the
/// monitors scrape over https with the CA and the certificate's name, review rights but no
/// reader role (records stay on loopback).
#[test]
fn metrics_auth_renders_https_probes_monitors_and_review_rights() {
    let yaml = helm_template(&[
        "--set",
        "agent.metrics.auth=true",
        "--set",
        "monitoring.flavor=prometheus-operator",
    ]);
    let docs = documents(&yaml);
    let c = &find(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let args = c["args"].as_array().unwrap();
    for want in [
        "--metrics-auth=kubernetes",
        "--flows-listen=127.0.0.1:9991",
        "--tls-cert=/run/tenantflow/tls/tls.crt",
    ] {
        assert!(args.contains(&json!(want)), "{want}");
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(c["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let pm = &find(&docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0];
    assert_eq!(pm["scheme"], "https");
    assert_eq!(pm["tlsConfig"]["serverName"], "tenantflow-agent");
    assert_eq!(pm["tlsConfig"]["ca"]["secret"]["name"], "tenantflow-tls");
    assert_eq!(
        pm["authorization"]["credentials"]["name"],
        "prometheus-token"
    );
    let roles: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "ClusterRole").collect();
    assert_eq!(
        roles.len(),
        1,
        "no reader role while records stay on loopback"
    );
    assert_eq!(roles[0]["rules"].as_array().unwrap().len(), 3);
    assert_eq!(find(&docs, "Secret")["metadata"]["name"], "tenantflow-tls");
    validates_strictly("metrics-auth", &yaml);
}

/// Every rendered object validates strictly against every AKS Kubernetes version.
fn validates_strictly(tag: &str, yaml: &str) {
    let file = std::env::temp_dir().join(format!("tf-{tag}-{}.yaml", std::process::id()));
    std::fs::write(&file, yaml).unwrap();
    for v in KUBERNETES_VERSIONS {
        let (code, out) = run(Command::new(tool(tools::kubernetes_validate()))
            .args(["--strict", "-k", v])
            .arg(&file));
        assert_eq!(code, 0, "{tag}, kubernetes {v}: {out}");
    }
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn index_mode_adds_a_least_privilege_deployment_and_narrows_the_agents_rbac() {
    let yaml = helm_template(&["--set", "index.enabled=true"]);
    validates_strictly("index", &yaml);
    let docs = documents(&yaml);
    let by_name = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind}/{name}"))
    };
    // The agents: their own node's pods, and following the index.
    assert_eq!(
        by_name("ClusterRole", "tenantflow")["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"nonResourceURLs": ["/v1/identity"], "verbs": ["get"]},
        ])
    );
    let ds = find(&docs, "DaemonSet");
    let args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    // Over TLS, verified with the chart's CA: the token never crosses in clear text.
    assert!(args.contains(&json!(
        "--identity-index=https://tenantflow-index.tenantflow.svc:9993"
    )));
    assert!(args.contains(&json!("--identity-index-ca=/run/tenantflow/tls/ca.crt")));
    let tls_volume = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap();
    assert_eq!(
        tls_volume["secret"]["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}]),
        "agents that only follow get the CA, not the key"
    );
    let secret = by_name("Secret", "tenantflow-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    // The index: read-only on the four kinds, and reviewing followers' tokens.
    assert_eq!(
        by_name("ClusterRole", "tenantflow-index")["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        ])
    );
    assert_eq!(
        by_name("ClusterRoleBinding", "tenantflow-index")["subjects"],
        json!([{"kind": "ServiceAccount", "name": "tenantflow-index", "namespace": "tenantflow"}])
    );
    let dep = by_name("Deployment", "tenantflow-index");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "tenantflow-index");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(
        pod["hostNetwork"].is_null(),
        "the index needs no host network"
    );
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
               "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(c["args"][1], "index");
    for want in [
        "--metrics-listen=0.0.0.0:9994",
        "--tls-cert=/run/tenantflow/tls/tls.crt",
        "--tls-key=/run/tenantflow/tls/tls.key",
    ] {
        assert!(
            c["args"].as_array().unwrap().contains(&json!(want)),
            "{want}"
        );
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    // Only its two ports in; only DNS and the API server out.
    let np = &by_name("NetworkPolicy", "tenantflow-index")["spec"];
    assert_eq!(np["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        np["ingress"],
        json!([{"ports": [{"port": 9993, "protocol": "TCP"}, {"port": 9994, "protocol": "TCP"}]}])
    );
    assert_eq!(
        np["egress"][1]["ports"],
        json!([{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}])
    );
    // Its pods never match the DaemonSet's selector, and the Service and budget find them.
    let ds_sel = &ds["spec"]["selector"]["matchLabels"];
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_ne!(
        labels["app.kubernetes.io/name"],
        ds_sel["app.kubernetes.io/name"]
    );
    for sel in [
        &by_name("Service", "tenantflow-index")["spec"]["selector"],
        &by_name("PodDisruptionBudget", "tenantflow-index")["spec"]["selector"]["matchLabels"],
        &dep["spec"]["selector"]["matchLabels"],
    ] {
        for (k, v) in sel.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{k}");
        }
    }
}

/// One value picks how Prometheus finds the agents. Each flavor renders exactly its
/// objects, every object validates strictly, and the CRD flavors give the agents the
/// labels the alert rules select on (`app_kubernetes_io_name`, job `tenantflow`).
#[test]
fn each_monitoring_flavor_renders_only_its_objects() {
    let kinds = |docs: &[Value]| -> Vec<(String, String)> {
        docs.iter()
            .filter(|d| d["kind"] == "PodMonitor" || d["kind"] == "PrometheusRule")
            .map(|d| {
                (
                    d["apiVersion"].as_str().unwrap().to_owned(),
                    d["kind"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let annotated = |docs: &[Value]| {
        find(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
            ["prometheus.io/scrape"]
            == "true"
    };
    let operator = ("monitoring.coreos.com/v1".to_owned(), "PodMonitor".into());
    let rule = (
        "monitoring.coreos.com/v1".to_owned(),
        "PrometheusRule".into(),
    );
    let azure = ("azmonitoring.coreos.com/v1".to_owned(), "PodMonitor".into());
    for (flavor, want, annotations) in [
        ("annotations", vec![], true),
        ("prometheus-operator", vec![operator.clone(), rule], false),
        ("azure", vec![azure.clone()], false),
        ("none", vec![], false),
    ] {
        let yaml = helm_template(&["--set", &format!("monitoring.flavor={flavor}")]);
        let docs = documents(&yaml);
        assert_eq!(kinds(&docs), want, "{flavor}");
        assert_eq!(annotated(&docs), annotations, "{flavor}");
        validates_strictly(flavor, &yaml);
    }
    // The two PodMonitors are the same but for the group and Azure's label limits.
    let pm = |flavor: &str| {
        find(
            &documents(&helm_template(&[
                "--set",
                &format!("monitoring.flavor={flavor}"),
            ])),
            "PodMonitor",
        )["spec"]
            .clone()
    };
    let (mut az, op) = (pm("azure"), pm("prometheus-operator"));
    for (limit, v) in [
        ("labelLimit", 63),
        ("labelNameLengthLimit", 511),
        ("labelValueLengthLimit", 1023),
    ] {
        assert_eq!(az.as_object_mut().unwrap().remove(limit), Some(json!(v)));
    }
    assert_eq!(az, op);
    assert_eq!(
        op["podTargetLabels"],
        json!(["app.kubernetes.io/name", "app.kubernetes.io/instance"])
    );
    assert_eq!(
        op["podMetricsEndpoints"][0]["relabelings"][0],
        json!({"targetLabel": "job", "replacement": "tenantflow"})
    );
    // With the index, it gets its own monitor and job.
    let docs = documents(&helm_template(&[
        "--set",
        "monitoring.flavor=azure",
        "--set",
        "index.enabled=true",
    ]));
    let jobs: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PodMonitor")
        .map(|d| &d["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"])
        .collect();
    assert_eq!(jobs, [&json!("tenantflow"), &json!("tenantflow-index")]);
}

/// Values of the older chart fail the render, naming what replaced them, instead of
/// being ignored; so does a flavor that does not exist.
#[test]
fn removed_monitoring_values_and_unknown_flavors_are_refused_by_name() {
    for (set, want) in [
        (
            "serviceMonitor.enabled=true",
            "serviceMonitor was replaced by monitoring.flavor=prometheus-operator",
        ),
        (
            "prometheusScrapeAnnotations=false",
            "prometheusScrapeAnnotations was replaced by monitoring.flavor=annotations",
        ),
        (
            "monitoring.flavor=azure-monitor",
            "monitoring.flavor \"azure-monitor\": use annotations, azure",
        ),
    ] {
        let (code, out) = run(Command::new(tool(tools::helm())).args([
            "template",
            "tenantflow",
            "deploy/helm/tenantflow",
            "--set",
            set,
        ]));
        assert_ne!(code, 0, "{set}");
        assert!(out.contains(want), "{set}: {out}");
    }
}

/// By default nothing on /metrics names a pod or workload: the SNAT-mapping family and
/// workload labels come only with tokens, or with an explicit acceptance.
#[test]
fn default_metrics_carry_no_pod_or_workload_names() {
    let names = |args: &[String]| -> Vec<String> {
        args.iter()
            .filter(|a| {
                a.starts_with("--metrics-max-nat-mappings")
                    || *a == "--metrics-workload-labels"
                    || *a == "--metrics-public-names"
            })
            .cloned()
            .collect()
    };
    assert!(names(&args_of(&documents(&helm_template(&[])))).is_empty());
    assert_eq!(
        names(&args_of(&documents(&helm_template(&[
            "--set",
            "agent.metrics.auth=true"
        ])))),
        ["--metrics-max-nat-mappings=2000"]
    );
    assert_eq!(
        names(&args_of(&documents(&helm_template(&[
            "--set",
            "agent.metrics.publicNames=true",
            "--set",
            "agent.metrics.workloadLabels=true",
        ])))),
        [
            "--metrics-max-nat-mappings=2000",
            "--metrics-public-names",
            "--metrics-workload-labels"
        ]
    );
    let (code, out) = run(Command::new(tool(tools::helm())).args([
        "template",
        "tenantflow",
        "deploy/helm/tenantflow",
        "--set",
        "agent.metrics.workloadLabels=true",
    ]));
    assert_ne!(code, 0);
    assert!(
        out.contains("agent.metrics.workloadLabels puts workload names on /metrics"),
        "{out}"
    );
}

/// `helm template --dry-run=server` against `api`: what helm install and upgrade render,
/// with the chart's `lookup` reading that cluster.
fn render_against(api: &HelmApi, extra: &[&str]) -> String {
    let (code, out) = run(Command::new(tool(tools::helm()))
        .env("KUBECONFIG", api.kubeconfig())
        .args([
            "template",
            "tenantflow",
            "deploy/helm/tenantflow",
            "--namespace",
            "tenantflow",
            "--dry-run=server",
            "--disable-openapi-validation",
        ])
        .args(extra));
    assert_eq!(code, 0, "helm template --dry-run=server: {out}");
    out
}

/// The generated CA and certificate survive an upgrade: the upgrade's render finds the
/// Secret the install made and renders it, and the DaemonSet's TLS checksum, unchanged,
/// so clients keep trusting the CA and the agents do not roll. Without the Secret (a
/// plain `helm template`) a new CA is made and the checksum moves: the control.
#[test]
fn an_upgrade_keeps_the_generated_ca_and_does_not_roll_the_agents() {
    let auth = ["--set", "agent.metrics.auth=true"];
    let install = render_against(&HelmApi::start(vec![]), &auth);
    let docs = documents(&install);
    let mut secret = find(&docs, "Secret").clone();
    // What helm stores on an object it owns; an upgrade refuses to adopt one without it.
    secret["metadata"]["annotations"] = json!({
        "meta.helm.sh/release-name": "tenantflow",
        "meta.helm.sh/release-namespace": "tenantflow",
    });
    let api = HelmApi::start(vec![(
        "/api/v1/namespaces/tenantflow/secrets/tenantflow-tls".into(),
        secret,
    )]);
    let upgrade = render_against(&api, &auth);
    assert!(
        install == upgrade,
        "the upgrade rendered a different Secret or checksum"
    );
    let checksum = |d: &[Value]| {
        find(d, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/tls"].clone()
    };
    let ca = |d: &[Value]| find(d, "Secret")["data"]["ca.crt"].clone();
    let fresh = documents(&helm_template(&auth));
    assert_ne!(
        ca(&fresh),
        ca(&docs),
        "a render without the Secret makes a new CA"
    );
    assert_ne!(checksum(&fresh), checksum(&docs));
    assert!(checksum(&docs).as_str().unwrap().len() == 64);
}

/// Azure Managed Prometheus' rule groups come from the same rules file: the committed ARM
/// template is what `cargo xtask rule-group` makes of it today, and it holds exactly the
/// file's alerts with the same expressions, durations and labels.
#[test]
fn the_azure_rule_groups_are_the_rules_file() {
    let rules_text = std::fs::read_to_string(root().join(xtask::rule_group::RULES)).unwrap();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(xtask::rule_group::OUT)).unwrap(),
    )
    .unwrap();
    assert!(
        committed == xtask::rule_group::generate(&rules_text).unwrap(),
        "{} is stale: run `cargo xtask rule-group`",
        xtask::rule_group::OUT
    );
    let rules: Value = serde_norway::from_str(&rules_text).unwrap();
    let from_file: Vec<(String, String, String, Value)> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expr"].as_str().unwrap().to_owned(),
                r["for"].as_str().unwrap_or("").to_owned(),
                r["labels"].clone(),
            )
        })
        .collect();
    let minutes = |f: &str| f.trim_end_matches('m').to_owned();
    let from_azure: Vec<(String, String, String, Value)> = committed["resources"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|g| {
            assert_eq!(g["type"], "Microsoft.AlertsManagement/prometheusRuleGroups");
            assert_eq!(
                g["properties"]["clusterName"],
                "[parameters('clusterName')]"
            );
        })
        .flat_map(|g| g["properties"]["rules"].as_array().unwrap())
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["expression"].as_str().unwrap().to_owned(),
                r["for"].as_str().unwrap_or("").to_owned(),
                r["labels"].clone(),
            )
        })
        .collect();
    assert_eq!(from_azure.len(), from_file.len());
    assert_eq!(from_file.len(), 16);
    for (file, azure) in from_file.iter().zip(&from_azure) {
        assert_eq!((&file.0, &file.1, &file.3), (&azure.0, &azure.1, &azure.3));
        let want_for = match file.2.as_str() {
            "" => String::new(),
            f => format!("PT{}M", minutes(f)),
        };
        assert_eq!(want_for, azure.2, "{}: for", file.0);
    }
}

/// Runs the Prometheus Operator schema check on `objects`: (exit code, output).
fn validate_monitors(tag: &str, objects: &[&Value]) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("tf-monitors-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = objects
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let f = dir.join(format!("{i}.json"));
            std::fs::write(&f, o.to_string()).unwrap();
            f
        })
        .collect();
    let out = run(Command::new("node")
        .arg("tests/prometheus-operator/validate-monitors.mjs")
        .args(&files)
        .env("NODE_PATH", tools::node_modules()));
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// The monitoring objects of both CRD flavors, with and without tokens and the index, are
/// valid Prometheus Operator objects (Azure's are the same CRDs in azmonitoring.coreos.com):
/// types, required fields and no unknown field. The check rejects a misspelt field and a
/// wrong type, so it is no formality.
#[test]
fn monitoring_objects_validate_against_the_prometheus_operator_schemas() {
    let mut all = Vec::new();
    for flavor in ["prometheus-operator", "azure"] {
        for extra in [
            &[][..],
            &[
                "--set",
                "agent.metrics.auth=true",
                "--set",
                "index.enabled=true",
            ],
        ] {
            let mut args = vec!["--set".to_owned(), format!("monitoring.flavor={flavor}")];
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            all.extend(
                documents(&helm_template(&args))
                    .into_iter()
                    .filter(|d| d["kind"] == "PodMonitor" || d["kind"] == "PrometheusRule"),
            );
        }
    }
    // operator: 1+1 and 2+1; azure: 1 and 2.
    assert_eq!(all.len(), 8);
    let refs: Vec<&Value> = all.iter().collect();
    let (code, out) = validate_monitors("all", &refs);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        8,
        "{out}"
    );

    let mut misspelt = all[0].clone();
    misspelt["spec"]["podMetricsEndpoints"][0]["relabellings"] = json!([]);
    let (code, out) = validate_monitors("misspelt", &[&misspelt]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("relabellings: unknown field of PodMetricsEndpoint"),
        "{out}"
    );
    let mut wrong = all[0].clone();
    wrong["spec"]["podMetricsEndpoints"][0]["interval"] = json!(30);
    let (code, out) = validate_monitors("wrong", &[&wrong]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("interval"), "{out}");
}
