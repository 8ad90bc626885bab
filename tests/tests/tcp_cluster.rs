//! Real clusters on 127.0.0.1 over TCP, through the public API only.

mod common;

use std::time::Duration;

use common::*;
use gossip::{MemberState, Node, NodeId};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// 50 nodes join through one member; 500 broadcasts from random nodes; every node delivers
/// each exactly once (and never its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_deliver_every_broadcast_exactly_once() {
    let config = test_config();
    let nodes = tcp_cluster(50, &config).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(
        eventually(Duration::from_secs(30), || alive_exactly(&nodes, &ids)).await,
        "membership did not converge to the 50 nodes"
    );
    let received = collect(&nodes);
    let mut rng = StdRng::seed_from_u64(7);
    let mut sent = Vec::new();
    for n in 0..500u32 {
        let from = rng.random_range(0..nodes.len());
        let commit = Commit {
            from: from as u32,
            n,
        };
        nodes[from].broadcast(&commit).await.expect("broadcast");
        sent.push(commit);
    }
    let complete = eventually(Duration::from_secs(60), || async {
        let r = received.lock().unwrap();
        r.values().map(|m| m.len()).sum::<usize>() == 500 * 49
    })
    .await;
    let r = received.lock().unwrap();
    for (i, got) in r.iter() {
        for c in &sent {
            let count = got.get(c).copied().unwrap_or(0);
            let want = u32::from(c.from as usize != *i);
            assert_eq!(count, want, "node {i} got {c:?} {count} times");
        }
    }
    assert!(complete);
}

/// 20% of the nodes vanish without leaving: every survivor marks them dead, and later
/// broadcasts reach every survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_nodes_are_marked_dead_and_broadcasts_still_reach_survivors() {
    let config = test_config();
    let mut nodes = tcp_cluster(20, &config).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(eventually(Duration::from_secs(30), || alive_exactly(&nodes, &ids)).await);
    let crashed: Vec<Node> = nodes.drain(16..).collect();
    let crashed_ids: Vec<NodeId> = crashed.iter().map(|n| n.id()).collect();
    drop(crashed);
    // Detection (~1 s) + suspicion timeout + spreading, with a wide margin for slow CI.
    assert!(
        eventually(Duration::from_secs(20), || all_see(
            &nodes,
            &crashed_ids,
            MemberState::Dead
        ))
        .await,
        "survivors did not all mark the crashed nodes dead"
    );
    let received = collect(&nodes);
    for n in 0..20u32 {
        nodes[(n as usize) % nodes.len()]
            .broadcast(&Commit { from: n % 16, n })
            .await
            .unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            received
                .lock()
                .unwrap()
                .values()
                .map(|m| m.len())
                .sum::<usize>()
                == 20 * 15
        })
        .await,
        "broadcasts after the crash did not reach every survivor"
    );
}

/// A node that leaves shows as Left, not Dead, on every other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_is_left_not_dead_everywhere() {
    let config = test_config();
    let mut nodes = tcp_cluster(8, &config).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(eventually(Duration::from_secs(20), || alive_exactly(&nodes, &ids)).await);
    let leaver = nodes.pop().unwrap();
    let leaver_id = leaver.id();
    leaver.leave().await.unwrap();
    assert!(matches!(leaver.recv().await, Err(gossip::Error::Closed)));
    assert!(
        eventually(Duration::from_secs(10), || all_see(
            &nodes,
            std::slice::from_ref(&leaver_id),
            MemberState::Left
        ))
        .await,
        "not every node lists the leaver as Left"
    );
    // And it stays Left: the failure detector must not turn it into Dead.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(all_see(&nodes, std::slice::from_ref(&leaver_id), MemberState::Left).await);
}

/// A node restarted at the same address is a new identity, rejoins, and receives new broadcasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_and_receives() {
    let config = test_config();
    let mut nodes = tcp_cluster(6, &config).await;
    let old = nodes.pop().unwrap();
    let (old_id, addr) = (old.id(), old.local_addr());
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let restarted = Node::builder()
        .config(config.clone())
        .bind(addr)
        .await
        .expect("rebind");
    assert_eq!(restarted.local_addr(), addr);
    assert_ne!(restarted.id(), old_id, "a restart must be a new identity");
    restarted.join(nodes[0].local_addr()).await.unwrap();
    nodes.push(restarted);
    let new_id = nodes[5].id();
    assert!(
        eventually(Duration::from_secs(20), || all_see(
            &nodes,
            std::slice::from_ref(&new_id),
            MemberState::Alive
        ))
        .await
    );
    let received = collect(&nodes[5..]);
    nodes[0].broadcast(&Commit { from: 0, n: 1 }).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            received.lock().unwrap()[&0].contains_key(&Commit { from: 0, n: 1 })
        })
        .await,
        "the restarted node did not receive a new broadcast"
    );
}

/// Joining an address where nobody listens fails with a clear error before the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_nobody_times_out_with_a_clear_error() {
    let mut config = test_config();
    config.join_timeout = Duration::from_secs(2);
    let node = Node::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = node.join(nobody).await.unwrap_err();
    assert!(
        matches!(error, gossip::Error::JoinTimeout { .. }),
        "{error}"
    );
    assert!(error.to_string().contains(&nobody.to_string()), "{error}");
}
