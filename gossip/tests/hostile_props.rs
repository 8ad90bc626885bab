//! Bounded, CI-sized versions of the fuzz targets in `fuzz/` (see `hostile/mod.rs` for what each
//! checks): hostile frames through every decoder, and hostile messages, timers and link failures
//! against a victim inside a small honest cluster, which must stay bounded and recover.
//!
//! Case counts are small so the file runs in well under a minute in a debug build; the fuzzers
//! (`cargo +nightly fuzz run proto`) explore far more.

mod hostile;

use hostile::{Mutation, Op, Scenario, Sender};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

/// `cases` cases from a fixed seed, so CI runs the same inputs every time. To explore more,
/// set `HOSTILE_CASES` (a number) and `HOSTILE_SEED` (a number) in the environment.
fn config(cases: u32) -> ProptestConfig {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    ProptestConfig {
        cases: env("HOSTILE_CASES").map_or(cases, |n| n as u32),
        rng_seed: RngSeed::Fixed(env("HOSTILE_SEED").unwrap_or(0x5ec0_12e7)),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn sender() -> impl Strategy<Value = Sender> {
    prop_oneof![
        any::<u8>().prop_map(Sender::Attacker),
        any::<u8>().prop_map(Sender::Spoofed)
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::None),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        1 => any::<u16>().prop_map(Mutation::Truncate),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        2 => (any::<u16>(), any::<u64>()).prop_map(|(at, value)| Mutation::Overwrite { at, value }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (sender(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(from, bytes)| Op::Raw { from, bytes }),
        6 => (sender(), any::<u16>(), mutation())
            .prop_map(|(from, index, mutation)| Op::Replay { from, index, mutation }),
        2 => (0u16..2000).prop_map(Op::Advance),
        1 => any::<u16>().prop_map(Op::EarlyTimer),
        1 => sender().prop_map(Op::LinkFailed),
        1 => any::<u8>().prop_map(Op::Broadcast),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    /// Any bytes through every frame decoder: no panic, accepted values round-trip.
    #[test]
    fn any_frame_is_refused_or_roundtrips(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        hostile::frame(&data);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Hostile input against a settled victim: bounded, and the cluster recovers.
    #[test]
    fn a_settled_victim_survives_hostile_peers(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..hostile::MAX_OPS),
    ) {
        let report = Scenario { seed, early: false, self_spoof: false, ..Scenario::default() }.run(&ops);
        prop_assert!(report.corpus > 10, "the warm-up recorded too little traffic: {report:?}");
    }

    /// The same against a victim that has not joined yet.
    #[test]
    fn a_fresh_victim_survives_hostile_peers(
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 1..hostile::MAX_OPS),
    ) {
        Scenario { seed, early: true, self_spoof: false, ..Scenario::default() }.run(&ops);
    }
}

/// The replay corpus covers every layer, so mutations reach every message handler.
#[test]
fn the_replay_corpus_covers_every_layer() {
    let report = Scenario {
        seed: 1,
        early: false,
        self_spoof: false,
        ..Scenario::default()
    }
    .run(&[]);
    assert!(
        report.corpus >= 20,
        "only {} messages recorded",
        report.corpus
    );
}

/// A frame that claims a huge vector is refused without allocating it.
#[test]
fn a_forged_length_prefix_allocates_nothing_large() {
    assert!(hostile::counting(), "the counting allocator is installed");
    // Message::Broadcast (1), plumtree IHAVE-like variants, then a varint length of 2^62.
    for variant in 0u8..4 {
        for inner in 0u8..8 {
            let mut frame = vec![variant, inner, 0xfd];
            frame.extend_from_slice(&(1u64 << 62).to_le_bytes());
            frame.extend_from_slice(&[0; 16]);
            let ((), peak) = hostile::measure(|| hostile::frame(&frame));
            // bincode believes a claimed length up to its limit (the frame limit): bounded, but
            // a 27-byte frame can make the decoder reserve up to FRAME_LIMIT.
            assert!(
                peak <= hostile::FRAME_LIMIT + (64 << 10),
                "frame {frame:?} made the decoders hold {peak} bytes"
            );
        }
    }
}

/// Every kind of replayed message, from every kind of sender, once each.
#[test]
fn every_recorded_message_from_every_sender() {
    let mut ops = Vec::new();
    for index in 0..200u16 {
        let from = match index % 3 {
            0 => Sender::Attacker(index as u8),
            1 => Sender::Spoofed(index as u8),
            _ => Sender::Spoofed(0),
        };
        ops.push(Op::Replay {
            from,
            index,
            mutation: Mutation::None,
        });
        if index % 20 == 0 {
            ops.push(Op::Advance(300));
        }
    }
    for early in [false, true] {
        // Ops are capped per scenario: run the list in slices.
        for chunk in ops.chunks(hostile::MAX_OPS) {
            let report = Scenario {
                seed: 7,
                early,
                self_spoof: false,
                ..Scenario::default()
            }
            .run(chunk);
            assert!(report.accepted > 0, "{report:?}");
        }
    }
}

/// A message that claims to come from the node itself must be ignored. Today the directory
/// answers such a ping with an ack addressed to itself, and the TCP handshake does not refuse a
/// peer that claims the acceptor's own identity, so an outsider can make a node talk to itself.
/// Both sides now refuse it: the handshake and `proto::State`.
#[test]
fn a_message_claiming_the_nodes_own_id_is_ignored() {
    let ops: Vec<Op> = (0..256)
        .map(|index| Op::Replay {
            from: Sender::Spoofed(0),
            index,
            mutation: Mutation::None,
        })
        .collect();
    for chunk in ops.chunks(hostile::MAX_OPS) {
        let scenario = Scenario {
            seed: 3,
            early: false,
            self_spoof: true,
            ..Scenario::default()
        };
        scenario.run(chunk);
    }
}

/// One GOSSIP with a sequence number far ahead of its origin's must not silence that origin.
/// Plumtree used to take the forged number as the origin's newest, so every real broadcast
/// below it looked old and was dropped, by the victim and by every node the forgery reached
/// (the victim relayed it). Now a number more than `max_seq_jump` ahead of the record is
/// dropped unless enough numbers near it confirm the jump (see "Forged sequence numbers" in
/// the plumtree docs).
#[test]
fn a_forged_sequence_number_does_not_censor_an_origin() {
    use gossip::proto::{Message, MessageId, plumtree};
    let forged = Message::Broadcast(plumtree::Message::Gossip(plumtree::Gossip {
        id: MessageId {
            origin: 1u32,
            seq: 1 << 40,
        },
        kind: plumtree::PayloadKind::User,
        payload: bytes::Bytes::from_static(b"forged"),
        hops: 1,
    }));
    let ops = [Op::Raw {
        from: Sender::Attacker(2),
        bytes: gossip::wire::encode(&forged).to_vec(),
    }];
    // The harness skips censored origins; check them here.
    let scenario = Scenario {
        seed: 5,
        check_censored: true,
        ..Scenario::default()
    };
    scenario.run(&ops);
}
