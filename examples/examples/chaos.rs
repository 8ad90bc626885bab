//! The chaos simulation (issue 5, item 6): seeds x nodes with loss, duplication, reordering,
//! a partition that heals, crashes and restarts, each run checked by the invariant checkers.
//!
//! ```text
//! cargo run --release --example chaos                # 100 seeds x 200 nodes
//! cargo run --release --example chaos -- --seeds 10 --nodes 100 --first-seed 500
//! ```
//!
//! Prints one JSON line per seed, a summary, and exits with failure if any invariant broke.

use std::process::ExitCode;

use clap::Parser;
use gossip::sim::chaos::{self, ChaosConfig};

/// Chaos simulation with invariant checkers.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed (seeds are consecutive).
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Nodes per run.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Message loss during the fault phase.
    #[arg(long, default_value_t = 0.3)]
    loss: f64,
    /// Length of the fault phase, in seconds.
    #[arg(long, default_value_t = 20)]
    fault_secs: u64,
    /// Run without the cluster directory.
    #[arg(long)]
    no_directory: bool,
    /// Live nodes a restarted node gets as contacts (its seed list).
    #[arg(long, default_value_t = 3)]
    restart_contacts: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let wall = std::time::Instant::now();
    let mut failed = Vec::new();
    let (mut missing, mut expected, mut broadcasts) = (0u64, 0u64, 0usize);
    for seed in args.first_seed..args.first_seed + args.seeds {
        let mut cfg = ChaosConfig::new(args.nodes, seed);
        cfg.loss = args.loss;
        cfg.fault_phase = std::time::Duration::from_secs(args.fault_secs);
        cfg.directory = !args.no_directory;
        cfg.restart_contacts = args.restart_contacts;
        let report = chaos::run(&cfg);
        println!("{}", report.to_json());
        missing += report.missing;
        expected += report.expected;
        broadcasts += report.broadcasts;
        if !report.ok() {
            failed.push(seed);
        }
    }
    println!(
        "{} seeds x {} nodes: {} passed, {} failed {:?}; {} broadcasts, {}/{} deliveries \
         missing; {:.1} s",
        args.seeds,
        args.nodes,
        args.seeds as usize - failed.len(),
        failed.len(),
        failed,
        broadcasts,
        missing,
        expected,
        wall.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
