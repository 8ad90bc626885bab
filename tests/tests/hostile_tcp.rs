//! Hostile peers over real TCP against a live cluster (issue 5, item 3), through the public
//! API plus raw sockets: 200 connections sending garbage, 60 half-open connections that never
//! finish the handshake, slowloris writers, and a peer that completes the handshake and then
//! floods frames at full speed. Meanwhile the honest nodes broadcast; each must get every
//! broadcast exactly once, the victim's handshakes time out, and this process's memory stays
//! under a stated bound.
//!
//! Alone in its test binary so that the memory reading is this test's.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use gossip::proto::{self, detector};
use gossip::wire::{self, Handshake, Hello};
use gossip::{Node, NodeId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Growth of this process's resident memory the attack may cause, in MiB. The limits that
/// bound it: at most 256 inbound connections and 64 pending handshakes per node, frames of at
/// most 1 MiB read one at a time per connection, bounded queues everywhere.
const RSS_BOUND_MB: f64 = 128.0;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A raw connection that completed a plaintext handshake with `victim` under a made-up id.
async fn handshaken(victim: &Node, fake_port: u16) -> Option<TcpStream> {
    let mut s = TcpStream::connect(victim.local_addr()).await.ok()?;
    let hello = Hello {
        label: String::new(),
        from: NodeId::new(SocketAddr::from(([127, 0, 0, 1], fake_port)), 99),
        expected: Some(victim.id()),
        encrypted: false,
        nonce: [9; 16],
        key_proof: None,
    };
    s.write_all(&frame(&Handshake::Hello(hello).encode()))
        .await
        .ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).min(4096)];
    s.read_exact(&mut body).await.ok()?;
    matches!(Handshake::decode(&body), Ok(Handshake::Hello(_))).then_some(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_under_attack_keeps_delivering_every_broadcast() {
    let mut config = test_config();
    config.tcp.handshake_timeout = Duration::from_millis(500);
    config.tcp.read_timeout = Duration::from_secs(1);
    let nodes = tcp_cluster(4, &config).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(
        eventually(Duration::from_secs(30), || alive_exactly(&nodes, &ids)).await,
        "membership did not converge"
    );
    let received = collect(&nodes);
    let victim = nodes[0].clone();
    let addr = victim.local_addr();
    let before = rss_mb();
    let stop = Arc::new(AtomicBool::new(false));
    let flooded = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();

    // 200 connections that send garbage, then stay open.
    for i in 0..200u32 {
        attackers.push(tokio::spawn(async move {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let junk: Vec<u8> = (0..64).map(|b| (b as u32 * 31 + i) as u8).collect();
                let _ = s.write_all(&junk).await;
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            }
        }));
    }
    // 60 half-open connections: connect, say nothing.
    for _ in 0..60 {
        attackers.push(tokio::spawn(async move {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                let mut buf = [0u8; 16];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
            }
        }));
    }
    // 10 slowloris writers: one byte of a handshake frame every 200 ms.
    for _ in 0..10 {
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            if let Ok(mut s) = TcpStream::connect(addr).await {
                for b in frame(&[0x47; 300]) {
                    if stop.load(Ordering::Relaxed) || s.write_all(&[b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    // A flooder: completes the handshake, sends valid protocol frames (heartbeats) as fast as
    // the socket takes them, then one frame over the size limit, which must cost it the
    // connection; then it reconnects and starts again.
    let heartbeat = wire::encode(&proto::Message::<NodeId>::Detector(
        detector::Message::Heartbeat,
    ));
    let cut_off = Arc::new(AtomicU64::new(0));
    {
        let stop = stop.clone();
        let flooded = flooded.clone();
        let cut_off = cut_off.clone();
        let victim = victim.clone();
        attackers.push(tokio::spawn(async move {
            let mut port = 40_000;
            let batch: Vec<u8> = (0..256).flat_map(|_| frame(&heartbeat)).collect();
            while !stop.load(Ordering::Relaxed) {
                port += 1;
                let Some(mut s) = handshaken(&victim, port).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                for _ in 0..200 {
                    if stop.load(Ordering::Relaxed) || s.write_all(&batch).await.is_err() {
                        break;
                    }
                    flooded.fetch_add(256, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
                if s.write_all(&(2u32 << 20).to_be_bytes()).await.is_ok() {
                    let mut buf = [0u8; 4096];
                    let closed = tokio::time::timeout(Duration::from_secs(3), async {
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        }
                    })
                    .await;
                    if closed.is_ok() {
                        cut_off.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    // The honest nodes broadcast while the attack runs.
    let mut sent = Vec::new();
    for n in 0..200u32 {
        let from = (n as usize) % nodes.len();
        let commit = Commit {
            from: from as u32,
            n,
        };
        nodes[from].broadcast(&commit).await.expect("broadcast");
        sent.push(commit);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let want = sent.len() * (nodes.len() - 1);
    let complete = eventually(Duration::from_secs(30), || async {
        received
            .lock()
            .unwrap()
            .values()
            .map(|m| m.values().sum::<u32>() as usize)
            .sum::<usize>()
            >= want
    })
    .await;
    let grown = rss_mb() - before;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }

    for (i, got) in received.lock().unwrap().iter() {
        for c in &sent {
            let count = got.get(c).copied().unwrap_or(0);
            let expected = u32::from(c.from as usize != *i);
            assert_eq!(
                count, expected,
                "node {i} got {c:?} {count} times under attack"
            );
        }
    }
    assert!(complete);
    let stats = victim.stats().await.expect("stats");
    let t = &stats.transport;
    let cut_off = cut_off.load(Ordering::Relaxed);
    println!(
        "rss growth {grown:.1} MiB; flooded {} frames; {cut_off} flooding connections cut off \
         by an oversized frame; victim: {t:?}",
        flooded.load(Ordering::Relaxed)
    );
    assert!(
        grown < RSS_BOUND_MB,
        "memory grew by {grown:.1} MiB under attack"
    );
    assert!(
        flooded.load(Ordering::Relaxed) > 10_000,
        "the flooder barely sent anything"
    );
    assert!(
        t.rejected_connections >= 200,
        "garbage connections not all rejected: {t:?}"
    );
    assert!(t.handshake_timeouts > 0, "no handshake timed out: {t:?}");
    assert!(
        cut_off > 0,
        "an oversized frame did not close the flooder's connection"
    );
}
