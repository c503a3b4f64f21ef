//! A synthetic Kubernetes API server: no API server can run here, so this one serves what
//! the agent and the index read of it, following the wire format of the real one — pods,
//! namespaces, nodes and services, generated on demand for any size (200k pods without
//! holding them), plus fixed objects (the lab's). Lists are paged with continue tokens,
//! or whole from the "watch cache" for `resourceVersion=0`; watches stream NDJSON events
//! with BOOKMARKs, initial events for watch-lists, a `spec.nodeName` field selector for
//! pods. Failures on demand: a 410 Gone as an ERROR event or as the HTTP status, a
//! resourceVersion that moves backwards (etcd restored: "too large resource version"),
//! and an outage (503 to everything). Pods come compact or at the size a real API server
//! serves them (about 6.8 KB: managedFields, containers, env, probes, statuses). Every
//! request is counted per client (by bearer token): requests, body bytes, watches open
//! now and ever, and what each asked.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use serde_json::{json, Value};

/// The generated part of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub pods: u64,
    pub nodes: u64,
    pub namespaces: u64,
    pub services: u64,
}

const KINDS: [&str; 4] = ["pods", "namespaces", "nodes", "services"];
/// The resourceVersion of the initial state.
const BASE_RV: u64 = 1000;

/// What one client did.
#[derive(Clone, Debug, Default)]
pub struct ClientStats {
    pub requests: u64,
    /// Requests refused with an error status (the server down, a 410, a version ahead).
    pub refused: u64,
    pub bytes: u64,
    pub watches_open: u64,
    /// Every watch request: `kind?fieldSelector` (empty selector: cluster-wide).
    pub watches: Vec<String>,
    /// Every list request: `kind?fieldSelector`.
    pub lists: Vec<String>,
}

struct Event {
    rv: u64,
    kind: &'static str,
    node: Option<String>,
    line: String,
}

struct Model {
    size: Size,
    rv: u64,
    /// Fixed objects by kind, in order.
    fixed: BTreeMap<&'static str, Vec<Value>>,
    /// Generated pods changed since the start: id → address (None: deleted).
    pods: BTreeMap<u64, Option<String>>,
    next_pod: u64,
    events: Vec<Event>,
    /// (client, kind) whose next watch is answered 410 Gone (an ERROR event in a 200
    /// stream): every client's version is compacted away, each learns it on its own.
    gone: Vec<(String, &'static str)>,
    /// (client, kind) whose next watch is answered with the HTTP status 410.
    gone_status: Vec<(String, &'static str)>,
    /// Every request is answered 503 (the API server is away).
    down: bool,
    /// Pods at the size a real API server serves them.
    realistic: bool,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    clients: HashMap<String, ClientStats>,
    /// Token → user (TokenReview), and the non-resource paths each user may get.
    users: HashMap<String, String>,
    paths: HashMap<String, Vec<String>>,
    /// Reviews asked: (kind, token or user, path).
    reviews: Vec<(String, String, String)>,
}

pub struct KubeApi {
    state: Arc<(Mutex<Model>, Condvar)>,
    pub addr: String,
}

fn kind_of(v: &Value) -> Option<&'static str> {
    match v["kind"].as_str()? {
        "Pod" => Some("pods"),
        "Namespace" => Some("namespaces"),
        "Node" => Some("nodes"),
        "Service" => Some("services"),
        _ => None,
    }
}

/// The address of generated pod `i` at the start: 10.64.0.0/10, away from the lab's ranges.
pub fn pod_ip(i: u64) -> String {
    format!("10.{}.{}.{}", 64 + (i >> 16), (i >> 8) & 255, i & 255)
}

pub fn pod_name(i: u64) -> String {
    format!("gen-{i}")
}

pub fn pod_namespace(size: &Size, i: u64) -> String {
    format!("ns-{}", i % size.namespaces.max(1))
}

fn pod_node(size: &Size, i: u64) -> String {
    format!("node-{}", i % size.nodes.max(1))
}

/// The recorded shape of a real pod (tests/fixtures/kube-api/pod-realistic.json), split at
/// its `{{FIELD}}` placeholders once, so 200k of them render quickly.
fn realistic_parts() -> &'static Vec<(String, Option<String>)> {
    static PARTS: std::sync::OnceLock<Vec<(String, Option<String>)>> = std::sync::OnceLock::new();
    PARTS.get_or_init(|| {
        let p =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/kube-api/pod-realistic.json");
        let text = std::fs::read_to_string(p).expect("pod-realistic.json");
        let mut out = Vec::new();
        let mut rest = text.trim_end();
        while let Some(at) = rest.find("{{") {
            let end = rest[at..].find("}}").expect("closed placeholder") + at;
            out.push((rest[..at].to_owned(), Some(rest[at + 2..end].to_owned())));
            rest = &rest[end + 2..];
        }
        out.push((rest.to_owned(), None));
        out
    })
}

