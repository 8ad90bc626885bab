//! Tests of the directory: one node fed inputs with its outputs checked, then a small
//! deterministic multi-node harness, then property tests.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;

type Out = VecDeque<OutEvent<u32>>;

/// One directory with its own clock and rng.
struct T {
    st: State<u32>,
    rng: SmallRng,
    now: Instant,
    out: Out,
}

impl T {
    fn new(me: u32) -> Self {
        Self::with(me, Config::default(), Bytes::new())
    }

    fn with(me: u32, config: Config, metadata: Bytes) -> Self {
        Self {
            st: State::new(me, config, metadata),
            rng: SmallRng::seed_from_u64(me as u64 + 1),
            now: Instant::now(),
            out: VecDeque::new(),
        }
    }

    fn start(&mut self) -> Vec<OutEvent<u32>> {
        self.st.start(self.now, &mut self.rng, &mut self.out);
        self.out.drain(..).collect()
    }

    fn handle(&mut self, ev: InEvent<u32>) -> Vec<OutEvent<u32>> {
        self.st.handle(ev, self.now, &mut self.rng, &mut self.out);
        self.out.drain(..).collect()
    }

    fn update(&mut self, origin: u32, facts: &[Fact<u32>]) -> Vec<OutEvent<u32>> {
        self.handle(InEvent::Update(origin, encode_batch(facts)))
    }

    fn recv(&mut self, from: u32, m: Message<u32>) -> Vec<OutEvent<u32>> {
        self.handle(InEvent::RecvMessage(from, m))
    }

    fn timer(&mut self, t: Timer<u32>) -> Vec<OutEvent<u32>> {
        self.handle(InEvent::TimerExpired(t))
    }
}

fn fact(id: u32, incarnation: u64, state: MemberState) -> Fact<u32> {
    Fact {
        id,
        incarnation,
        state,
        metadata: None,
    }
}

fn alive(id: u32, incarnation: u64) -> Fact<u32> {
    fact(id, incarnation, MemberState::Alive)
}

fn broadcasts(outs: &[OutEvent<u32>]) -> Vec<Vec<Fact<u32>>> {
    outs.iter()
        .filter_map(|o| match o {
            OutEvent::Broadcast(b) => Some(decode_batch(b, usize::MAX).expect("own batch decodes")),
            _ => None,
        })
        .collect()
}

fn sends(outs: &[OutEvent<u32>]) -> Vec<(u32, Message<u32>)> {
    outs.iter()
        .filter_map(|o| match o {
            OutEvent::SendMessage(to, m) => Some((*to, m.clone())),
            _ => None,
        })
        .collect()
}

fn events(outs: &[OutEvent<u32>]) -> Vec<MemberEvent<u32>> {
    outs.iter()
        .filter_map(|o| match o {
            OutEvent::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn timers(outs: &[OutEvent<u32>]) -> Vec<(Duration, Timer<u32>)> {
    outs.iter()
        .filter_map(|o| match o {
            OutEvent::ScheduleTimer(d, t) => Some((*d, t.clone())),
            _ => None,
        })
        .collect()
}

fn event_kind(e: &MemberEvent<u32>) -> (&'static str, u32) {
    match e {
        MemberEvent::Up(m) => ("up", m.id),
        MemberEvent::Suspect(m) => ("suspect", m.id),
        MemberEvent::Down(m) => ("down", m.id),
        MemberEvent::Left(m) => ("left", m.id),
        MemberEvent::Updated(m) => ("updated", m.id),
    }
}

use MemberState::{Alive, Dead, Left, Suspect};

#[test]
fn merge_rules_table() {
    // (existing, incoming, expected) about member 5.
    type Case = ((u64, MemberState), (u64, MemberState), (u64, MemberState));
    let cases: &[Case] = &[
        ((0, Alive), (1, Alive), (1, Alive)),
        ((1, Alive), (0, Alive), (1, Alive)),
        ((1, Alive), (0, Dead), (1, Alive)),
        ((1, Alive), (0, Left), (1, Alive)),
        ((0, Alive), (0, Suspect), (0, Suspect)),
        ((0, Suspect), (0, Alive), (0, Suspect)),
        ((0, Suspect), (1, Alive), (1, Alive)),
        ((0, Alive), (0, Dead), (0, Dead)),
        ((0, Suspect), (0, Dead), (0, Dead)),
        ((0, Dead), (0, Suspect), (0, Dead)),
        ((0, Dead), (0, Alive), (0, Dead)),
        ((0, Dead), (0, Left), (0, Left)),
        ((0, Left), (0, Dead), (0, Left)),
        ((1, Left), (1, Alive), (1, Left)),
        ((2, Dead), (2, Alive), (2, Dead)),
        ((2, Dead), (3, Alive), (3, Alive)),
        ((2, Left), (3, Suspect), (3, Suspect)),
    ];
    for &(existing, incoming, expected) in cases {
        let mut t = T::new(0);
        t.update(9, &[fact(5, existing.0, existing.1)]);
        t.update(9, &[fact(5, incoming.0, incoming.1)]);
        assert_eq!(
            t.st.get(&5),
            Some((expected.1, expected.0)),
            "{existing:?} then {incoming:?}"
        );
        // And the other order gives the same answer.
        let mut t = T::new(0);
        t.update(9, &[fact(5, incoming.0, incoming.1)]);
        t.update(9, &[fact(5, existing.0, existing.1)]);
        assert_eq!(t.st.get(&5), Some((expected.1, expected.0)), "reversed");
    }
}

#[test]
fn events_are_emitted_once_per_transition() {
    let mut t = T::new(0);
    let mut all = Vec::new();
    for f in [
        alive(5, 0),
        alive(5, 0),
        fact(5, 0, Suspect),
        fact(5, 0, Suspect),
        alive(5, 1),
        Fact {
            metadata: Some(Bytes::from_static(b"v2")),
            ..alive(5, 2)
        },
        fact(5, 2, Dead),
        fact(5, 2, Dead),
        fact(5, 2, Left),
    ] {
        all.extend(events(&t.update(9, &[f])));
    }
    let kinds: Vec<_> = all.iter().map(event_kind).collect();
    assert_eq!(
        kinds,
        [
            ("up", 5),
            ("suspect", 5),
            ("up", 5),
            ("updated", 5),
            ("down", 5),
            ("left", 5)
        ]
    );
    let MemberEvent::Updated(m) = &all[3] else {
        unreachable!()
    };
    assert_eq!(m.metadata, Bytes::from_static(b"v2"));
    assert_eq!(m.incarnation, 2);
}

#[test]
fn first_hand_facts_are_batched_into_one_broadcast() {
    let mut t = T::new(0);
    let meta = Bytes::from_static(b"role=db");
    let o1 = t.recv(
        2,
        Message::SyncRequest {
            entry: Fact {
                metadata: Some(meta.clone()),
                ..alive(2, 0)
            },
        },
    );
    assert!(
        broadcasts(&o1).is_empty(),
        "nothing is broadcast before the flush interval"
    );
    assert_eq!(
        timers(&o1),
        [(Config::default().flush_interval, Timer::Flush)],
        "one flush timer is armed"
    );
    let o2 = t.recv(3, Message::SyncRequest { entry: alive(3, 0) });
    assert!(broadcasts(&o2).is_empty());
    assert!(timers(&o2).is_empty(), "the flush timer is already armed");
    let o3 = t.timer(Timer::Flush);
    let b = broadcasts(&o3);
    assert_eq!(b.len(), 1, "one broadcast for both joiners");
    assert_eq!(
        b[0],
        vec![
            Fact {
                metadata: Some(meta),
                ..alive(2, 0)
            },
            alive(3, 0)
        ]
    );
    assert!(
        broadcasts(&t.timer(Timer::Flush)).is_empty(),
        "the outbox is empty"
    );
    assert_eq!(t.st.stats().batches_sent, 1);

    // A full outbox goes out at once, without waiting for the timer.
    let config = Config {
        max_batch_entries: 4,
        ..Config::default()
    };
    let mut t = T::with(0, config, Bytes::new());
    let mut got = Vec::new();
    for j in 1..=4 {
        got.extend(broadcasts(
            &t.recv(j, Message::SyncRequest { entry: alive(j, 0) }),
        ));
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 4);
}

#[test]
fn first_hand_facts_go_to_the_collector_which_broadcasts_them() {
    let c = Config::default();
    // Node 5 knows 1, 3 and 7: the collector is 1, the smallest alive id.
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(3, 0), alive(7, 0)]);
    let o = t.handle(InEvent::PeerFailed(7));
    assert_eq!(
        timers(&o)
            .iter()
            .filter(|(_, t)| *t == Timer::Flush)
            .count(),
        1
    );
    assert!(timers(&o).contains(&(c.forward_delay, Timer::Flush)));
    t.now += c.forward_delay;
    let o = t.timer(Timer::Flush);
    assert!(
        broadcasts(&o).is_empty(),
        "not the collector: no broadcast of its own"
    );
    let s = sends(&o);
    let [(1, Message::Announce { facts, seq })] = &s[..] else {
        panic!("{s:?}")
    };
    assert_eq!(facts, &vec![fact(7, 0, Suspect)]);
    assert_ne!(*seq, 0, "the collector is asked to acknowledge");
    let check = *seq;
    assert!(
        timers(&o).contains(&(c.forward_grace, Timer::Flush)),
        "a fallback is armed"
    );
    assert!(timers(&o).contains(&(
        c.probe_timeout + c.indirect_probe_timeout,
        Timer::CollectorTimeout { seq: check }
    )));

    // The collector takes it as first-hand news and broadcasts it at its own flush.
    let mut collector = T::new(1);
    collector.update(9, &[alive(5, 0), alive(7, 0)]);
    let o = collector.recv(
        5,
        Message::Announce {
            facts: vec![fact(7, 0, Suspect)],
            seq: check,
        },
    );
    assert_eq!(sends(&o), [(5, Message::Ack { seq: check })]);
    assert!(timers(&o).contains(&(c.flush_interval, Timer::Flush)));
    // The ack reaches node 5: its check on the collector is settled.
    t.recv(1, Message::Ack { seq: check });
    assert!(events(&t.timer(Timer::CollectorTimeout { seq: check })).is_empty());
    let b = broadcasts(&collector.timer(Timer::Flush));
    assert_eq!(b, vec![vec![fact(7, 0, Suspect)]]);

    // Its broadcast reaches node 5, which drops its copy: the fallback finds nothing to do.
    t.update(1, &b[0]);
    t.now += c.forward_grace;
    let o = t.timer(Timer::Flush);
    assert!(broadcasts(&o).is_empty() && sends(&o).is_empty());
}

#[test]
fn announced_facts_are_broadcast_by_their_receiver_even_if_it_knew_them() {
    let c = Config::default();
    // Node 3 learned member 7 from its join snapshot, which nobody else heard: an announcement
    // of 7 must still go out, or the forwarder waits its grace period for a broadcast.
    let mut t = T::new(3);
    t.recv(
        9,
        Message::Sync {
            facts: vec![alive(1, 0), alive(7, 0), alive(9, 0)],
            announce: false,
            last: true,
            reply: None,
        },
    );
    let o = t.recv(
        9,
        Message::Announce {
            facts: vec![alive(7, 0)],
            seq: 4,
        },
    );
    assert_eq!(sends(&o), [(9, Message::Ack { seq: 4 })]);
    assert!(timers(&o).contains(&(c.flush_interval, Timer::Flush)));
    // It believes 1 is the collector, yet broadcasts the announced fact itself instead of
    // forwarding it along a chain of collectors.
    t.now += c.flush_interval;
    let o = t.timer(Timer::Flush);
    assert!(sends(&o).is_empty(), "{:?}", sends(&o));
    assert_eq!(broadcasts(&o), vec![vec![alive(7, 0)]]);
    // An announced fact older than what it holds is not relayed: the newer one covers it.
    t.update(1, &[alive(1, 1)]);
    let o = t.recv(
        9,
        Message::Announce {
            facts: vec![alive(1, 0)],
            seq: 6,
        },
    );
    assert!(timers(&o).is_empty(), "{:?}", timers(&o));
    t.now += c.flush_interval;
    assert!(broadcasts(&t.timer(Timer::Flush)).is_empty());
}

#[test]
fn forwarded_facts_nobody_broadcast_go_out_after_the_grace_period() {
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(7, 0)]);
    t.handle(InEvent::PeerFailed(7));
    t.now += c.forward_delay;
    let o = t.timer(Timer::Flush);
    assert_eq!(sends(&o).len(), 1);
    // An early (stale) flush does not give up on the collector yet.
    t.now += c.forward_grace / 2;
    assert!(broadcasts(&t.timer(Timer::Flush)).is_empty());
    t.now += c.forward_grace / 2;
    assert_eq!(
        broadcasts(&t.timer(Timer::Flush)),
        vec![vec![fact(7, 0, Suspect)]]
    );
}

