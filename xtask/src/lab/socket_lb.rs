//! A stand-in for Cilium's socket-LB (kube-proxy replacement): cgroup connect4 and
//! sendmsg4 programs that rewrite a Service VIP:port to one backend inside connect() and
//! sendmsg(), and a recvmsg4 program that turns the backend back into the VIP for the
//! application, so no packet ever carries the VIP and netfilter has no DNAT to record. Like Cilium's, it sits above the
//! pods' cgroup (Cilium's is on the root); the lab keeps it on a cgroup of its own,
//! `<cgroup2>/<prefix>-slb`, with the pods' cgroup `kubepods` under it, so no process
//! outside the test is touched. Raw instructions (`asm.rs`), linked and pinned under the
//! lab's bpffs directory; [`remove`] unpins it and removes the cgroups.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::{
    asm::*,
    chain_end::{link_cgroup, load_typed, pin_dir},
};

const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP4_RECVMSG: u32 = 19;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
const BPF_CGROUP_UDP6_RECVMSG: u32 = 20;
/// `struct bpf_sock_addr` offsets.
const USER_IP4: i16 = 4;
const USER_IP6: i16 = 8;
const USER_PORT: i16 = 24;

/// The cgroup the stand-in is attached to, under the cgroup2 mount `root`.
pub fn base(root: &Path, prefix: &str) -> PathBuf {
    root.join(format!("{prefix}-slb"))
}

/// The pods' cgroup (what the agent's `--pods-cgroup` names).
pub fn pods(root: &Path, prefix: &str) -> PathBuf {
    base(root, prefix).join("kubepods")
}

/// Rewrite connect()s and sendmsg()s to `vip:port` into `backend:backend_port` (and
/// recvmsg()s from the backend back into the VIP) for processes under the lab's pods
/// cgroup. Returns the pods cgroup.
pub fn enable(
    root: &Path,
    prefix: &str,
    vip: (Ipv4Addr, u16),
    backend: (Ipv4Addr, u16),
) -> Result<PathBuf> {
    let pods = pods(root, prefix);
    std::fs::create_dir_all(&pods).with_context(|| format!("creating {}", pods.display()))?;
    attach_all(
        root,
        prefix,
        [
            (BPF_CGROUP_INET4_CONNECT, rewrite(vip, backend), "socket-lb"),
            (
                BPF_CGROUP_UDP4_SENDMSG,
                rewrite(vip, backend),
                "socket-lb-sendmsg",
            ),
            (
                BPF_CGROUP_UDP4_RECVMSG,
                rewrite(backend, vip),
                "socket-lb-recvmsg",
            ),
        ],
    )?;
    Ok(pods)
}

/// As [`enable`], for an IPv6 ClusterIP (a dual-stack Service): connect6, sendmsg6 and
/// recvmsg6 programs on the same cgroup. [`enable`] must have run first (it creates it).
pub fn enable6(
    root: &Path,
    prefix: &str,
    vip: (Ipv6Addr, u16),
    backend: (Ipv6Addr, u16),
) -> Result<()> {
    attach_all(
        root,
        prefix,
        [
            (
                BPF_CGROUP_INET6_CONNECT,
                rewrite6(vip, backend),
                "socket-lb6",
            ),
            (
                BPF_CGROUP_UDP6_SENDMSG,
                rewrite6(vip, backend),
                "socket-lb-sendmsg6",
            ),
            (
                BPF_CGROUP_UDP6_RECVMSG,
                rewrite6(backend, vip),
                "socket-lb-recvmsg6",
            ),
        ],
    )
}

/// Load each (attach type, program, pin name) and link it to the stand-in's cgroup.
fn attach_all(root: &Path, prefix: &str, progs: [(u32, Vec<u64>, &str); 3]) -> Result<()> {
    for (attach, insns, pin) in progs {
        let prog = load_typed(
            &insns,
            "lab_sock_lb",
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            attach,
        )?;
        link_cgroup(
            &prog,
            &base(root, prefix),
            attach,
            &pin_dir(prefix).join(pin),
        )?;
    }
    Ok(())
}

/// The address's four words as 4-byte loads of `user_ip6` give them.
fn wire6(a: Ipv6Addr) -> [i32; 4] {
    let o = a.octets();
    let w = |i: usize| u32::from_le_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]) as i32;
    [w(0), w(4), w(8), w(12)]
}

/// A sock_addr program turning `from` into `to` (user_ip6/user_port), allowing the call.
fn rewrite6((ip, port): (Ipv6Addr, u16), (to_ip, to_port): (Ipv6Addr, u16)) -> Vec<u64> {
    let mut a = Asm::default();
    a.op(MOV_X, 6, 1, 0, 0);
    for (i, w) in wire6(ip).into_iter().enumerate() {
        a.op(LDX_W, 2, 6, USER_IP6 + 4 * i as i16, 0);
        a.out_if(JNE32_K, 2, w);
    }
    a.op(LDX_W, 2, 6, USER_PORT, 0);
    a.out_if(JNE32_K, 2, wire16(port));
    for (i, w) in wire6(to_ip).into_iter().enumerate() {
        a.op(MOV_K, 2, 0, 0, w);
        a.op(STX_W, 6, 2, USER_IP6 + 4 * i as i16, 0);
    }
    a.op(MOV_K, 2, 0, 0, wire16(to_port));
    a.op(STX_W, 6, 2, USER_PORT, 0);
    a.finish_with(1)
}

/// A sock_addr program turning `from` into `to` (user_ip4/user_port), allowing the call.
fn rewrite((ip, port): (Ipv4Addr, u16), (to_ip, to_port): (Ipv4Addr, u16)) -> Vec<u64> {
    let mut a = Asm::default();
    a.op(MOV_X, 6, 1, 0, 0);
    a.op(LDX_W, 2, 6, USER_IP4, 0);
    a.out_if(JNE32_K, 2, wire(ip));
    a.op(LDX_W, 2, 6, USER_PORT, 0);
    a.out_if(JNE32_K, 2, wire16(port));
    a.op(MOV_K, 2, 0, 0, wire(to_ip));
    a.op(STX_W, 6, 2, USER_IP4, 0);
    a.op(MOV_K, 2, 0, 0, wire16(to_port));
    a.op(STX_W, 6, 2, USER_PORT, 0);
    // Allow the call (1), rewritten or not.
    a.finish_with(1)
}

/// Remove the lab's cgroups under `root` (deepest first; they must hold no process).
pub fn remove(root: &Path, prefix: &str) {
    let base = base(root, prefix);
    if !base.exists() {
        return;
    }
    let mut dirs: Vec<PathBuf> = walk(&base);
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(&d);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}
