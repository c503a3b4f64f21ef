//! New edges: the first time a source workload reaches a destination workload (or an
//! external kind) on a port, after a learning period, is worth a look: lateral movement
//! walks paths nobody used before.
//!
//! An edge is `source → destination : protocol/port` with both ends named by
//! [`principal`]. Only answered connections (established, reset, replied) make edges: a
//! path that worked. Failed attempts are what `tenantflow_connection_attempts_total` counts.
//!
//! The set keeps a 64-bit FNV-1a hash per edge and the minute it was last used: 12 bytes
//! on disk and about 24 in memory, so the default limit of 65,536 edges costs ~1.5 MiB.
//! Past the limit the least recently used eighth is dropped (counted), and such an edge is
//! new again when it returns. The set and the start of learning are written to `--edge-file`
//! every 30 s when changed and at shutdown (atomically: a temporary file renamed over it), so
//! a restart neither relearns nor re-flags; a kill -9 loses at most the last 30 s of edges.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use thiserror::Error;

use super::principal;
use crate::metric::register;
use crate::{
    classify::{Classification, EndpointIdentity, EndpointKind},
    net::FlowTuple,
};

const MAGIC: &[u8; 8] = b"TFEDGE01";
const HEADER: usize = 8 + 8 + 4;
const ENTRY: usize = 8 + 4;
/// How often a changed set is written.
pub const SAVE_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Edges first seen within this long after learning began are learned, not flagged.
    pub learning: Duration,
    pub max_edges: usize,
    /// Where the set persists (none: memory only, relearned at every start).
    pub file: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum EdgeFileError {
    #[error("edge file {path}: cannot read it: {source}; fix its permissions or point --edge-file elsewhere")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("edge file {path}: {why}; point --edge-file at a regular file of ours (edges are kept in memory only until the agent restarts with one)")]
    Refused {
        path: PathBuf,
        why: crate::input::InputError,
    },
    #[error("edge file {path}: {why}; it was moved to {moved} and learning starts over")]
    Corrupt {
        path: PathBuf,
        why: String,
        moved: PathBuf,
    },
    #[error("edge file {path}: cannot write it: {source}; the agent keeps the edges in memory (fix the hostPath mount or --edge-file)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Edges {
    cfg: EdgeConfig,
    /// Edge hash → minute (since the epoch) last used.
    edges: HashMap<u64, u32>,
    /// When learning began, seconds since the epoch (kept across restarts).
    learning_since: u64,
    dirty: bool,
    last_save: Option<Instant>,
    new_edges: IntCounterVec,
    size: IntGauge,
    evicted: IntCounter,
    learning: IntGauge,
    file_errors: IntCounter,
}

/// FNV-1a, 64 bits: stable across builds and versions, so a persisted set stays valid.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The end a connection reaches: a Service's backend when DNAT (or socket-LB) said which.
fn far_end(k: &Classification) -> &EndpointIdentity {
    match (&k.dst_identity.kind, &k.backend_identity) {
        (EndpointKind::Service, Some(b)) => b,
        _ => &k.dst_identity,
    }
}

/// The edge a connection walks.
pub fn edge_of(k: &Classification, t: &FlowTuple) -> u64 {
    fnv1a(&[
        principal(&k.src_identity).as_bytes(),
        principal(far_end(k)).as_bytes(),
        &[t.proto],
        &t.dport.to_be_bytes(),
    ])
}

