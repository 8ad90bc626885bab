//! Hostile-input harness shared by the bounded property tests (`gossip/tests/hostile_props.rs`,
//! run in CI) and the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, run by hand).
//!
//! Two targets:
//!
//! - [`frame`]: any bytes, as a frame that arrived on a connection, through every public decoder
//!   that network input meets (protocol message, handshake, user envelope, sealed frame). A
//!   decoder may refuse the bytes; it must not panic, and what it accepts must re-encode to the
//!   same value.
//! - [`Scenario::run`]: a small cluster of honest protocol states (the real `proto::State`,
//!   driven with a virtual clock like the simulator) and one *victim*, node 0. A list of [`Op`]s
//!   then attacks the victim: any bytes as a message from any peer (an outsider, an honest peer
//!   spoofed, the victim itself), real messages replayed out of context or mutated, early and
//!   repeated timers, failed links, at any time (before the victim joined, or after). After
//!   every input the harness checks that the victim (and every honest node) stays within its
//!   configured bounds and that one input never makes a node emit an unbounded amount of work.
//!   When the attack stops, the cluster must recover: broadcasts sent after a quiet period reach
//!   every node exactly once, the victim included.
//!
//! A panic anywhere is a finding; the checks panic with a message naming the broken bound.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gossip::NodeId;
use gossip::proto::{self, InEvent, Instant, Message, MessageId, OutEvent, State, Timer};
use gossip::wire::{self, Handshake};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Largest frame the harness accepts, as a node's `max_frame_size` would (default 1 MiB).
pub const FRAME_LIMIT: usize = 1 << 20;
/// Honest nodes, the victim (id 0) included.
pub const HONEST: u32 = 6;
/// Attacker ids are `ATTACKER..ATTACKER + ATTACKERS`. The first two never answer (half-open
/// peers); messages to the others fail with `LinkFailed` after [`CONNECT_TIMEOUT`].
pub const ATTACKER: u32 = 100;
/// How many attacker identities exist.
pub const ATTACKERS: u32 = 4;
/// Delay before a sender hears that a message to an unreachable peer failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Most outputs (messages, timers, deliveries, events) one input may make a node emit. The
/// largest honest bursts are a catch-up reply (`max_catchup_reply` = 64 payloads) and a
/// directory snapshot for a small cluster; 4096 leaves room and still catches amplification.
pub const MAX_OUTPUTS_PER_INPUT: usize = 4096;
/// Most events (in-flight messages and armed timers) the whole network may hold at once.
pub const MAX_PENDING: usize = 200_000;
/// Most heap bytes handling one input may hold at its peak, when the test binary installs
/// [`CountingAlloc`] (a length prefix claiming gigabytes must not be believed).
pub const MAX_ALLOC_PER_INPUT: usize = 32 << 20;
/// Most ops one scenario runs (libFuzzer inputs beyond it are cut).
pub const MAX_OPS: usize = 64;
/// Largest raw message an op carries.
pub const MAX_RAW: usize = 4096;

// ---------------------------------------------------------------------------------------------
// Allocation probe
// ---------------------------------------------------------------------------------------------

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// A global allocator that counts the live heap bytes of each thread, so the harness can bound
/// what one input allocates. Install it in the test binary or fuzz target:
/// `#[global_allocator] static A: hostile::CountingAlloc = hostile::CountingAlloc;`
pub struct CountingAlloc;

fn account(delta: isize) {
    // `try_with`: the thread-locals may already be gone while a thread shuts down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now)
            }
        });
    });
    let _ = ACTIVE.try_with(|a| a.set(true));
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged
// and only updates thread-local counters besides.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the peak of heap bytes it held beyond what was live
/// when it started (0 when [`CountingAlloc`] is not installed).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, (peak - start).max(0) as usize)
}

/// Whether [`CountingAlloc`] is installed (it has seen an allocation on this thread).
pub fn counting() -> bool {
    let _probe = Box::new(0u64);
    ACTIVE.with(Cell::get)
}

