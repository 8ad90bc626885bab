//! Cluster security through the public API, on real TCP nodes: the keyring keeps outsiders
//! out and rotates without losing a broadcast, the cluster label keeps two clusters apart, and
//! each refusal reaches the user as a clear, typed error.

mod common;

use std::time::Duration;

use common::*;
use gossip::keyring::{Key, Keyring};
use gossip::wire::RejectReason;
use gossip::{Config, Error, Node, NodeId};

const K1: Key = [0x11; 32];
const K2: Key = [0x22; 32];

fn keyed(key: Key) -> (Config, Keyring) {
    let ring = Keyring::new(key);
    let mut config = test_config();
    config.keyring = Some(ring.clone());
    config.join_timeout = Duration::from_secs(5);
    (config, ring)
}

/// `n` nodes, each with its own keyring (so rotation can be done node by node), all joined
/// through the first.
async fn keyed_cluster(n: usize, key: Key) -> (Vec<Node>, Vec<Keyring>) {
    let mut nodes: Vec<Node> = Vec::new();
    let mut rings = Vec::new();
    for _ in 0..n {
        let (config, ring) = keyed(key);
        let node = Node::builder()
            .config(config)
            .bind("127.0.0.1:0")
            .await
            .expect("bind");
        if let Some(first) = nodes.first() {
            node.join(first.local_addr())
                .await
                .expect("join with the cluster key");
        }
        nodes.push(node);
        rings.push(ring);
    }
    (nodes, rings)
}

async fn converged(nodes: &[Node]) {
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(
        eventually(Duration::from_secs(30), || alive_exactly(nodes, &ids)).await,
        "membership did not converge"
    );
}

/// Every node but the sender got each of `sent` exactly once, within `limit`.
async fn all_delivered_once(received: &Received, sent: &[Commit], nodes: usize, limit: Duration) {
    let want = sent.len() * (nodes - 1);
    let complete = eventually(limit, || async {
        received
            .lock()
            .unwrap()
            .values()
            .map(|m| m.values().sum::<u32>() as usize)
            .sum::<usize>()
            >= want
    })
    .await;
    let r = received.lock().unwrap();
    for (i, got) in r.iter() {
        for c in sent {
            let count = got.get(c).copied().unwrap_or(0);
            let expected = u32::from(c.from as usize != *i);
            assert_eq!(count, expected, "node {i} got {c:?} {count} times");
        }
    }
    assert!(complete, "not every broadcast arrived");
}

/// The full rotation, one node at a time, while broadcasts flow: add the new key everywhere,
/// make it primary everywhere, remove the old one everywhere. Nothing is lost, and afterwards
/// a node holding only the old key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_a_live_cluster_without_losing_a_broadcast() {
    let (nodes, rings) = keyed_cluster(5, K1).await;
    converged(&nodes).await;
    let received = collect(&nodes);
    let mut sent = Vec::new();
    let mut n = 0;
    let mut burst = async |sent: &mut Vec<Commit>| {
        for _ in 0..10 {
            let from = n % nodes.len();
            let commit = Commit {
                from: from as u32,
                n: n as u32,
            };
            nodes[from].broadcast(&commit).await.expect("broadcast");
            sent.push(commit);
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    burst(&mut sent).await;
    for ring in &rings {
        ring.add(K2).expect("add the new key");
        burst(&mut sent).await;
    }
    for ring in &rings {
        ring.set_primary(K2).expect("make the new key primary");
        burst(&mut sent).await;
    }
    for ring in &rings {
        ring.remove(K1).expect("remove the old key");
        burst(&mut sent).await;
    }
    all_delivered_once(&received, &sent, nodes.len(), Duration::from_secs(30)).await;
    for ring in &rings {
        assert_eq!(ring.keys(), vec![K2]);
    }
    // The old key no longer opens anything.
    let (config, _) = keyed(K1);
    let stale = Node::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let error = stale.join(nodes[0].local_addr()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::JoinRejected {
                reason: RejectReason::WrongKey,
                ..
            }
        ),
        "{error}"
    );
}

