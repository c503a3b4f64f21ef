//! The index → agent stream: newline-delimited JSON frames on one long-lived HTTP/2
//! response to `GET /v1/identity?epoch=E&after=V`.
//!
//! A follower that names the epoch (one index process's life) and a version the index
//! still holds deltas after gets only those deltas. Any other follower (new, too far
//! behind, or talking to another replica) gets a full resync: `Snapshot`, its objects as
//! `Apply` frames, `Synced`, then deltas — the 410 Gone of this protocol, answered in the
//! same response. Either way `Synced` follows the catch-up, at the index's version when the
//! stream started, so a follower is caught up (ready) only once it has applied everything
//! the index had. `Heartbeat` every few seconds lets a follower tell a quiet index from a
//! dead connection; it and `Synced` carry the index's own staleness (its API watches down
//! or relisting), so a follower never reports current what its index does not.

use serde::{Deserialize, Serialize};

use crate::identity::Object;

pub const PATH: &str = "/v1/identity";

/// How often an idle stream carries a heartbeat.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// A full state follows: `objects` `Apply` frames (all at `version`), then the deltas
    /// after it, then `Synced`.
    /// `labels`: the pod label keys the index keeps (those its egress-gateway selectors
    /// use; `None`: all), so a follower can tell when its own selectors need others.
    Snapshot {
        epoch: u64,
        version: u64,
        objects: u64,
        #[serde(default)]
        labels: Option<Vec<String>>,
    },
    /// Added or changed (as the index holds it: labels reduced, names interned).
    Apply { v: u64, object: Object },
    /// Gone (deleted, or missing from a relist).
    Delete { v: u64, object: Object },
    /// Caught up: the follower's inventory is the index's at `version`, the index's
    /// version when this stream began. Live deltas follow.
    Synced {
        version: u64,
        /// The index's own inventory is not current (absent from older indexes: false).
        #[serde(default)]
        stale: bool,
    },
    /// Sent after a quiet spell, and at once when the index's staleness changes.
    Heartbeat {
        version: u64,
        #[serde(default)]
        stale: bool,
    },
}

/// Where a follower stands (the query of its request; missing: a new follower).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Position {
    pub epoch: u64,
    pub after: u64,
}

impl Frame {
    /// One line of the stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("frames always serialize");
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{NodeMeta, Object};

    #[test]
    fn a_frame_is_one_line_and_reads_back() {
        let f = Frame::Apply {
            v: 7,
            object: Object::Node(NodeMeta {
                name: "n1".into(),
                ips: vec!["10.0.0.1".parse().unwrap()].into(),
            }),
        };
        let line = f.encode();
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(serde_json::from_slice::<Frame>(&line).unwrap(), f);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"apply\":{\"v\":7,\"object\":{\"Node\":{\"name\":\"n1\",\"ips\":[\"10.0.0.1\"]}}}}\n"
        );
    }
}
