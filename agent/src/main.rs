//! Binary edge: parse the command line, run, map failures to exit codes.

use clap::Parser;

fn main() {
    // One malloc arena: glibc gives each thread that allocates its own, and memory freed
    // into a worker's arena (a conntrack dump, an HTTP answer) stays resident there. At
    // 100k connections this is 219 -> 193 MiB of peak RSS at the same CPU
    // (docs/BENCHMARKS.md); the agent's allocating threads are few and mostly idle.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt before any other thread exists; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
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
