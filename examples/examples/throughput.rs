//! Throughput benchmark: 16 nodes on loopback exchanging 1 KiB typed messages, first from one
//! sender, then from all; the same over the memory transport; and, in the same run, the physical
//! limit: the same 16 nodes as a fixed fanout-4 tree of plain TCP connections forwarding
//! length-prefixed 1 KiB frames with no protocol at all.
//!
//! `cargo run --release --example throughput [-- --messages 20000]`
//! Prints a table and, last, one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use gossip::transport::memory::MemoryNetwork;
use gossip::{Config, Node, Tag};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};

const NODES: usize = 16;

/// The typed message every phase sends. Receivers decode it whole. `data` is a
/// [`gossip::SharedBytes`]: decoded through `Message::decode` it is a slice of the received
/// buffer, where a `bytes::Bytes` field is copied (serde hands it a borrowed slice); the two
/// are the same bytes on the wire. `--copy-payload` measures the copy.
#[derive(Tag, Serialize, Deserialize, Debug)]
struct Blob {
    sent_at_us: u64,
    data: gossip::SharedBytes,
}

#[derive(Parser)]
struct Args {
    /// Messages per phase (the flat-out phases last about a second each: a shorter phase
    /// measures mostly the machine's mood of the moment).
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Seconds the raw TCP tree runs: half before the TCP phases and half after them, so that
    /// the ratio compares figures taken around the same time (this VM's speed drifts).
    #[arg(long, default_value_t = 3.0)]
    raw_seconds: f64,
    /// Run only the phases whose name contains this (for profiling); the raw tree always runs.
    #[arg(long)]
    only: Option<String>,
    /// Deliveries allowed in flight in the flat-out phases (closed loop).
    #[arg(long, default_value_t = 4000)]
    window: u64,
    /// Broadcasts sent flat out, unmeasured, before each cluster's first phase: with 8,192 or
    /// more, the measured phases see full message caches (steady state, as a long-running
    /// node does) instead of paying for filling them (first-touch page faults). `--warmup 0`
    /// measures a fresh cluster, fill included.
    #[arg(long, default_value_t = 10_000)]
    warmup: usize,
    /// Receivers decode the 1 KiB field into a new buffer, as a `bytes::Bytes` field is
    /// decoded (an allocation and a copy per delivery), instead of sharing the received one.
    #[arg(long)]
    copy_payload: bool,
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

struct Phase {
    name: String,
    delivered_ratio: f64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    rmr: f64,
    wire_bytes_per_delivery: f64,
    cpu_us_per_delivery: f64,
}

async fn start_cluster(memory: Option<&MemoryNetwork>) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..NODES {
        let mut config = Config {
            seed: Some(i as u64 + 1),
            ..Config::default()
        };
        config.recv_capacity = 1 << 16;
        let node = match memory {
            Some(net) => Node::builder().config(config).memory(net).unwrap(),
            None => Node::builder()
                .config(config)
                .bind("127.0.0.1:0")
                .await
                .unwrap(),
        };
        if let Some(first) = nodes.first() {
            node.join(first.local_addr()).await.unwrap();
        }
        nodes.push(node);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes
}

async fn totals(nodes: &[Node]) -> (u64, u64) {
    let (mut payloads, mut bytes) = (0, 0);
    for n in nodes {
        let s = n.stats().await.unwrap();
        payloads += s.broadcast.gossip_sent;
        bytes += s.transport.bytes_sent;
    }
    (payloads, bytes)
}

/// Run one phase: `messages` broadcasts spread over `senders`, at `rate` per second (None: as
/// fast as the nodes accept them).
async fn phase(
    nodes: &[Node],
    name: &str,
    senders: usize,
    messages: usize,
    rate: Option<f64>,
    window: u64,
    copy_payload: bool,
) -> Phase {
    let start = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let last_us = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(messages * NODES)));
    // Receivers run until told to stop (no timer armed per message: the harness must not burn
    // CPU the protocol is charged for).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut receivers = Vec::new();
    for node in nodes {
        let (node, delivered, latencies, last_us, mut stop) = (
            node.clone(),
            delivered.clone(),
            latencies.clone(),
            last_us.clone(),
            stop_rx.clone(),
        );
        receivers.push(tokio::spawn(async move {
            let mut local = Vec::new();
            let mut batch = Vec::with_capacity(256);
            loop {
                // The messages already queued when this task wakes arrived together: one call
                // takes them all (at most 256), with one clock reading and one update of the
                // shared counters for them, not one per message (the harness must not burn CPU
                // the protocol is charged for).
                let got = tokio::select! {
                    biased;
                    got = node.recv_many(&mut batch, 256) => got,
                    _ = stop.changed() => break,
                };
                match got {
                    Ok(_) => {}
                    Err(gossip::Error::Lagged(_)) => continue,
                    Err(_) => break,
                }
                let now = start.elapsed().as_micros() as u64;
                let mut count = 0u64;
                for m in batch.drain(..) {
                    let blob = if copy_payload {
                        // What `m.decode()` does, minus the sharing: the payload is decoded
                        // from a plain slice, so `data` is copied.
                        gossip::codec::decode_payload::<Blob>(m.payload())
                    } else {
                        m.decode::<Blob>()
                    };
                    if let Ok(b) = blob {
                        local.push(now.saturating_sub(b.sent_at_us));
                        count += 1;
                    }
                }
                delivered.fetch_add(count, Ordering::Relaxed);
                last_us.fetch_max(now, Ordering::Relaxed);
            }
            latencies.lock().unwrap().extend(local);
        }));
    }
    let (p0, b0) = totals(nodes).await;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let per_sender = messages / senders;
    let sent_total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for node in nodes.iter().take(senders) {
        let node = node.clone();
        let (sent_total, delivered) = (sent_total.clone(), delivered.clone());
        tasks.push(tokio::spawn(async move {
            let data = bytes::Bytes::from(vec![7u8; 1024]);
            let begin = Instant::now();
            for i in 0..per_sender {
                if let Some(rate) = rate {
                    let due = begin + Duration::from_secs_f64(i as f64 * senders as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    // Closed loop: keep at most WINDOW deliveries in flight, so queues do not
                    // overflow and the figure is sustained throughput, not a burst into drops.
                    while sent_total.load(Ordering::Relaxed) * (NODES as u64 - 1)
                        > delivered.load(Ordering::Relaxed) + window
                    {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                }
                let blob = Blob {
                    sent_at_us: start.elapsed().as_micros() as u64,
                    data: gossip::SharedBytes(data.clone()),
                };
                node.broadcast(&blob).await.unwrap();
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected = (per_sender * senders * (NODES - 1)) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Throughput up to the last delivery, not up to the deadline.
    let elapsed = (last_us.load(Ordering::Relaxed) as f64 / 1e6
        - t0.duration_since(start).as_secs_f64())
    .max(1e-3);
    let cpu = cpu_seconds() - cpu0;
    let got = delivered.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for r in receivers {
        r.await.unwrap();
    }
    let (p1, b1) = totals(nodes).await;
    if std::env::var_os("THROUGHPUT_DEBUG").is_some() {
        let (mut drops, mut lagged, mut grafts, mut catchup, mut bad) = (0, 0, 0, 0, 0);
        for n in nodes {
            let s = n.stats().await.unwrap();
            drops += s.transport.dropped_overflow;
            lagged += s.lagged;
            grafts += s.broadcast.graft_sent;
            catchup += s.broadcast.catchup_sent;
            bad += s.bad_frames;
        }
        eprintln!(
            "{name}: dropped_overflow {drops} lagged {lagged} grafts {grafts} catchup {catchup} bad_frames {bad}"
        );
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_unstable();
    let pct = |p: f64| {
        if l.is_empty() {
            0.0
        } else {
            l[((l.len() - 1) as f64 * p) as usize] as f64 / 1000.0
        }
    };
    let sent = (per_sender * senders) as f64;
    Phase {
        name: name.to_string(),
        delivered_ratio: got as f64 / expected.max(1) as f64,
        deliveries_per_s: got as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        rmr: (p1 - p0) as f64 / (sent * (NODES - 1) as f64) - 1.0,
        wire_bytes_per_delivery: (b1 - b0) as f64 / got.max(1) as f64,
        cpu_us_per_delivery: cpu * 1e6 / got.max(1) as f64,
    }
}

/// One run of the raw tree: deliveries per second and CPU time per delivery.
struct RawRun {
    per_s: f64,
    cpu_us: f64,
}

impl RawRun {
    async fn measure(seconds: f64) -> RawRun {
        let cpu0 = cpu_seconds();
        let per_s = raw_tree(seconds).await;
        let cpu_us = (cpu_seconds() - cpu0) * 1e6 / (per_s * seconds).max(1.0);
        RawRun { per_s, cpu_us }
    }
}

/// The physical limit: a fixed fanout-4 tree of plain TCP connections, 1 KiB frames.
async fn raw_tree(seconds: f64) -> f64 {
    let received = Arc::new(AtomicU64::new(0));
    let mut listeners = Vec::new();
    for _ in 0..NODES {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let children = |i: usize| (1..=4).map(move |k| i * 4 + k).filter(|c| *c < NODES);
    // Every non-root node: accept from its parent, forward to its children.
    for (i, listener) in listeners.into_iter().enumerate().skip(1) {
        let kids: Vec<_> = children(i).map(|c| addrs[c]).collect();
        let received = received.clone();
        tokio::spawn(async move {
            let (inbound, _) = listener.accept().await.unwrap();
            let mut inbound = tokio::io::BufReader::with_capacity(64 * 1024, inbound);
            let mut outs = Vec::new();
            for k in kids {
                let s = TcpStream::connect(k).await.unwrap();
                s.set_nodelay(true).unwrap();
                outs.push(BufWriter::with_capacity(64 * 1024, s));
            }
            let mut buf = vec![0u8; 4 + 1024];
            while inbound.read_exact(&mut buf).await.is_ok() {
                received.fetch_add(1, Ordering::Relaxed);
                for o in outs.iter_mut() {
                    if o.write_all(&buf).await.is_err() {
                        return;
                    }
                }
                // Flush once the input already read is used up: batches like a real relay.
                if inbound.buffer().is_empty() {
                    for o in outs.iter_mut() {
                        if o.flush().await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut roots = Vec::new();
    for c in children(0) {
        let s = TcpStream::connect(addrs[c]).await.unwrap();
        s.set_nodelay(true).unwrap();
        roots.push(BufWriter::with_capacity(64 * 1024, s));
    }
    let mut frame = vec![7u8; 4 + 1024];
    frame[..4].copy_from_slice(&1024u32.to_be_bytes());
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let before = received.load(Ordering::Relaxed);
    while start.elapsed() < limit {
        for _ in 0..64 {
            for r in roots.iter_mut() {
                r.write_all(&frame).await.unwrap();
            }
        }
        for r in roots.iter_mut() {
            r.flush().await.unwrap();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    (received.load(Ordering::Relaxed) - before) as f64 / elapsed
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let raw_before = RawRun::measure(args.raw_seconds / 2.0).await;
    // (transport, name, senders, messages, rate)
    let plan: [(bool, &str, usize, usize, Option<f64>); 5] = [
        (
            false,
            "tcp one sender (paced 1000/s)",
            1,
            2000,
            Some(1000.0),
        ),
        (false, "tcp one sender (flat out)", 1, args.messages, None),
        (
            false,
            "tcp all senders (flat out)",
            NODES,
            args.messages,
            None,
        ),
        (true, "memory one sender (flat out)", 1, args.messages, None),
        (
            true,
            "memory all senders (flat out)",
            NODES,
            args.messages,
            None,
        ),
    ];
    let wanted = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let mut phases = Vec::new();
    let mut raw_after = None;
    for memory in [false, true] {
        let steps: Vec<_> = plan
            .iter()
            .filter(|(m, name, ..)| *m == memory && wanted(name))
            .collect();
        if steps.is_empty() {
            continue;
        }
        let net = MemoryNetwork::new(1);
        let nodes = start_cluster(memory.then_some(&net)).await;
        if args.warmup > 0 {
            let copy = args.copy_payload;
            phase(&nodes, "warmup", 1, args.warmup, None, args.window, copy).await;
        }
        for (_, name, senders, messages, rate) in steps {
            let copy = args.copy_payload;
            phases.push(phase(&nodes, name, *senders, *messages, *rate, args.window, copy).await);
        }
        if !memory {
            // The TCP nodes stop before the raw tree runs again.
            drop(nodes);
            tokio::time::sleep(Duration::from_millis(500)).await;
            raw_after = Some(RawRun::measure(args.raw_seconds / 2.0).await);
        }
    }
    let raw_after = match raw_after {
        Some(r) => r,
        None => RawRun::measure(args.raw_seconds / 2.0).await,
    };
    let raw = (raw_before.per_s + raw_after.per_s) / 2.0;
    for (when, r) in [("before", &raw_before), ("after", &raw_after)] {
        println!(
            "raw fanout-4 TCP tree ({when} the TCP phases): {:.0} deliveries/s, {:.2} us CPU per delivery",
            r.per_s, r.cpu_us
        );
    }

    println!(
        "{:<32} {:>9} {:>12} {:>8} {:>8} {:>7} {:>10} {:>9}",
        "phase", "delivered", "deliv/s", "p50 ms", "p99 ms", "RMR", "B/deliv", "cpu us/d"
    );
    for p in &phases {
        println!(
            "{:<32} {:>9.4} {:>12.0} {:>8.2} {:>8.2} {:>7.3} {:>10.0} {:>9.2}",
            p.name,
            p.delivered_ratio,
            p.deliveries_per_s,
            p.p50_ms,
            p.p99_ms,
            p.rmr,
            p.wire_bytes_per_delivery,
            p.cpu_us_per_delivery
        );
    }
    let best_tcp = phases
        .iter()
        .filter(|p| p.name.starts_with("tcp") && p.name.contains("flat out"))
        .map(|p| p.deliveries_per_s)
        .fold(0.0, f64::max);
    println!(
        "gossip over TCP reaches {:.1}% of the raw tree (the mean of its two runs)",
        100.0 * best_tcp / raw
    );
    let json: Vec<String> = phases
        .iter()
        .map(|p| {
            format!(
                "{{\"phase\":\"{}\",\"delivered_ratio\":{:.4},\"deliveries_per_s\":{:.0},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"rmr\":{:.4},\"wire_bytes_per_delivery\":{:.0},\"cpu_us_per_delivery\":{:.2}}}",
                p.name, p.delivered_ratio, p.deliveries_per_s, p.p50_ms, p.p99_ms, p.rmr, p.wire_bytes_per_delivery, p.cpu_us_per_delivery
            )
        })
        .collect();
    println!(
        "{{\"raw_tree_deliveries_per_s\":{:.0},\"raw_before\":{:.0},\"raw_after\":{:.0},\"ratio\":{:.3},\"phases\":[{}]}}",
        raw,
        raw_before.per_s,
        raw_after.per_s,
        best_tcp / raw,
        json.join(",")
    );
}
