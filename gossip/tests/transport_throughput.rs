//! Throughput of one TCP link, plaintext against encrypted. A measurement, not a check:
//! `cargo test --release -p gossip --test transport_throughput -- --ignored --nocapture`

use std::future::poll_fn;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gossip::keyring::Keyring;
use gossip::transport::{TcpConfig, TcpTransport, Transport, TransportEvent};

/// CPU time of this process so far (user + system), from /proc (Linux), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0 // USER_HZ
}

async fn run(keyring: Option<Keyring>, frames: u32, size: usize) -> (f64, f64, f64) {
    let cfg = TcpConfig {
        keyring,
        outbound_queue: 4096,
        ..TcpConfig::default()
    };
    let mut a = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), cfg.clone(), 1)
        .await
        .unwrap();
    let mut b = TcpTransport::bind("127.0.0.1:0".parse().unwrap(), cfg, 2)
        .await
        .unwrap();
    let payload = Bytes::from(vec![0x5a; size]);
    // Warm up the connection.
    a.send(b.local_id(), payload.clone());
    poll_fn(|cx| b.poll_recv(cx)).await.unwrap();
    let b_id = b.local_id();
    let start = Instant::now();
    let cpu_start = cpu_seconds();
    let before = a.stats().bytes_sent;
    // Keep at most 3,000 frames in flight so the bounded queue never overflows.
    let (mut sent, mut got) = (0u32, 0u32);
    while got < frames {
        while sent < frames && sent - got < 3000 {
            a.send(b_id, payload.clone());
            sent += 1;
        }
        let ev = tokio::time::timeout(Duration::from_secs(30), poll_fn(|cx| b.poll_recv(cx)))
            .await
            .expect("stalled")
            .unwrap();
        if let TransportEvent::Frame { .. } = ev {
            got += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds() - cpu_start) * 1e6 / frames as f64;
    let s = a.stats();
    assert_eq!(
        s.dropped_overflow, 0,
        "sender outran the queue; results would be wrong"
    );
    let wire_per_frame = (s.bytes_sent - before) as f64 / frames as f64;
    (frames as f64 / secs, wire_per_frame, cpu_us)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run with --release --ignored --nocapture"]
async fn one_link_plaintext_vs_encrypted() {
    for size in [100usize, 1024] {
        let n = 200_000;
        let (plain, wire_plain, cpu_plain) = run(None, n, size).await;
        let (enc, wire_enc, cpu_enc) = run(Some(Keyring::new([9; 32])), n, size).await;
        println!(
            "{size:>5} B frames: plaintext {plain:>9.0} frames/s, {wire_plain:.0} wire B/frame, \
             {cpu_plain:.2} CPU us/frame | encrypted {enc:>9.0} frames/s, {wire_enc:.0} wire \
             B/frame, {cpu_enc:.2} CPU us/frame"
        );
    }
}