// ---------------------------------------------------------------------------------------------
// Target 1: frame decoders
// ---------------------------------------------------------------------------------------------

/// Any bytes through every public decoder of network input. Panics on a broken invariant.
pub fn frame(data: &[u8]) {
    // Protocol messages, with the runtime's identities and with the simulator's.
    roundtrip::<Message<NodeId>>(data);
    roundtrip::<Message<u32>>(data);
    // Node frames as the runtime reads them (a payload is a slice of the frame, not a copy).
    frame_roundtrip::<NodeId>(data);
    frame_roundtrip::<u32>(data);

    // The handshake frame.
    if let Ok(hs) = Handshake::decode(data) {
        let again = hs.encode();
        let back = Handshake::decode(&again).expect("a re-encoded handshake decodes");
        // Reject reasons are sanitised on decode, so compare after one round.
        assert_eq!(Handshake::decode(&back.encode()).ok(), Some(back));
        if let Handshake::Hello(h) = &hs {
            assert!(
                h.label.len() <= wire::MAX_LABEL_LEN,
                "label over the cap accepted"
            );
            assert!(
                h.key_proof
                    .as_ref()
                    .is_none_or(|p| p.len() <= wire::MAX_KEY_PROOF_LEN),
                "key proof over the cap accepted"
            );
            let me: NodeId = h.from;
            let _ = h.check("", false, me);
            let _ = h.check("label", true, me);
        }
    }

    // The user envelope (what a relay parses without decoding the payload).
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(msg) = gossip::Message::from_envelope_limited(bytes.clone(), FRAME_LIMIT) {
        let _ = msg.tag();
        assert!(msg.payload().len() <= data.len());
        assert_eq!(msg.envelope(), &bytes);
    }
    let _ = gossip::codec::parse_header(data);

    // A sealed frame: bytes nobody sealed must never open.
    let ring = gossip::keyring::Keyring::new([7; 32]);
    assert!(
        ring.open(b"aad", BytesMut::from(data)).is_err(),
        "random bytes opened under the cluster key"
    );
    let sealed = ring.seal(b"aad", data);
    let opened = ring
        .open(b"aad", BytesMut::from(&sealed[..]))
        .expect("own frame opens");
    assert_eq!(&opened[..], data);
}

fn frame_roundtrip<P: gossip::proto::PeerId>(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(value) = wire::decode_frame::<P>(&frame, FRAME_LIMIT) {
        let again = wire::encode_frame(&value);
        let back =
            wire::decode_frame::<P>(&again, FRAME_LIMIT).expect("a re-encoded frame decodes");
        assert_eq!(back, value, "decode_frame(encode_frame(m)) != m");
    }
}

fn roundtrip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = wire::decode::<T>(data, FRAME_LIMIT) {
        let again = wire::encode(&value);
        let back: T = wire::decode(&again, FRAME_LIMIT).expect("a re-encoded message decodes");
        assert_eq!(back, value, "decode(encode(m)) != m");
    }
}

// ---------------------------------------------------------------------------------------------
// Target 2: the protocol core under attack
// ---------------------------------------------------------------------------------------------

/// Who a hostile message claims to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// An attacker identity (`ATTACKER + i % ATTACKERS`).
    Attacker(u8),
    /// An honest node's identity, spoofed (`i % HONEST`; 0 is the victim itself).
    Spoofed(u8),
}

impl Sender {
    /// The id the message claims. Without `self_spoof`, spoofed ids skip the victim's own.
    fn id(self, self_spoof: bool) -> u32 {
        match self {
            Self::Attacker(i) => ATTACKER + u32::from(i) % ATTACKERS,
            Self::Spoofed(i) if self_spoof => u32::from(i) % HONEST,
            Self::Spoofed(i) => 1 + u32::from(i) % (HONEST - 1),
        }
    }
}

