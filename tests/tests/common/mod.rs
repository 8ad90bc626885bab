//! Helpers shared by the end-to-end tests: build clusters, wait for conditions, collect
//! deliveries. Everything goes through gossip's public API.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gossip::{Config, MemberState, Node, NodeId, Tag, Tags};
use serde::{Deserialize, Serialize};

/// The message the tests broadcast: who sent it and a counter.
#[derive(Tag, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Commit {
    pub from: u32,
    pub n: u32,
}

#[derive(Tags, Debug)]
pub enum Inbox {
    Commit(Commit),
}

/// Settings that make failure detection and repair quick enough for tests.
pub fn test_config() -> Config {
    Config {
        join_timeout: Duration::from_secs(20),
        ..Config::default()
    }
}

/// Poll `check` every 50 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `n` TCP nodes on 127.0.0.1, all joined through the first one.
pub async fn tcp_cluster(n: usize, config: &Config) -> Vec<Node> {
    let first = Node::builder()
        .config(config.clone())
        .bind("127.0.0.1:0")
        .await
        .expect("bind");
    let contact = first.local_addr();
    let mut nodes = vec![first];
    for _ in 1..n {
        let node = Node::builder()
            .config(config.clone())
            .bind("127.0.0.1:0")
            .await
            .expect("bind");
        node.join(contact).await.expect("join");
        nodes.push(node);
    }
    nodes
}

/// Per receiving node, how many times each Commit arrived.
pub type Received = Arc<Mutex<HashMap<usize, HashMap<Commit, u32>>>>;

/// Spawn one receiving task per node that counts every Commit it gets.
pub fn collect(nodes: &[Node]) -> Received {
    let received: Received = Arc::default();
    for (i, node) in nodes.iter().enumerate() {
        let node = node.clone();
        let received = received.clone();
        received.lock().unwrap().insert(i, HashMap::new());
        tokio::spawn(async move {
            loop {
                match node.recv_typed::<Inbox>().await {
                    Ok(Inbox::Commit(c)) => {
                        *received
                            .lock()
                            .unwrap()
                            .get_mut(&i)
                            .unwrap()
                            .entry(c)
                            .or_default() += 1;
                    }
                    Err(gossip::Error::Closed) => break,
                    Err(e) => panic!("node {i}: {e}"),
                }
            }
        });
    }
    received
}

/// Whether every node in `members` lists each of `ids` in `state`.
pub async fn all_see(nodes: &[Node], ids: &[NodeId], state: MemberState) -> bool {
    for node in nodes {
        let Ok(members) = node.members().await else {
            return false;
        };
        for id in ids {
            if !members.iter().any(|m| m.id == *id && m.state == state) {
                return false;
            }
        }
    }
    true
}

/// Whether every node lists exactly `ids` as Alive.
pub async fn alive_exactly(nodes: &[Node], ids: &[NodeId]) -> bool {
    for node in nodes {
        let Ok(members) = node.members().await else {
            return false;
        };
        let mut alive: Vec<NodeId> = members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| m.id)
            .collect();
        alive.sort();
        let mut want = ids.to_vec();
        want.sort();
        if alive != want {
            return false;
        }
    }
    true
}
