//! The error for input the user must fix: every subcommand returns it, and the binary maps
//! it to exit code 64 (EX_USAGE).

use std::time::Duration;

/// Input the user must fix (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A duration flag within `lo..=hi`, else bad input naming the flag, the bounds and an
/// example: what every subcommand's duration checks share.
pub fn within(
    flag: &str,
    v: Duration,
    lo: Duration,
    hi: Duration,
    e_g: &str,
) -> Result<(), UsageError> {
    if v < lo || v > hi {
        return Err(UsageError(format!(
            "{flag} {}: must be from {} to {} (e.g. {e_g})",
            humantime::format_duration(v),
            humantime::format_duration(lo),
            humantime::format_duration(hi),
        )));
    }
    Ok(())
}
