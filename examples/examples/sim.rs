//! The protocol benchmark: a deterministic simulation of N nodes (issue 3, items 10-11).
//!
//! ```text
//! cargo run --release --example sim -- --nodes 10000 --broadcasts 35 --crash 0.5 --seed 1
//! ```
//!
//! Bootstrap through 5 contacts, 2 warm-up broadcasts, `--broadcasts` from one fixed sender,
//! crash a fraction `--crash` at once, `--broadcasts` more from random live senders, run until
//! quiet. Prints a table, then one JSON object as the last line.
//!
//! `--bench` runs the `cluster_bench` example's scenario instead (200 nodes on a loopback-like
//! network, LAN preset; see `gossip::sim::bench`) over `--seeds` seeds from `--seed`: one JSON
//! line per seed, then the tails. `--log` prints the trace of the slowest broadcast's last node
//! and of the slowest detection pair of each seed whose figure is over `--log-spread-ms` or
//! `--log-detect-ms`.

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use std::time::Duration;

use gossip::sim::bench::{self, BenchConfig};
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
    /// Run the `cluster_bench` scenario (`--nodes` defaults to 200 there, `--broadcasts` to 20).
    #[arg(long)]
    bench: bool,
    /// With `--bench`: how many seeds, from `--seed` on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// With `--bench`: fraction of the nodes killed.
    #[arg(long, default_value_t = 0.1)]
    kill: f64,
    /// With `--bench`: the killed nodes include the N smallest ids (the directory's
    /// collector and its successors).
    #[arg(long, default_value_t = 0)]
    kill_smallest: u32,
    /// With `--bench`: a crash does not break the crashed node's connections (a host that
    /// vanished without a FIN): peers notice by silence or failed sends only.
    #[arg(long)]
    silent_crash: bool,
    /// With `--bench`: seconds of quiet before the kill.
    #[arg(long, default_value_t = 30.0)]
    quiet: f64,
    /// With `--bench`: link latency range in microseconds, `MIN-MAX`.
    #[arg(long, default_value = "100-1000")]
    latency_us: String,
    /// With `--bench`: print the traces of the slow cases.
    #[arg(long)]
    log: bool,
    /// With `--bench --log`: a spread max over this many ms is traced.
    #[arg(long, default_value_t = 30.0)]
    log_spread_ms: f64,
    /// With `--bench --log`: a detection over this many ms is traced.
    #[arg(long, default_value_t = 2000.0)]
    log_detect_ms: f64,
    /// With `--bench --log`: trace these nodes (comma-separated) too.
    #[arg(long, value_delimiter = ',')]
    log_nodes: Vec<u32>,
}

fn run_bench(args: &Args) -> ExitCode {
    let Some((lo, hi)) = args
        .latency_us
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
    else {
        eprintln!("error: --latency-us takes MIN-MAX in microseconds, e.g. 100-1000");
        return ExitCode::FAILURE;
    };
    let nodes = if args.nodes == 1000 { 200 } else { args.nodes };
    let broadcasts = if args.broadcasts == 35 {
        20
    } else {
        args.broadcasts
    };
    let (mut spread_max, mut detect) = (Vec::new(), Vec::new());
    for seed in args.seed..args.seed + args.seeds {
        let mut cfg = BenchConfig::new(seed);
        cfg.nodes = nodes;
        cfg.broadcasts = broadcasts;
        cfg.kill = args.kill;
        cfg.victims = (0..args.kill_smallest).collect();
        if args.silent_crash {
            cfg.sim.close_on_crash = None;
        }
        cfg.quiet = Duration::from_secs_f64(args.quiet);
        cfg.sim.latency_min = Duration::from_micros(lo);
        cfg.sim.latency_max = Duration::from_micros(hi.max(lo));
        cfg.sim.loss = args.loss;
        let r = bench::run(&cfg);
        println!("{}", r.to_json());
        let s = r
            .spread_max()
            .map_or(0.0, |s| s.latency.as_secs_f64() * 1e3);
        let d = r.detect.map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3);
        spread_max.push((s, seed));
        detect.push((d, seed));
        if args.log && s > args.log_spread_ms {
            trace_slow_cases(&cfg, &r, true, &args.log_nodes);
        }
        if args.log && d > args.log_detect_ms {
            trace_slow_cases(&cfg, &r, false, &args.log_nodes);
        }
    }
    let tail = |v: &mut Vec<(f64, u64)>, what: &str| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].0;
        println!(
            "{what}: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms; worst seeds {:?}",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
            &v[v.len().saturating_sub(5)..]
        );
    };
    tail(&mut spread_max, "spread max per seed");
    tail(&mut detect, "detection per seed");
    ExitCode::SUCCESS
}

/// Re-run one seed with the log on for the nodes of its slow case, and print that case's trace.
fn trace_slow_cases(cfg: &BenchConfig, r: &bench::BenchReport, spread: bool, extra: &[u32]) {
    let slow = r
        .spreads
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s.latency)
        .map(|(i, s)| (i, s.last));
    let mut nodes: Vec<u32> = match (spread, slow, r.slowest_pair) {
        (true, Some((_, Some((last, from, _)))), _) => vec![last, from],
        (false, _, Some((s, k, _))) => vec![s, k],
        _ => return,
    };
    nodes.extend_from_slice(extra);
    let stage_in = |stage: bench::Stage| match (spread, stage, slow) {
        (true, bench::Stage::SpreadEnd(i), Some((j, _))) => i == j,
        (false, bench::Stage::End, _) => true,
        _ => false,
    };
    println!("killed: {:?}", r.killed);
    let again = bench::run_with(cfg, |sim, stage| match stage {
        bench::Stage::Start => sim.log_nodes(nodes.clone(), 200_000),
        stage if stage_in(stage) => {
            let (lines, dropped) = sim.take_log();
            println!(
                "--- seed {} {} trace for nodes {nodes:?} ({dropped} lines dropped)",
                cfg.sim.seed,
                if spread { "spread" } else { "detection" }
            );
            for l in lines {
                println!("{l}");
            }
        }
        _ => {
            sim.take_log();
        }
    });
    assert_eq!(again.trace_hash, r.trace_hash, "the log changed the run");
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.bench {
        return run_bench(&args);
    }
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
