use serde::{Deserialize, Serialize};

#[derive(gossip::Tag, Serialize, Deserialize)]
struct Envelope<T> {
    inner: T,
}

fn main() {}
