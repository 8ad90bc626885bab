//! Any bytes as a frame from the network, through every public decoder: the protocol message
//! codec, the handshake, the user envelope, the keyring. See `gossip/tests/hostile/mod.rs`.
#![no_main]

#[path = "../../gossip/tests/hostile/mod.rs"]
mod hostile;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostile::frame(data));
