//! `tf-identity-peak [--pods N] [--no-follower]`: peak RSS and time to ready of
//! `tenantflow index`, a direct-mode agent and an agent following the index, against the
//! synthetic API server with pods at real size. Run as root (network namespaces, BPF) by
//! `cargo xtask bench-identity`, with TENANTFLOW_BIN naming the binary to measure. The
//! last lines are `key=value`.

use tenantflow_tests::identity_peak;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pods = args
        .windows(2)
        .find(|w| w[0] == "--pods")
        .map(|w| w[1].parse().expect("--pods: a number"))
        .unwrap_or(200_000);
    let follower = !args.iter().any(|a| a == "--no-follower");
    tenantflow_tests::require_root();
    let p = identity_peak::measure(pods, "bench", follower);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!("pods={}", p.pods);
    println!("pod_bytes={:.0}", p.list_bytes as f64 / p.pods as f64);
    println!("list_mib={:.0}", mib(p.list_bytes));
    println!("index_peak_mib={:.0}", mib(p.index.0));
    println!("index_ready_s={:.1}", p.index.1.as_secs_f64());
    println!("direct_peak_mib={:.0}", mib(p.direct.0));
    println!("direct_ready_s={:.1}", p.direct.1.as_secs_f64());
    if let Some((peak, took)) = p.follower {
        println!("follower_peak_mib={:.0}", mib(peak));
        println!("follower_ready_s={:.1}", took.as_secs_f64());
    }
}