/// Generated pod `i` as a real API server serves it (about 6.8 KB of JSON).
pub fn realistic_pod(size: &Size, i: u64) -> String {
    realistic_pod_json(size, i, &pod_ip(i), BASE_RV)
}

/// A generated pod at the size real ones have (about 6.8 KB).
fn realistic_pod_json(size: &Size, i: u64, ip: &str, rv: u64) -> String {
    let mut out = String::with_capacity(7 * 1024);
    for (text, field) in realistic_parts() {
        out.push_str(text);
        match field.as_deref() {
            Some("NAME") => out.push_str(&pod_name(i)),
            Some("NS") => out.push_str(&pod_namespace(size, i)),
            Some("APP") => out.push_str(&format!("gen-{}", i / 10)),
            Some("UID") => out.push_str(&format!("00000000-0000-4000-8000-{i:012x}")),
            Some("RV") => out.push_str(&rv.to_string()),
            Some("IP") => out.push_str(ip),
            Some("NODE") => out.push_str(&pod_node(size, i)),
            Some(other) => panic!("unknown placeholder {other}"),
            None => {}
        }
    }
    out
}

/// A generated pod as the API server sends it, with the fields real ones carry and the
/// agent must skip (managedFields, containers, conditions).
fn compact_pod_json(size: &Size, i: u64, ip: &str, rv: u64) -> String {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod_name(i), "namespace": pod_namespace(size, i),
            "uid": format!("00000000-0000-4000-8000-{i:012x}"),
            "resourceVersion": rv.to_string(),
            "labels": {"app": format!("gen-{}", i / 10), "pod-template-hash": "5d4f8c7b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("gen-{}-5d4f8c7b9", i / 10), "uid": "1", "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:podIP": {}}}}],
        },
        "spec": {"nodeName": pod_node(size, i), "containers": [{"name": "app", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]},
    })
    .to_string()
}

fn pod_json(m: &Model, i: u64, ip: &str, rv: u64) -> String {
    if m.realistic {
        realistic_pod_json(&m.size, i, ip, rv)
    } else {
        compact_pod_json(&m.size, i, ip, rv)
    }
}

fn generated(m: &Model, kind: &str, i: u64) -> String {
    let size = &m.size;
    match kind {
        "namespaces" => json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{i}"), "resourceVersion": BASE_RV.to_string(),
                "labels": {"tenant": format!("t-{}", i % 20)}}})
        .to_string(),
        "nodes" => json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": format!("node-{i}"), "resourceVersion": BASE_RV.to_string()},
            "status": {"addresses": [{"type": "InternalIP",
                "address": format!("172.20.{}.{}", i >> 8, i & 255)}],
                "images": [{"names": ["mcr.microsoft.com/oss/kubernetes/pause:3.6"], "sizeBytes": 300000}]}})
        .to_string(),
        "services" => json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % size.namespaces.max(1)),
                "resourceVersion": BASE_RV.to_string()},
            "spec": {"clusterIP": format!("172.21.{}.{}", i >> 8, i & 255)}})
        .to_string(),
        _ => pod_json(m, i, &pod_ip(i), BASE_RV),
    }
}

impl Model {
    fn count(&self, kind: &str) -> u64 {
        match kind {
            "pods" => self.next_pod,
            "namespaces" => self.size.namespaces,
            "nodes" => self.size.nodes,
            _ => self.size.services,
        }
    }

