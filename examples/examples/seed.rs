//! The origin README's example, modernised: nodes agree on Commits, and a Doom message makes a
//! node answer with a Commit of its own.
//!
//! Run: `cargo run --example seed` (starts three nodes on 127.0.0.1 in one process).

use std::time::Duration;

use gossip::{Node, Tag, Tags};
use serde::{Deserialize, Serialize};

#[derive(Tag, Serialize, Deserialize, Debug)]
struct Commit {
    key: String,
    value: Vec<u8>,
}

#[derive(Tag, Serialize, Deserialize, Debug)]
#[tag(name = "doom")]
struct Doom;

#[derive(Tags, Debug)]
enum Inbox {
    Commit(Commit),
    Doom(Doom),
}

/// The loop from the origin README: collect commits; answer doom with a commit.
async fn serve(node: Node, name: &'static str) -> Result<(), gossip::Error> {
    let mut commits = Vec::new();
    loop {
        match node.recv_typed::<Inbox>().await? {
            Inbox::Commit(c) => {
                println!("{name}: commit {} = {:?}", c.key, c.value);
                commits.push(c);
            }
            Inbox::Doom(_) => {
                println!("{name}: doom! answering with a commit");
                node.broadcast(&Commit {
                    key: "Doom".into(),
                    value: vec![0, 1, 0, 1],
                })
                .await?;
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), gossip::Error> {
    let a = Node::bind("127.0.0.1:0").await?;
    let b = Node::bind("127.0.0.1:0").await?;
    let c = Node::bind("127.0.0.1:0").await?;
    b.join(a.local_addr()).await?; // any one member is enough
    c.join(a.local_addr()).await?;
    tokio::spawn(serve(b.clone(), "b"));
    tokio::spawn(serve(c.clone(), "c"));

    a.broadcast(&Commit {
        key: "answer".into(),
        value: vec![42],
    })
    .await?;
    a.broadcast(&Doom).await?;

    // `a` sees the two commits b and c send in answer to its Doom.
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(10), a.recv_typed::<Inbox>()).await {
            Ok(Ok(Inbox::Commit(commit))) => {
                println!("a: commit {} = {:?}", commit.key, commit.value)
            }
            Ok(Ok(other)) => println!("a: {other:?}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                eprintln!("a: no answer within 10 s");
                break;
            }
        }
    }
    Ok(())
}
