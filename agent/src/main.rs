//! Binary edge: parse the command line, run, map failures to exit codes.

use clap::Parser;

fn main() {
    let cli = tenantflow::cli::Cli::parse();
    if let Err(e) = tenantflow::logging::init(&cli.log) {
        eprintln!("error: {e}");
        std::process::exit(64);
    }
    let code = match tenantflow::cli::run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            tenantflow::cli::exit_code(&e)
        }
    };
    std::process::exit(code);
}
