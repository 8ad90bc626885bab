//! A receiver that falls behind is told how many messages it skipped; memory stays bounded and
//! receiving continues with the oldest message still queued.

mod common;

use std::time::Duration;

use common::*;
use gossip::transport::memory::MemoryNetwork;
use gossip::{Config, Node};

/// A sender and a receiver whose queue holds 8 messages; 20 broadcasts, all of them in the
/// receiver's queue or skipped (8 kept, 12 skipped) when this returns.
async fn slow_receiver_behind_20_broadcasts(net: &MemoryNetwork) -> (Node, Node) {
    let sender = Node::builder()
        .config(Config {
            seed: Some(1),
            ..test_config()
        })
        .memory(net)
        .unwrap();
    let slow = Node::builder()
        .config(Config {
            seed: Some(2),
            recv_capacity: 8,
            ..test_config()
        })
        .memory(net)
        .unwrap();
    slow.join(sender.local_addr()).await.unwrap();
    let both = [sender.clone(), slow.clone()];
    let ids = [sender.id(), slow.id()];
    assert!(eventually(Duration::from_secs(10), || alive_exactly(&both, &ids)).await);

    for n in 0..20u32 {
        sender.broadcast(&Commit { from: 0, n }).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            slow.stats().await.is_ok_and(|s| s.delivered == 20)
        })
        .await
    );
    (sender, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_a_lag_count_then_continues() {
    let net = MemoryNetwork::new(3);
    let (_sender, slow) = slow_receiver_behind_20_broadcasts(&net).await;
    match slow.recv().await {
        Err(gossip::Error::Lagged(skipped)) => assert_eq!(skipped, 12),
        other => panic!("expected a lag report, got {other:?}"),
    }
    // The next message is the oldest one kept: the 13th broadcast.
    let first_kept: Commit = slow.recv().await.unwrap().decode().unwrap();
    assert_eq!(first_kept, Commit { from: 0, n: 12 });
    let mut rest = Vec::new();
    for _ in 0..7 {
        rest.push(slow.recv_typed::<Inbox>().await.unwrap());
    }
    assert!(matches!(
        rest.last(),
        Some(Inbox::Commit(Commit { n: 19, .. }))
    ));
    assert_eq!(slow.stats().await.unwrap().lagged, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_many_reports_the_lag_alone_then_takes_the_kept_messages_in_order() {
    let net = MemoryNetwork::new(4);
    let (_sender, slow) = slow_receiver_behind_20_broadcasts(&net).await;
    let mut batch = Vec::new();
    match slow.recv_many(&mut batch, 100).await {
        Err(gossip::Error::Lagged(skipped)) => assert_eq!(skipped, 12),
        other => panic!("expected a lag report, got {other:?}"),
    }
    assert!(batch.is_empty(), "a lag report comes alone");
    // At most `limit` per call, appended in order.
    assert_eq!(slow.recv_many(&mut batch, 5).await.unwrap(), 5);
    assert_eq!(slow.recv_many(&mut batch, 100).await.unwrap(), 3);
    let got: Vec<Commit> = batch.iter().map(|m| m.decode().unwrap()).collect();
    let want: Vec<Commit> = (12..20).map(|n| Commit { from: 0, n }).collect();
    assert_eq!(got, want);
}