#[test]
fn a_failed_collector_is_replaced_and_the_facts_forwarded_again() {
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(3, 0), alive(7, 0)]);
    t.handle(InEvent::PeerFailed(7));
    t.now += c.forward_delay;
    assert_eq!(sends(&t.timer(Timer::Flush))[0].0, 1);
    // The send to the collector failed: it is suspect now, 3 takes over.
    let o = t.handle(InEvent::PeerFailed(1));
    assert!(timers(&o).contains(&(c.forward_delay, Timer::Flush)));
    t.now += c.forward_delay;
    let s = sends(&t.timer(Timer::Flush));
    assert_eq!(s.len(), 1);
    let (3, Message::Announce { facts, .. }) = &s[0] else {
        panic!("{s:?}")
    };
    let mut ids: Vec<u32> = facts.iter().map(|f| f.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        [1, 7],
        "the old collector's suspicion and the waiting fact"
    );
}

#[test]
fn a_silent_collector_is_suspected_and_replaced() {
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(3, 0), alive(7, 0)]);
    t.handle(InEvent::PeerFailed(7));
    t.now += c.forward_delay;
    let s = sends(&t.timer(Timer::Flush));
    let [(1, Message::Announce { seq, .. })] = s[..] else {
        panic!("{s:?}")
    };
    // No acknowledgement from 1: it is probed first (a collector busy with a join storm
    // answers late), and suspected when that goes unanswered too; then 3 takes over.
    t.now += c.probe_timeout + c.indirect_probe_timeout;
    let o = t.timer(Timer::CollectorTimeout { seq });
    assert!(events(&o).is_empty(), "{o:?}");
    let s = sends(&o);
    let [(1, Message::Ping { seq: probe })] = s[..] else {
        panic!("{s:?}")
    };
    let o = t.timer(Timer::ConfirmTimeout { id: 1, seq: probe });
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("suspect", 1)]
    );
    t.now += c.forward_delay;
    let s = sends(&t.timer(Timer::Flush));
    let forwarded: Vec<(u32, u32)> = s
        .iter()
        .filter_map(|(to, m)| match m {
            Message::Announce { facts, seq } if *seq != 0 => Some((*to, facts.len() as u32)),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded, [(3, 2)], "both waiting facts go to 3: {s:?}");
}

#[test]
fn facts_skip_an_unreachable_collector_at_once_and_it_is_probed() {
    // The two smallest ids crashed together (the cluster_bench tail, 2.1 s instead of 1.3 s):
    // each Announce fails at the transport at once; the facts must go down the list a failed
    // send each, not wait a collector timeout (or `forward_grace`) per dead collector.
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(2, 0), alive(3, 0), alive(7, 0)]);
    t.handle(InEvent::PeerFailed(7));
    t.now += c.forward_delay;
    let s = sends(&t.timer(Timer::Flush));
    let [(1, Message::Announce { .. })] = s[..] else {
        panic!("{s:?}")
    };
    let announced = |o: &[OutEvent<u32>]| -> Vec<(u32, Vec<u32>)> {
        sends(o)
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::Announce { facts, .. } => Some((to, facts.iter().map(|f| f.id).collect())),
                _ => None,
            })
            .collect()
    };
    // 1 is unreachable: it is probed (not suspected: a broken link is only a hint), and the
    // waiting fact goes to 2 after the forward delay.
    let o = t.handle(InEvent::Unreachable(1));
    assert!(events(&o).is_empty(), "{o:?}");
    assert!(
        sends(&o)
            .iter()
            .any(|(to, m)| *to == 1 && matches!(m, Message::Ping { .. })),
        "{o:?}"
    );
    t.now += c.forward_delay;
    assert_eq!(announced(&t.timer(Timer::Flush)), [(2, vec![7])]);
    // 2 too: on to 3.
    t.handle(InEvent::Unreachable(2));
    t.now += c.forward_delay;
    assert_eq!(announced(&t.timer(Timer::Flush)), [(3, vec![7])]);
    // 3 acknowledges: a later failure to reach 3 is routine and moves nothing.
    let Some(seq) = t.st.collector_check.map(|(_, seq)| seq) else {
        panic!("no acknowledgement awaited from 3")
    };
    t.recv(3, Message::Ack { seq });
    let o = t.handle(InEvent::Unreachable(3));
    assert!(sends(&o).is_empty(), "{o:?}");
    // A failure to reach a member that holds nothing of ours is routine too.
    let o = t.handle(InEvent::Unreachable(9));
    assert!(o.is_empty(), "{o:?}");
}

#[test]
fn an_unreachable_collector_that_answers_its_probe_is_collector_again() {
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(3, 0), alive(7, 0), alive(8, 0)]);
    t.handle(InEvent::PeerFailed(7));
    t.now += c.forward_delay;
    t.timer(Timer::Flush);
    let s = sends(&t.handle(InEvent::Unreachable(1)));
    let [(1, Message::Ping { seq: probe }), ..] = s[..] else {
        panic!("{s:?}")
    };
    t.recv(1, Message::Ack { seq: probe });
    assert_eq!(t.st.get(&1), Some((Alive, 0)));
    // The waiting fact and the next news go to 1 again.
    t.handle(InEvent::PeerFailed(8));
    t.now += c.forward_delay;
    let s = sends(&t.timer(Timer::Flush));
    let to: Vec<(u32, Vec<u32>)> = s
        .iter()
        .filter_map(|(to, m)| match m {
            Message::Announce { facts, .. } => {
                let mut ids: Vec<u32> = facts.iter().map(|f| f.id).collect();
                ids.sort();
                Some((*to, ids))
            }
            _ => None,
        })
        .collect();
    assert_eq!(to, [(1, vec![7, 8])], "{s:?}");
}

#[test]
fn a_slow_collector_that_answers_the_probe_is_not_suspected() {
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(3, 0), alive(7, 0)]);
    t.handle(InEvent::PeerFailed(7));
    t.now += c.forward_delay;
    let s = sends(&t.timer(Timer::Flush));
    let [(1, Message::Announce { seq, .. })] = s[..] else {
        panic!("{s:?}")
    };
    t.now += c.probe_timeout + c.indirect_probe_timeout;
    let s = sends(&t.timer(Timer::CollectorTimeout { seq }));
    let [(1, Message::Ping { seq: probe })] = s[..] else {
        panic!("{s:?}")
    };
    t.recv(1, Message::Ack { seq: probe });
    let o = t.timer(Timer::ConfirmTimeout { id: 1, seq: probe });
    assert!(o.is_empty(), "{o:?}");
    assert_eq!(t.st.get(&1), Some((Alive, 0)));
}

#[test]
fn known_facts_are_not_rebroadcast() {
    let mut t = T::new(0);
    t.update(9, &[alive(2, 0)]);
    // A joiner we already know from a broadcast: nothing to announce.
    let o = t.recv(2, Message::SyncRequest { entry: alive(2, 0) });
    assert!(timers(&o).is_empty());
    assert!(broadcasts(&t.timer(Timer::Flush)).is_empty());
    // Facts heard from a broadcast are never re-broadcast.
    t.update(9, &[alive(3, 0), fact(4, 0, Dead)]);
    assert!(broadcasts(&t.timer(Timer::Flush)).is_empty());
}

#[test]
fn snapshot_join_is_chunked_and_announces_the_joiner() {
    let mut a = T::new(0);
    a.update(9, &(1..=600).map(|i| alive(i, 0)).collect::<Vec<_>>());
    let mut b = T::with(1000, Config::default(), Bytes::from_static(b"joiner"));
    let o = b.handle(InEvent::Join(vec![0]));
    let s = sends(&o);
    assert_eq!(s.len(), 1);
    let (to, req) = s[0].clone();
    assert_eq!(to, 0);
    let Message::SyncRequest { entry } = &req else {
        panic!("expected a sync request: {req:?}")
    };
    assert_eq!(entry.metadata.as_deref(), Some(&b"joiner"[..]));
    assert!(timers(&o).iter().any(|(_, t)| *t == Timer::SyncRetry));

    let reply = sends(&a.recv(1000, req));
    assert_eq!(reply.len(), 3, "602 entries in chunks of 256");
    for (i, (to, m)) in reply.iter().enumerate() {
        assert_eq!(*to, 1000);
        let Message::Sync {
            facts,
            announce,
            last,
            reply,
        } = m
        else {
            panic!("{m:?}")
        };
        assert!(facts.len() <= 256);
        assert!(!announce);
        assert_eq!(*last, i == 2);
        assert_eq!(*reply, None);
    }
    for (_, m) in reply {
        let o = b.recv(0, m);
        assert!(sends(&o).is_empty());
        assert!(broadcasts(&o).is_empty(), "a snapshot is not re-broadcast");
    }
    assert!(b.st.is_synced());
    assert_eq!(b.st.len(), 602);
    assert_eq!(b.st.alive_count(), 602);
    assert_eq!(b.st.checksum(), a.st.checksum());
    assert!(
        sends(&b.timer(Timer::SyncRetry)).is_empty(),
        "synced: no retry"
    );
    // The contact announces the joiner, with its metadata.
    let ann = broadcasts(&a.timer(Timer::Flush));
    assert_eq!(
        ann,
        vec![vec![Fact {
            metadata: Some(Bytes::from_static(b"joiner")),
            ..alive(1000, 0)
        }]]
    );
}

