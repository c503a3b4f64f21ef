//! The error for input the user must fix: every subcommand returns it, and the binary maps
//! it to exit code 64 (EX_USAGE).

/// Input the user must fix (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);
