#[derive(gossip::Tags)]
enum Inbox {}

fn main() {}
