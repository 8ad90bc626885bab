//! Mixed-version clusters (issue 5, item 1): a broadcast whose tag this binary does not know
//! is relayed undecoded and still reaches `recv()` as a `Message`.
//!
//! A type that implements `Tag` by hand is missing from the binary's registry, exactly like a
//! type that only a newer binary defines: every node here sees its tag as unknown.

mod common;

use std::time::Duration;

use common::*;
use gossip::{Message, Node, NodeId, Tag};
use serde::{Deserialize, Serialize};

/// A message "from a newer version": not registered in this binary.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct FromTheFuture {
    n: u32,
    note: String,
}

impl Tag for FromTheFuture {
    const NAME: &'static str = "FromTheFuture";
    const ID: u64 = gossip::tag_id("FromTheFuture");
}

/// A small active view forces multi-hop paths, so unknown tags must be relayed, not just
/// received from the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_are_relayed_and_reach_recv_as_messages() {
    let mut config = test_config();
    config.protocol.membership.active_view_capacity = 3;
    let nodes = tcp_cluster(8, &config).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(
        eventually(Duration::from_secs(30), || alive_exactly(&nodes, &ids)).await,
        "membership did not converge"
    );
    assert!(
        gossip::check_registry()
            .unwrap()
            .name(FromTheFuture::ID)
            .is_none(),
        "the hand-written tag must be unknown to this binary's registry"
    );

    let sent: Vec<FromTheFuture> = (0..5)
        .map(|n| FromTheFuture {
            n,
            note: format!("v2 message {n}"),
        })
        .collect();
    for m in &sent {
        nodes[0].broadcast(m).await.expect("broadcast");
    }

    let mut hops_seen = 0;
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let mut got = Vec::new();
        while got.len() < sent.len() {
            let msg: Message = tokio::time::timeout(Duration::from_secs(30), node.recv())
                .await
                .unwrap_or_else(|_| panic!("node {i} got {} of {} messages", got.len(), sent.len()))
                .expect("recv");
            assert_eq!(
                msg.tag(),
                format!("0x{:016x}", FromTheFuture::ID),
                "unknown tags read as hex"
            );
            assert_eq!(msg.id(), FromTheFuture::ID);
            assert_eq!(msg.origin(), Some(nodes[0].id()));
            hops_seen = hops_seen.max(msg.hops());
            got.push(
                msg.decode::<FromTheFuture>()
                    .expect("the newer type still decodes it"),
            );
        }
        got.sort_by_key(|m| m.n);
        assert_eq!(got, sent, "node {i}");
    }
    assert!(
        hops_seen >= 2,
        "no message was relayed (max hops {hops_seen})"
    );
    for node in &nodes {
        let stats = node.stats().await.unwrap();
        assert_eq!(
            stats.bad_envelopes, 0,
            "an unknown tag was treated as a bad envelope"
        );
    }
}

/// `recv_typed` with an enum that does not list the tag skips it and counts it; the
/// untyped path still sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_typed_skips_and_counts_unknown_tags() {
    let nodes = tcp_cluster(2, &test_config()).await;
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    assert!(eventually(Duration::from_secs(30), || alive_exactly(&nodes, &ids)).await);
    nodes[0]
        .broadcast(&FromTheFuture {
            n: 1,
            note: "x".into(),
        })
        .await
        .unwrap();
    nodes[0].broadcast(&Commit { from: 0, n: 2 }).await.unwrap();
    let receiver: &Node = &nodes[1];
    let got = tokio::time::timeout(Duration::from_secs(10), receiver.recv_typed::<Inbox>())
        .await
        .expect("the listed message arrives")
        .expect("recv_typed");
    let Inbox::Commit(c) = got;
    assert_eq!(c, Commit { from: 0, n: 2 });
    assert_eq!(receiver.stats().await.unwrap().unlisted, 1);
}