/// How a recorded honest message is damaged before it is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Sent as it was.
    None,
    /// One byte XOR-ed.
    Flip {
        /// Position (modulo the length).
        at: u16,
        /// XOR mask (0 is turned into 1).
        mask: u8,
    },
    /// Cut to this length (modulo the length).
    Truncate(u16),
    /// A byte inserted.
    Insert {
        /// Position (modulo the length + 1).
        at: u16,
        /// The byte.
        byte: u8,
    },
    /// A little-endian u64 written over the message (a forged length, id or sequence number).
    Overwrite {
        /// Position (modulo the length).
        at: u16,
        /// The value.
        value: u64,
    },
}

/// One step of an attack on the victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// These bytes arrive as a frame from `from`.
    Raw {
        /// Claimed sender.
        from: Sender,
        /// The frame.
        bytes: Vec<u8>,
    },
    /// A message recorded from the honest cluster's own traffic, replayed (maybe damaged) from
    /// `from`, out of its context.
    Replay {
        /// Claimed sender.
        from: Sender,
        /// Which recorded message (modulo the corpus size).
        index: u16,
        /// Damage done to its bytes.
        mutation: Mutation,
    },
    /// Let the network and the timers run for this many milliseconds.
    Advance(u16),
    /// One of the victim's armed timers (modulo their number) fires now, early.
    EarlyTimer(u16),
    /// The transport reports the link to `Sender`'s id failed.
    LinkFailed(Sender),
    /// Honest node `i % HONEST` broadcasts (0: the victim).
    Broadcast(u8),
}

/// What a finished scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Hostile frames that decoded into a protocol message and reached the victim's state.
    pub accepted: u64,
    /// Hostile frames the decoder refused (the runtime would close that connection).
    pub refused: u64,
    /// Most outputs one hostile input made the victim emit.
    pub max_outputs: usize,
    /// Most heap bytes handling one hostile input held at its peak (0 without the probe).
    pub max_alloc: usize,
    /// Directory entries the victim held after the attack.
    pub directory_len: usize,
    /// Messages recorded from the honest warm-up (the replay corpus).
    pub corpus: usize,
    /// Events (messages, timers, link failures) the network processed.
    pub events: u64,
    /// Deliveries over all nodes.
    pub deliveries: u64,
    /// Recovery broadcasts not checked because a hostile message had forged a sequence number
    /// ahead of their origin's (see `Net::note_forged_ids`).
    pub censored_probes: u32,
}

/// A scenario: the seed and the time of the attack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scenario {
    /// Seeds every rng and the link latencies.
    pub seed: u64,
    /// Attack the victim before it has joined (it joins when the attack is over) rather than
    /// after it is settled in the cluster.
    pub early: bool,
    /// Let hostile messages claim the victim's own id. Off in CI: today the transport does
    /// not refuse a handshake that claims the acceptor's own identity, and the directory
    /// answers such a "self" ping with a message to itself (see the report of the fuzz run).
    pub self_spoof: bool,
    /// Check recovery broadcasts of origins whose sequence numbers were forged ahead too
    /// (off: they are counted in [`Report::censored_probes`] and skipped).
    pub check_censored: bool,
}

impl Scenario {
    /// Decodes a libFuzzer input: one header byte (seed, early) and then ops.
    pub fn from_fuzz(data: &[u8]) -> (Self, Vec<Op>) {
        let mut r = Reader(data);
        let head = r.u8();
        let scenario = Self {
            seed: u64::from(head >> 2),
            early: head & 1 == 1,
            self_spoof: head & 2 == 2,
            check_censored: false,
        };
        let mut ops = Vec::new();
        while !r.0.is_empty() && ops.len() < MAX_OPS {
            ops.push(r.op());
        }
        (scenario, ops)
    }