#[test]
fn sync_is_retried_until_a_snapshot_arrives() {
    let mut b = T::new(7);
    b.handle(InEvent::Join(vec![1, 2]));
    b.handle(InEvent::NeighborUp(3));
    let s = sends(&b.timer(Timer::SyncRetry));
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, 3, "retry asks a neighbour");
    assert!(matches!(s[0].1, Message::SyncRequest { .. }));
}

#[test]
fn a_joiner_whose_seed_is_slow_asks_its_first_neighbour_once() {
    let mut b = T::new(7);
    let s = sends(&b.handle(InEvent::Join(vec![1])));
    assert!(matches!(s[..], [(1, Message::SyncRequest { .. })]), "{s:?}");
    // The seed's answer has not come (a flooded seed turns dials away): the first neighbour
    // is asked too, and announces the joiner.
    let s = sends(&b.handle(InEvent::NeighborUp(3)));
    assert!(matches!(s[..], [(3, Message::SyncRequest { .. })]), "{s:?}");
    assert!(sends(&b.handle(InEvent::NeighborUp(4))).is_empty());
    // A joiner synced before its first link asks nobody else.
    let mut c = T::new(8);
    c.handle(InEvent::Join(vec![1]));
    c.recv(
        1,
        Message::Sync {
            facts: vec![alive(1, 0)],
            announce: false,
            last: true,
            reply: None,
        },
    );
    assert!(sends(&c.handle(InEvent::NeighborUp(3))).is_empty());
}

#[test]
fn suspicion_becomes_death_after_the_timeout() {
    let mut t = T::new(0);
    t.update(9, &[alive(5, 0)]);
    let o = t.handle(InEvent::PeerFailed(5));
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("suspect", 5)]
    );
    let timeout = Config::default().suspicion_timeout;
    assert!(timers(&o).contains(&(
        timeout,
        Timer::Suspect {
            id: 5,
            incarnation: 0
        }
    )));
    assert_eq!(
        broadcasts(&t.timer(Timer::Flush)),
        vec![vec![fact(5, 0, Suspect)]]
    );
    // A second failure report does not arm a second timer.
    assert!(timers(&t.handle(InEvent::PeerFailed(5))).is_empty());

    let o = t.timer(Timer::Suspect {
        id: 5,
        incarnation: 0,
    });
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("down", 5)]
    );
    assert_eq!(t.st.get(&5), Some((Dead, 0)));
    assert_eq!(
        broadcasts(&t.timer(Timer::Flush)),
        vec![vec![fact(5, 0, Dead)]]
    );
}

#[test]
fn heard_suspicion_only_arms_a_timer_on_first_hand_failure() {
    let mut t = T::new(0);
    t.update(9, &[fact(5, 0, Suspect)]);
    // Hearsay: no timer, nothing to announce.
    assert_eq!(t.st.get(&5), Some((Suspect, 0)));
    let o = t.timer(Timer::Suspect {
        id: 5,
        incarnation: 0,
    });
    // A timer that was never armed here still only acts on the stamped incarnation: it declares.
    assert_eq!(t.st.get(&5), Some((Dead, 0)));
    assert_eq!(events(&o).len(), 1);
    // First-hand failure of a member already suspect: a timer, no new suspicion broadcast.
    let mut t = T::new(0);
    t.update(9, &[fact(6, 0, Suspect)]);
    let o = t.handle(InEvent::PeerFailed(6));
    assert_eq!(
        timers(&o),
        [(
            Config::default().suspicion_timeout,
            Timer::Suspect {
                id: 6,
                incarnation: 0
            }
        )]
    );
    assert!(events(&o).is_empty());
}

#[test]
fn a_suspected_node_refutes_at_once() {
    let mut me = T::with(5, Config::default(), Bytes::from_static(b"m"));
    let o = me.update(0, &[fact(5, 0, Suspect)]);
    let b = broadcasts(&o);
    assert_eq!(
        b.len(),
        1,
        "the refutation is broadcast at once, not batched"
    );
    let refutation = Fact {
        metadata: Some(Bytes::from_static(b"m")),
        ..alive(5, 1)
    };
    assert_eq!(b[0], vec![refutation.clone()]);
    assert_eq!(me.st.incarnation(), 1);
    assert_eq!(me.st.stats().refutations, 1);
    // Stale news (an older incarnation) is not refuted again.
    assert!(broadcasts(&me.update(0, &[fact(5, 0, Dead)])).is_empty());
    // A death at the current incarnation is.
    assert_eq!(
        broadcasts(&me.update(0, &[fact(5, 1, Dead)]))[0][0].incarnation,
        2
    );

    // The suspecter takes the refutation: Up again, with the metadata.
    let mut other = T::new(0);
    other.update(9, &[alive(5, 0)]);
    other.handle(InEvent::PeerFailed(5));
    let o = other.update(5, &[refutation]);
    let ev = events(&o);
    assert_eq!(ev.iter().map(event_kind).collect::<Vec<_>>(), [("up", 5)]);
    assert_eq!(other.st.get(&5), Some((Alive, 1)));
    assert_eq!(other.st.metadata(&5), Bytes::from_static(b"m"));
}

#[test]
fn a_suspected_member_is_told_directly_and_answers_directly() {
    let mut suspecter = T::new(0);
    suspecter.update(9, &[alive(5, 0)]);
    let o = suspecter.handle(InEvent::PeerFailed(5));
    let s = sends(&o);
    assert_eq!(
        s,
        [(
            5,
            Message::Announce {
                facts: vec![fact(5, 0, Suspect)],
                seq: 0,
            }
        )]
    );
    let mut member = T::new(5);
    let o = member.recv(0, s[0].1.clone());
    assert_eq!(broadcasts(&o).len(), 1, "the refutation is broadcast");
    let back = sends(&o);
    assert_eq!(
        back,
        [(
            0,
            Message::Announce {
                facts: vec![Fact {
                    metadata: Some(Bytes::new()),
                    ..alive(5, 1)
                }],
                seq: 0,
            }
        )]
    );
    let o = suspecter.recv(5, back[0].1.clone());
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("up", 5)]
    );
    // The member's own broadcast spreads it; the suspecter only drops its pending suspicion.
    suspecter.now += Config::default().suspicion_timeout;
    let o = suspecter.timer(Timer::Suspect {
        id: 5,
        incarnation: 0,
    });
    assert!(events(&o).is_empty());
    assert!(
        broadcasts(&suspecter.timer(Timer::Flush)).is_empty(),
        "the superseded suspicion is not broadcast"
    );
}

#[test]
fn a_stale_suspicion_timer_is_harmless() {
    let mut t = T::new(0);
    t.update(9, &[alive(5, 0)]);
    t.handle(InEvent::PeerFailed(5));
    t.update(5, &[alive(5, 1)]); // refuted
    let o = t.timer(Timer::Suspect {
        id: 5,
        incarnation: 0,
    });
    assert!(events(&o).is_empty());
    assert_eq!(t.st.get(&5), Some((Alive, 1)));
    // Our pending suspicion was covered by the refutation: nothing goes out.
    assert!(broadcasts(&t.timer(Timer::Flush)).is_empty());
}

#[test]
fn leave_is_announced_at_once_and_sticks() {
    let mut leaver = T::new(3);
    leaver.start();
    let o = leaver.handle(InEvent::Leave);
    assert_eq!(
        broadcasts(&o),
        vec![vec![Fact {
            metadata: Some(Bytes::new()),
            ..fact(3, 0, Left)
        }]]
    );
    assert!(
        timers(&leaver.timer(Timer::Probe)).is_empty(),
        "a left node stops probing"
    );
    assert!(sends(&leaver.recv(1, Message::Ping { seq: 1 })).is_empty());
    // It does not refute news of its own departure either.
    assert!(broadcasts(&leaver.update(1, &[fact(3, 0, Left)])).is_empty());

    let mut t = T::new(0);
    t.update(9, &[alive(3, 0)]);
    let o = t.update(3, &broadcasts(&o)[0]);
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("left", 3)]
    );
    assert!(events(&t.update(9, &[alive(3, 0), fact(3, 0, Dead)])).is_empty());
    assert!(events(&t.handle(InEvent::PeerFailed(3))).is_empty());
    assert_eq!(t.st.get(&3), Some((Left, 0)));
}

#[test]
fn tombstones_are_reaped_and_not_resurrected() {
    let config = Config {
        reap_after: Duration::from_secs(10),
        ..Config::default()
    };
    let mut t = T::with(0, config, Bytes::new());
    t.update(9, &[alive(7, 3), alive(8, 0)]);
    t.update(9, &[fact(7, 3, Dead)]);
    let before = t.st.checksum();
    t.now += Duration::from_secs(5);
    t.timer(Timer::Reap);
    assert_eq!(t.st.get(&7), Some((Dead, 3)), "not yet");
    t.now += Duration::from_secs(6);
    t.timer(Timer::Reap);
    assert_eq!(t.st.get(&7), None, "reaped");
    assert_eq!(t.st.len(), 2);
    assert_eq!(
        t.st.checksum(),
        before,
        "tombstones are not in the checksum"
    );
    // A stale snapshot from a node that did not reap yet, or that missed the death.
    for f in [alive(7, 3), fact(7, 3, Dead), fact(7, 2, Suspect)] {
        t.recv(
            4,
            Message::Sync {
                facts: vec![f],
                announce: true,
                last: true,
                reply: None,
            },
        );
        assert_eq!(t.st.get(&7), None);
    }
    // A higher incarnation is a real comeback.
    let o = t.update(7, &[alive(7, 4)]);
    assert_eq!(t.st.get(&7), Some((Alive, 4)));
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("up", 7)]
    );
}

