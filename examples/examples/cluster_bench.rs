//! 200 TCP nodes on loopback in one process: membership convergence, broadcast spread, false
//! suspicions while quiet, crash detection, idle traffic.
//!
//! `cargo run --release --example cluster_bench -- --nodes 200`
//! Prints a table and, last, one JSON line.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use gossip::{Config, Event, MemberState, Node, NodeId, Tag};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

#[derive(Tag, Serialize, Deserialize, Debug)]
struct Update {
    n: u32,
}

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// Seconds of quiet in which false suspicions are counted.
    #[arg(long, default_value_t = 30.0)]
    quiet: f64,
    #[arg(long, default_value_t = 20)]
    broadcasts: usize,
    /// Fraction of nodes killed at once.
    #[arg(long, default_value_t = 0.1)]
    kill: f64,
    /// Of the killed nodes, this many are the ones with the smallest ids (never node 0, the
    /// contact): the directory's collector and its successors. The rest are the last nodes.
    #[arg(long, default_value_t = 0)]
    kill_smallest: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print what the nodes still lacking members lack, `--diag-at` seconds after the joins
    /// started, and which nodes converged last.
    #[arg(long)]
    diag: bool,
    /// When `--diag` looks at the lagging nodes, in seconds after the joins started.
    #[arg(long, default_value_t = 1.19)]
    diag_at: f64,
}

/// For every node that does not list all members alive yet: what it lacks.
async fn lagging_report(nodes: &[Node], all: &HashSet<NodeId>, since: Instant) {
    let mut lagging = 0;
    let mut lacking: std::collections::HashMap<NodeId, usize> = Default::default();
    for node in nodes {
        let members = node.members().await.unwrap_or_default();
        let alive = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && all.contains(&m.id))
            .count();
        if alive == all.len() {
            continue;
        }
        lagging += 1;
        let known: HashSet<NodeId> = members.iter().map(|m| m.id).collect();
        let not_alive: Vec<String> = members
            .iter()
            .filter(|m| m.state != MemberState::Alive)
            .map(|m| format!("{}:{:?}", m.id, m.state))
            .collect();
        for id in all.iter().filter(|id| !known.contains(id)) {
            *lacking.entry(*id).or_default() += 1;
        }
        let stats = node.stats().await.ok();
        println!(
            "  at {:?}: {} lists {alive}/{} alive, {} unknown, not alive {:?}, active view {:?}",
            since.elapsed(),
            node.id(),
            all.len(),
            all.len() - all.iter().filter(|id| known.contains(id)).count(),
            not_alive,
            stats.map(|s| s.active_view)
        );
    }
    let mut lacking: Vec<_> = lacking.into_iter().collect();
    lacking.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    println!(
        "  {lagging} nodes lagging; most missed members: {:?}",
        &lacking[..lacking.len().min(8)]
    );
}

