//! Derive macros for `gossip`. Placeholder until the typed-messages work lands.