/// Sets up node 0 knowing members 1..=10, with neighbours 1..=4.
fn prober() -> T {
    let mut t = T::new(0);
    t.update(9, &(1..=10).map(|i| alive(i, 0)).collect::<Vec<_>>());
    for n in 1..=4 {
        t.handle(InEvent::NeighborUp(n));
    }
    t
}

fn start_probe(t: &mut T) -> (u32, u64) {
    let o = t.timer(Timer::Probe);
    let s = sends(&o);
    assert_eq!(s.len(), 1);
    let (target, Message::Ping { seq }) = s[0] else {
        panic!("{s:?}")
    };
    assert!(target > 4, "probes skip neighbours 1..=4: {target}");
    let ts = timers(&o);
    assert!(ts.contains(&(Config::default().probe_interval, Timer::Probe)));
    assert!(ts.contains(&(Config::default().probe_timeout, Timer::ProbeTimeout { seq })));
    (target, seq)
}

#[test]
fn probe_then_indirect_probe_then_suspect() {
    let mut t = prober();
    let (target, seq) = start_probe(&mut t);
    let o = t.timer(Timer::ProbeTimeout { seq });
    let reqs = sends(&o);
    assert_eq!(reqs.len(), 3, "k = 3 neighbours asked");
    let mut helpers: Vec<u32> = reqs.iter().map(|(to, _)| *to).collect();
    helpers.sort();
    helpers.dedup();
    assert_eq!(helpers.len(), 3);
    for (to, m) in &reqs {
        assert!((1..=4).contains(to));
        assert_eq!(*m, Message::PingReq { target, seq });
    }
    assert!(events(&o).is_empty(), "no suspicion yet");
    let o = t.timer(Timer::ProbeTimeout { seq });
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("suspect", target)]
    );
    assert_eq!(t.st.stats().probes_failed, 1);
}

/// A lost link to neighbour 4 of `prober()`: the probe it starts, checked.
fn lose_link(t: &mut T) -> u64 {
    let c = Config::default();
    let o = t.handle(InEvent::LinkLost(4));
    assert!(events(&o).is_empty(), "a lost link alone suspects nobody");
    assert_eq!(t.st.get(&4), Some((Alive, 0)));
    let s = sends(&o);
    let Some(&(4, Message::Ping { seq })) = s.first() else {
        panic!("{s:?}")
    };
    // The neighbours are asked at the same time: the direct path is the one in doubt.
    let helpers: Vec<u32> = s[1..]
        .iter()
        .map(|(to, m)| {
            assert_eq!(*m, Message::PingReq { target: 4, seq });
            *to
        })
        .collect();
    assert_eq!(helpers.len(), 3, "k = 3 neighbours asked: {s:?}");
    assert!(helpers.iter().all(|h| (1..=3).contains(h)), "{helpers:?}");
    assert_eq!(
        timers(&o),
        [(
            c.probe_timeout.max(c.indirect_probe_timeout),
            Timer::ConfirmTimeout { id: 4, seq }
        )]
    );
    seq
}

#[test]
fn a_lost_link_is_probed_and_a_live_peer_never_suspected() {
    let mut t = prober();
    // The peer answers over a fresh connection.
    let seq = lose_link(&mut t);
    t.recv(4, Message::Ack { seq });
    let o = t.timer(Timer::ConfirmTimeout { id: 4, seq });
    assert!(o.is_empty(), "{o:?}");
    // Or only through a neighbour (the direct path is what broke).
    let seq = lose_link(&mut t);
    t.recv(2, Message::Ack { seq });
    let o = t.timer(Timer::ConfirmTimeout { id: 4, seq });
    assert!(o.is_empty(), "{o:?}");
    assert_eq!(t.st.get(&4), Some((Alive, 0)));
    assert_eq!(t.st.stats().probes_failed, 0);
}

#[test]
fn a_lost_link_nobody_can_confirm_is_suspected_then_declared_dead() {
    let c = Config::default();
    let mut t = prober();
    let seq = lose_link(&mut t);
    // A second loss while the probe runs starts nothing new.
    assert!(t.handle(InEvent::LinkLost(4)).is_empty());
    let o = t.timer(Timer::ConfirmTimeout { id: 4, seq });
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("suspect", 4)]
    );
    assert!(timers(&o).contains(&(
        c.suspicion_timeout,
        Timer::Suspect {
            id: 4,
            incarnation: 0
        }
    )));
    assert_eq!(t.st.stats().probes_failed, 1);
    let o = t.timer(Timer::Suspect {
        id: 4,
        incarnation: 0,
    });
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("down", 4)]
    );
    // A stale timeout changes nothing.
    assert!(events(&t.timer(Timer::ConfirmTimeout { id: 4, seq })).is_empty());
}

#[test]
fn a_node_without_neighbours_gives_its_probe_target_the_whole_round() {
    let c = Config::default();
    let mut t = T::new(0);
    t.update(9, &(1..=10).map(|i| alive(i, 0)).collect::<Vec<_>>());
    let s = sends(&t.timer(Timer::Probe));
    let [(target, Message::Ping { seq })] = s[..] else {
        panic!("{s:?}")
    };
    let o = t.timer(Timer::ProbeTimeout { seq });
    assert!(sends(&o).is_empty() && events(&o).is_empty(), "{o:?}");
    assert_eq!(
        timers(&o),
        [(c.indirect_probe_timeout, Timer::ProbeTimeout { seq })]
    );
    let o = t.timer(Timer::ProbeTimeout { seq });
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("suspect", target)]
    );
}

#[test]
fn acked_probes_suspect_nobody() {
    let mut t = prober();
    let (target, seq) = start_probe(&mut t);
    t.recv(target, Message::Ack { seq });
    assert!(sends(&t.timer(Timer::ProbeTimeout { seq })).is_empty());
    // Indirect ack, relayed by a helper.
    let (target, seq) = start_probe(&mut t);
    t.timer(Timer::ProbeTimeout { seq });
    t.recv(2, Message::Ack { seq });
    let o = t.timer(Timer::ProbeTimeout { seq });
    assert!(events(&o).is_empty());
    assert_eq!(t.st.get(&target), Some((Alive, 0)));
    assert_eq!(t.st.stats().probes_failed, 0);
}

#[test]
fn ping_requests_are_relayed() {
    let mut t = T::new(0);
    let s = sends(&t.recv(1, Message::PingReq { target: 5, seq: 77 }));
    let [(5, Message::Ping { seq: relay })] = s[..] else {
        panic!("{s:?}")
    };
    let s = sends(&t.recv(5, Message::Ack { seq: relay }));
    assert_eq!(s, [(1, Message::Ack { seq: 77 })]);
    // A second ack for the same relay is not forwarded twice.
    assert!(sends(&t.recv(5, Message::Ack { seq: relay })).is_empty());
    // A ping-request about ourselves is answered directly.
    assert_eq!(
        sends(&t.recv(1, Message::PingReq { target: 0, seq: 3 })),
        [(1, Message::Ack { seq: 3 })]
    );
}

#[test]
fn healing_pings_the_dead_and_reaches_those_who_answer() {
    let mut t = T::new(0);
    t.update(9, &[alive(5, 0), fact(6, 0, Left)]);
    t.update(9, &[fact(5, 0, Dead)]);
    t.handle(InEvent::NeighborUp(1));
    let o = t.timer(Timer::Heal);
    assert!(timers(&o).iter().any(|(_, t)| *t == Timer::Heal));
    let s = sends(&o);
    let [(5, Message::Ping { seq })] = s[..] else {
        panic!("pings the dead, not the left: {s:?}")
    };
    let o = t.recv(5, Message::Ack { seq });
    assert!(o.iter().any(|e| matches!(e, OutEvent::Reach(5))));
    assert!(
        sends(&o)
            .iter()
            .any(|(to, m)| *to == 5 && matches!(m, Message::Digest { .. }))
    );

    // Isolated: the seeds are probed.
    let mut t = T::new(0);
    t.handle(InEvent::Join(vec![9]));
    let s = sends(&t.timer(Timer::Heal));
    assert!(matches!(s[..], [(9, Message::Ping { .. })]), "{s:?}");

    // Isolated, knowing a live member besides its seed (which may have died since): it pings
    // that member too, and its answer links to it.
    t.update(9, &[alive(5, 0)]);
    let mut targets = Vec::new();
    for _ in 0..20 {
        let s = sends(&t.timer(Timer::Heal));
        let [(to, Message::Ping { seq })] = s[..] else {
            panic!("one ping per round: {s:?}")
        };
        targets.push(to);
        if to == 5 {
            let o = t.recv(5, Message::Ack { seq });
            assert!(o.iter().any(|e| matches!(e, OutEvent::Reach(5))), "{o:?}");
        }
    }
    assert!(targets.contains(&9) && targets.contains(&5), "{targets:?}");
}

/// Deliver direct messages between two directories until both are quiet.
fn pump(a: &mut T, b: &mut T, first: Vec<OutEvent<u32>>, first_from_a: bool) -> Vec<Fact<u32>> {
    let mut queue: VecDeque<(bool, u32, Message<u32>)> = sends(&first)
        .into_iter()
        .map(|(to, m)| (first_from_a, to, m))
        .collect();
    let mut rebroadcast = Vec::new();
    let (ida, idb) = (a.st.me, b.st.me);
    while let Some((from_a, to, m)) = queue.pop_front() {
        let o = if from_a {
            assert_eq!(to, idb);
            b.recv(ida, m)
        } else {
            assert_eq!(to, ida);
            a.recv(idb, m)
        };
        queue.extend(sends(&o).into_iter().map(|(to, m)| (!from_a, to, m)));
        rebroadcast.extend(broadcasts(&o).into_iter().flatten());
    }
    rebroadcast
}

