//! Command-line interface: `agent` runs the observer, `flows` queries a running one.

mod agent;
mod check_config;
mod flows;
mod hooks;
mod index;
mod usage;

use clap::{Parser, Subcommand};

pub use agent::AgentArgs;
pub use flows::FlowsArgs;
pub use usage::UsageError;

use crate::{datapath::DatapathError, logging::LogArgs};

/// Exit code for bad input (BSD EX_USAGE): the user must change something.
pub const EXIT_USAGE: i32 = 64;

/// tenantflow: see every flow a Kubernetes node carries and whose it was.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, attach to the node's interfaces and export flows.
    Agent(AgentArgs),
    /// Show flows from a running agent.
    Flows(FlowsArgs),
    /// Validate a config file (and the snapshot it names) and explain it.
    CheckConfig(check_config::CheckConfigArgs),
    /// List the tcx programs attached to each interface in this network namespace.
    Hooks(hooks::HooksArgs),
    /// Watch the Kubernetes API once for the whole cluster and serve identity to agents
    /// started with --identity-index (index mode, for large clusters).
    Index(index::IndexArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Flows(args) => flows::run(args),
        Command::Hooks(args) => hooks::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Index(args) => index::run(args),
    }
}

/// Run a long-lived command on the two-worker runtime both daemons use (a node agent
/// should not take a thread per core).
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

/// The config file given, else the built-in defaults; a bad file is bad input.
fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<crate::config::Config> {
    Ok(match path {
        Some(p) => crate::config::Config::load(p).map_err(|e| UsageError(e.to_string()))?,
        None => crate::config::Config::default(),
    })
}

/// 64 for input the user must fix, 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.chain().any(|c| {
        c.downcast_ref::<DatapathError>()
            .is_some_and(DatapathError::is_usage)
            || c.downcast_ref::<UsageError>().is_some()
    }) {
        EXIT_USAGE
    } else {
        1
    }
}
