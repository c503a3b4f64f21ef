//! A simulated agent following the identity index: reads the stream the way an agent does
//! (resume with epoch and version, full resync otherwise, reconnect when it breaks) and
//! keeps the pod table (address → namespace/name), so many of them can run in one test
//! and be compared with the synthetic API server's truth.

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde_json::Value;

#[derive(Clone, Debug, Default)]
pub struct View {
    pub epoch: u64,
    pub version: u64,
    /// Address → `namespace/name` of the pod holding it.
    pub pods: BTreeMap<String, String>,
    /// A complete snapshot was received.
    pub synced: bool,
    pub connected: bool,
    pub resyncs: u64,
    /// Delta frames (after a snapshot) and their bytes.
    pub deltas: u64,
    pub delta_bytes: u64,
    pub heartbeats: u64,
    /// HTTP status of the last answer.
    pub status: u16,
    /// The index says its own inventory is not current (from `synced` and heartbeats).
    pub index_stale: bool,
    /// At the first `synced` of this follower: the version it named and how many pod
    /// addresses the follower held then (a follower is ready only once caught up).
    pub first_synced: Option<(u64, usize)>,
    /// Pod → its addresses, to drop them when it changes or goes.
    held: HashMap<String, Vec<String>>,
}

pub struct Follower {
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
}

fn pod(o: &Value) -> Option<(String, Vec<String>)> {
    let p = o.get("Pod")?;
    let key = format!("{}/{}", p["namespace"].as_str()?, p["name"].as_str()?);
    let ips = if p["host_network"] == true {
        Vec::new()
    } else {
        p["ips"]
            .as_array()?
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect()
    };
    Some((key, ips))
}

impl View {
    fn forget(&mut self, key: &str) {
        for ip in self.held.remove(key).unwrap_or_default() {
            if self.pods.get(&ip).map(String::as_str) == Some(key) {
                self.pods.remove(&ip);
            }
        }
    }

    fn frame(&mut self, line: &str) {
        let f: Value = serde_json::from_str(line).expect("a frame is JSON");
        if let Some(s) = f.get("snapshot") {
            self.epoch = s["epoch"].as_u64().unwrap();
            self.version = s["version"].as_u64().unwrap();
            self.pods.clear();
            self.held.clear();
            self.synced = false;
            self.resyncs += 1;
        } else if let Some(a) = f.get("apply") {
            if self.synced {
                self.deltas += 1;
                self.delta_bytes += line.len() as u64 + 1;
            }
            self.version = self.version.max(a["v"].as_u64().unwrap());
            if let Some((key, ips)) = pod(&a["object"]) {
                self.forget(&key);
                for ip in &ips {
                    self.pods.insert(ip.clone(), key.clone());
                }
                self.held.insert(key, ips);
            }
        } else if let Some(d) = f.get("delete") {
            self.deltas += 1;
            self.delta_bytes += line.len() as u64 + 1;
            self.version = self.version.max(d["v"].as_u64().unwrap());
            if let Some((key, _)) = pod(&d["object"]) {
                self.forget(&key);
            }
        } else if let Some(s) = f.get("synced") {
            self.version = s["version"].as_u64().unwrap();
            self.synced = true;
            self.index_stale = s["stale"] == true;
            if self.first_synced.is_none() {
                self.first_synced = Some((self.version, self.pods.len()));
            }
        } else if let Some(h) = f.get("heartbeat") {
            self.heartbeats += 1;
            self.index_stale = h["stale"] == true;
        } else {
            panic!("unknown frame {line}");
        }
    }
}

impl Follower {
    /// Follow the index at `addr` (host:port) with bearer `token` until dropped.
    pub fn start(addr: &str, token: &str) -> Self {
        let view = Arc::new(Mutex::new(View::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (v, s, addr, token) = (
            view.clone(),
            stop.clone(),
            addr.to_owned(),
            token.to_owned(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = follow_once(&addr, &token, &v, &s);
                v.lock().unwrap().connected = false;
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self { view, stop }
    }

    pub fn view(&self) -> View {
        self.view.lock().unwrap().clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn follow_once(
    addr: &str,
    token: &str,
    view: &Mutex<View>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let (epoch, after) = {
        let v = view.lock().unwrap();
        (v.epoch, if v.synced { v.version } else { 0 })
    };
    // HTTP/1.0: the body runs until the index closes the connection.
    write!(
        s,
        "GET /v1/identity?epoch={epoch}&after={after} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut status = 0;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if status == 0 {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    view.lock().unwrap().status = status;
    if status != 200 {
        return Ok(());
    }
    view.lock().unwrap().connected = true;
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        view.lock().unwrap().frame(line.trim_end());
    }
    Ok(())
}
