//! The JSON flow log: one line per finished connection (idle, or still open when the agent
//! stops) and periodic updates for long-lived ones, carrying the whole record (both NAT
//! sides, identities, class, verdicts, observation points, counters). To stdout or to a
//! file rotated by size; schema in docs/flow-log.md.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{ConnectionView, LogFilter, RecordType, Selection};
use crate::{event::ConnEvent, net::WallClock};

#[derive(Clone, Debug)]
pub struct FlowLogConfig {
    /// `None`: stdout.
    pub path: Option<PathBuf>,
    /// Rotate the file when it would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`FILE.1` … `FILE.N`).
    pub keep: usize,
    pub filter: LogFilter,
    /// Long-lived connections get an `update` record this often.
    pub update_interval: Duration,
    /// Node name written on every record.
    pub node: String,
}

#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: RecordType,
    time: String,
    node: &'a str,
    #[serde(flatten)]
    flow: &'a ConnectionView,
}

enum Sink {
    Stdout(std::io::Stdout),
    File {
        path: PathBuf,
        out: BufWriter<File>,
        size: u64,
        max_bytes: u64,
        keep: usize,
    },
}

fn open_append(path: &Path) -> std::io::Result<(BufWriter<File>, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let size = f.metadata()?.len();
    Ok((BufWriter::new(f), size))
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl Sink {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(o) => {
                let mut o = o.lock();
                o.write_all(line)?;
                o.flush()
            }
            Sink::File {
                path,
                out,
                size,
                max_bytes,
                keep,
            } => {
                if *size > 0 && *size + line.len() as u64 > *max_bytes {
                    out.flush()?;
                    // FILE.N-1 → FILE.N, …, FILE → FILE.1; the oldest beyond `keep` goes.
                    for n in (1..*keep).rev() {
                        let from = rotated(path, n);
                        if from.exists() {
                            std::fs::rename(&from, rotated(path, n + 1))?;
                        }
                    }
                    if *keep > 0 {
                        std::fs::rename(&*path, rotated(path, 1))?;
                    } else {
                        std::fs::remove_file(&*path)?;
                    }
                    let (o, s) = open_append(path)?;
                    *out = o;
                    *size = s;
                }
                out.write_all(line)?;
                *size += line.len() as u64;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(o) => o.flush(),
            Sink::File { out, .. } => out.flush(),
        }
    }
}

pub struct FlowLog {
    node: String,
    sink: Sink,
    selection: Selection,
    records: u64,
}

impl FlowLog {
    pub fn open(cfg: FlowLogConfig) -> std::io::Result<Self> {
        let sink = match &cfg.path {
            None => Sink::Stdout(std::io::stdout()),
            Some(p) => {
                let (out, size) = open_append(p)?;
                Sink::File {
                    path: p.clone(),
                    out,
                    size,
                    max_bytes: cfg.max_bytes,
                    keep: cfg.keep,
                }
            }
        };
        Ok(Self {
            selection: Selection::new(cfg.filter, cfg.update_interval),
            node: cfg.node,
            sink,
            records: 0,
        })
    }

    /// One harvest's events, as [`Selection`] picks them.
    pub fn observe(
        &mut self,
        events: &[ConnEvent],
        now: Instant,
        clock: &WallClock,
    ) -> std::io::Result<u64> {
        let out = self
            .selection
            .pick(events, now)
            .map(|(kind, ev)| (kind, ConnectionView::of_event(ev, clock)))
            .collect();
        self.write(out)
    }

    fn write(&mut self, mut out: Vec<(RecordType, ConnectionView)>) -> std::io::Result<u64> {
        out.sort_by_key(|(_, v)| (v.first_seen_ms, v.id));
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        for (kind, flow) in &out {
            let mut line = serde_json::to_vec(&Record {
                kind: *kind,
                time: time.clone(),
                node: &self.node,
                flow,
            })
            .map_err(std::io::Error::other)?;
            line.push(b'\n');
            self.sink.write_line(&line)?;
            self.records += 1;
        }
        self.sink.flush()?;
        Ok(out.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        classify::{classify, Classification},
        config::Config,
        event::EventKind,
        flow::Connection,
        flow::Outcome,
        identity::Store,
        net::{FlowTuple, PROTO_UDP},
    };

    /// Connection `i` (source port 10000 + i) to `dst`, classified without an inventory.
    fn conn(i: u16, dst: &str) -> (Connection, std::sync::Arc<Classification>) {
        let c = Connection::new(FlowTuple {
            proto: PROTO_UDP,
            src: "10.244.1.10".parse().unwrap(),
            sport: 10_000 + i,
            dst: dst.parse().unwrap(),
            dport: 53,
        });
        let k = classify(&Config::default(), &Store::new(), &c);
        (c, std::sync::Arc::new(k))
    }

    fn evs(
        kind: EventKind,
        conns: &[(Connection, std::sync::Arc<Classification>)],
    ) -> Vec<ConnEvent<'_>> {
        conns
            .iter()
            .map(|(c, k)| ConnEvent {
                kind,
                id: c.tuple.sport as u64,
                conn: c,
                sightings: crate::flow::Sightings::NONE,
                class: k,
                process: None,
                reclassified: false,
                delta: Default::default(),
                outcome: None,
                decided: false,
                new_edge: false,
                dst_fqdn: None,
            })
            .collect()
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tf-flowlog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn cfg(path: PathBuf, max_bytes: u64, keep: usize, filter: LogFilter) -> FlowLogConfig {
        FlowLogConfig {
            path: Some(path),
            max_bytes,
            keep,
            filter,
            update_interval: Duration::from_secs(10),
            node: "node1".into(),
        }
    }

    fn lines(d: &Path) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
        out
    }