/// A node without a key cannot join an encrypted cluster, and is told what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_key_is_refused_with_a_clear_error() {
    let (nodes, _) = keyed_cluster(2, K1).await;
    let mut config = test_config();
    config.join_timeout = Duration::from_secs(5);
    let outsider = Node::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let error = outsider.join(nodes[0].local_addr()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::JoinRejected {
                reason: RejectReason::KeyRequired,
                ..
            }
        ),
        "{error}"
    );
    let text = error.to_string();
    assert!(
        text.contains("encrypted") && text.contains("keyring"),
        "{text}"
    );
    assert!(text.contains(&nodes[0].local_addr().to_string()), "{text}");
    // The members never saw it.
    let members = nodes[0].members().await.unwrap();
    assert!(members.iter().all(|m| m.id != outsider.id()));
}

/// A node with another key cannot join, cannot read, and is told its key is wrong. The
/// cluster keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wrong_key_is_refused_and_the_cluster_carries_on() {
    let (nodes, _) = keyed_cluster(3, K1).await;
    converged(&nodes).await;
    let (config, _) = keyed(K2);
    let outsider = Node::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let error = outsider.join(nodes[1].local_addr()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::JoinRejected {
                reason: RejectReason::WrongKey,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("key"), "{error}");
    let received = collect(&nodes);
    let outsider_got = collect(std::slice::from_ref(&outsider));
    let sent = vec![Commit { from: 0, n: 1 }, Commit { from: 2, n: 2 }];
    nodes[0].broadcast(&sent[0]).await.unwrap();
    nodes[2].broadcast(&sent[1]).await.unwrap();
    all_delivered_once(&received, &sent, nodes.len(), Duration::from_secs(10)).await;
    assert!(
        outsider_got.lock().unwrap()[&0].is_empty(),
        "the outsider read a broadcast"
    );
}

/// An encrypted node joining a plaintext cluster is refused too, with the reason seen from
/// its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_node_cannot_join_a_plaintext_cluster() {
    let plain = tcp_cluster(2, &test_config()).await;
    let (config, _) = keyed(K1);
    let node = Node::builder()
        .config(config)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let error = node.join(plain[0].local_addr()).await.unwrap_err();
    assert!(
        matches!(
            &error,
            Error::JoinRejected {
                reason: RejectReason::PeerHasNoKey,
                ..
            }
        ),
        "{error}"
    );
}

/// Two clusters with different labels on the same host stay apart: a join across them is
/// refused with the label in the message, and broadcasts never cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_with_different_labels_stay_apart() {
    let mut blue = test_config();
    blue.cluster_label = "blue".into();
    let mut green = test_config();
    green.cluster_label = "green".into();
    green.join_timeout = Duration::from_secs(5);
    let blues = tcp_cluster(3, &blue).await;
    let greens = tcp_cluster(3, &green).await;
    converged(&blues).await;
    converged(&greens).await;

    // (A member's `join` returns at once once it has neighbours: ask with a fresh node.)
    let lone_green = Node::builder()
        .config(green.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let error = lone_green.join(blues[0].local_addr()).await.unwrap_err();
    match &error {
        Error::JoinRejected {
            reason: RejectReason::Label { ours, theirs },
            ..
        } => {
            assert_eq!((ours.as_str(), theirs.as_str()), ("green", "blue"));
        }
        other => panic!("expected a label rejection, got: {other}"),
    }
    assert!(error.to_string().contains("same cluster label"), "{error}");

    let blue_got = collect(&blues);
    let green_got = collect(&greens);
    let sent = vec![Commit { from: 0, n: 10 }];
    blues[0].broadcast(&sent[0]).await.unwrap();
    greens[0]
        .broadcast(&Commit { from: 0, n: 20 })
        .await
        .unwrap();
    all_delivered_once(&blue_got, &sent, blues.len(), Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, got) in blue_got.lock().unwrap().iter() {
        assert!(
            !got.contains_key(&Commit { from: 0, n: 20 }),
            "blue node {i} got a green broadcast"
        );
    }
    for (i, got) in green_got.lock().unwrap().iter() {
        assert!(
            !got.contains_key(&Commit { from: 0, n: 10 }),
            "green node {i} got a blue broadcast"
        );
    }
    for node in blues.iter() {
        let members = node.members().await.unwrap();
        assert_eq!(members.len(), 3, "a blue node lists a green one");
    }
}