#[test]
fn anti_entropy_exchanges_only_differing_buckets_and_converges() {
    let mut a = T::new(0);
    let mut b = T::new(100);
    a.update(9, &(1..=50).map(|i| alive(i, 0)).collect::<Vec<_>>());
    b.update(
        9,
        &(1..=40)
            .chain(60..=70)
            .map(|i| alive(i, 0))
            .collect::<Vec<_>>(),
    );
    b.update(9, &[fact(41, 0, Dead)]);
    a.handle(InEvent::NeighborUp(100));
    b.handle(InEvent::NeighborUp(0));
    assert_ne!(a.st.checksum(), b.st.checksum());
    // Right after a change, a round is skipped: news may still be on its way.
    let o = a.timer(Timer::AntiEntropy);
    assert!(sends(&o).is_empty());
    assert!(timers(&o).iter().any(|(_, t)| *t == Timer::AntiEntropy));
    let quiet = Config::default().anti_entropy_quiet;
    a.now += quiet;
    b.now += quiet;
    let o = a.timer(Timer::AntiEntropy);
    assert!(matches!(sends(&o)[..], [(100, Message::Digest { .. })]));
    pump(&mut a, &mut b, o, true);
    assert_eq!(a.st.checksum(), b.st.checksum());
    assert_eq!(a.st.get(&41), Some((Dead, 0)));
    assert_eq!(a.st.get(&65), Some((Alive, 0)));
    assert_eq!(b.st.get(&45), Some((Alive, 0)));
    // A node that merely missed news does not broadcast it again.
    assert!(broadcasts(&a.timer(Timer::Flush)).is_empty());
    assert!(broadcasts(&b.timer(Timer::Flush)).is_empty());
    // Equal digests cost one message and no reply.
    a.now += quiet;
    b.now += quiet;
    let o = a.timer(Timer::AntiEntropy);
    let s = sends(&o);
    assert_eq!(s.len(), 1);
    assert!(sends(&b.recv(0, s[0].1.clone())).is_empty());
    assert!(b.st.stats().exchanges == 1);
}

#[test]
fn a_quiet_difference_with_a_stranger_reaches_it_and_heals() {
    let quiet = Config::default().anti_entropy_quiet;
    // `a` (node 0) and `b` (node 100) were on two sides of a split overlay: each knows the
    // other, but news on each side never crossed.
    let mut a = T::new(0);
    let mut b = T::new(100);
    a.update(
        9,
        &(1..=20)
            .chain([100])
            .map(|i| alive(i, 0))
            .collect::<Vec<_>>(),
    );
    b.update(
        9,
        &(1..=10)
            .chain(30..=40)
            .map(|i| alive(i, 0))
            .collect::<Vec<_>>(),
    );
    b.update(9, &[alive(0, 0)]);
    a.handle(InEvent::NeighborUp(1));
    b.handle(InEvent::NeighborUp(30));
    a.now += quiet;
    b.now += quiet;
    // Rounds alternate: a neighbour, then a member outside the active view.
    let o = a.timer(Timer::AntiEntropy);
    assert!(
        matches!(sends(&o)[..], [(1, Message::Digest { heal: false, .. })]),
        "{o:?}"
    );
    let o = a.timer(Timer::AntiEntropy);
    let s = sends(&o);
    let [(to, Message::Digest { heal: false, .. })] = s[..] else {
        panic!("{s:?}")
    };
    assert!(to != 1 && to != 0, "a stranger, not a neighbour: {to}");
    // `b` gets such a digest from `a`, a member outside its active view: it reaches `a` and
    // answers with a healing exchange, so the news of both sides is announced on both.
    let digest = Message::Digest {
        buckets: a.st.buckets.to_vec(),
        heal: false,
    };
    let o = b.recv(0, digest.clone());
    assert!(o.iter().any(|e| matches!(e, OutEvent::Reach(0))), "{o:?}");
    assert!(
        sends(&o)
            .iter()
            .all(|(to, m)| *to == 0 && matches!(m, Message::Sync { announce: true, .. }))
    );
    assert_eq!(b.st.stats().splits_suspected, 1);
    pump(&mut a, &mut b, o, false);
    assert_eq!(a.st.checksum(), b.st.checksum());
    // What each side lacked is re-announced.
    let news: Vec<u32> = broadcasts(&a.timer(Timer::Flush))
        .concat()
        .iter()
        .map(|f| f.id)
        .collect();
    assert!(news.contains(&35), "{news:?}");

    // The same difference from a neighbour is an ordinary exchange: no reach.
    let mut c = T::new(200);
    c.update(9, &[alive(5, 0), alive(0, 0)]);
    c.handle(InEvent::NeighborUp(0));
    c.now += quiet;
    let o = c.recv(0, digest.clone());
    assert!(!o.iter().any(|e| matches!(e, OutEvent::Reach(_))));
    assert!(matches!(
        sends(&o)[..],
        [
            (
                0,
                Message::Sync {
                    announce: false,
                    ..
                }
            ),
            ..
        ]
    ));
    // A busy node neither reaches nor answers: the news may still be on its way.
    let mut d = T::new(300);
    d.update(9, &[alive(5, 0)]);
    assert!(d.recv(0, digest).is_empty());
    // Nor does a busy node send digests outside its active view.
    let mut e = T::new(400);
    e.update(9, &(1..=20).map(|i| alive(i, 0)).collect::<Vec<_>>());
    e.handle(InEvent::NeighborUp(1));
    let mut sent = 0;
    for i in 1..=8 {
        e.now += Duration::from_millis(10);
        e.update(9, &[fact(2, i, Alive)]);
        for (to, _) in sends(&e.timer(Timer::AntiEntropy)) {
            assert_eq!(to, 1, "busy: neighbours only");
            sent += 1;
        }
    }
    assert_eq!(sent, 2, "three busy rounds skipped in a row, then one sent");
}

#[test]
fn a_joiner_catches_up_on_what_its_snapshot_missed_after_its_first_link() {
    // The joiner's snapshot had 1..=10; 11..=15 were broadcast before it had a link.
    let mut j = T::new(100);
    j.handle(InEvent::Join(vec![1]));
    j.recv(
        1,
        Message::Sync {
            facts: (1..=10).map(|i| alive(i, 0)).collect(),
            announce: false,
            last: true,
            reply: None,
        },
    );
    let mut n = T::new(2);
    n.update(
        9,
        &(1..=15)
            .chain([100])
            .map(|i| alive(i, 0))
            .collect::<Vec<_>>(),
    );
    let o = j.handle(InEvent::NeighborUp(2));
    let flush = Config::default().flush_interval;
    assert!(timers(&o).contains(&(flush * 2, Timer::CatchUp)), "{o:?}");
    // Once: more links do not arm it again.
    assert!(!timers(&j.handle(InEvent::NeighborUp(3))).contains(&(flush * 2, Timer::CatchUp)));
    j.handle(InEvent::NeighborDown(3));
    let s = sends(&j.timer(Timer::CatchUp));
    let [(2, ref catch_up @ Message::CatchUp { .. })] = s[..] else {
        panic!("{s:?}")
    };
    // The neighbour is busy (it just learned things) yet answers: a small gap.
    let o = n.recv(100, catch_up.clone());
    assert_eq!(n.st.stats().catch_ups_served, 1);
    for (to, m) in sends(&o) {
        assert_eq!(to, 100);
        j.recv(2, m);
    }
    for i in 11..=15 {
        assert_eq!(j.st.get(&i), Some((Alive, 0)), "{i}");
    }
    // Equal digests: nothing to send.
    let equal = Message::CatchUp {
        buckets: n.st.buckets.to_vec(),
    };
    assert!(n.recv(100, equal).is_empty());
    // A node far behind gets nothing here: that would be the whole directory.
    let mut big = T::new(3);
    big.update(9, &(1..=1000).map(|i| alive(i, 0)).collect::<Vec<_>>());
    let empty = Message::CatchUp {
        buckets: T::new(500).st.buckets.to_vec(),
    };
    assert!(big.recv(500, empty).is_empty());
    // A malformed digest is counted.
    assert!(
        big.recv(500, Message::CatchUp { buckets: vec![1] })
            .is_empty()
    );
    assert_eq!(big.st.stats().invalid_messages, 1);
    // Isolated again, the next first link asks again.
    j.handle(InEvent::NeighborDown(2));
    assert!(timers(&j.handle(InEvent::NeighborUp(4))).contains(&(flush * 2, Timer::CatchUp)));
    // The first node of a cluster has no snapshot to complete.
    let mut first = T::new(0);
    first.handle(InEvent::Join(vec![]));
    assert!(timers(&first.handle(InEvent::NeighborUp(1))).is_empty());
}

#[test]
fn a_healing_exchange_reannounces_what_each_side_lacked() {
    // Two former partitions: `a` (node 0) holds 1..=5 alive and thinks 100 dead; `b` (node 100)
    // holds 100..=104 alive and thinks 0 dead. Both are their side's collector.
    let mut a = T::new(0);
    let mut b = T::new(100);
    a.update(9, &(1..=5).map(|i| alive(i, 0)).collect::<Vec<_>>());
    a.update(9, &[alive(100, 0)]);
    a.update(9, &[fact(100, 0, Dead)]);
    b.update(9, &(101..=104).map(|i| alive(i, 0)).collect::<Vec<_>>());
    b.update(9, &[alive(0, 0)]);
    b.update(9, &[fact(0, 0, Dead)]);
    a.handle(InEvent::NeighborUp(7)); // not isolated: heal a dead member, not a seed
    let s = sends(&a.timer(Timer::Heal));
    let [(100, Message::Ping { seq })] = s[..] else {
        panic!("{s:?}")
    };
    let o = a.recv(100, Message::Ack { seq });
    let o: Vec<_> = o
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                OutEvent::SendMessage(_, Message::Digest { heal: true, .. })
            )
        })
        .collect();
    assert_eq!(o.len(), 1);
    let mut rebroadcast = pump(&mut a, &mut b, o, true);
    // Each learned it is dead on the other side, and refuted at once.
    assert_eq!(a.st.incarnation(), 1);
    assert_eq!(b.st.incarnation(), 1);
    assert!(rebroadcast.iter().any(|f| f.id == 0 && f.incarnation == 1));
    assert!(
        rebroadcast
            .iter()
            .any(|f| f.id == 100 && f.incarnation == 1)
    );
    // What each side lacked goes out to its own side: broadcast, or sent to the collector
    // (for `b`, now 1: the smallest id it believes alive).
    for o in [a.timer(Timer::Flush), b.timer(Timer::Flush)] {
        rebroadcast.extend(broadcasts(&o).into_iter().flatten());
        for (_, m) in sends(&o) {
            if let Message::Announce { facts, .. } = m {
                rebroadcast.extend(facts);
            }
        }
    }
    for id in (1..=5).chain(101..=104) {
        assert!(rebroadcast.iter().any(|f| f.id == id), "{id} re-announced");
    }
}

#[test]
fn anti_entropy_fills_in_metadata_learned_from_a_link() {
    let meta = Bytes::from_static(b"rack=7");
    let mut a = T::new(0);
    let mut b = T::new(100);
    // `a` knows 5 only from a link; `b` heard its announcement with metadata.
    a.handle(InEvent::NeighborUp(5));
    b.update(
        9,
        &[Fact {
            metadata: Some(meta.clone()),
            ..alive(5, 0)
        }],
    );
    a.handle(InEvent::NeighborUp(100));
    b.handle(InEvent::NeighborUp(0));
    assert_ne!(
        a.st.checksum(),
        b.st.checksum(),
        "missing metadata shows in the digest"
    );
    a.now += Config::default().anti_entropy_quiet;
    b.now += Config::default().anti_entropy_quiet;
    let o = a.timer(Timer::AntiEntropy);
    let o: Vec<_> = o
        .into_iter()
        .filter(|e| matches!(e, OutEvent::SendMessage(100, Message::Digest { .. })))
        .collect();
    assert_eq!(o.len(), 1);
    pump(&mut a, &mut b, o, true);
    assert_eq!(a.st.metadata(&5), meta);
    assert_eq!(a.st.checksum(), b.st.checksum());
}