    /// Generated object `i` of `kind` as it is now (None: deleted), with its node.
    fn object(&self, kind: &str, i: u64) -> Option<(String, Option<String>)> {
        if kind != "pods" {
            return Some((generated(self, kind, i), None));
        }
        let node = Some(pod_node(&self.size, i));
        match self.pods.get(&i) {
            Some(None) => None,
            Some(Some(ip)) => Some((pod_json(self, i, ip, self.rv), node)),
            None if i < self.size.pods => Some((generated(self, kind, i), node)),
            None => None,
        }
    }

    /// Every (client, kind) pair, for expiring every client's watches.
    fn every_client_kind(&self) -> Vec<(String, &'static str)> {
        self.clients
            .keys()
            .flat_map(|c| KINDS.map(|k| (c.clone(), k)))
            .collect()
    }

    fn record(&mut self, kind: &'static str, typ: &str, object: &str, node: Option<String>) {
        self.rv += 1;
        self.events.push(Event {
            rv: self.rv,
            kind,
            node,
            line: format!("{{\"type\":\"{typ}\",\"object\":{object}}}\n"),
        });
    }
}

/// One request's target.
struct Request {
    kind: &'static str,
    watch: bool,
    rv: Option<u64>,
    limit: Option<u64>,
    cont: Option<String>,
    node: Option<String>,
    bookmarks: bool,
    initial_events: bool,
    token: String,
}

/// Percent-decoding of one query value.
fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            v.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(c)) => {
                out.push(c);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse(head: &str) -> Option<Request> {
    let target = head.split_whitespace().nth(1)?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let kind = KINDS.into_iter().find(|k| path == format!("/api/v1/{k}"))?;
    let q: HashMap<&str, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, unescape(v)))
        .collect();
    let token = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.eq_ignore_ascii_case("authorization"))
                .then(|| v.trim().trim_start_matches("Bearer ").to_owned())
        })
        .unwrap_or_default();
    Some(Request {
        kind,
        watch: q.get("watch").is_some_and(|v| v == "true" || v == "1"),
        rv: q.get("resourceVersion").and_then(|v| v.parse().ok()),
        limit: q.get("limit").and_then(|v| v.parse().ok()),
        cont: q.get("continue").cloned(),
        node: q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_owned)),
        bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
        initial_events: q.get("sendInitialEvents").is_some_and(|v| v == "true"),
        token,
    })
}

/// Writes a chunked body, counting its bytes for the client.
struct Chunked<'a> {
    conn: &'a mut TcpStream,
    bytes: u64,
}

impl Chunked<'_> {
    fn send(&mut self, s: &str) -> std::io::Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        write!(self.conn, "{:x}\r\n{s}\r\n", s.len())?;
        self.bytes += s.len() as u64;
        Ok(())
    }
    fn end(&mut self) -> std::io::Result<()> {
        self.conn.write_all(b"0\r\n\r\n")?;
        self.conn.flush()
    }
}

impl KubeApi {
    /// Serve on 127.0.0.1 (a free port) in this network namespace, or inside `netns`.
    pub fn start(size: Size, fixed: Vec<Value>, netns: Option<&str>) -> Self {
        let mut by_kind: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
        for mut v in fixed {
            if let Some(k) = kind_of(&v) {
                v["metadata"]["resourceVersion"] = json!(BASE_RV.to_string());
                by_kind.entry(k).or_default().push(v);
            }
        }
        let state = Arc::new((
            Mutex::new(Model {
                size,
                rv: BASE_RV,
                fixed: by_kind,
                pods: BTreeMap::new(),
                next_pod: size.pods,
                events: Vec::new(),
                gone: Vec::new(),
                gone_status: Vec::new(),
                down: false,
                realistic: false,
                watch_epoch: 0,
                clients: HashMap::new(),
                users: HashMap::new(),
                paths: HashMap::new(),
                reviews: Vec::new(),
            }),
            Condvar::new(),
        ));
        let (tx, rx) = std::sync::mpsc::channel();
        let (st, netns) = (state.clone(), netns.map(str::to_owned));
        std::thread::spawn(move || {
            if let Some(ns) = netns {
                let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns");
                // SAFETY: setns on a valid namespace fd; it affects only this thread.
                assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            }
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            tx.send(listener.local_addr().expect("addr").to_string())
                .unwrap();
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        let addr = rx.recv().expect("listening");
        Self { state, addr }
    }

    /// A kubeconfig for one client (its token names it in the stats).
    pub fn kubeconfig(&self, token: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "tf-kubeapi-{}-{token}.yaml",
            self.addr.replace([':', '.'], "-")
        ));
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: synthetic\n  cluster: {{server: \"http://{}\"}}\n\
                 users:\n- name: u\n  user: {{token: {token}}}\n\
                 contexts:\n- name: c\n  context: {{cluster: synthetic, user: u}}\ncurrent-context: c\n",
                self.addr
            ),
        )
        .expect("kubeconfig");
        p
    }

