//! Binary edge: parse the command line, run, map failures to exit codes.

use clap::Parser;

fn main() {
    // Before any other thread exists.
    tenantflow::memory::configure_allocator();
    // Bad flags are bad input: exit 64 like every other (clap's own default is 2).
    let cli = match tenantflow::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
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