#[test]
fn hostile_input_is_ignored_and_counted() {
    let mut t = T::new(0);
    t.update(9, &[alive(5, 0)]);
    let len = t.st.len();
    let checksum = t.st.checksum();
    let good = encode_batch(&[alive(6, 0)]);
    let mut trailing = good.to_vec();
    trailing.push(0);
    let mut wrong_version = good.to_vec();
    wrong_version[0] = 99;
    let mut rng = SmallRng::seed_from_u64(42);
    let mut garbage: Vec<Vec<u8>> = (0..200)
        .map(|i| (0..(i % 64)).map(|_| rng.random::<u8>()).collect())
        .collect();
    garbage.push(good[..good.len() - 1].to_vec());
    garbage.push(trailing);
    garbage.push(wrong_version);
    garbage.push(vec![1, 0xfc, 0xff, 0xff, 0xff, 0xff]); // a huge length prefix
    garbage.push(vec![0u8; MAX_BATCH_DECODE + 1]);
    garbage.push(encode_batch(&(1..=1025).map(|i| alive(i, 0)).collect::<Vec<_>>()).to_vec());
    let mut invalid = 0;
    for g in garbage {
        let before = t.st.stats().invalid_messages;
        let o = t.handle(InEvent::Update(9, Bytes::from(g)));
        invalid += t.st.stats().invalid_messages - before;
        assert!(broadcasts(&o).is_empty());
    }
    assert!(invalid >= 6, "the crafted cases are all refused: {invalid}");
    assert_eq!(t.st.len(), len, "no garbage entry was added");
    assert_eq!(t.st.checksum(), checksum);

    // Facts that decode but are impossible.
    let big = Bytes::from(vec![0u8; Config::default().max_metadata_len + 1]);
    t.update(
        9,
        &[
            alive(7, MAX_INCARNATION + 1),
            Fact {
                metadata: Some(big),
                ..alive(8, 0)
            },
        ],
    );
    assert_eq!(t.st.get(&7), None);
    assert_eq!(t.st.get(&8), None);
    assert_eq!(t.st.stats().invalid_facts, 2);
    // A claim about us at the last incarnation cannot be refuted: counted, no panic.
    t.update(9, &[fact(0, MAX_INCARNATION, Dead)]);
    assert_eq!(t.st.get(&0), Some((Alive, 0)));

    // Direct messages over their caps.
    let before = t.st.stats().invalid_messages;
    t.recv(
        9,
        Message::Sync {
            facts: (1..=1025).map(|i| alive(i, 0)).collect(),
            announce: true,
            last: true,
            reply: Some(u64::MAX),
        },
    );
    t.recv(
        9,
        Message::Digest {
            buckets: vec![0; 3],
            heal: false,
        },
    );
    t.recv(9, Message::SyncRequest { entry: alive(8, 0) }); // not the sender's own entry
    assert_eq!(t.st.stats().invalid_messages - before, 3);
    assert_eq!(t.st.len(), len);

    // A full directory refuses newcomers.
    let mut t = T::with(
        0,
        Config {
            max_members: 3,
            ..Config::default()
        },
        Bytes::new(),
    );
    t.update(9, &(1..=10).map(|i| alive(i, 0)).collect::<Vec<_>>());
    assert_eq!(t.st.len(), 3);
}

#[test]
fn neighbor_up_learns_a_member_and_its_metadata_fills_in_later() {
    let mut t = T::new(0);
    let o = t.handle(InEvent::NeighborUp(4));
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("up", 4)]
    );
    assert!(
        !timers(&o).iter().any(|(_, t)| *t == Timer::Flush),
        "not announced: its contact does that"
    );
    // With no directory yet, the first neighbour is asked for a snapshot.
    assert!(matches!(sends(&o)[..], [(4, Message::SyncRequest { .. })]));
    let o = t.update(
        1,
        &[Fact {
            metadata: Some(Bytes::from_static(b"x")),
            ..alive(4, 0)
        }],
    );
    assert_eq!(
        events(&o).iter().map(event_kind).collect::<Vec<_>>(),
        [("updated", 4)]
    );
    assert_eq!(t.st.metadata(&4), Bytes::from_static(b"x"));
}

#[test]
fn set_metadata_raises_the_incarnation() {
    let mut t = T::new(0);
    t.handle(InEvent::SetMetadata(Bytes::from_static(b"zone=a")));
    assert_eq!(t.st.incarnation(), 1);
    let b = broadcasts(&t.timer(Timer::Flush));
    assert_eq!(
        b,
        vec![vec![Fact {
            metadata: Some(Bytes::from_static(b"zone=a")),
            ..alive(0, 1)
        }]]
    );
    t.handle(InEvent::SetMetadata(Bytes::from(vec![0; 5000])));
    assert_eq!(t.st.incarnation(), 1);
    assert_eq!(t.st.stats().metadata_rejected, 1);
}

// ----- multi-node harness -----

#[derive(Debug)]
enum Ev {
    Msg { from: u32, msg: Message<u32> },
    Update { origin: u32, payload: Bytes },
    Timer(Timer<u32>),
    Failed(u32),
    Up(u32),
    Join(Vec<u32>),
}

/// N directories, a virtual clock, a fake broadcast that delivers every batch to every other
/// live node after a seeded delay, and direct messages with seeded latency. Links form a ring
/// (each node linked to the two before and after it); a crashed node's ring neighbours are told
/// after one second, as the failure detector would.
struct Harness {
    nodes: Vec<T>,
    crashed: Vec<bool>,
    queue: BinaryHeap<Reverse<(Duration, u64, u32)>>,
    events: BTreeMap<u64, Ev>,
    seq: u64,
    rng: SmallRng,
    base: Instant,
    now: Duration,
    suspect_events: Vec<(u32, u32)>,
    broadcasts: u64,
    messages: u64,
}

impl Harness {
    fn new(n: u32, seed: u64) -> Self {
        let base = Instant::now();
        let mut h = Self {
            nodes: Vec::new(),
            crashed: vec![false; n as usize],
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(seed),
            base,
            now: Duration::ZERO,
            suspect_events: Vec::new(),
            broadcasts: 0,
            messages: 0,
        };
        for i in 0..n {
            let mut t = T::with(i, Config::default(), Bytes::from(format!("node-{i}")));
            t.rng = SmallRng::seed_from_u64(seed ^ (i as u64 * 7919));
            t.now = base;
            let o = t.start();
            h.nodes.push(t);
            h.apply(i, o);
        }
        // Nodes join one by one, 20 ms apart, through node 0, linking to the ring neighbours
        // that already joined.
        for i in 1..n {
            let at = Duration::from_millis(20 * i as u64);
            h.push(at, i, Ev::Join(vec![0]));
            for d in [1, 2] {
                if i >= d {
                    h.push(at, i, Ev::Up(i - d));
                    h.push(at, i - d, Ev::Up(i));
                }
            }
        }
        // Close the ring.
        let at = Duration::from_millis(20 * n as u64);
        for (a, b) in [(0, n - 1), (0, n - 2), (1, n - 1)] {
            h.push(at, a, Ev::Up(b));
            h.push(at, b, Ev::Up(a));
        }
        h
    }

    fn ring_neighbours(&self, i: u32) -> [u32; 4] {
        let n = self.nodes.len() as u32;
        [(i + 1) % n, (i + 2) % n, (i + n - 1) % n, (i + n - 2) % n]
    }

    fn push(&mut self, at: Duration, to: u32, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, to)));
        self.events.insert(self.seq, ev);
    }

    fn apply(&mut self, from: u32, outs: Vec<OutEvent<u32>>) {
        for o in outs {
            match o {
                OutEvent::SendMessage(to, msg) => {
                    self.messages += 1;
                    let lat = Duration::from_millis(self.rng.random_range(10..=100));
                    // A send to a crashed node vanishes: the directory must notice by itself
                    // (the composed state reports link failures only for active neighbours).
                    if (to as usize) < self.nodes.len() && !self.crashed[to as usize] {
                        self.push(self.now + lat, to, Ev::Msg { from, msg });
                    }
                }
                OutEvent::ScheduleTimer(d, t) => self.push(self.now + d, from, Ev::Timer(t)),
                OutEvent::Broadcast(payload) => {
                    self.broadcasts += 1;
                    for to in 0..self.nodes.len() as u32 {
                        if to != from {
                            let lat = Duration::from_millis(self.rng.random_range(20..=300));
                            self.push(
                                self.now + lat,
                                to,
                                Ev::Update {
                                    origin: from,
                                    payload: payload.clone(),
                                },
                            );
                        }
                    }
                }
                OutEvent::Event(MemberEvent::Suspect(m)) => self.suspect_events.push((from, m.id)),
                OutEvent::Event(_) | OutEvent::Reach(_) => {}
            }
        }
    }

    fn run_until(&mut self, until: Duration) {
        while let Some(&Reverse((at, seq, to))) = self.queue.peek() {
            if at > until {
                break;
            }
            self.queue.pop();
            let ev = self.events.remove(&seq).expect("queued event");
            if self.crashed[to as usize] {
                continue;
            }
            self.now = at;
            let node = &mut self.nodes[to as usize];
            node.now = self.base + at;
            let input = match ev {
                Ev::Msg { from, msg } => InEvent::RecvMessage(from, msg),
                Ev::Update { origin, payload } => InEvent::Update(origin, payload),
                Ev::Timer(t) => InEvent::TimerExpired(t),
                Ev::Failed(p) => InEvent::PeerFailed(p),
                Ev::Up(p) => InEvent::NeighborUp(p),
                Ev::Join(c) => InEvent::Join(c),
            };
            let o = node.handle(input);
            self.apply(to, o);
        }
        self.now = until;
    }

    fn crash(&mut self, victims: &[u32]) {
        for &v in victims {
            self.crashed[v as usize] = true;
        }
        for &v in victims {
            for n in self.ring_neighbours(v) {
                if !self.crashed[n as usize] {
                    self.push(self.now + Duration::from_secs(1), n, Ev::Failed(v));
                }
            }
        }
    }

    /// Every live node holds the same view: live nodes Alive with their metadata, crashed Dead.
    fn assert_converged(&self) {
        let live: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|i| !self.crashed[*i as usize])
            .collect();
        let reference = &self.nodes[live[0] as usize].st;
        for &i in &live {
            let st = &self.nodes[i as usize].st;
            assert_eq!(st.len(), self.nodes.len(), "node {i} knows every member");
            assert_eq!(st.alive_count(), live.len(), "node {i} alive count");
            for j in 0..self.nodes.len() as u32 {
                let (state, _) = st.get(&j).unwrap_or_else(|| panic!("node {i} lacks {j}"));
                let want = if self.crashed[j as usize] {
                    Dead
                } else {
                    Alive
                };
                assert_eq!(state, want, "node {i} about {j}");
                assert_eq!(
                    st.metadata(&j),
                    Bytes::from(format!("node-{j}")),
                    "{i} about {j}"
                );
            }
            assert_eq!(st.checksum(), reference.checksum());
        }
    }
}