    #[test]
    fn rotation_loses_no_record() {
        let d = dir("rot");
        let mut log = FlowLog::open(cfg(d.join("flows.json"), 4096, 1000, LogFilter::All)).unwrap();
        let t0 = Instant::now();
        let conns: Vec<_> = (0..200).map(|i| conn(i, "10.0.0.53")).collect();
        let clock = WallClock::now();
        assert_eq!(
            log.observe(&evs(EventKind::Start, &conns), t0, &clock)
                .unwrap(),
            0,
            "nothing has finished yet"
        );
        assert_eq!(
            log.observe(&evs(EventKind::End, &conns), t0, &clock)
                .unwrap(),
            200
        );
        let files = std::fs::read_dir(&d).unwrap().count();
        assert!(files > 5, "4 KiB files must have rotated: {files}");
        let all = lines(&d);
        assert_eq!(all.len(), 200);
        let mut ports: Vec<u64> = all
            .iter()
            .map(|r| r["src_port"].as_u64().unwrap())
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, (10_000..10_200).collect::<Vec<u64>>());
        assert!(all
            .iter()
            .all(|r| r["type"] == "end" && r["node"] == "node1"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn long_lived_connections_get_updates_and_shutdown_flushes_the_rest() {
        let d = dir("upd");
        let mut log = FlowLog::open(cfg(d.join("f.json"), 1 << 20, 1, LogFilter::All)).unwrap();
        let t0 = Instant::now();
        let v = [conn(1, "10.0.0.53")];
        let c = WallClock::now();
        let at = |s| t0 + Duration::from_secs(s);
        log.observe(&evs(EventKind::Start, &v), t0, &c).unwrap();
        let u = evs(EventKind::Update, &v);
        assert_eq!(log.observe(&u, at(5), &c).unwrap(), 0);
        assert_eq!(log.observe(&u, at(11), &c).unwrap(), 1);
        assert_eq!(
            log.observe(&u, at(15), &c).unwrap(),
            0,
            "next update 10 s later"
        );
        let stop = evs(EventKind::Shutdown, &v);
        assert_eq!(log.observe(&stop, at(16), &c).unwrap(), 1);
        let kinds: Vec<_> = lines(&d)
            .iter()
            .map(|r| r["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kinds, ["update", "shutdown"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_flagged_filter_keeps_only_flagged_connections() {
        let d = dir("flt");
        let mut log = FlowLog::open(cfg(d.join("f.json"), 1 << 20, 1, LogFilter::Flagged)).unwrap();
        let t0 = Instant::now();
        // Without an inventory 10.0.0.53 is private and 203.0.113.10 internet: neither
        // source is a pod, so of these only IMDS (sensitive) is flagged by its verdicts; a
        // refused attempt and a new edge are flagged by what happened.
        let v = [
            conn(1, "10.0.0.53"),
            conn(2, "169.254.169.254"),
            conn(3, "203.0.113.10"),
            conn(4, "203.0.113.11"),
            conn(5, "203.0.113.12"),
            conn(6, "203.0.113.13"),
        ];
        let c = WallClock::now();
        log.observe(&evs(EventKind::Start, &v), t0, &c).unwrap();
        let mut ends = evs(EventKind::End, &v);
        ends[3].outcome = Some(Outcome::Refused);
        ends[4].new_edge = true;
        ends[5].outcome = Some(Outcome::Unreplied);
        assert_eq!(log.observe(&ends, t0, &c).unwrap(), 3);
        let all = lines(&d);
        let dsts: Vec<&str> = all.iter().map(|r| r["dst"].as_str().unwrap()).collect();
        assert_eq!(dsts, ["169.254.169.254", "203.0.113.11", "203.0.113.12"]);
        assert_eq!(all[0]["sensitive"], "imds");
        assert_eq!(
            (&all[1]["outcome"], &all[2]["new_edge"]),
            (&serde_json::json!("refused"), &serde_json::json!(true))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