    fn change(&self, f: impl FnOnce(&mut Model)) {
        let (m, cv) = &*self.state;
        f(&mut m.lock().unwrap());
        cv.notify_all();
    }

    /// A new generated pod at `ip` (ADDED); returns its id.
    pub fn create_pod(&self, ip: &str) -> u64 {
        let mut id = 0;
        self.change(|m| {
            id = m.next_pod;
            m.next_pod += 1;
            m.pods.insert(id, Some(ip.to_owned()));
            let line = pod_json(m, id, ip, m.rv + 1);
            m.record("pods", "ADDED", &line, Some(pod_node(&m.size, id)));
        });
        id
    }

    /// Generated pod `id` now has address `ip` (MODIFIED).
    pub fn move_pod(&self, id: u64, ip: &str) {
        self.change(|m| {
            m.pods.insert(id, Some(ip.to_owned()));
            let line = pod_json(m, id, ip, m.rv + 1);
            m.record("pods", "MODIFIED", &line, Some(pod_node(&m.size, id)));
        });
    }

    /// Generated pod `id` is deleted (DELETED, with its last state).
    pub fn delete_pod(&self, id: u64) {
        self.change(|m| {
            let Some((_, node)) = m.object("pods", id) else {
                return;
            };
            let ip = m
                .pods
                .get(&id)
                .cloned()
                .flatten()
                .unwrap_or_else(|| pod_ip(id));
            m.pods.insert(id, None);
            let line = pod_json(m, id, &ip, m.rv + 1);
            m.record("pods", "DELETED", &line, node);
        });
    }

    /// Deleted without an event, as if while every watch was down (only a relist shows it).
    pub fn delete_pod_silently(&self, id: u64) {
        self.change(|m| {
            m.pods.insert(id, None);
            m.rv += 1;
        });
    }

    /// Every open watch ends, and each kind's next watch is answered 410 Gone (the
    /// resourceVersion was compacted away): every watcher must relist.
    pub fn force_gone(&self) {
        self.change(|m| {
            m.gone = m.every_client_kind();
            m.watch_epoch += 1;
        });
    }

    /// Every open watch ends, and each kind's next watch is answered with the HTTP status
    /// 410 (not an event in a stream), as some API server paths do.
    pub fn force_gone_status(&self) {
        self.change(|m| {
            m.gone_status = m.every_client_kind();
            m.watch_epoch += 1;
        });
    }

    /// etcd restored from a backup: the resourceVersion moves `by` backwards, every open
    /// watch ends, and a watch from a version past the current one is answered "too
    /// large resource version" (504), as the API server does.
    pub fn restore_backwards(&self, by: u64) {
        self.change(|m| {
            m.rv = m.rv.saturating_sub(by).max(BASE_RV);
            m.events.clear();
            m.watch_epoch += 1;
        });
    }

    /// The API server goes away (`true`: every open watch ends, every request is answered
    /// 503) or comes back.
    pub fn set_down(&self, down: bool) {
        self.change(|m| {
            m.down = down;
            m.watch_epoch += 1;
        });
    }

    /// Pods at the size a real API server serves them (about 6.8 KB each), from now on.
    pub fn set_realistic(&self, on: bool) {
        self.change(|m| m.realistic = on);
    }

