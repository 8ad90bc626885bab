#[derive(gossip::Tags)]
struct Inbox {
    commit: u32,
}

fn main() {}
