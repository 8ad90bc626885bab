//! The protocol benchmark: a deterministic simulation of N nodes (issue 3, items 10-11).
//!
//! ```text
//! cargo run --release --example sim -- --nodes 10000 --broadcasts 35 --crash 0.5 --seed 1
//! ```
//!
//! Bootstrap through 5 contacts, 2 warm-up broadcasts, `--broadcasts` from one fixed sender,
//! crash a fraction `--crash` at once, `--broadcasts` more from random live senders, run until
//! quiet. Prints a table, then one JSON object as the last line.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use gossip::sim::scenario::{self, ScenarioConfig};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Deterministic simulation of a gossip cluster.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Broadcasts in the stable phase, and again after the crash.
    #[arg(long, default_value_t = 35)]
    broadcasts: usize,
    /// Fraction of the nodes that crash at once (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    crash: f64,
    /// Seed: the same seed gives the same run (and trace hash).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Stop after the stable phase (bootstrap, warm-up, `--broadcasts` from one sender): the
    /// workload other simulators report.
    #[arg(long)]
    stable_only: bool,
    /// Run the cluster directory (off: overlay and broadcast only).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    directory: OnOff,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.crash) || !(0.0..1.0).contains(&args.loss) {
        eprintln!("error: --crash must be within 0..=1 and --loss within 0..1");
        return ExitCode::FAILURE;
    }
    if args.nodes < 2 {
        eprintln!("error: --nodes must be at least 2");
        return ExitCode::FAILURE;
    }
    let mut cfg = ScenarioConfig::new(args.nodes, args.broadcasts, args.crash, args.seed);
    cfg.sim.loss = args.loss;
    cfg.directory = matches!(args.directory, OnOff::On);
    cfg.stable_only = args.stable_only;
    let report = scenario::run(cfg);
    print!("{}", report.table());
    println!("{}", report.to_json());
    ExitCode::SUCCESS
}