    /// Runs the attack and the recovery. Panics when an invariant breaks.
    pub fn run(self, ops: &[Op]) -> Report {
        let mut net = Net::new(self.seed);
        net.self_spoof = self.self_spoof;
        let mut report = Report::default();
        // The honest cluster forms (recording its traffic for replays), then the victim joins
        // unless the attack comes first.
        for id in 2..HONEST {
            net.join(id, 1);
        }
        net.broadcast(2);
        net.run_for(Duration::from_secs(3));
        if !self.early {
            net.join(0, 1);
            net.run_for(Duration::from_secs(3));
            net.broadcast(0);
            net.run_for(Duration::from_secs(1));
        }
        net.recording = false;
        report.corpus = net.corpus.len();

        for op in ops.iter().take(MAX_OPS) {
            net.apply(op, &mut report);
            net.check_bounds();
        }

        // Recovery: the attack stops; give repair a quiet period, then every broadcast must
        // reach every node exactly once.
        if self.early {
            net.join(0, 1);
        }
        let quiet = Duration::from_secs(30);
        net.run_for(quiet);
        net.check_bounds();
        let mut probes = Vec::new();
        for id in [0, 1, HONEST - 1] {
            probes.push(net.broadcast(id));
        }
        net.run_for(Duration::from_secs(10));
        net.check_bounds();
        for id in probes {
            if !self.check_censored && net.forged_ahead.contains(&id.origin) {
                report.censored_probes += 1;
                continue;
            }
            for node in 0..HONEST {
                if node == id.origin {
                    continue;
                }
                let n = net.delivered[node as usize].get(&id).copied().unwrap_or(0);
                assert_eq!(
                    n, 1,
                    "after the attack, broadcast {id:?} reached node {node} {n} times (want 1)"
                );
            }
        }
        report.directory_len = net.nodes[0].directory().len();
        report.events = net.events;
        report.deliveries = net
            .delivered
            .iter()
            .flat_map(|d| d.values())
            .map(|&n| u64::from(n))
            .sum();
        report
    }
}

/// Reads ops from fuzzer bytes; running out of bytes reads zeros.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0; 8];
        b.iter_mut().for_each(|x| *x = self.u8());
        u64::from_le_bytes(b)
    }
    fn from(&mut self) -> Sender {
        let b = self.u8();
        if b & 1 == 0 {
            Sender::Attacker(b >> 1)
        } else {
            Sender::Spoofed(b >> 1)
        }
    }
    fn op(&mut self) -> Op {
        match self.u8() % 8 {
            0 | 1 => {
                let from = self.from();
                let len = (self.u16() as usize).min(MAX_RAW).min(self.0.len());
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Op::Raw {
                    from,
                    bytes: bytes.to_vec(),
                }
            }
            2 | 3 => {
                let from = self.from();
                let index = self.u16();
                let mutation = match self.u8() % 5 {
                    0 => Mutation::None,
                    1 => Mutation::Flip {
                        at: self.u16(),
                        mask: self.u8(),
                    },
                    2 => Mutation::Truncate(self.u16()),
                    3 => Mutation::Insert {
                        at: self.u16(),
                        byte: self.u8(),
                    },
                    _ => Mutation::Overwrite {
                        at: self.u16(),
                        value: self.u64(),
                    },
                };
                Op::Replay {
                    from,
                    index,
                    mutation,
                }
            }
            4 => Op::Advance(self.u16() % 5000),
            5 => Op::EarlyTimer(self.u16()),
            6 => Op::LinkFailed(self.from()),
            _ => Op::Broadcast(self.u8()),
        }
    }
}

fn mutate(bytes: &[u8], m: Mutation) -> Vec<u8> {
    let mut v = bytes.to_vec();
    let len = v.len();
    match m {
        Mutation::None => {}
        Mutation::Flip { at, mask } if len > 0 => v[at as usize % len] ^= mask.max(1),
        Mutation::Truncate(n) if len > 0 => v.truncate(n as usize % len),
        Mutation::Insert { at, byte } => v.insert(at as usize % (len + 1), byte),
        Mutation::Overwrite { at, value } if len > 0 => {
            for (i, b) in value.to_le_bytes().into_iter().enumerate() {
                if let Some(x) = v.get_mut(at as usize % len + i) {
                    *x = b;
                }
            }
        }
        _ => {}
    }
    v
}