impl Edges {
    /// The set from `cfg.file` (or empty). A file that cannot be used is reported, never
    /// fatal: the observer keeps running and learns afresh.
    pub fn open(
        r: &Registry,
        cfg: EdgeConfig,
    ) -> prometheus::Result<(Self, Option<EdgeFileError>)> {
        let new_edges = register(r, IntCounterVec::new(
            Opts::new(
                "tenantflow_new_edges_total",
                "Connections that walked a (source workload -> destination workload or external kind, port) edge never seen before, after the learning period.",
            ),
            &["src_tenant", "dst_tenant", "cross_tenant"],
        ))?;
        let size = register(
            r,
            IntGauge::new("tenantflow_edges", "Edges known (at most --edge-limit)."),
        )?;
        let evicted = register(
            r,
            IntCounter::new(
                "tenantflow_edges_evicted_total",
                "Edges forgotten because --edge-limit was reached (least recently used first).",
            ),
        )?;
        let learning = register(
            r,
            IntGauge::new(
                "tenantflow_edge_learning",
                "1 while edges are learned without being flagged (--edge-learning after the first start).",
            ),
        )?;
        let file_errors = register(
            r,
            IntCounter::new(
                "tenantflow_edge_file_errors_total",
                "Edge file reads or writes that failed (the log names the file and the fix).",
            ),
        )?;
        let mut e = Self {
            cfg,
            edges: HashMap::new(),
            learning_since: crate::net::unix_seconds(),
            dirty: true,
            last_save: None,
            new_edges,
            size,
            evicted,
            learning,
            file_errors,
        };
        let problem = e.load().err();
        if problem.is_some() {
            e.file_errors.inc();
        }
        e.size.set(e.edges.len() as i64);
        Ok((e, problem))
    }

