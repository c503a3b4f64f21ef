//! Connections that reuse one 5-tuple. A client that pins its source port, or a busy NAT,
//! opens a new connection on a tuple right after the last one closed; only the TCP
//! initiator's ISN tells them apart. The kernel puts it in every key of the connection
//! ([`FlowKey::generation`]), so the two never share a slot; here each generation becomes
//! its own connection, and the older one ends as soon as the newer one has taken its
//! tuple, with its own counts, flags and outcome.
//!
//! Generation 0 means "unknown" (the connection predates the programs, or a colliding
//! flow's SYN took its generation entry): such points belong to the connection that holds
//! the tuple now.
//!
//! [`FlowKey::generation`]: agent_common::FlowKey::generation

use agent_common::FlowKey;

use super::{ConnId, ConnTable, FlowEntry, FlowTuple, Loose, Role, Side};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// Two generations that may be one connection's: equal, or either unknown.
pub(super) fn compatible(a: u32, b: u32) -> bool {
    a == 0 || b == 0 || a == b
}

/// `a` was chosen after `b`: Linux's ISNs for one tuple grow with time (RFC 6528), so within
/// half the sequence space the later connection has the larger ISN, modulo 2³².
fn newer(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl<A: Default> ConnTable<A> {
    /// The connection an observation point of `generation` (with totals `entry`) belongs
    /// to, given `head`, the connection that holds its tuple now: `head` itself, an older
    /// connection of the tuple still in the table, or a new one that supersedes `head`.
    pub(super) fn member(&mut self, head: ConnId, generation: u32, entry: &FlowEntry) -> ConnId {
        let h = &self.conns[&head];
        if generation == 0 || h.generation == generation {
            return head;
        }
        let tuple = h.conn.tuple;
        if let Some(&id) = self.older.get(&(tuple, generation)) {
            return id;
        }
        let syn = entry.tcp_flags & TCP_SYN != 0;
        let starts = if h.generation == 0 {
            // The head's own start was not seen: it is another connection only if it ended
            // before this one began (a later clock tick: its end may be this one's own,
            // harvested before its start).
            let flags = h.points.iter().fold(0, |f, p| f | p.entry.tcp_flags);
            let last = h.points.iter().map(|p| p.entry.last_seen_ns).max();
            syn && flags & (TCP_FIN | TCP_RST) != 0 && last.is_some_and(|l| entry.first_seen_ns > l)
        } else {
            syn || newer(generation, h.generation)
        };
        if starts {
            return self.create(tuple, generation);
        }
        // Learnt late (its SYN was not seen), or a straggler of a connection that already
        // left the table: the tuple's current connection keeps it.
        let h = self.conns.get_mut(&head).expect("head exists");
        if h.generation == 0 {
            h.generation = generation;
        }
        head
    }

    /// A group of new points of one generation whose tuple (or its reverse) a connection
    /// already holds: sided by that connection's direction.
    pub(super) fn place_generation(
        &mut self,
        head: ConnId,
        generation: u32,
        points: Loose,
        rev_points: Loose,
        role: &impl Fn(u32) -> Option<Role>,
    ) {
        let merged =
            points
                .iter()
                .chain(&rev_points)
                .fold(FlowEntry::default(), |mut acc, (_, e)| {
                    acc.merge(e);
                    acc
                });
        let id = self.member(head, generation, &merged);
        let tuple = self.conns[&id].conn.tuple;
        for (key, entry) in points.into_iter().chain(rev_points) {
            let side = if FlowTuple::from(&key) == tuple {
                Side::ForwardPre
            } else {
                Side::ReplyPre
            };
            self.attach(id, key, entry, role(key.ifindex), side);
        }
    }

    /// `head` no longer holds its tuple: a newer connection does. Points of unknown
    /// generation now go to the newer one. Only a tuple's newest connection is superseded,
    /// and it stops being the newest here, so this runs once per connection.
    pub(super) fn supersede(&mut self, head: ConnId) {
        let Some(t) = self.conns.get(&head) else {
            return;
        };
        let (tuple, generation) = (t.conn.tuple, t.generation);
        let unknown: Vec<FlowKey> = t
            .points
            .iter()
            .filter(|p| p.key.generation == 0)
            .map(|p| p.key)
            .collect();
        if self.by_tuple.get(&tuple) == Some(&head) {
            self.by_tuple.remove(&tuple);
        }
        if generation != 0 {
            self.older.insert((tuple, generation), head);
        }
        for key in unknown {
            if self.by_key.get(&key) == Some(&head) {
                self.by_key.remove(&key);
            }
        }
        self.retired.push(head);
        self.touch(head);
    }

    /// Where conntrack's join should move `id` (placed under another of the entry's
    /// tuples): into `target` if they are one connection, into the connection of `id`'s
    /// generation under `orig` if a reused tuple has one, else nowhere yet.
    pub(super) fn same_generation(
        &self,
        id: ConnId,
        target: ConnId,
        orig: FlowTuple,
    ) -> Option<ConnId> {
        let (g, tg) = (self.conns[&id].generation, self.conns[&target].generation);
        if compatible(g, tg) {
            return Some(target);
        }
        self.older.get(&(orig, g)).copied()
    }

    /// Superseded connections that may end now (reported, not merged into another);
    /// the rest wait for their report.
    pub(super) fn end_retired(&mut self, merged: &super::HashSet<ConnId>) -> Vec<ConnId> {
        let mut ending = Vec::new();
        let conns = &self.conns;
        self.retired.retain(|id| match conns.get(id) {
            None => false,
            Some(_) if merged.contains(id) => false,
            Some(t) if t.reported => {
                ending.push(*id);
                false
            }
            Some(_) => true,
        });
        ending.sort_unstable();
        ending
    }
}