#[test]
fn hundred_nodes_converge_and_reconverge_after_twenty_crash() {
    let mut h = Harness::new(100, 7);
    h.run_until(Duration::from_secs(5));
    h.assert_converged();
    let broadcasts_at_join = h.broadcasts;
    assert!(
        broadcasts_at_join < 30,
        "joins are batched: {broadcasts_at_join} broadcasts"
    );

    // 20 s of quiet: no false suspicion.
    h.run_until(Duration::from_secs(25));
    assert!(
        h.suspect_events.is_empty(),
        "false suspicions: {:?}",
        h.suspect_events
    );
    h.assert_converged();

    // 20 nodes crash at once, the collector (node 0) among them; their ring neighbours'
    // detectors fire after 1 s, the rest is found by probes and spread by suspicion and death
    // broadcasts.
    let mut victims: Vec<u32> = rand::seq::index::sample(&mut h.rng, 98, 19)
        .into_iter()
        .map(|i| i as u32 + 2)
        .collect();
    victims.push(0);
    victims.sort();
    let broadcasts_before = h.broadcasts;
    h.crash(&victims);
    h.run_until(Duration::from_secs(35));
    h.assert_converged();
    let after_crash = h.broadcasts - broadcasts_before;
    println!(
        "100 nodes: {broadcasts_at_join} broadcasts to join, {after_crash} after 20 crashes, {} direct messages",
        h.messages
    );
    assert!(
        after_crash < 15,
        "the news is collected: {after_crash} broadcasts"
    );
    for &(by, about) in &h.suspect_events {
        assert!(victims.contains(&about), "{by} wrongly suspected {about}");
    }
}

#[test]
fn harness_is_deterministic() {
    let run = |seed| {
        let mut h = Harness::new(30, seed);
        h.run_until(Duration::from_secs(3));
        (h.broadcasts, h.messages, h.nodes[5].st.checksum())
    };
    assert_eq!(run(3), run(3));
}

// ----- properties -----

fn arb_fact() -> impl Strategy<Value = Fact<u32>> {
    (1u32..6, 0u64..4, 0u8..4, any::<bool>()).prop_map(|(id, inc, s, with_meta)| {
        let state = [Alive, Suspect, Dead, Left][s as usize];
        // Metadata is the member's own for an incarnation: the same (id, incarnation) always
        // carries the same bytes, when it carries any.
        let metadata = with_meta.then(|| Bytes::from(format!("{id}@{inc}")));
        Fact {
            id,
            incarnation: inc,
            state,
            metadata,
        }
    })
}

fn view(t: &T) -> Vec<(u32, MemberState, u64, Bytes)> {
    let mut v: Vec<_> =
        t.st.members()
            .into_iter()
            .map(|m| (m.id, m.state, m.incarnation, m.metadata))
            .collect();
    v.sort_by_key(|m| m.0);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Merging is commutative and idempotent: any order, any duplication, any batching gives the
    /// same directory.
    #[test]
    fn merge_converges_in_any_order(
        facts in prop::collection::vec(arb_fact(), 0..40),
        seed in any::<u64>(),
    ) {
        let mut a = T::new(0);
        for f in &facts {
            a.update(9, std::slice::from_ref(f));
        }
        let mut shuffled = facts.clone();
        shuffled.extend(facts.iter().take(facts.len() / 2).cloned());
        let mut rng = SmallRng::seed_from_u64(seed);
        use rand::seq::SliceRandom;
        shuffled.shuffle(&mut rng);
        let mut b = T::new(0);
        for chunk in shuffled.chunks(3) {
            b.update(9, chunk);
        }
        prop_assert_eq!(view(&a), view(&b));
        prop_assert_eq!(a.st.recomputed(), (a.st.buckets, a.st.alive_count()));
        prop_assert_eq!(b.st.recomputed(), (b.st.buckets, b.st.alive_count()));
        prop_assert_eq!(a.st.checksum(), b.st.checksum());
        prop_assert_eq!(a.st.alive_count(), b.st.alive_count());
    }

    /// Any bytes as a broadcast batch, or any decoded message, never panic nor grow the directory
    /// past its cap.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut t = T::with(0, Config { max_members: 64, ..Config::default() }, Bytes::new());
        t.handle(InEvent::Update(3, Bytes::from(bytes.clone())));
        let config = bincode::config::standard().with_limit::<4096>();
        if let Ok((m, _)) = bincode::serde::decode_from_slice::<Message<u32>, _>(&bytes, config) {
            t.recv(3, m);
        }
        prop_assert!(t.st.len() <= 64);
    }
}

/// Not a correctness test: prints merge throughput and the per-entry footprint.
/// `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test -p gossip --lib directory::tests::merge_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn merge_cost() {
    let n = 10_000u32;
    let batches: Vec<Bytes> = (1..=n)
        .collect::<Vec<_>>()
        .chunks(1024)
        .map(|c| encode_batch(&c.iter().map(|i| alive(*i, 0)).collect::<Vec<_>>()))
        .collect();
    let mut t = T::with(
        0,
        Config {
            emit_events: false,
            ..Config::default()
        },
        Bytes::new(),
    );
    let start = std::time::Instant::now();
    for b in &batches {
        t.handle(InEvent::Update(1, b.clone()));
    }
    let fresh = start.elapsed();
    let rounds = 20;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for b in &batches {
            t.handle(InEvent::Update(1, b.clone()));
        }
    }
    let known = start.elapsed() / rounds;
    let st = &t.st;
    // hashbrown: buckets are a power of two holding up to 7/8 of them; one control byte each.
    let buckets = (st.entries.capacity() * 8 / 7).next_power_of_two();
    let slot = std::mem::size_of::<u32>() + std::mem::size_of::<Entry>() + 1;
    let bytes = buckets * slot;
    println!(
        "{n} entries: new {:.0} ns/fact, known {:.0} ns/fact, {:.1} bytes/entry (map capacity {}), batch of 1024 = {} bytes",
        fresh.as_nanos() as f64 / n as f64,
        known.as_nanos() as f64 / n as f64,
        bytes as f64 / st.len() as f64,
        st.entries.capacity(),
        batches[0].len(),
    );
    assert_eq!(st.len(), n as usize + 1);
}

#[test]
#[ignore]
fn print_sizes() {
    println!(
        "dir OutEvent {} | state OutEvent {} | Member {} | Fact {}",
        std::mem::size_of::<OutEvent<u32>>(),
        std::mem::size_of::<crate::proto::OutEvent<u32>>(),
        std::mem::size_of::<Member<u32>>(),
        std::mem::size_of::<Fact<u32>>()
    );
}

#[test]
fn flapping_members_do_not_grow_the_tombstone_queue() {
    let mut t = T::new(0);
    // 50 members die and come back 100 times each within one reap period.
    for inc in 0..100u64 {
        t.update(9, &(1..=50).map(|i| fact(i, inc, Dead)).collect::<Vec<_>>());
        t.update(9, &(1..=50).map(|i| alive(i, inc + 1)).collect::<Vec<_>>());
    }
    assert!(t.st.tombstones.len() <= 2 * t.st.len() + 1024);
    assert_eq!(t.st.alive_count(), 51);
}

#[test]
fn the_graveyard_is_bounded() {
    let config = Config {
        reap_after: Duration::from_secs(1),
        graveyard_capacity: 4,
        ..Config::default()
    };
    let mut t = T::with(0, config, Bytes::new());
    for round in 0..50u32 {
        // Ten members die and are reaped; some come back later with a higher incarnation.
        let ids: Vec<u32> = (1..=10).map(|i| i + 10 * (round % 3)).collect();
        let inc = round as u64 + 1;
        t.update(9, &ids.iter().map(|i| alive(*i, inc)).collect::<Vec<_>>());
        t.update(
            9,
            &ids.iter().map(|i| fact(*i, inc, Dead)).collect::<Vec<_>>(),
        );
        t.now += Duration::from_secs(2);
        t.timer(Timer::Reap);
        assert!(t.st.graveyard.len() <= 4);
        assert!(t.st.graveyard_order.len() <= 8);
        assert_eq!(t.st.len(), 1, "everything but ourselves was reaped");
        assert!(t.st.tombstones.is_empty(), "no record outlives its entry");
    }
}

#[test]
fn probes_visit_every_member_outside_the_active_view() {
    let mut t = T::new(0);
    t.update(9, &(1..=300).map(|i| alive(i, 0)).collect::<Vec<_>>());
    for n in 1..=4 {
        t.handle(InEvent::NeighborUp(n));
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        let (target, seq) = start_probe(&mut t);
        t.recv(target, Message::Ack { seq });
        seen.insert(target);
    }
    assert_eq!(seen.len(), 296, "every non-neighbour is probed");
}

#[test]
fn in_a_large_cluster_few_nodes_ping_for_healing() {
    let mut t = T::new(0);
    for chunk in (1..=3200).collect::<Vec<u32>>().chunks(1000) {
        t.update(9, &chunk.iter().map(|i| alive(*i, 0)).collect::<Vec<_>>());
    }
    t.update(9, &[fact(77, 0, Dead)]);
    assert_eq!(t.st.alive_count(), 3200);
    t.handle(InEvent::NeighborUp(1));
    let pings = (0..1000)
        .filter(|_| !sends(&t.timer(Timer::Heal)).is_empty())
        .count();
    // heal_fanout 32 of 3,200 alive: 1% of the rounds.
    assert!((3..=25).contains(&pings), "{pings} pings in 1,000 rounds");
}

