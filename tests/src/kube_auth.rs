//! A stand-in for the API server's TokenReview and SubjectAccessReview endpoints, answering
//! with recorded API payloads (tests/fixtures/kube-auth) adapted to a small policy, inside a
//! lab namespace. It records every review it was asked, and tokens can be revoked.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use serde_json::Value;

/// Who each token is and where it may read flows (`None`: every namespace).
#[derive(Clone, Debug)]
pub struct Grant {
    pub user: String,
    pub namespaces: Option<BTreeSet<String>>,
    /// May get the non-resource URL /metrics.
    pub metrics: bool,
}

#[derive(Default)]
struct State {
    tokens: BTreeMap<String, Grant>,
    /// (kind, user or token, namespace) of every review asked, in order.
    asked: Vec<(String, String, Option<String>)>,
}

pub struct KubeAuth {
    state: Arc<Mutex<State>>,
    pub addr: String,
    pub kubeconfig: PathBuf,
}

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kube-auth")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

impl KubeAuth {
    /// Serve on 127.0.0.1:`port` inside `ns`; writes a kubeconfig pointing at it.
    pub fn start(ns: &str, port: u16, tokens: BTreeMap<String, Grant>) -> Self {
        let state = Arc::new(Mutex::new(State {
            tokens,
            asked: Vec::new(),
        }));
        let addr = format!("127.0.0.1:{port}");
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns2, addr2, st) = (ns.to_owned(), addr.clone(), state.clone());
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns2}")).unwrap();
            // SAFETY: setns on a valid namespace fd; it affects only this thread.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let listener = TcpListener::bind(&addr2).unwrap();
            tx.send(()).unwrap();
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &st);
                });
            }
        });
        rx.recv().unwrap();
        let kubeconfig = std::env::temp_dir().join(format!("tf-kubeauth-{ns}.yaml"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster: {{server: \"http://{addr}\"}}\n\
                 users:\n- name: agent\n  user: {{token: agent-service-account-token}}\n\
                 contexts:\n- name: lab\n  context: {{cluster: lab, user: agent}}\ncurrent-context: lab\n"
            ),
        )
        .unwrap();
        Self {
            state,
            addr,
            kubeconfig,
        }
    }

    /// The token stops authenticating (as when its service account is deleted).
    pub fn revoke(&self, token: &str) {
        self.state.lock().unwrap().tokens.remove(token);
    }

    /// Every review asked so far: (kind, who, namespace).
    pub fn asked(&self) -> Vec<(String, String, Option<String>)> {
        self.state.lock().unwrap().asked.clone()
    }
}

fn serve_one(conn: std::net::TcpStream, st: &Mutex<State>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut head = String::new();
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let out = answer(&path, &req, st);
    let text = out.to_string();
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    conn.flush()
}

fn answer(path: &str, req: &Value, st: &Mutex<State>) -> Value {
    let mut s = st.lock().unwrap();
    if path.contains("/tokenreviews") {
        let token = req["spec"]["token"].as_str().unwrap_or("").to_owned();
        s.asked.push(("TokenReview".into(), token.clone(), None));
        return match s.tokens.get(&token) {
            Some(g) => {
                let mut v = fixture("tokenreview-authenticated.json");
                v["spec"]["token"] = token.into();
                v["status"]["user"]["username"] = g.user.clone().into();
                v
            }
            None => {
                let mut v = fixture("tokenreview-unauthenticated.json");
                v["spec"]["token"] = token.into();
                v
            }
        };
    }
    let user = req["spec"]["user"].as_str().unwrap_or("").to_owned();
    if let Some(path) = req["spec"]["nonResourceAttributes"]["path"].as_str() {
        s.asked.push((
            "SubjectAccessReview".into(),
            user.clone(),
            Some(path.to_owned()),
        ));
        let allowed = req["spec"]["nonResourceAttributes"]["verb"] == "get"
            && path == "/metrics"
            && s.tokens.values().any(|g| g.user == user && g.metrics);
        let mut v = fixture(if allowed {
            "subjectaccessreview-allowed.json"
        } else {
            "subjectaccessreview-denied.json"
        });
        v["spec"] = req["spec"].clone();
        return v;
    }
    let attrs = &req["spec"]["resourceAttributes"];
    let ns = attrs["namespace"].as_str().map(str::to_owned);
    s.asked
        .push(("SubjectAccessReview".into(), user.clone(), ns.clone()));
    let right_resource =
        attrs["group"] == "tenantflow.io" && attrs["resource"] == "flows" && attrs["verb"] == "get";
    let allowed = right_resource
        && s.tokens.values().any(|g| {
            g.user == user
                && match (&g.namespaces, &ns) {
                    (None, _) => true,
                    (Some(set), Some(n)) => set.contains(n),
                    (Some(_), None) => false,
                }
        });
    let mut v = fixture(if allowed {
        "subjectaccessreview-allowed.json"
    } else {
        "subjectaccessreview-denied.json"
    });
    v["spec"] = req["spec"].clone();
    v
}
