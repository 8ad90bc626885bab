//! A 50/50 partition on the in-memory network, then healed: the overlay re-merges, members
//! converge, and broadcasts sent on each side during the partition reach the other side.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use gossip::transport::memory::MemoryNetwork;
use gossip::{Config, Node, NodeId};

fn config(i: u64) -> Config {
    let mut config = test_config();
    config.seed = Some(i);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healed_partition_remerges_and_catches_up() {
    let net = MemoryNetwork::new(11);
    net.set_latency(Duration::from_millis(1)..Duration::from_millis(10));
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..20u64 {
        let node = Node::builder().config(config(i)).memory(&net).unwrap();
        if let Some(first) = nodes.first() {
            node.join(first.local_addr()).await.unwrap();
        }
        nodes.push(node);
    }
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(
        eventually(Duration::from_secs(20), || alive_exactly(&nodes, &ids)).await,
        "membership did not converge before the partition"
    );
    let received = collect(&nodes);

    let (left, right) = nodes.split_at(10);
    let left_addrs: Vec<SocketAddr> = left.iter().map(|n| n.local_addr()).collect();
    let right_addrs: Vec<SocketAddr> = right.iter().map(|n| n.local_addr()).collect();
    net.partition(&left_addrs, &right_addrs);
    // Long enough for each side to declare the other dead.
    let left_ids: Vec<NodeId> = left.iter().map(|n| n.id()).collect();
    assert!(
        eventually(Duration::from_secs(30), || all_see(
            right,
            &left_ids,
            gossip::MemberState::Dead
        ))
        .await,
        "the right side never noticed the partition"
    );
    left[0].broadcast(&Commit { from: 0, n: 1 }).await.unwrap();
    right[0]
        .broadcast(&Commit { from: 10, n: 2 })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let r = received.lock().unwrap();
        assert!(
            !r[&15].contains_key(&Commit { from: 0, n: 1 }),
            "the partition let a message through"
        );
    }

    net.heal();
    assert!(
        eventually(Duration::from_secs(60), || alive_exactly(&nodes, &ids)).await,
        "members did not converge after the partition healed"
    );
    let caught_up = eventually(Duration::from_secs(30), || async {
        let r = received.lock().unwrap();
        (0..20).all(|i| {
            let got = &r[&i];
            (i == 0 || got.contains_key(&Commit { from: 0, n: 1 }))
                && (i == 10 || got.contains_key(&Commit { from: 10, n: 2 }))
        })
    })
    .await;
    assert!(
        caught_up,
        "broadcasts from the partition did not reach the other side"
    );
    // And new broadcasts reach everyone through the re-merged overlay.
    nodes[3].broadcast(&Commit { from: 3, n: 3 }).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            let r = received.lock().unwrap();
            (0..20)
                .filter(|i| *i != 3)
                .all(|i| r[&i].contains_key(&Commit { from: 3, n: 3 }))
        })
        .await
    );
}