#[test]
fn an_alive_member_that_answers_is_only_reached_by_an_isolated_node() {
    // Isolated: the seed that answers is the way back into the overlay, but needs no exchange.
    let mut t = T::new(0);
    t.handle(InEvent::Join(vec![9]));
    t.update(9, &[alive(9, 0)]);
    let s = sends(&t.timer(Timer::Heal));
    let [(9, Message::Ping { seq })] = s[..] else {
        panic!("{s:?}")
    };
    let o = t.recv(9, Message::Ack { seq });
    assert!(o.iter().any(|e| matches!(e, OutEvent::Reach(9))));
    assert!(sends(&o).is_empty());
    // With neighbours, an alive seed that answers changes nothing: forcing a link would evict a
    // healthy one.
    t.handle(InEvent::NeighborUp(4));
    let seq = loop {
        let s = sends(&t.timer(Timer::Heal));
        if let [(9, Message::Ping { seq })] = s[..] {
            break seq;
        }
    };
    let o = t.recv(9, Message::Ack { seq });
    assert!(o.is_empty(), "{o:?}");
}

#[test]
fn a_seed_known_by_address_answers_from_its_real_id_and_is_reached() {
    // The runtime joins through "whoever listens at this address" (id 1000 here); the seed
    // answers from its real id, 9.
    let mut t = T::new(0);
    t.handle(InEvent::Join(vec![1000]));
    let s = sends(&t.timer(Timer::Heal));
    let [(1000, Message::Ping { seq })] = s[..] else {
        panic!("{s:?}")
    };
    // A stranger's ack with another sequence number is not the answer.
    assert!(t.recv(5, Message::Ack { seq: seq + 1 }).is_empty());
    let o = t.recv(9, Message::Ack { seq });
    assert!(o.iter().any(|e| matches!(e, OutEvent::Reach(9))), "{o:?}");
    assert!(!o.iter().any(|e| matches!(e, OutEvent::Reach(1000))));
    // From now on the seed is pinged by its real id: another dial by address would open a
    // second connection to it, which replaces (breaks) the one already there.
    for _ in 0..10 {
        let s = sends(&t.timer(Timer::Heal));
        assert!(matches!(s[..], [(9, Message::Ping { .. })]), "{s:?}");
    }
    // And, once it is a neighbour, not pinged at all.
    t.handle(InEvent::NeighborUp(9));
    for _ in 0..10 {
        let s = sends(&t.timer(Timer::Heal));
        assert!(!s.iter().any(|(to, _)| *to == 9 || *to == 1000), "{s:?}");
    }
}

#[test]
fn digest_floods_get_a_bounded_answer() {
    let mut t = T::new(0);
    t.update(9, &(1..=100).map(|i| alive(i, 0)).collect::<Vec<_>>());
    t.now += Config::default().anti_entropy_quiet;
    let digest = Message::Digest {
        buckets: vec![0; DIGEST_BUCKETS],
        heal: false,
    };
    let answered = (0..100)
        .filter(|_| !sends(&t.recv(9, digest.clone())).is_empty())
        .count();
    assert_eq!(answered, Config::default().max_exchanges);
    // A new window, a new allowance.
    t.now += Config::default().anti_entropy_interval;
    assert!(!sends(&t.recv(9, digest)).is_empty());
}

/// Components of the overlay formed by the active views of the live nodes of a simulation.
fn overlay_components(sim: &crate::sim::Sim) -> usize {
    let live: Vec<u32> = sim.alive().collect();
    let mut seen = std::collections::HashSet::new();
    let mut components = 0;
    for &start in &live {
        if !seen.insert(start) {
            continue;
        }
        components += 1;
        let mut stack = vec![start];
        while let Some(x) = stack.pop() {
            let node = sim.node(x).expect("live");
            for &y in node.membership().active_view() {
                if sim.is_alive(y) && seen.insert(y) {
                    stack.push(y);
                }
            }
        }
    }
    components
}

#[test]
fn a_split_overlay_is_noticed_by_anti_entropy_and_remerges() {
    use crate::sim::{Sim, SimConfig};
    let mut cfg = SimConfig {
        seed: 7,
        ..SimConfig::default()
    };
    cfg.proto.directory.anti_entropy_interval = Duration::from_secs(2);
    cfg.proto.directory.anti_entropy_quiet = Duration::from_secs(1);
    let mut sim = Sim::new(cfg);
    // Two overlays of 20 nodes that never met, each full of links.
    for i in 0..40 {
        assert_eq!(sim.add_node(), i);
    }
    sim.join(0, vec![]);
    sim.join(20, vec![]);
    for i in 1..20 {
        sim.join(i, vec![0]);
        sim.join(20 + i, vec![20]);
    }
    sim.run_for(Duration::from_secs(10));
    assert_eq!(overlay_components(&sim), 2);
    // Node 20 hears of the other side without a link (as a stale snapshot would tell it).
    let facts: Vec<Fact<u32>> = sim
        .node(0)
        .expect("live")
        .members()
        .into_iter()
        .map(|m| Fact {
            id: m.id,
            incarnation: m.incarnation,
            state: m.state,
            metadata: None,
        })
        .collect();
    assert_eq!(facts.len(), 20);
    let sync = Message::Sync {
        facts,
        announce: false,
        last: true,
        reply: None,
    };
    sim.handle(
        20,
        crate::proto::InEvent::RecvMessage(0, crate::proto::Message::Directory(sync)),
    );
    // Its anti-entropy rounds outside the active view find the other side different: a link
    // is forced across, and the healing exchange spreads both sides' members everywhere.
    sim.run_for(Duration::from_secs(30));
    assert_eq!(overlay_components(&sim), 1);
    for i in 0..40 {
        let node = sim.node(i).expect("live");
        assert_eq!(node.directory().alive_count(), 40, "node {i}");
    }
    let suspected: u64 = (0..40)
        .map(|i| {
            sim.node(i)
                .expect("live")
                .directory()
                .stats()
                .splits_suspected
        })
        .sum();
    assert!(suspected >= 1);
}

/// Two overlays of 20 nodes (0..20 and 20..40) that never met, every directory listing all 40
/// members: a split that no digest can show.
fn split_with_equal_directories(beacon: Option<Duration>) -> crate::sim::Sim {
    use crate::sim::{Sim, SimConfig};
    let mut cfg = SimConfig {
        seed: 11,
        ..SimConfig::default()
    };
    cfg.proto.directory.beacon_interval = beacon;
    let mut sim = Sim::new(cfg);
    for i in 0..40 {
        assert_eq!(sim.add_node(), i);
    }
    sim.join(0, vec![]);
    sim.join(20, vec![]);
    for i in 1..20 {
        sim.join(i, vec![0]);
        sim.join(20 + i, vec![20]);
    }
    sim.run_for(Duration::from_secs(10));
    assert_eq!(overlay_components(&sim), 2);
    let facts: Vec<Fact<u32>> = (0..40).map(|i| alive(i, 0)).collect();
    for i in 0..40 {
        let sync = Message::Sync {
            facts: facts.clone(),
            announce: false,
            last: true,
            reply: None,
        };
        let from = if i < 20 { 20 } else { 0 };
        sim.handle(
            i,
            crate::proto::InEvent::RecvMessage(from, crate::proto::Message::Directory(sync)),
        );
    }
    let sums: Vec<u64> = (0..40)
        .map(|i| sim.node(i).expect("live").directory().checksum())
        .collect();
    assert!(sums.iter().all(|s| *s == sums[0]), "equal directories");
    sim
}

#[test]
fn a_split_the_directories_cannot_show_is_noticed_by_the_beacon() {
    let mut sim = split_with_equal_directories(Some(Duration::from_secs(5)));
    // Node 0, the smallest id, sends the beacon; the side of 20..40 never hears it.
    sim.run_for(Duration::from_secs(40));
    assert_eq!(overlay_components(&sim), 1);
    let suspected: u64 = (20..40)
        .map(|i| {
            sim.node(i)
                .expect("live")
                .directory()
                .stats()
                .splits_suspected
        })
        .sum();
    assert!(suspected >= 1);
    // Without the beacon (the default) nothing tells the two sides apart.
    let mut sim = split_with_equal_directories(None);
    sim.run_for(Duration::from_secs(40));
    assert_eq!(overlay_components(&sim), 2);
}

#[test]
fn a_healthy_quiet_overlay_suspects_no_split() {
    use crate::sim::{Sim, SimConfig};
    let mut cfg = SimConfig {
        seed: 5,
        ..SimConfig::default()
    };
    // Both detectors on: digests outside the active view, and the beacon.
    cfg.proto.directory.beacon_interval = Some(Duration::from_secs(5));
    cfg.proto.directory.anti_entropy_interval = Duration::from_secs(2);
    cfg.proto.directory.anti_entropy_quiet = Duration::from_secs(1);
    let mut sim = Sim::new(cfg);
    for i in 0..40 {
        assert_eq!(sim.add_node(), i);
    }
    sim.join(0, vec![]);
    for i in 1..40 {
        sim.join(i, vec![0]);
    }
    sim.run_for(Duration::from_secs(15));
    let forced = |sim: &Sim| -> u64 {
        (0..40)
            .map(|i| {
                sim.node(i)
                    .expect("live")
                    .membership()
                    .stats()
                    .forced_reaches
            })
            .sum()
    };
    let before = forced(&sim);
    sim.run_for(Duration::from_secs(60));
    assert_eq!(overlay_components(&sim), 1);
    for i in 0..40 {
        let d = sim.node(i).expect("live").directory();
        assert_eq!(d.alive_count(), 40);
        assert_eq!(d.stats().splits_suspected, 0, "node {i}");
    }
    assert_eq!(forced(&sim), before, "no link forced in a healthy overlay");
}

#[test]
fn a_former_neighbour_that_became_unreachable_is_probed_and_suspected() {
    // Traced in the 10k-node sim (seed 1, half crashed): a survivor evicted a crashed neighbour
    // for a newcomer before the failure showed; the link failure came after, outside the active
    // view, and was dropped as routine: nobody else watched the node and the random probe found
    // it 25 s later. A former neighbour's failed send must be probed like a lost link.
    let c = Config::default();
    let mut t = T::new(5);
    t.update(9, &[alive(1, 0), alive(7, 0), alive(8, 0)]);
    t.handle(InEvent::NeighborUp(7));
    t.handle(InEvent::NeighborDown(7));
    let s = sends(&t.handle(InEvent::Unreachable(7)));
    let [(7, Message::Ping { seq }), ..] = s[..] else {
        panic!("a former neighbour is probed: {s:?}")
    };
    t.now += c.probe_timeout.max(c.indirect_probe_timeout);
    t.timer(Timer::ConfirmTimeout { id: 7, seq });
    assert_eq!(t.st.get(&7), Some((Suspect, 0)));
    // A member that was never a neighbour (and holds nothing of ours) stays routine.
    let o = t.handle(InEvent::Unreachable(8));
    assert!(o.is_empty(), "{o:?}");
}