// ---------------------------------------------------------------------------------------------
// The network: honest states, a virtual clock, a queue of events
// ---------------------------------------------------------------------------------------------

enum Ev {
    Msg {
        from: u32,
        to: u32,
        msg: Message<u32>,
    },
    Timer {
        node: u32,
        timer: Timer<u32>,
    },
    LinkFailed {
        node: u32,
        peer: u32,
    },
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: the heap pops the earliest entry.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Net {
    base: Instant,
    now: u64,
    seq: u64,
    nodes: Vec<State<u32, SmallRng>>,
    queue: BinaryHeap<Entry>,
    /// Per node: how many times each broadcast was delivered.
    delivered: Vec<HashMap<MessageId<u32>, u32>>,
    /// Ids broadcast by honest nodes.
    sent: HashSet<MessageId<u32>>,
    broadcasts: u32,
    recording: bool,
    corpus: Vec<Bytes>,
    corpus_kinds: HashMap<String, usize>,
    /// Outputs of the input being handled (per node).
    outputs: usize,
    seed: u64,
    self_spoof: bool,
    events: u64,
    /// Origins a hostile message named with a sequence number ahead of their real one.
    forged_ahead: HashSet<u32>,
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

impl Net {
    fn new(seed: u64) -> Self {
        let base = Instant::now();
        let nodes = (0..HONEST)
            .map(|id| {
                let rng = SmallRng::seed_from_u64(mix(seed ^ mix(u64::from(id) + 1)));
                State::new(id, proto::Config::default(), rng, Bytes::new(), base)
            })
            .collect();
        let mut net = Self {
            base,
            now: 0,
            seq: 0,
            nodes,
            queue: BinaryHeap::new(),
            delivered: vec![HashMap::new(); HONEST as usize],
            sent: HashSet::new(),
            broadcasts: 0,
            recording: true,
            corpus: Vec::new(),
            corpus_kinds: HashMap::new(),
            outputs: 0,
            seed,
            self_spoof: false,
            events: 0,
            forged_ahead: HashSet::new(),
        };
        for id in 0..HONEST {
            net.drain(id);
        }
        net
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq: self.seq,
            ev,
        });
        assert!(
            self.queue.len() <= MAX_PENDING,
            "{} events pending: some input amplified without bound",
            self.queue.len()
        );
    }

    /// Fixed latency per link (1-20 ms), so each link stays FIFO like a TCP connection.
    fn latency(&self, a: u32, b: u32) -> u64 {
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        let h = mix(self.seed ^ mix(u64::from(x) << 32 | u64::from(y)));
        1_000_000 + h % 19_000_000
    }

    fn handle(&mut self, id: u32, event: InEvent<u32>) -> usize {
        let now = self.instant();
        self.nodes[id as usize].handle(event, now);
        self.drain(id)
    }

    /// Routes a node's outputs; returns how many there were.
    fn drain(&mut self, id: u32) -> usize {
        let mut n = 0;
        while let Some(out) = self.nodes[id as usize].poll() {
            n += 1;
            assert!(
                n <= MAX_OUTPUTS_PER_INPUT,
                "node {id} emitted over {MAX_OUTPUTS_PER_INPUT} outputs for one input"
            );
            match out {
                OutEvent::SendMessage(to, msg) => {
                    assert_ne!(to, id, "node {id} sent a message to itself: {msg:?}");
                    if self.recording {
                        self.record(&msg);
                    }
                    if to < HONEST {
                        let at = self.now + self.latency(id, to);
                        self.push(at, Ev::Msg { from: id, to, msg });
                    } else if to >= ATTACKER + 2 {
                        let at = self.now + CONNECT_TIMEOUT.as_nanos() as u64;
                        self.push(at, Ev::LinkFailed { node: id, peer: to });
                    }
                    // Attackers ATTACKER and ATTACKER + 1 are half-open: frames vanish.
                }
                OutEvent::ScheduleTimer(at, timer) => {
                    let at = at.saturating_duration_since(self.base).as_nanos() as u64;
                    self.push(at.max(self.now), Ev::Timer { node: id, timer });
                }
                OutEvent::Deliver(d) => {
                    *self.delivered[id as usize].entry(d.id).or_default() += 1;
                    if self.sent.contains(&d.id) {
                        assert_eq!(
                            self.delivered[id as usize][&d.id], 1,
                            "node {id} delivered honest broadcast {:?} twice",
                            d.id
                        );
                    }
                }
                OutEvent::MemberEvent(_) | OutEvent::Disconnect(_) => {}
            }
        }
        n
    }