async fn wait_for(limit: Duration, mut f: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

async fn everyone_lists(nodes: &[Node], ids: &HashSet<NodeId>, state: MemberState) -> bool {
    for node in nodes {
        let members = node.members().await.unwrap_or_default();
        let have = members
            .iter()
            .filter(|m| m.state == state && ids.contains(&m.id))
            .count();
        if have != ids.len() {
            return false;
        }
    }
    true
}

async fn bytes_sent(nodes: &[Node]) -> u64 {
    let mut total = 0;
    for n in nodes {
        total += n.stats().await.map(|s| s.transport.bytes_sent).unwrap_or(0);
    }
    total
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // `RUST_LOG=gossip=debug` shows, among others, what raised each suspicion.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let start = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..args.nodes {
        let config = Config {
            seed: Some(args.seed * 10_000 + i as u64),
            ..Config::default()
        };
        nodes.push(
            Node::builder()
                .config(config)
                .bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let contact = nodes[0].local_addr();
    let all: Arc<HashSet<NodeId>> = Arc::new(nodes.iter().map(|n| n.id()).collect());
    let join_start = Instant::now();
    // Each node's own event stream tells when it first lists every member alive: polling
    // 200 nodes from here would itself load the runtime and blur the figure.
    let watchers: Vec<_> = nodes
        .iter()
        .map(|n| {
            let (mut events, all, me) = (n.events(), all.clone(), n.id());
            tokio::spawn(async move {
                let mut alive: HashSet<NodeId> = HashSet::from([me]);
                let deadline = tokio::time::sleep(Duration::from_secs(60));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => return None,
                        e = events.next() => match e {
                            Some(Ok(Event::MemberUp(m))) => {
                                alive.insert(m.id);
                            }
                            Some(Ok(
                                Event::MemberSuspect(m)
                                | Event::MemberDown(m)
                                | Event::MemberLeft(m),
                            )) => {
                                alive.remove(&m.id);
                            }
                            Some(_) => {}
                            None => return None,
                        },
                    }
                    if all.iter().all(|id| alive.contains(id)) {
                        return Some(join_start.elapsed());
                    }
                }
            })
        })
        .collect();
    if args.diag {
        let (nodes, all, at) = (nodes.clone(), all.clone(), args.diag_at);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(at)).await;
            lagging_report(&nodes, &all, join_start).await;
        });
    }
    let joins: Vec<_> = nodes[1..]
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move {
                n.join(contact)
                    .await
                    .map(|()| (join_start.elapsed(), n.id()))
            })
        })
        .collect();
    let mut join_times = Vec::new();
    for j in joins {
        join_times.push(j.await.unwrap().expect("join"));
    }
    join_times.sort();
    if args.diag {
        println!(
            "slowest joins: {:?}",
            &join_times[join_times.len().saturating_sub(3)..]
        );
    }
    let joined_at: std::collections::HashMap<NodeId, Duration> =
        join_times.iter().map(|(t, id)| (*id, *t)).collect();
    let join_times: Vec<Duration> = join_times.into_iter().map(|(t, _)| t).collect();
    let joined = join_times.last().copied().unwrap_or_default();
    let mut converged = Vec::new();
    for w in watchers {
        converged.push(w.await.unwrap());
    }
    if args.diag {
        // Which nodes got there last, and when their own join had returned.
        let mut order: Vec<(Option<Duration>, NodeId)> = converged
            .iter()
            .zip(&nodes)
            .map(|(t, n)| (*t, n.id()))
            .collect();
        order.sort_by_key(|(t, _)| t.unwrap_or(Duration::MAX));
        let at = |q: f64| order[((order.len() - 1) as f64 * q) as usize].0;
        println!(
            "each node listing all: p50 {:?} p90 {:?} max {:?}",
            at(0.5),
            at(0.9),
            at(1.0)
        );
        for (t, id) in &order[order.len().saturating_sub(5)..] {
            println!(
                "  {id} listed all at {t:?}, its join returned at {:?}",
                joined_at.get(id)
            );
        }
    }
    let converge = converged
        .iter()
        .copied()
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().max());
    // Membership must still be complete after the last node got there.
    let still = everyone_lists(&nodes, &all, MemberState::Alive).await;
    if args.diag {
        let pick = |q: f64| join_times[((join_times.len() - 1) as f64 * q) as usize];
        println!(
            "joins done: p50 {:?} p90 {:?} p99 {:?} max {:?}; still converged after: {still}",
            pick(0.5),
            pick(0.9),
            pick(0.99),
            joined
        );
    }
    println!("membership converged: {:?}", converge);
    tracing::info!(?converge, "BENCH converged");

    // Spread: 20 broadcasts from random nodes, time until the last node delivered each.
    let last_delivery: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; args.broadcasts]));
    // With `--diag`: per broadcast, the node that delivered last and the hops its copy took.
    type LastNode = Vec<Option<(NodeId, u16)>>;
    let last_node: Arc<std::sync::Mutex<LastNode>> =
        Arc::new(std::sync::Mutex::new(vec![None; args.broadcasts]));
    let counts: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.broadcasts).map(|_| AtomicU64::new(0)).collect());
    // Each receiving task holds a handle; they are aborted with their node at the crash.
    let mut receivers = Vec::new();
    for node in &nodes {
        let (node, last, counts) = (node.clone(), last_delivery.clone(), counts.clone());
        let last_node = last_node.clone();
        receivers.push(tokio::spawn(async move {
            while let Ok(m) = node.recv().await {
                if let Ok(u) = m.decode::<Update>() {
                    counts[u.n as usize].fetch_add(1, Ordering::Relaxed);
                    last.lock().unwrap()[u.n as usize] = Some(Instant::now());
                    last_node.lock().unwrap()[u.n as usize] = Some((node.id(), m.hops()));
                }
            }
        }));
    }
    let mut spreads = Vec::new();
    for n in 0..args.broadcasts {
        let sender = rng.random_range(0..nodes.len());
        let t0 = Instant::now();
        let id = nodes[sender]
            .broadcast(&Update { n: n as u32 })
            .await
            .unwrap();
        let counts = counts.clone();
        let total = (nodes.len() - 1) as u64;
        let done = wait_for(Duration::from_secs(10), async || {
            counts[n].load(Ordering::Relaxed) >= total
        })
        .await;
        let last = last_delivery.lock().unwrap()[n];
        spreads.push(match (done, last) {
            (Some(_), Some(last)) => last.duration_since(t0).as_secs_f64() * 1000.0,
            _ => f64::INFINITY,
        });
        if args.diag {
            println!(
                "broadcast {n} {id:?} from {}: {:.1} ms, last {:?}",
                nodes[sender].id(),
                spreads[n],
                last_node.lock().unwrap()[n]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sorted = spreads.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let spread_p50 = sorted[sorted.len() / 2];
    let spread_max = *sorted.last().unwrap();

    // Quiet period: count suspicions and deaths (none is expected) and idle traffic.
    let false_suspicions = Arc::new(AtomicU64::new(0));
    for node in &nodes {
        let mut events = node.events();
        let counter = false_suspicions.clone();
        tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if matches!(e, Ok(Event::MemberSuspect(_)) | Ok(Event::MemberDown(_))) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tracing::info!("BENCH quiet start");
    let b0 = bytes_sent(&nodes).await;
    tokio::time::sleep(Duration::from_secs_f64(args.quiet)).await;
    let b1 = bytes_sent(&nodes).await;
    let idle_bytes = (b1 - b0) as f64 / nodes.len() as f64 / args.quiet;
    let false_count = false_suspicions.load(Ordering::Relaxed);

    tracing::info!("BENCH quiet end");
    // Crash 10% at once, without leaving.
    let kill = ((nodes.len() as f64) * args.kill).round() as usize;
    // Move the nodes to kill to the end (with their receiving tasks): the smallest ids asked
    // for, then the last nodes.
    let mut order: Vec<usize> = (1..nodes.len()).collect();
    order.sort_by_key(|&i| nodes[i].id());
    let mut doomed: Vec<usize> = order
        .into_iter()
        .take(args.kill_smallest.min(kill))
        .collect();
    for i in (1..nodes.len()).rev() {
        if doomed.len() >= kill {
            break;
        }
        if !doomed.contains(&i) {
            doomed.push(i);
        }
    }
    doomed.sort_unstable();
    for (k, &i) in doomed.iter().rev().enumerate() {
        let last = nodes.len() - 1 - k;
        nodes.swap(i, last);
        receivers.swap(i, last);
    }
    let victims: Vec<Node> = nodes.drain(nodes.len() - kill..).collect();
    let dead: HashSet<NodeId> = victims.iter().map(|n| n.id()).collect();
    // Dropping every handle of a node stops it without leaving: its receiving task and its
    // event subscription task hold handles too, so stop those first.
    for r in receivers.drain(receivers.len() - kill..) {
        r.abort();
    }
    drop(victims);
    let t0 = Instant::now();
    let detect = wait_for(Duration::from_secs(60), async || {
        everyone_lists(&nodes, &dead, MemberState::Dead).await
    })
    .await
    .map(|_| t0.elapsed());

    println!("nodes                     {}", args.nodes);
    println!("converge                  {:?}", converge);
    println!("spread p50 / max          {spread_p50:.1} ms / {spread_max:.1} ms");
    println!("false suspicions (quiet)  {false_count}");
    println!("idle bytes per node per s {idle_bytes:.0}");
    println!("detect {kill} crashes        {:?}", detect);
    println!(
        "{{\"nodes\":{},\"converge_s\":{},\"spread_p50_ms\":{:.1},\"spread_max_ms\":{:.1},\"false_suspicions\":{},\"detect_s\":{},\"idle_bytes_per_node_per_s\":{:.0},\"wall_s\":{:.1}}}",
        args.nodes,
        converge
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .unwrap_or("null".into()),
        spread_p50,
        spread_max,
        false_count,
        detect
            .map(|d| format!("{:.3}", d.as_secs_f64()))
            .unwrap_or("null".into()),
        idle_bytes,
        start.elapsed().as_secs_f64()
    );
}