    /// The resourceVersion now.
    pub fn resource_version(&self) -> u64 {
        self.state.0.lock().unwrap().rv
    }

    /// `token` authenticates as `user`, whom RBAC grants `get` on the non-resource `paths`.
    pub fn grant(&self, token: &str, user: &str, paths: &[&str]) {
        self.change(|m| {
            m.users.insert(token.into(), user.into());
            m.paths
                .insert(user.into(), paths.iter().map(|p| p.to_string()).collect());
        });
    }

    /// Every TokenReview and SubjectAccessReview asked: (kind, token or user, path).
    pub fn reviews(&self) -> Vec<(String, String, String)> {
        self.state.0.lock().unwrap().reviews.clone()
    }

    pub fn stats(&self, token: &str) -> ClientStats {
        let (m, _) = &*self.state;
        m.lock()
            .unwrap()
            .clients
            .get(token)
            .cloned()
            .unwrap_or_default()
    }

    /// The truth: every generated pod's address now → `namespace/name`.
    pub fn generated_pods(&self) -> BTreeMap<String, String> {
        let (m, _) = &*self.state;
        let m = m.lock().unwrap();
        let mut out = BTreeMap::new();
        for i in 0..m.next_pod {
            let ip = match m.pods.get(&i) {
                Some(None) => continue,
                Some(Some(ip)) => ip.clone(),
                None if i < m.size.pods => pod_ip(i),
                None => continue,
            };
            out.insert(ip, format!("{}/{}", pod_namespace(&m.size, i), pod_name(i)));
        }
        out
    }
}

fn serve(conn: TcpStream, st: &(Mutex<Model>, Condvar)) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    // HTTP/1.1 keep-alive: requests one after another on this connection.
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        if std::env::var_os("TF_KUBEAPI_TRACE").is_some() {
            eprintln!("kubeapi: {}", head.lines().next().unwrap_or(""));
        }
        if head.starts_with("POST ") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            std::io::Read::read_exact(&mut r, &mut body)?;
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let out = review(&head, &req, &mut st.0.lock().unwrap()).to_string();
            write!(
                conn,
                "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{out}",
                out.len()
            )?;
            continue;
        }
        let Some(req) = parse(&head) else {
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let refused = {
            let mut m = st.0.lock().unwrap();
            let r = refusal(&req, &mut m);
            if r.is_some() {
                m.clients.entry(req.token.clone()).or_default().refused += 1;
            }
            r
        };
        if let Some((status, body)) = refused {
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        }
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        let mut body = Chunked {
            conn: &mut conn,
            bytes: 0,
        };
        let what = format!(
            "{}?{}",
            req.kind,
            req.node
                .as_deref()
                .map(|n| format!("spec.nodeName={n}"))
                .unwrap_or_default()
        );
        {
            let mut m = st.0.lock().unwrap();
            let c = m.clients.entry(req.token.clone()).or_default();
            c.requests += 1;
            if req.watch {
                c.watches.push(what);
                c.watches_open += 1;
            } else {
                c.lists.push(what);
            }
        }
        let result = if req.watch {
            watch(&req, st, &mut body)
        } else {
            list(&req, st, &mut body)
        };
        let bytes = body.bytes;
        {
            let mut m = st.0.lock().unwrap();
            let c = m.clients.entry(req.token.clone()).or_default();
            c.bytes += bytes;
            if req.watch {
                c.watches_open -= 1;
            }
        }
        result?;
    }
}