    /// Keeps up to 16 messages of each kind from the honest traffic, for replays.
    fn record(&mut self, msg: &Message<u32>) {
        let debug = format!("{msg:?}");
        let kind: String = debug
            .split(|c: char| !c.is_alphanumeric())
            .filter(|s| !s.is_empty())
            .take(2)
            .collect::<Vec<_>>()
            .join("::");
        let count = self.corpus_kinds.entry(kind).or_default();
        if *count < 16 && self.corpus.len() < 1024 {
            *count += 1;
            self.corpus.push(wire::encode_frame(msg));
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d.as_nanos() as u64;
        while self.queue.peek().is_some_and(|e| e.at <= end) {
            let Entry { at, ev, .. } = self.queue.pop().expect("peeked");
            self.events += 1;
            self.now = self.now.max(at);
            match ev {
                Ev::Msg { from, to, msg } => {
                    self.handle(to, InEvent::RecvMessage(from, msg));
                }
                Ev::Timer { node, timer } => {
                    self.handle(node, InEvent::TimerExpired(timer));
                }
                Ev::LinkFailed { node, peer } => {
                    self.handle(node, InEvent::LinkFailed(peer));
                }
            }
        }
        self.now = end;
    }

    fn join(&mut self, id: u32, contact: u32) {
        self.handle(id, InEvent::Join(vec![contact]));
    }

    fn broadcast(&mut self, id: u32) -> MessageId<u32> {
        self.broadcasts += 1;
        let payload = Bytes::from(format!("broadcast {} from {id}", self.broadcasts));
        let now = self.instant();
        let mid = self.nodes[id as usize].broadcast(payload, now);
        self.sent.insert(mid);
        self.drain(id);
        mid
    }

    /// One hostile input to the victim: decoded as the runtime decodes a frame; a refused
    /// frame closes the connection, which the runtime reports as a failed link.
    fn inject(&mut self, from: Sender, bytes: &[u8], report: &mut Report) {
        let from = from.id(self.self_spoof);
        let frame = Bytes::copy_from_slice(bytes);
        let (outputs, alloc) = measure(|| match wire::decode_frame::<u32>(&frame, FRAME_LIMIT) {
            Ok(msg) => {
                report.accepted += 1;
                self.note_forged_ids(&msg);
                self.handle(0, InEvent::RecvMessage(from, msg))
            }
            Err(_) => {
                report.refused += 1;
                self.handle(0, InEvent::LinkFailed(from))
            }
        });
        report.max_outputs = report.max_outputs.max(outputs);
        report.max_alloc = report.max_alloc.max(alloc);
        assert!(
            alloc <= MAX_ALLOC_PER_INPUT,
            "one hostile frame of {} bytes made the victim hold {alloc} bytes",
            bytes.len()
        );
    }

    /// Remembers the origins that a hostile message names with a sequence number beyond the
    /// origin's real last broadcast. Within plumtree's `max_seq_jump` such a number is
    /// believed (it cannot be told from a message that was missed), so the real broadcast
    /// with that number looks old (and a first contact can be anchored above it): the recovery
    /// check skips those origins. A number far ahead no longer censors anything:
    /// `a_forged_sequence_number_does_not_censor_an_origin` checks that on its own.
    fn note_forged_ids(&mut self, msg: &Message<u32>) {
        let debug = format!("{msg:?}");
        let mut rest = debug.as_str();
        while let Some(i) = rest.find("origin: ") {
            rest = &rest[i + 8..];
            let origin: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Some(j) = rest.find("seq: ") else { break };
            let seq: String = rest[j + 5..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let (Ok(origin), Ok(seq)) = (origin.parse::<u32>(), seq.parse::<u64>()) else {
                continue;
            };
            let real = self
                .sent
                .iter()
                .filter(|id| id.origin == origin)
                .map(|id| id.seq)
                .max();
            if seq > real.unwrap_or(0) {
                self.forged_ahead.insert(origin);
            }
        }
    }

    fn apply(&mut self, op: &Op, report: &mut Report) {
        match op {
            Op::Raw { from, bytes } => self.inject(*from, bytes, report),
            Op::Replay {
                from,
                index,
                mutation,
            } => {
                if self.corpus.is_empty() {
                    return;
                }
                let original = self.corpus[*index as usize % self.corpus.len()].clone();
                let bytes = mutate(&original, *mutation);
                if std::env::var_os("HOSTILE_TRACE").is_some() {
                    let decoded =
                        wire::decode_frame::<u32>(&Bytes::from(bytes.clone()), FRAME_LIMIT);
                    eprintln!("replay from {:?}: {decoded:?}", from.id(self.self_spoof));
                }
                self.inject(*from, &bytes, report);
            }
            Op::Advance(ms) => self.run_for(Duration::from_millis(u64::from(*ms))),
            Op::EarlyTimer(k) => {
                let timers: Vec<Timer<u32>> = self
                    .queue
                    .iter()
                    .filter_map(|e| match &e.ev {
                        Ev::Timer { node: 0, timer } => Some(timer.clone()),
                        _ => None,
                    })
                    .collect();
                if !timers.is_empty() {
                    let timer = timers[*k as usize % timers.len()].clone();
                    self.handle(0, InEvent::TimerExpired(timer));
                }
            }
            Op::LinkFailed(from) => {
                let peer = from.id(self.self_spoof);
                if peer != 0 {
                    self.handle(0, InEvent::LinkFailed(peer));
                }
            }
            Op::Broadcast(i) => {
                self.broadcast(u32::from(*i) % HONEST);
            }
        }
    }

    /// Every node within its configured bounds.
    fn check_bounds(&self) {
        for (id, node) in self.nodes.iter().enumerate() {
            let id = id as u32;
            let m = node.membership();
            let hcfg = m.config();
            let active: Vec<u32> = m.active_view().copied().collect();
            let passive: Vec<u32> = m.passive_view().copied().collect();
            assert!(
                active.len() <= hcfg.active_view_capacity,
                "node {id}: active view {active:?} over capacity"
            );
            assert!(
                passive.len() <= hcfg.passive_view_capacity,
                "node {id}: passive view of {} over capacity",
                passive.len()
            );
            assert!(!active.contains(&id), "node {id} is in its own active view");
            assert!(
                !passive.contains(&id),
                "node {id} is in its own passive view"
            );
            let b = node.broadcast_layer();
            let bcfg = b.config();
            assert!(
                b.cache_len() <= bcfg.cache_capacity,
                "node {id}: payload cache over capacity"
            );
            assert!(
                b.received_len() <= bcfg.max_origins,
                "node {id}: record over max_origins"
            );
            assert!(
                b.holes_len() <= bcfg.max_holes_total,
                "node {id}: holes over the cap"
            );
            assert!(
                b.missing_len() <= bcfg.max_missing,
                "node {id}: missing over the cap"
            );
            assert!(
                b.fifo_held_len() <= bcfg.fifo_max_held,
                "node {id}: FIFO hold over the cap"
            );
            let d = node.directory();
            assert!(
                d.len() <= proto::directory::Config::default().max_members,
                "node {id}: directory over max_members"
            );
        }
    }
}