    fn load(&mut self) -> Result<(), EdgeFileError> {
        let Some(path) = self.cfg.file.clone() else {
            return Ok(());
        };
        use crate::input::InputError;
        // Read like every other input: regular files only, bounded, never blocking (a
        // FIFO, `/dev/zero` or a huge sparse file is refused before a byte is read).
        let bytes = match crate::input::read_bytes(
            &path,
            MAX_FILE,
            "an edge file holds at most a few million edges: delete it to learn afresh",
        ) {
            Ok(b) => b,
            Err(InputError::Open(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(InputError::Open(source)) => return Err(EdgeFileError::Read { path, source }),
            Err(InputError::Denied) => {
                let source = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
                return Err(EdgeFileError::Read { path, source });
            }
            Err(why) => {
                // Never written over either: it is not ours.
                self.cfg.file = None;
                return Err(EdgeFileError::Refused { path, why });
            }
        };
        match parse(&bytes) {
            Ok((since, entries)) => {
                self.learning_since = since;
                self.edges = entries.into_iter().collect();
                self.dirty = false;
                self.trim();
                Ok(())
            }
            Err(why) => {
                let moved = path.with_extension("corrupt");
                let _ = std::fs::rename(&path, &moved);
                Err(EdgeFileError::Corrupt { path, why, moved })
            }
        }
    }

    fn learning_until(&self) -> u64 {
        self.learning_since + self.cfg.learning.as_secs()
    }

    /// Record that a connection walked this edge; true if it is new (after learning).
    pub fn walk(&mut self, k: &Classification, t: &FlowTuple) -> bool {
        self.walk_at(k, t, crate::net::unix_seconds())
    }

    fn walk_at(&mut self, k: &Classification, t: &FlowTuple, now: u64) -> bool {
        let minute = (now / 60) as u32;
        let learning = now < self.learning_until();
        self.learning.set(i64::from(learning));
        let edge = edge_of(k, t);
        let new = match self.edges.insert(edge, minute) {
            None => {
                self.dirty = true;
                self.trim();
                self.size.set(self.edges.len() as i64);
                !learning
            }
            Some(before) => {
                self.dirty |= before != minute;
                false
            }
        };
        if new {
            self.new_edges
                .with_label_values(&[
                    k.src_identity.tenant.as_deref().unwrap_or_default(),
                    far_end(k).tenant.as_deref().unwrap_or_default(),
                    if k.cross_tenant { "true" } else { "false" },
                ])
                .inc();
        }
        new
    }

    /// Past the limit: drop the least recently used eighth in one pass.
    fn trim(&mut self) {
        if self.edges.len() <= self.cfg.max_edges {
            return;
        }
        let keep = self.cfg.max_edges - self.cfg.max_edges / 8;
        let mut by_age: Vec<(u32, u64)> = self.edges.iter().map(|(h, m)| (*m, *h)).collect();
        by_age.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, h) in &by_age[keep..] {
            self.edges.remove(&h);
        }
        self.evicted.inc_by((by_age.len() - keep) as u64);
        self.dirty = true;
    }

    /// Write the set if it changed and [`SAVE_EVERY`] passed (or `force`, at shutdown).
    pub fn save(&mut self, now: Instant, force: bool) -> Result<(), EdgeFileError> {
        let Some(path) = self.cfg.file.clone() else {
            return Ok(());
        };
        let due = force
            || self
                .last_save
                .is_none_or(|t| now.duration_since(t) >= SAVE_EVERY);
        if !self.dirty || !due {
            return Ok(());
        }
        self.last_save = Some(now);
        match write_atomically(&path, &self.encode()) {
            Ok(()) => {
                self.dirty = false;
                Ok(())
            }
            Err(source) => {
                self.file_errors.inc();
                Err(EdgeFileError::Write { path, source })
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.edges.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.learning_since.to_le_bytes());
        out.extend_from_slice(&(self.edges.len() as u32).to_le_bytes());
        for (h, m) in &self.edges {
            out.extend_from_slice(&h.to_le_bytes());
            out.extend_from_slice(&m.to_le_bytes());
        }
        out
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }
}

/// The largest edge file read: 64 MiB, over five million edges (the default limit is
/// 65,536, under 800 KB).
const MAX_FILE: u64 = 64 << 20;

fn parse(b: &[u8]) -> Result<(u64, Vec<(u64, u32)>), String> {
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err("not a tenantflow edge file (bad header)".into());
    }
    let since = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")) as usize;
    if b.len() != HEADER + n * ENTRY {
        return Err(format!(
            "says {n} edges but holds {} bytes (cut short or padded)",
            b.len()
        ));
    }
    let entries = b[HEADER..]
        .chunks_exact(ENTRY)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                u32::from_le_bytes(c[8..].try_into().expect("4 bytes")),
            )
        })
        .collect();
    Ok((since, entries))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        classify::{EndpointIdentity, EndpointKind},
        net::{test_tuple, PROTO_TCP},
    };

    fn pod(ns: &str, w: &str, tenant: &str) -> EndpointIdentity {
        EndpointIdentity {
            namespace: Some(ns.into()),
            workload: Some(w.into()),
            tenant: Some(tenant.into()),
            pod: Some(format!("{w}-abc").into()),
            ..crate::test_support::identity(EndpointKind::Pod)
        }
    }

    fn class(src: EndpointIdentity, dst: EndpointIdentity) -> Classification {
        let mut k = crate::test_support::classification();
        k.cross_tenant = src.tenant != dst.tenant;
        k.src_identity = src;
        k.dst_identity = dst;
        k
    }

    fn edges(learning_s: u64, max: usize, file: Option<PathBuf>) -> Edges {
        open(learning_s, max, file).0
    }

    /// The set and the file problem it reported, if any.
    fn open(learning_s: u64, max: usize, file: Option<PathBuf>) -> (Edges, Option<EdgeFileError>) {
        Edges::open(
            &Registry::new(),
            EdgeConfig {
                learning: Duration::from_secs(learning_s),
                max_edges: max,
                file,
            },
        )
        .unwrap()
    }

    #[test]
    fn learned_edges_are_not_new_and_new_ones_are_flagged_once() {
        let mut e = edges(3600, 100, None);
        let t0 = e.learning_since;
        let web_api = class(
            pod("a", "Deployment/web", "alpha"),
            pod("b", "Deployment/api", "beta"),
        );
        let tcp = |port| test_tuple(PROTO_TCP, "10.0.0.1", 40000, "10.0.0.2", port);
        assert!(!e.walk_at(&web_api, &tcp(80), t0 + 10), "learning");
        assert!(!e.walk_at(&web_api, &tcp(80), t0 + 3600), "learned");
        assert!(e.walk_at(&web_api, &tcp(81), t0 + 3600), "another port");
        assert!(!e.walk_at(&web_api, &tcp(81), t0 + 3700));
        let c = e
            .new_edges
            .with_label_values(&["alpha", "beta", "true"])
            .get();
        assert_eq!(c, 1);
    }

    #[test]
    fn the_set_survives_a_restart_and_a_bad_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edges");
        let k = class(
            pod("a", "Deployment/web", "alpha"),
            pod("a", "Deployment/db", "alpha"),
        );
        let t = test_tuple(PROTO_TCP, "10.0.0.1", 40000, "10.0.0.3", 5432);
        let mut e = edges(0, 100, Some(path.clone()));
        assert!(e.walk(&k, &t));
        e.save(Instant::now(), true).unwrap();
        let mut again = edges(0, 100, Some(path.clone()));
        assert_eq!(again.len(), 1);
        assert!(!again.walk(&k, &t), "known from the file");

        std::fs::write(&path, b"TFEDGE01garbage").unwrap();
        let (fresh, problem) = open(0, 100, Some(path.clone()));
        let msg = problem.expect("reported").to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("moved to"),
            "{msg}"
        );
        assert!(fresh.is_empty());
        assert!(path.with_extension("corrupt").exists());
    }

    /// What a careless or hostile `--edge-file` points at is refused before a byte is
    /// read (no memory taken, no open that waits for a writer) and never written over;
    /// edges are kept in memory.
    #[test]
    fn devices_fifos_and_huge_files_are_refused_unread_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let sparse = dir.path().join("sparse");
        let f = std::fs::File::create(&sparse).unwrap();
        f.set_len(4 << 30).unwrap();
        for (path, why) in [
            (&zero, "it is a device, not a regular file"),
            (&fifo, "it is a FIFO, not a regular file"),
            (
                &sparse,
                "it is 4294967296 bytes, over the limit of 67108864",
            ),
        ] {
            let (mut e, problem) = open(0, 100, Some(path.clone()));
            let msg = problem.expect("reported").to_string();
            assert!(
                msg.starts_with(&format!("edge file {}: {why}", path.display())),
                "{msg}"
            );
            assert_eq!(e.file_errors.get(), 1);
            let k = class(
                pod("a", "Deployment/web", "alpha"),
                pod("a", "Deployment/db", "alpha"),
            );
            assert!(e.walk(&k, &test_tuple(PROTO_TCP, "10.0.0.1", 1, "10.0.0.3", 5432)));
            e.save(Instant::now(), true).unwrap();
        }
        let meta = std::fs::symlink_metadata(&zero).unwrap();
        assert!(
            meta.file_type().is_symlink(),
            "the symlink was not written over"
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(std::fs::metadata(&sparse).unwrap().len(), 4 << 30);
    }

    #[test]
    fn the_limit_drops_the_least_recently_used() {
        let mut e = edges(0, 16, None);
        let t0 = e.learning_since;
        let k = class(
            pod("a", "Deployment/web", "alpha"),
            pod("a", "Deployment/db", "alpha"),
        );
        for port in 0..16u16 {
            e.walk_at(
                &k,
                &test_tuple(PROTO_TCP, "10.0.0.1", 1, "10.0.0.3", port),
                t0 + port as u64 * 60,
            );
        }
        assert_eq!(e.len(), 16);
        e.walk_at(
            &k,
            &test_tuple(PROTO_TCP, "10.0.0.1", 1, "10.0.0.3", 100),
            t0 + 9999,
        );
        assert_eq!(
            e.len(),
            14,
            "17 over 16: the least recently used eighth went"
        );
        assert_eq!(e.evicted.get(), 3);
        assert!(
            e.walk_at(
                &k,
                &test_tuple(PROTO_TCP, "10.0.0.1", 1, "10.0.0.3", 0),
                t0 + 10_000
            ),
            "the oldest is new again"
        );
    }

    proptest::proptest! {
        #![proptest_config(crate::fuzz_support::config())]
        /// Mutations of a real edge file (header, entries, cut short, padded): refused with
        /// a reason, never a panic.
        #[test]
        fn fuzz_edge_file_parser(bytes in crate::fuzz_support::mutated({
            let mut e = edges(0, 100, None);
            let k = class(
                pod("a", "Deployment/web", "alpha"),
                pod("b", "Deployment/db", "beta"),
            );
            for port in 0..4u16 {
                e.walk(&k, &test_tuple(PROTO_TCP, "10.0.0.1", 1, "10.0.0.3", port));
            }
            vec![e.encode(), Vec::new(), MAGIC.to_vec()]
        })) {
            let _ = parse(&bytes);
        }
    }
}
