//! tracing set-up: env filter plus plain or JSON lines (JSON for log pipelines on AKS).

use clap::{Args, ValueEnum};
use tracing_subscriber::{fmt, EnvFilter};

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log filter in RUST_LOG syntax (e.g. `info`, `tenantflow=debug`).
    #[arg(long, env = "TENANTFLOW_LOG", default_value = "info", global = true)]
    pub log_level: String,
    /// Log line format.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub log_format: LogFormat,
}

/// Logs go to stderr so stdout stays clean for `flows -o json` and the flow log.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = EnvFilter::try_new(&args.log_level).map_err(|e| {
        format!(
            "--log-level {:?} is not a valid filter ({e}): use e.g. info or tenantflow=debug",
            args.log_level
        )
    })?;
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
