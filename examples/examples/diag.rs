use gossip::{Config, MemberState, Node};
use std::time::Duration;
#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..n {
        let mut cfg = Config {
            seed: Some(i as u64),
            ..Config::default()
        };
        if let Some(ms) = std::env::var("AE").ok().and_then(|t| t.parse::<u64>().ok()) {
            cfg.protocol.directory.anti_entropy_interval = Duration::from_millis(ms);
            cfg.protocol.directory.anti_entropy_quiet = Duration::from_millis(ms / 2);
        }
        let node = Node::builder()
            .config(cfg)
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        nodes.push(node);
    }
    let c = nodes[0].local_addr();
    let js: Vec<_> = nodes[1..]
        .iter()
        .map(|n| {
            let n = n.clone();
            tokio::spawn(async move { n.join(c).await })
        })
        .collect();
    for j in js {
        j.await.unwrap().unwrap();
    }
    println!("joined");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut hist = std::collections::BTreeMap::new();
        for node in &nodes {
            let m = node.members().await.unwrap();
            let a = m.iter().filter(|m| m.state == MemberState::Alive).count();
            let o = m.len() - a;
            *hist.entry((a, o)).or_insert(0) += 1;
        }
        let s = nodes[0].stats().await.unwrap();
        println!(
            "(alive, other) -> count: {:?}  active {} passive {}",
            hist, s.active_view, s.passive_view
        );
    }
    let m = nodes[0].members().await.unwrap();
    for x in m.iter().filter(|m| m.state != MemberState::Alive) {
        println!("{:?}", x);
    }
    // Components of the overlay (active views, undirected).
    let ids: Vec<_> = nodes.iter().map(|n| n.id()).collect();
    let mut adj = std::collections::HashMap::new();
    for node in &nodes {
        adj.insert(node.id(), node.stats().await.unwrap().active_peers);
    }
    let mut seen = std::collections::HashSet::new();
    let mut comps = Vec::new();
    for id in &ids {
        if seen.contains(id) {
            continue;
        }
        let mut stack = vec![*id];
        let mut size = 0;
        seen.insert(*id);
        while let Some(x) = stack.pop() {
            size += 1;
            for y in adj.get(&x).into_iter().flatten() {
                if seen.insert(*y) {
                    stack.push(*y);
                }
            }
        }
        comps.push(size);
    }
    let asym = adj
        .iter()
        .map(|(a, ps)| {
            ps.iter()
                .filter(|p| !adj.get(p).is_some_and(|q| q.contains(a)))
                .count()
        })
        .sum::<usize>();
    println!("overlay components: {comps:?}, asymmetric links {asym}");
    let mut missing = 0;
    for node in &nodes {
        let m = node.members().await.unwrap();
        if m.len() < n {
            missing += 1;
        }
    }
    println!("nodes with fewer than n entries: {missing}");
}
