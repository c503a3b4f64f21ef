//! Durations of `tenantflow agent` checked against sane bounds before anything is loaded:
//! a zero or absurd value, or an idle timeout the harvest cannot keep up with, is bad
//! input (exit 64) rather than a panic, an overflow or a connection expired unseen.

use std::time::Duration;

use super::AgentArgs;
use crate::cli::{usage::within, UsageError};

const MIN_HARVEST: Duration = Duration::from_millis(10);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

pub fn check(a: &AgentArgs) -> Result<(), UsageError> {
    if !a.identity_index.is_empty() {
        crate::index::follow::check_urls(&a.identity_index, a.identity_index_ca.as_deref())
            .map_err(UsageError)?;
    }
    within(
        "--harvest-interval",
        a.harvest_interval,
        MIN_HARVEST,
        HOUR,
        "1s",
    )?;
    within(
        "--hook-check-interval",
        a.hook_check_interval,
        Duration::from_millis(100),
        HOUR,
        "1s",
    )?;
    within(
        "--tls-reload-interval",
        a.tls_reload_interval,
        Duration::from_secs(1),
        HOUR,
        "10s",
    )?;
    within(
        "--auth-cache-ttl",
        a.auth_cache_ttl,
        Duration::from_secs(1),
        Duration::from_secs(600),
        "30s",
    )?;
    // A connection is harvested at least twice before it can go idle, so no packet the
    // kernel counted is expired before it was reported.
    within(
        "--idle-timeout",
        a.idle_timeout,
        a.harvest_interval * 2,
        DAY,
        "60s, at least twice --harvest-interval",
    )?;
    within(
        "--flow-log-update-interval",
        a.flow_log_update_interval,
        a.harvest_interval,
        DAY,
        "60s, at least --harvest-interval",
    )?;
    within(
        "--metrics-grace",
        a.metrics_grace,
        Duration::ZERO,
        30 * DAY,
        "5m",
    )?;
    within(
        "--fanout-window",
        a.fanout_window,
        Duration::from_secs(6),
        DAY,
        "60s",
    )?;
    within(
        "--dns-name-grace",
        a.dns_name_grace,
        Duration::ZERO,
        HOUR,
        "60s",
    )?;
    within(
        "--edge-learning",
        a.edge_learning,
        Duration::ZERO,
        365 * DAY,
        "24h",
    )?;
    for (flag, v, max, e_g) in [
        (
            "--fanout-max-sources",
            a.fanout_max_sources,
            1 << 20,
            "1024",
        ),
        ("--edge-limit", a.edge_limit, 1 << 24, "65536"),
        ("--dns-max-names", a.dns_max_names, 1 << 24, "65536"),
    ] {
        if v == 0 || v > max {
            return Err(UsageError(format!(
                "{flag} {v}: must be from 1 to {max} (e.g. {e_g})"
            )));
        }
    }
    names_on_metrics(a)?;
    if let Some(d) = a.test_conntrack_delay {
        within("--test-conntrack-delay", d, Duration::ZERO, HOUR, "3s")?;
    }
    Ok(())
}

/// Pod and workload names on a /metrics anyone on the network can read would show every
/// tenant the others' pods: asked for without tokens, they are refused with both ways out.
fn names_on_metrics(a: &AgentArgs) -> Result<(), UsageError> {
    if a.metrics_names_allowed() {
        return Ok(());
    }
    let asked = match a.metrics_max_nat_mappings {
        Some(n) if n > 0 => format!("--metrics-max-nat-mappings {n}"),
        _ if a.metrics_workload_labels => "--metrics-workload-labels".to_owned(),
        _ => return Ok(()),
    };
    Err(UsageError(format!(
        "{asked} puts pod or workload names on /metrics, which anyone who reaches \
         --listen can read: add --metrics-auth kubernetes (tokens and TLS), or \
         --metrics-public-names to accept that every tenant sees them"
    )))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(extra: &[&str]) -> AgentArgs {
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: AgentArgs,
        }
        T::parse_from(std::iter::once("t").chain(extra.iter().copied())).a
    }

    #[test]
    fn names_on_an_open_metrics_endpoint_need_tokens_or_consent() {
        let nat = ["--metrics-max-nat-mappings", "10"];
        for flags in [&nat[..], &["--metrics-workload-labels"]] {
            let e = check(&args(flags)).unwrap_err().0;
            assert!(e.starts_with(flags[0]), "{e}");
            assert!(e.contains("--metrics-auth kubernetes"), "{e}");
            assert!(e.contains("--metrics-public-names"), "{e}");
            for way_out in [
                &["--metrics-public-names"][..],
                &["--metrics-auth", "kubernetes"],
            ] {
                let both: Vec<&str> = flags.iter().chain(way_out).copied().collect();
                assert!(check(&args(&both)).is_ok(), "{both:?}");
            }
        }
        let off = args(&["--metrics-max-nat-mappings", "0"]);
        assert!(check(&off).is_ok());
        assert_eq!(args(&[]).nat_mappings_limit(), 0, "off by default");
        let authed = args(&["--metrics-auth", "kubernetes"]);
        assert_eq!(authed.nat_mappings_limit(), 2_000);
        assert_eq!(
            args(&["--metrics-public-names"]).nat_mappings_limit(),
            2_000
        );
        assert_eq!(off.nat_mappings_limit(), 0);
    }

    #[test]
    fn the_defaults_pass() {
        assert!(check(&args(&[])).is_ok());
    }

    #[test]
    fn nonsense_is_refused_naming_the_flag_and_the_bounds() {
        for (flags, flag) in [
            (&["--idle-timeout", "0s"][..], "--idle-timeout 0s"),
            (
                &["--idle-timeout", "2s", "--harvest-interval", "8s"],
                "--idle-timeout 2s",
            ),
            (&["--idle-timeout", "100000000000000000s"], "--idle-timeout"),
            (&["--harvest-interval", "0s"], "--harvest-interval 0s"),
            (&["--harvest-interval", "2h"], "--harvest-interval 2h"),
            (
                &["--flow-log-update-interval", "0s"],
                "--flow-log-update-interval 0s",
            ),
            (&["--metrics-grace", "400d"], "--metrics-grace"),
            (&["--fanout-window", "1s"], "--fanout-window 1s"),
            (&["--edge-learning", "2years"], "--edge-learning"),
            (&["--edge-limit", "0"], "--edge-limit 0"),
            (&["--fanout-max-sources", "0"], "--fanout-max-sources 0"),
        ] {
            let e = check(&args(flags)).unwrap_err().0;
            assert!(e.starts_with(flag), "{flags:?}: {e}");
            assert!(e.contains("must be from"), "{e}");
        }
    }
}