/// A request the server refuses instead of answering: everything while it is down, a
/// watch due a 410 status, a watch from a version it has not reached.
fn refusal(req: &Request, m: &mut Model) -> Option<(&'static str, String)> {
    let status = |code: u16, reason: &str, message: String, details: &str| {
        format!("{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"{message}\",\"reason\":\"{reason}\",{details}\"code\":{code}}}")
    };
    if m.down {
        let body = status(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request".into(),
            "",
        );
        return Some(("503 Service Unavailable", body));
    }
    if !req.watch {
        return None;
    }
    if let Some(i) = m
        .gone_status
        .iter()
        .position(|(c, k)| *c == req.token && *k == req.kind)
    {
        m.gone_status.remove(i);
        let message = format!(
            "too old resource version: {} ({})",
            req.rv.unwrap_or(0),
            m.rv
        );
        return Some(("410 Gone", status(410, "Expired", message, "")));
    }
    match req.rv {
        Some(rv) if rv > m.rv => {
            let message = format!("Too large resource version: {rv}, current: {}", m.rv);
            let details = "\"details\":{\"causes\":[{\"reason\":\"ResourceVersionTooLarge\",\"message\":\"Too large resource version\"}],\"retryAfterSeconds\":1},";
            Some((
                "504 Gateway Timeout",
                status(504, "Timeout", message, details),
            ))
        }
        _ => None,
    }
}

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-auth")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// A TokenReview or a SubjectAccessReview for a non-resource path, answered with the
/// recorded API payloads.
fn review(head: &str, req: &Value, m: &mut Model) -> Value {
    if head.contains("/tokenreviews") {
        let token = req["spec"]["token"].as_str().unwrap_or("").to_owned();
        m.reviews
            .push(("TokenReview".into(), token.clone(), String::new()));
        let mut v = match m.users.get(&token) {
            Some(user) => {
                let mut v = fixture("tokenreview-authenticated.json");
                v["status"]["user"]["username"] = user.clone().into();
                v
            }
            None => fixture("tokenreview-unauthenticated.json"),
        };
        v["spec"]["token"] = token.into();
        return v;
    }
    let user = req["spec"]["user"].as_str().unwrap_or("").to_owned();
    let attrs = &req["spec"]["nonResourceAttributes"];
    let path = attrs["path"].as_str().unwrap_or("").to_owned();
    m.reviews
        .push(("SubjectAccessReview".into(), user.clone(), path.clone()));
    let allowed = attrs["verb"] == "get" && m.paths.get(&user).is_some_and(|p| p.contains(&path));
    let mut v = fixture(if allowed {
        "subjectaccessreview-allowed.json"
    } else {
        "subjectaccessreview-denied.json"
    });
    v["spec"] = req["spec"].clone();
    v
}

fn matches_node(req: &Request, node: Option<&str>) -> bool {
    req.node.is_none() || req.node.as_deref() == node
}

/// Fixed objects then generated ones, from position `from`, at most `limit`; returns the
/// lines and the position after them (None: the end).
fn items(m: &Model, req: &Request, from: u64, limit: u64) -> (Vec<String>, Option<u64>) {
    let fixed = m.fixed.get(req.kind).map_or(&[][..], |v| &v[..]);
    let total = fixed.len() as u64 + m.count(req.kind);
    let mut out = Vec::new();
    let mut pos = from;
    while pos < total && (out.len() as u64) < limit {
        let (obj, node) = if pos < fixed.len() as u64 {
            let v = &fixed[pos as usize];
            let node = v["spec"]["nodeName"].as_str().map(str::to_owned);
            (Some(v.to_string()), node)
        } else {
            match m.object(req.kind, pos - fixed.len() as u64) {
                Some((o, n)) => (Some(o), n),
                None => (None, None),
            }
        };
        pos += 1;
        if let Some(o) = obj.filter(|_| matches_node(req, node.as_deref())) {
            out.push(o);
        }
    }
    (out, (pos < total).then_some(pos))
}

