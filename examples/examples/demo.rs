//! The README's first command: an in-memory cluster of 50 nodes, typed Commit messages
//! broadcast from random nodes, a progress bar, and a summary.
//!
//! `cargo run --release --example demo [-- --nodes 50 --broadcasts 200]`

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use gossip::transport::memory::MemoryNetwork;
use gossip::{Config, MemberState, Node, Tag, Tags};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

#[derive(Tag, Serialize, Deserialize, Debug)]
struct Commit {
    key: String,
    value: Vec<u8>,
    /// Microseconds since the demo started, for latency.
    sent_at_us: u64,
}

#[derive(Tags, Debug)]
enum Inbox {
    Commit(Commit),
}

#[derive(Parser)]
#[command(about = "An in-memory gossip cluster: join, broadcast, summarise")]
struct Args {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// Broadcasts, each from a random node.
    #[arg(long, default_value_t = 200)]
    broadcasts: usize,
    /// Seed for the choice of senders and the network's latency.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Default)]
struct Tally {
    delivered: u64,
    latencies_us: Vec<u64>,
    max_hops: u16,
}

fn bar(done: usize, total: usize, label: &str) {
    let width = 40;
    let filled = done * width / total.max(1);
    print!(
        "\r{label} [{}{}] {done}/{total}",
        "#".repeat(filled),
        " ".repeat(width - filled)
    );
    let _ = std::io::stdout().flush();
}

#[tokio::main]
async fn main() -> Result<(), gossip::Error> {
    let args = Args::parse();
    let start = Instant::now();
    let network = MemoryNetwork::new(args.seed);
    network.set_latency(Duration::from_millis(1)..Duration::from_millis(5));

    println!("starting {} in-memory nodes", args.nodes);
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let mut config = Config {
            seed: Some(args.seed * 1000 + i as u64),
            ..Config::default()
        };
        // Knobs for experiments: DEMO_OPT (optimization threshold), DEMO_G1 (graft timeout, ms).
        if let Some(t) = std::env::var("DEMO_OPT").ok().and_then(|t| t.parse().ok()) {
            config.protocol.broadcast.optimization_threshold = t;
        }
        if let Some(ms) = std::env::var("DEMO_G1").ok().and_then(|t| t.parse().ok()) {
            config.protocol.broadcast.graft_timeout_1 = Duration::from_millis(ms);
        }
        let node = Node::builder().config(config).memory(&network)?;
        if let Some(first) = nodes.first() {
            let first: &Node = first;
            node.join(first.local_addr()).await?;
        }
        nodes.push(node);
        bar(i + 1, args.nodes, "joining   ");
    }
    println!();

    let tally = Arc::new(Mutex::new(Tally::default()));
    for node in &nodes {
        let (node, tally) = (node.clone(), tally.clone());
        tokio::spawn(async move {
            while let Ok(message) = node.recv().await {
                let hops = message.hops();
                if let Ok(Inbox::Commit(c)) = <Inbox as gossip::Tags>::from_message(message) {
                    let now = start.elapsed().as_micros() as u64;
                    let mut t = tally.lock().unwrap();
                    t.delivered += 1;
                    t.latencies_us.push(now.saturating_sub(c.sent_at_us));
                    t.max_hops = t.max_hops.max(hops);
                }
            }
        });
    }

    // Let the directory settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: u64 = total_payloads(&nodes).await;
    let mut rng = StdRng::seed_from_u64(args.seed);
    for i in 0..args.broadcasts {
        let sender = &nodes[rng.random_range(0..nodes.len())];
        let commit = Commit {
            key: format!("key-{i}"),
            value: vec![i as u8; 32],
            sent_at_us: start.elapsed().as_micros() as u64,
        };
        sender.broadcast(&commit).await?;
        bar(i + 1, args.broadcasts, "broadcast ");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!();

    let expected = (args.broadcasts * (args.nodes - 1)) as u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while tally.lock().unwrap().delivered < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payloads = total_payloads(&nodes).await - before;

    let ids: HashSet<_> = nodes.iter().map(|n| n.id()).collect();
    let mut converged = true;
    for node in &nodes {
        let alive: HashSet<_> = node
            .members()
            .await?
            .into_iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.id)
            .collect();
        converged &= alive == ids;
    }

    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    t.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &t.latencies_us;
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    let rmr = payloads as f64 / (args.broadcasts as f64 * (args.nodes - 1) as f64) - 1.0;
    println!();
    println!("nodes              {}", args.nodes);
    println!("delivered          {} / {} expected", t.delivered, expected);
    println!("RMR                {rmr:.3}  (redundant payload messages per delivery)");
    println!(
        "LDH                {}  (most hops to a delivery)",
        t.max_hops
    );
    println!(
        "latency p50 / p99  {:.1} ms / {:.1} ms",
        pct(0.5),
        pct(0.99)
    );
    println!("members converged  {converged}");
    println!("wall time          {:.1} s", start.elapsed().as_secs_f64());
    if std::env::var_os("DEMO_DEBUG").is_some() {
        let mut sum = gossip::proto::plumtree::Stats::default();
        for node in &nodes {
            let s = node.stats().await?.broadcast;
            sum.gossip_sent += s.gossip_sent;
            sum.ihave_sent += s.ihave_sent;
            sum.graft_sent += s.graft_sent;
            sum.prune_sent += s.prune_sent;
            sum.optimizations += s.optimizations;
            sum.catchup_sent += s.catchup_sent;
            sum.duplicates += s.duplicates;
            sum.neighbor_up += s.neighbor_up;
            sum.neighbor_down += s.neighbor_down;
            sum.graft_repairs += s.graft_repairs;
            sum.delivered += s.delivered;
        }
        println!("{sum:?}");
    }
    Ok(())
}

/// User payload messages sent by every node so far.
async fn total_payloads(nodes: &[Node]) -> u64 {
    let mut total = 0;
    for node in nodes {
        if let Ok(stats) = node.stats().await {
            total += stats.broadcast.gossip_sent;
        }
    }
    total
}
