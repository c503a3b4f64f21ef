//! The lab's exact traffic generator as a standalone binary for tests (`ip netns exec`).
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: xtask::traffic::TrafficCmd,
}

fn main() {
    if let Err(e) = xtask::traffic::run(Args::parse().cmd) {
        eprintln!("tf-traffic: {e:#}");
        std::process::exit(1);
    }
}
