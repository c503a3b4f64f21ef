//! Just enough of a Kubernetes API for `helm template --dry-run=server`: discovery of the
//! kinds the chart renders and GETs of named objects (404 unless given). Helm reads a
//! cluster this way for the chart's `lookup` on install and upgrade, so what the chart
//! keeps across an upgrade can be tested without a cluster.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use serde_json::{json, Value};

/// (resource, kind, namespaced).
type Resource = (&'static str, &'static str, bool);

/// (group/version, resources) for every kind the chart renders.
const KINDS: [(&str, &[Resource]); 5] = [
    (
        "v1",
        &[
            ("secrets", "Secret", true),
            ("configmaps", "ConfigMap", true),
            ("serviceaccounts", "ServiceAccount", true),
            ("services", "Service", true),
            ("namespaces", "Namespace", false),
        ],
    ),
    (
        "apps/v1",
        &[
            ("daemonsets", "DaemonSet", true),
            ("deployments", "Deployment", true),
        ],
    ),
    (
        "rbac.authorization.k8s.io/v1",
        &[
            ("clusterroles", "ClusterRole", false),
            ("clusterrolebindings", "ClusterRoleBinding", false),
        ],
    ),
    (
        "policy/v1",
        &[("poddisruptionbudgets", "PodDisruptionBudget", true)],
    ),
    (
        "networking.k8s.io/v1",
        &[("networkpolicies", "NetworkPolicy", true)],
    ),
];

pub struct HelmApi {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    kubeconfig: PathBuf,
}

impl HelmApi {
    /// Serves `objects` (each at its API path, e.g.
    /// `/api/v1/namespaces/tenantflow/secrets/tenantflow-tls`) until dropped.
    pub fn start(objects: Vec<(String, Value)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    answer(c, &objects);
                }
            }
        });
        let kubeconfig = std::env::temp_dir().join(format!(
            "tf-helm-api-{}-{port}.kubeconfig",
            std::process::id()
        ));
        let cfg = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: x\n\
             clusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\n\
             contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n"
        );
        std::fs::write(&kubeconfig, cfg).unwrap();
        HelmApi {
            port,
            stop,
            thread: Some(thread),
            kubeconfig,
        }
    }

    /// The kubeconfig pointing at this server (for `KUBECONFIG`).
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }
}

impl Drop for HelmApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// One request, one answer, connection closed.
fn answer(conn: TcpStream, objects: &[(String, Value)]) {
    let mut reader = BufReader::new(&conn);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Headers are read and ignored up to the blank line.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let path = request
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/");
    let found = request
        .starts_with("GET ")
        .then(|| body(path, objects))
        .flatten();
    let (status, body) = match found {
        Some(b) => ("200 OK", b),
        None => (
            "404 Not Found",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404}),
        ),
    };
    let body = body.to_string();
    let mut out = &conn;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

fn body(path: &str, objects: &[(String, Value)]) -> Option<Value> {
    let resources = |gv: &str, kinds: &[Resource]| {
        json!({"kind": "APIResourceList", "groupVersion": gv, "resources": kinds.iter().map(
            |(name, kind, namespaced)| json!({"name": name, "singularName": kind.to_lowercase(),
                "namespaced": namespaced, "kind": kind, "verbs": ["get", "list"]})
        ).collect::<Vec<_>>()})
    };
    match path {
        "/version" => Some(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"})),
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"]})),
        "/apis" => Some(json!({"kind": "APIGroupList", "apiVersion": "v1",
            "groups": KINDS[1..].iter().map(|(gv, _)| {
                let (group, version) = gv.split_once('/').unwrap();
                let v = json!({"groupVersion": gv, "version": version});
                json!({"name": group, "versions": [v.clone()], "preferredVersion": v})
            }).collect::<Vec<_>>()})),
        "/api/v1" => Some(resources("v1", KINDS[0].1)),
        _ => KINDS
            .iter()
            .find(|(gv, _)| path.strip_prefix("/apis/") == Some(gv))
            .map(|(gv, kinds)| resources(gv, kinds))
            .or_else(|| {
                objects
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, v)| v.clone())
            }),
    }
}
