// A crate that re-exports gossip under another path.
mod reexport {
    pub use gossip as inner;
}

mod app {
    use serde::{Deserialize, Serialize};

    #[derive(crate::reexport::inner::Tag, Serialize, Deserialize, Debug, PartialEq)]
    #[tag(crate = "crate::reexport::inner")]
    pub struct Ping(pub u32);

    #[derive(crate::reexport::inner::Tags, Debug, PartialEq)]
    #[tags(crate = "crate::reexport::inner")]
    pub enum Inbox {
        Ping(Ping),
    }
}

use reexport::inner::{Message, Tags};

fn main() {
    let msg = Message::encode(&app::Ping(3), 64).unwrap();
    assert_eq!(app::Inbox::from_message(msg).unwrap(), app::Inbox::Ping(app::Ping(3)));
}
