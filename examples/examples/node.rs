//! A real TCP node: every line typed on stdin is broadcast as a Chat message; received messages
//! and member changes are printed.
//!
//! Terminal 1: `cargo run --example node -- --bind 127.0.0.1:7000`
//! Terminal 2: `cargo run --example node -- --bind 127.0.0.1:7001 --join 127.0.0.1:7000`

use std::net::SocketAddr;

use clap::Parser;
use futures::StreamExt;
use gossip::{Config, Event, Node, Tag, Tags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Tag, Serialize, Deserialize, Debug)]
struct Chat {
    from: String,
    text: String,
}

#[derive(Tags, Debug)]
enum Inbox {
    Chat(Chat),
    #[tags(other)]
    Other(gossip::Message),
}

#[derive(Parser)]
#[command(about = "A gossip node that broadcasts stdin lines as Chat messages")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    bind: SocketAddr,
    /// Address of any member to join through.
    #[arg(long)]
    join: Option<SocketAddr>,
    /// Cluster label: nodes with other labels are refused.
    #[arg(long, default_value = "")]
    label: String,
}

#[tokio::main]
async fn main() -> Result<(), gossip::Error> {
    let args = Args::parse();
    let config = Config {
        cluster_label: args.label,
        ..Config::default()
    };
    let node = Node::builder().config(config).bind(args.bind).await?;
    println!("node {} listening on {}", node.id(), node.local_addr());
    if let Some(contact) = args.join {
        node.join(contact).await?;
        println!("joined through {contact}");
    }

    let mut events = node.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::MemberUp(m)) => println!("* {} is up", m.id),
                Ok(Event::MemberSuspect(m)) => println!("* {} is suspected", m.id),
                Ok(Event::MemberDown(m)) => println!("* {} is down", m.id),
                Ok(Event::MemberLeft(m)) => println!("* {} left", m.id),
                Ok(other) => println!("* {other:?}"),
                Err(e) => println!("* {e}"),
            }
        }
    });

    let receiver = node.clone();
    tokio::spawn(async move {
        loop {
            match receiver.recv_typed::<Inbox>().await {
                Ok(Inbox::Chat(chat)) => println!("<{}> {}", chat.from, chat.text),
                Ok(Inbox::Other(message)) => println!("(a {} message)", message.tag()),
                Err(gossip::Error::Closed) => break,
                Err(e) => println!("receive error: {e}"),
            }
        }
    });

    let name = node.local_addr().to_string();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "" => continue,
            "/members" => {
                for m in node.members().await? {
                    println!("  {} {:?} (incarnation {})", m.id, m.state, m.incarnation);
                }
            }
            "/quit" => break,
            text => {
                node.broadcast(&Chat {
                    from: name.clone(),
                    text: text.to_string(),
                })
                .await?;
            }
        }
    }
    node.leave().await?;
    Ok(())
}