fn list(req: &Request, st: &(Mutex<Model>, Condvar), body: &mut Chunked) -> std::io::Result<()> {
    // resourceVersion=0 is served from the watch cache, which ignores `limit`.
    let limit = match (req.rv, req.limit) {
        (Some(0), _) | (_, None) => u64::MAX,
        (_, Some(l)) => l,
    };
    let (rv, from) = match req.cont.as_deref().and_then(|c| c.split_once(':')) {
        Some((rv, pos)) => (rv.parse().unwrap_or(0), pos.parse().unwrap_or(0)),
        None => (st.0.lock().unwrap().rv, 0),
    };
    let kind = match req.kind {
        "pods" => "PodList",
        "namespaces" => "NamespaceList",
        "nodes" => "NodeList",
        _ => "ServiceList",
    };
    // Pages of 500 are built under the lock, written without it.
    let mut pos = from;
    let mut first = true;
    let mut wrote = false;
    let mut remaining = limit;
    loop {
        let (lines, next) = {
            let m = st.0.lock().unwrap();
            items(&m, req, pos, remaining.min(500))
        };
        let head = if first {
            first = false;
            let cont = match next {
                Some(n) if limit != u64::MAX && lines.len() as u64 >= limit.min(500) => {
                    format!(",\"continue\":\"{rv}:{n}\"")
                }
                _ => String::new(),
            };
            format!("{{\"kind\":\"{kind}\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"{rv}\"{cont}}},\"items\":[")
        } else {
            String::new()
        };
        let mut chunk = head;
        for l in &lines {
            if std::mem::replace(&mut wrote, true) {
                chunk.push(',');
            }
            chunk.push_str(l);
        }
        body.send(&chunk)?;
        remaining = remaining.saturating_sub(lines.len() as u64);
        match next {
            Some(n) if remaining > 0 => pos = n,
            _ => break,
        }
    }
    body.send("]}")?;
    body.end()
}

fn bookmark(kind: &str, rv: u64, initial_end: bool) -> String {
    let k = match kind {
        "pods" => "Pod",
        "namespaces" => "Namespace",
        "nodes" => "Node",
        _ => "Service",
    };
    let ann = if initial_end {
        ",\"annotations\":{\"k8s.io/initial-events-end\":\"true\"}"
    } else {
        ""
    };
    format!("{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{k}\",\"apiVersion\":\"v1\",\"metadata\":{{\"resourceVersion\":\"{rv}\"{ann}}}}}}}\n")
}

fn watch(req: &Request, st: &(Mutex<Model>, Condvar), body: &mut Chunked) -> std::io::Result<()> {
    let (m, cv) = st;
    let (epoch, mut sent) = {
        let mut g = m.lock().unwrap();
        if let Some(i) = g
            .gone
            .iter()
            .position(|(c, k)| *c == req.token && *k == req.kind)
        {
            g.gone.remove(i);
            drop(g);
            body.send(&format!(
                "{{\"type\":\"ERROR\",\"object\":{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"too old resource version: {} ({})\",\"reason\":\"Expired\",\"code\":410}}}}\n",
                req.rv.unwrap_or(0),
                BASE_RV
            ))?;
            return body.end();
        }
        (g.watch_epoch, req.rv.unwrap_or(g.rv))
    };
    if req.initial_events {
        // A watch-list: the current state as ADDED events, then the end bookmark.
        let mut pos = 0;
        loop {
            let (lines, next, rv) = {
                let g = m.lock().unwrap();
                let (l, n) = items(&g, req, pos, 500);
                (l, n, g.rv)
            };
            for l in lines {
                body.send(&format!("{{\"type\":\"ADDED\",\"object\":{l}}}\n"))?;
            }
            sent = rv;
            match next {
                Some(n) => pos = n,
                None => break,
            }
        }
        body.send(&bookmark(req.kind, sent, true))?;
    }
    loop {
        let (lines, rv, ended) = {
            let mut g = m.lock().unwrap();
            let has_new = |g: &Model| {
                g.watch_epoch != epoch
                    || g.events
                        .last()
                        .is_some_and(|e| e.rv > sent && e.kind == req.kind)
            };
            if !has_new(&g) {
                g = cv.wait_timeout(g, Duration::from_secs(1)).unwrap().0;
            }
            let lines: Vec<String> = g
                .events
                .iter()
                .filter(|e| {
                    e.rv > sent && e.kind == req.kind && matches_node(req, e.node.as_deref())
                })
                .map(|e| e.line.clone())
                .collect();
            (lines, g.rv, g.watch_epoch != epoch)
        };
        for l in &lines {
            body.send(l)?;
        }
        sent = rv;
        if ended {
            return body.end();
        }
        if lines.is_empty() && req.bookmarks {
            body.send(&bookmark(req.kind, rv, false))?;
        }
    }
}
