//! The capabilities the agent needs, checked before touching the kernel so a missing one is
//! named instead of surfacing as a verifier dump. Each is proven necessary by
//! tests/tests/privileges.rs.

/// (bit, name, why) of every capability the agent needs.
pub const REQUIRED: [(u32, &str, &str); 3] = [
    (39, "CAP_BPF", "load programs and maps"),
    (
        12,
        "CAP_NET_ADMIN",
        "attach to interfaces and read conntrack",
    ),
    (
        38,
        "CAP_PERFMON",
        "without it the verifier rejects the packet parser",
    ),
];

const CAP_SYS_ADMIN: u32 = 21;

/// Required capabilities missing from an effective set (`CapEff` of /proc/self/status).
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as the kernel treats it.
pub fn missing(effective: u64) -> Vec<&'static str> {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    REQUIRED
        .iter()
        .filter(|(bit, name, _)| {
            let covered = *name != "CAP_NET_ADMIN" && has(CAP_SYS_ADMIN);
            !has(*bit) && !covered
        })
        .map(|(_, name, _)| *name)
        .collect()
}

/// This process's effective capability set, if /proc says.
pub fn effective() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_what_is_missing() {
        let bits = |v: &[u32]| v.iter().fold(0u64, |a, b| a | (1 << b));
        assert_eq!(missing(bits(&[39, 12, 38])), Vec::<&str>::new());
        assert_eq!(missing(bits(&[39, 12])), ["CAP_PERFMON"]);
        assert_eq!(missing(bits(&[39, 38])), ["CAP_NET_ADMIN"]);
        assert_eq!(missing(0), ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"]);
        assert_eq!(
            missing(bits(&[21, 12])),
            Vec::<&str>::new(),
            "SYS_ADMIN covers BPF and PERFMON"
        );
        assert_eq!(missing(bits(&[21])), ["CAP_NET_ADMIN"]);
        assert_eq!(missing(0x000001ffffffffff), Vec::<&str>::new(), "root");
    }
}
