//! A deterministic discrete-event simulator for the protocol core.
//!
//! The simulator is one more driver of [`proto::State`], next to the tokio runtime: it replaces
//! the transport and the clock, never the protocol. Many nodes (`State<u32, SmallRng>`, each
//! seeded from the simulation seed and its id) share one virtual clock and one priority queue of
//! pending work ordered by `(time, sequence)`: message deliveries, timers, link failures. Each
//! step pops the earliest entry, hands it to the node's `handle`, and drains `poll`: a
//! `SendMessage` becomes a later delivery, a `ScheduleTimer` a later timer, a `Deliver` a record in
//! the [`Tracker`].
//!
//! # The network model
//!
//! - **Latency** is drawn per link, uniformly in `[latency_min, latency_max)` (10-100 ms by
//!   default) from a hash of the seed and the two ids, so a link keeps its latency for the whole
//!   run and messages on one link stay in order, as on a TCP connection. An optional per-message
//!   `jitter` reorders messages on the same link too.
//! - **Loss** and **duplication** are decided per message with the simulation rng.
//! - **Partitions** put each node in a group; a message between two groups is dropped when it
//!   arrives, and so is a message to a crashed node. In both cases the sender is told
//!   [`InEvent::LinkFailed`] after `connect_timeout`, as a TCP transport would report a
//!   connection that cannot be opened (once per pending failure and link, not per message).
//! - **Crashes** drop a node's state at once: its timers and the messages to it vanish.
//!   **Restarts** create a node with a *fresh* id that joins again, because a restarted process is
//!   a new identity in the runtime too ([`crate::NodeId`] carries a per-start generation).
//!
//! # Determinism
//!
//! Nothing depends on the real clock or on hash iteration order: times are virtual offsets from
//! one base [`Instant`] captured at creation, ties are broken by insertion order, and every random
//! choice comes from seeded rngs. [`Sim::trace_hash`] folds every processed event (time, node,
//! kind, broadcast id) into an FNV-1a hash: the same seed gives the same hash, which the tests
//! check.
//!
//! # Cost
//!
//! The queue is a timing wheel of ~1 ms buckets of 24-byte entries (time, sequence, slot; see
//! `Queue`): a push appends to a bucket, a bucket is sorted once when the clock reaches it. The
//! events live in a slab whose slots are reused, so the steady state allocates nothing per event
//! in the simulator. (Events stored inline in the wheel ran ~15% faster but took ~70% more
//! memory at 10,000 nodes: the buckets' slack and fragmentation.)
//! Payloads are [`Bytes`] shared by every copy of a message.
//!
//! [`scenario`] runs the benchmark scenario of the `sim` example; [`chaos`] runs the chaos
//! simulation with its invariant checkers; [`bench`] runs the `cluster_bench` example's
//! scenario (200 nodes on loopback) in virtual time.

pub mod bench;
pub mod chaos;
pub mod scenario;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::proto::{self, InEvent, Instant, Message, MessageId, OutEvent, Timer, plumtree};

/// The protocol state of one simulated node.
pub type Node = proto::State<u32, SmallRng>;

/// Settings of the simulated network.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds the network rng and, mixed with each node's id, every node's rng.
    pub seed: u64,
    /// Lowest one-way link latency.
    pub latency_min: Duration,
    /// Highest one-way link latency (exclusive).
    pub latency_max: Duration,
    /// Extra per-message delay, uniform in `[0, jitter)`: reorders messages on one link.
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delay before a sender learns that a message could not reach a crashed or partitioned peer.
    pub connect_timeout: Duration,
    /// Protocol settings of every node.
    pub proto: proto::Config,
    /// When set, a crash also breaks the crashed node's open connections, as a process that
    /// dies closes its TCP sockets without a goodbye: every live node that exchanged a message
    /// with it (and did not close the link since) is told [`InEvent::LinkFailed`] this much
    /// later. `None` (the default): peers learn of a crash only when they send to it.
    pub close_on_crash: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            latency_min: Duration::from_millis(10),
            latency_max: Duration::from_millis(100),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            connect_timeout: Duration::from_secs(1),
            proto: proto::Config::default(),
            close_on_crash: None,
        }
    }
}

/// Whether a node runs, is leaving, or is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Running.
    Alive,
    /// Sent `Leave`; it stops after a grace period.
    Leaving,
    /// Crashed, restarted under a new id, or stopped after leaving.
    Dead,
}

/// Messages sent, by layer and purpose, since the simulation started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Events processed.
    pub events: u64,
    /// Overlay (HyParView) messages sent.
    pub membership: u64,
    /// Broadcast-layer messages sent that carry at least one payload.
    pub broadcast_payload: u64,
    /// User payloads carried by broadcast-layer messages (a batch counts each payload).
    pub user_payloads: u64,
    /// Broadcast-layer messages carrying a system payload (directory updates).
    pub broadcast_system: u64,
    /// Broadcast-layer messages without a payload (IHAVE, GRAFT, PRUNE, digests).
    pub broadcast_control: u64,
    /// Heartbeats.
    pub detector: u64,
    /// Direct directory messages.
    pub directory: u64,
    /// Messages lost on purpose (`loss`).
    pub lost: u64,
    /// Messages duplicated on purpose (`duplicate`).
    pub duplicated: u64,
    /// Messages dropped because the peer was down or on the other side of a partition.
    pub unreachable: u64,
    /// `LinkFailed` inputs delivered to senders.
    pub link_failures: u64,
    /// `Disconnect` outputs (links the protocol closed).
    pub disconnects: u64,
    /// Membership events emitted by the directory.
    pub member_events: u64,
    /// Of those, `Suspect` and `Down` events (with member events on).
    pub suspect_or_down_events: u64,
    /// Most events ever pending at once (in-flight messages and armed timers).
    pub peak_pending: u64,
    /// Timers fired, by layer: membership, broadcast, detector, directory.
    pub timers: [u64; 4],
}

impl NetStats {
    /// Messages of every layer.
    pub fn total(&self) -> u64 {
        self.membership
            + self.broadcast_payload
            + self.broadcast_system
            + self.broadcast_control
            + self.detector
            + self.directory
    }
}

/// What the simulator knows about one user broadcast.
#[derive(Debug, Clone)]
pub struct BroadcastRecord {
    /// Its id.
    pub id: MessageId<u32>,
    /// Virtual time it was sent.
    pub sent_at: Duration,
    /// Ids below this existed when it was sent.
    pub population: u32,
    delivered: Vec<u64>,
    /// Deliveries (first deliveries only).
    pub deliveries: u32,
    /// Largest hop count of a delivery.
    pub max_hops: u16,
    /// Virtual time of the latest delivery.
    pub last_delivery: Duration,
    /// The node that delivered last, the peer its copy came from, and that copy's hops.
    pub last: Option<(u32, u32, u16)>,
}

impl BroadcastRecord {
    /// Whether `node` delivered this broadcast.
    pub fn delivered_to(&self, node: u32) -> bool {
        let (w, b) = (node as usize / 64, node % 64);
        self.delivered
            .get(w)
            .is_some_and(|word| word & (1 << b) != 0)
    }

    fn mark(&mut self, node: u32) -> bool {
        let (w, b) = (node as usize / 64, node % 64);
        if self.delivered.len() <= w {
            self.delivered.resize(w + 1, 0);
        }
        let fresh = self.delivered[w] & (1 << b) == 0;
        self.delivered[w] |= 1 << b;
        fresh
    }
}

/// Records every user broadcast and delivery, and the violations of the delivery invariants.
#[derive(Debug, Default)]
pub struct Tracker {
    records: Vec<BroadcastRecord>,
    index: HashMap<MessageId<u32>, usize>,
    /// Deliveries of a broadcast the node had already delivered (must stay 0).
    pub duplicates: u64,
    /// Deliveries of an id that was never broadcast, or of a payload that differs (must stay 0).
    pub phantoms: u64,
    /// Deliveries to the node that broadcast the message (must stay 0).
    pub self_deliveries: u64,
    /// Every first delivery.
    pub deliveries: u64,
    payloads: Vec<Bytes>,
}

impl Tracker {
    /// Every broadcast, in the order they were sent.
    pub fn records(&self) -> &[BroadcastRecord] {
        &self.records
    }

    /// The record of one broadcast.
    pub fn record(&self, id: &MessageId<u32>) -> Option<&BroadcastRecord> {
        self.index.get(id).map(|&i| &self.records[i])
    }

    /// Invariant violations seen so far (duplicates + phantoms + self deliveries).
    pub fn violations(&self) -> u64 {
        self.duplicates + self.phantoms + self.self_deliveries
    }

    fn sent(&mut self, id: MessageId<u32>, payload: Bytes, now: Duration, population: u32) {
        let i = self.records.len();
        self.records.push(BroadcastRecord {
            id,
            sent_at: now,
            population,
            delivered: Vec::new(),
            deliveries: 0,
            max_hops: 0,
            last_delivery: now,
            last: None,
        });
        self.payloads.push(payload);
        if self.index.insert(id, i).is_some() {
            // Two broadcasts under one id: the protocol reused a sequence number.
            self.phantoms += 1;
        }
    }

    fn delivered(&mut self, node: u32, d: &plumtree::Delivery<u32>, now: Duration) {
        let Some(&i) = self.index.get(&d.id) else {
            self.phantoms += 1;
            return;
        };
        if self.payloads[i] != d.payload {
            self.phantoms += 1;
        }
        if d.id.origin == node {
            self.self_deliveries += 1;
        }
        let rec = &mut self.records[i];
        if !rec.mark(node) {
            self.duplicates += 1;
            return;
        }
        self.deliveries += 1;
        rec.deliveries += 1;
        rec.max_hops = rec.max_hops.max(d.hops);
        rec.last_delivery = now;
        rec.last = Some((node, d.from, d.hops));
    }
}

/// One pending piece of work.
#[derive(Debug)]
enum Event {
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
    Stop {
        node: u32,
    },
}

/// FNV-1a over 64-bit words (one multiply per word), for the trace hash and discriminants.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v))
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v))
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64)
    }
    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64)
    }
}

/// One queued entry: due time in ns, insertion sequence (breaks ties), the event itself.
#[derive(Debug)]
struct Entry<T> {
    at: u64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn key(&self) -> (u64, u64) {
        (self.at, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// log2 of a wheel bucket's width in ns (about 1 ms).
const BUCKET_SHIFT: u32 = 20;
/// Buckets in the wheel (a horizon of about 4.3 s).
const WHEEL: u64 = 4096;

/// The event queue: a timing wheel of ~1 ms buckets over the next ~4 s, a heap beyond.
///
/// It pops in exactly `(time, seq)` order, like a binary heap, but a push is an append to a
/// bucket and each bucket is sorted once when the clock reaches it, so draining a bucket reads
/// memory sequentially (a heap of a few hundred thousand entries misses the cache at most
/// levels of every pop).
#[derive(Debug)]
struct Queue<T> {
    buckets: Vec<Vec<Entry<T>>>,
    /// Absolute index of the bucket being drained.
    cursor: u64,
    /// The bucket being drained, sorted descending: the next entry is last.
    current: Vec<Entry<T>>,
    /// Entries in `buckets`.
    in_wheel: usize,
    /// Entries beyond the wheel's horizon.
    far: BinaryHeap<Reverse<Entry<T>>>,
    /// Drained bucket vectors kept for reuse (bounded): buckets only hold capacity while they
    /// hold entries, so memory follows the pending events, not the wheel's size.
    spare: Vec<Vec<Entry<T>>>,
    /// Buckets loaded into `current` so far: tells the driver a new batch is up.
    loads: u64,
}

/// Drained vectors kept for reuse by the wheel, and the largest capacity worth keeping: a
/// burst (ten thousand joins in one millisecond) must not stay allocated for the whole run.
const SPARE_BUCKETS: usize = 64;
const SPARE_CAPACITY: usize = 1024;

impl<T> Queue<T> {
    fn new() -> Self {
        Self {
            buckets: (0..WHEEL).map(|_| Vec::new()).collect(),
            cursor: 0,
            current: Vec::new(),
            in_wheel: 0,
            far: BinaryHeap::new(),
            spare: Vec::new(),
            loads: 0,
        }
    }

    fn recycle(&mut self, v: Vec<Entry<T>>) {
        if (1..=SPARE_CAPACITY).contains(&v.capacity()) && self.spare.len() < SPARE_BUCKETS {
            self.spare.push(v);
        }
    }

    fn bucket_push(&mut self, b: u64, e: Entry<T>) {
        let bucket = &mut self.buckets[(b % WHEEL) as usize];
        if bucket.capacity() == 0
            && let Some(v) = self.spare.pop()
        {
            *bucket = v;
        }
        bucket.push(e);
        self.in_wheel += 1;
    }

    fn len(&self) -> usize {
        self.current.len() + self.in_wheel + self.far.len()
    }

    fn push(&mut self, e: Entry<T>) {
        let b = e.at >> BUCKET_SHIFT;
        if b <= self.cursor {
            let key = e.key();
            let pos = self.current.partition_point(|x| x.key() > key);
            self.current.insert(pos, e);
        } else if b < self.cursor + WHEEL {
            self.bucket_push(b, e);
        } else {
            self.far.push(Reverse(e));
        }
    }

    /// Due time of the earliest entry.
    fn peek(&mut self) -> Option<u64> {
        loop {
            if let Some(e) = self.current.last() {
                return Some(e.at);
            }
            if self.in_wheel == 0 {
                // Jump straight to the far heap's first bucket.
                let first = self.far.peek()?.0.at >> BUCKET_SHIFT;
                self.cursor = self.cursor.max(first.saturating_sub(1));
            }
            self.cursor += 1;
            while let Some(Reverse(e)) = self.far.peek() {
                let b = e.at >> BUCKET_SHIFT;
                if b >= self.cursor + WHEEL {
                    break;
                }
                let Reverse(e) = self.far.pop().expect("peeked");
                if b <= self.cursor {
                    self.current.push(e);
                } else {
                    self.bucket_push(b, e);
                }
            }
            let slot = (self.cursor % WHEEL) as usize;
            let mut bucket = std::mem::take(&mut self.buckets[slot]);
            if bucket.is_empty() {
                self.recycle(bucket);
                continue;
            }
            self.in_wheel -= bucket.len();
            if self.current.is_empty() {
                std::mem::swap(&mut self.current, &mut bucket);
            } else {
                self.current.append(&mut bucket);
            }
            self.recycle(bucket);
            self.current.sort_unstable_by_key(|e| Reverse(e.key()));
            self.loads += 1;
        }
    }

    fn pop(&mut self) -> Option<Entry<T>> {
        self.peek()?;
        self.current.pop()
    }
}

/// SplitMix64: derives independent seeds and per-link latencies from the simulation seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The kind of a message (layer and variant) as a small number for the trace.
fn message_kind(msg: &Message<u32>) -> u64 {
    let mut h = Fnv::default();
    std::mem::discriminant(msg).hash(&mut h);
    match msg {
        Message::Membership(m) => std::mem::discriminant(m).hash(&mut h),
        Message::Broadcast(m) => std::mem::discriminant(m).hash(&mut h),
        Message::Detector(m) => std::mem::discriminant(m).hash(&mut h),
        Message::Directory(m) => std::mem::discriminant(m).hash(&mut h),
    }
    h.finish()
}

fn timer_kind(timer: &Timer<u32>) -> u64 {
    let mut h = Fnv::default();
    std::mem::discriminant(timer).hash(&mut h);
    match timer {
        Timer::Membership(t) => std::mem::discriminant(t).hash(&mut h),
        Timer::Broadcast(t) => std::mem::discriminant(t).hash(&mut h),
        Timer::Detector(t) => std::mem::discriminant(t).hash(&mut h),
        Timer::Directory(t) => std::mem::discriminant(t).hash(&mut h),
    }
    h.finish()
}

/// How many user payloads a broadcast-layer message carries.
fn user_payloads(msg: &plumtree::Message<u32>) -> u64 {
    msg.user_payloads() as u64
}

/// Whether a broadcast-layer message carries a payload (user or system).
fn carries_payload(msg: &plumtree::Message<u32>) -> bool {
    matches!(
        msg,
        plumtree::Message::Gossip(_) | plumtree::Message::CatchUp(_)
    )
}

/// A readable log of what happens to a few nodes, for diagnosis (off by default; it does not
/// change the run or its trace hash).
#[derive(Debug, Default)]
struct EventLog {
    /// Nodes whose events are logged (every node if empty).
    nodes: HashSet<u32>,
    lines: Vec<String>,
    /// Most lines kept; later ones are counted only.
    cap: usize,
    dropped: u64,
}

impl EventLog {
    fn wants(&self, a: u32, b: u32) -> bool {
        self.nodes.is_empty() || self.nodes.contains(&a) || self.nodes.contains(&b)
    }

    fn push(&mut self, now: u64, line: std::fmt::Arguments<'_>) {
        if self.lines.len() >= self.cap {
            self.dropped += 1;
            return;
        }
        let mut l = format!("{:>10.3} ms {line}", now as f64 / 1e6);
        if l.len() > 400 {
            let mut cut = 400;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            l.truncate(cut);
            l.push_str("...");
        }
        self.lines.push(l);
    }
}

/// Everything but the nodes: split off so a node can be borrowed while its outputs are routed.
#[derive(Debug)]
struct Net {
    config: SimConfig,
    base: Instant,
    now: u64,
    seq: u64,
    rng: SmallRng,
    queue: Queue<u32>,
    /// The events, indexed by the queue's entries; free slots are reused.
    slab: Vec<Option<Event>>,
    free: Vec<u32>,
    /// The queue's `loads` when its current bucket's slots were last touched.
    touched: u64,
    /// Links (sender, peer) with a `LinkFailed` on its way: one report per failure.
    failing: HashSet<(u32, u32)>,
    /// Open connections as (smaller id, larger id), kept only with `close_on_crash`.
    conns: HashSet<(u32, u32)>,
    /// The event log, when on (see [`Sim::log_nodes`]).
    log: Option<EventLog>,
    trace: Fnv,
    stats: NetStats,
    tracker: Tracker,
}

impl Net {
    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn push(&mut self, at: u64, event: Event) {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slab[slot as usize] = Some(event);
                slot
            }
            None => {
                self.slab.push(Some(event));
                (self.slab.len() - 1) as u32
            }
        };
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq: self.seq,
            item: slot,
        });
        if self.seq.is_multiple_of(1024) {
            self.stats.peak_pending = self.stats.peak_pending.max(self.queue.len() as u64);
        }
    }

    fn link_latency(&self, a: u32, b: u32) -> u64 {
        let (lo, hi) = (
            self.config.latency_min.as_nanos() as u64,
            self.config.latency_max.as_nanos() as u64,
        );
        if hi <= lo {
            return lo;
        }
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        let h = mix(self.config.seed ^ mix((u64::from(x) << 32) | u64::from(y)));
        lo + h % (hi - lo)
    }

    fn delay(&mut self, from: u32, to: u32) -> u64 {
        let mut d = self.link_latency(from, to);
        let jitter = self.config.jitter.as_nanos() as u64;
        if jitter > 0 {
            d += self.rng.random_range(0..jitter);
        }
        d
    }

    /// Route one output of node `me`.
    fn route(&mut self, me: u32, out: OutEvent<u32>) {
        match out {
            OutEvent::SendMessage(to, msg) => {
                if self.config.close_on_crash.is_some() {
                    self.conns.insert((me.min(to), me.max(to)));
                }
                match &msg {
                    Message::Membership(_) => self.stats.membership += 1,
                    Message::Broadcast(m) => {
                        let n = user_payloads(m);
                        if n > 0 {
                            self.stats.broadcast_payload += 1;
                            self.stats.user_payloads += n;
                        } else if carries_payload(m) {
                            self.stats.broadcast_system += 1;
                        } else {
                            self.stats.broadcast_control += 1;
                        }
                    }
                    Message::Detector(_) => self.stats.detector += 1,
                    Message::Directory(_) => self.stats.directory += 1,
                }
                if self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss {
                    self.stats.lost += 1;
                    return;
                }
                if self.config.duplicate > 0.0 && self.rng.random::<f64>() < self.config.duplicate {
                    self.stats.duplicated += 1;
                    let at = self.now
                        + self.delay(me, to)
                        + self
                            .rng
                            .random_range(0..self.config.latency_max.as_nanos() as u64 + 1);
                    self.push(
                        at,
                        Event::Msg {
                            from: me,
                            to,
                            msg: msg.clone(),
                        },
                    );
                }
                let at = self.now + self.delay(me, to);
                self.push(at, Event::Msg { from: me, to, msg });
            }
            OutEvent::ScheduleTimer(at, timer) => {
                let at = at.saturating_duration_since(self.base).as_nanos() as u64;
                self.push(at.max(self.now), Event::Timer { node: me, timer });
            }
            OutEvent::Deliver(d) => {
                self.trace
                    .write_u64(u64::from(d.id.origin) << 32 ^ d.id.seq);
                let now = Duration::from_nanos(self.now);
                self.tracker.delivered(me, &d, now);
            }
            OutEvent::MemberEvent(e) => {
                self.stats.member_events += 1;
                if matches!(
                    e,
                    proto::directory::MemberEvent::Suspect(_)
                        | proto::directory::MemberEvent::Down(_)
                ) {
                    self.stats.suspect_or_down_events += 1;
                }
                let now = self.now;
                if let Some(log) = &mut self.log {
                    let about = match &e {
                        proto::directory::MemberEvent::Up(m)
                        | proto::directory::MemberEvent::Suspect(m)
                        | proto::directory::MemberEvent::Down(m)
                        | proto::directory::MemberEvent::Left(m)
                        | proto::directory::MemberEvent::Updated(m) => m.id,
                    };
                    if log.wants(me, about) {
                        log.push(now, format_args!("{me} event {e:?}"));
                    }
                }
            }
            OutEvent::Disconnect(peer) => {
                self.stats.disconnects += 1;
                if self.config.close_on_crash.is_some() {
                    self.conns.remove(&(me.min(peer), me.max(peer)));
                }
                let now = self.now;
                if let Some(log) = &mut self.log
                    && log.wants(me, peer)
                {
                    log.push(now, format_args!("{me} disconnects {peer}"));
                }
            }
        }
    }
}

/// The simulated cluster: nodes, network, virtual clock. See the [module docs](self).
#[derive(Debug)]
pub struct Sim {
    nodes: Vec<Option<Node>>,
    status: Vec<NodeStatus>,
    group: Vec<u16>,
    partitioned: bool,
    net: Net,
}

impl Sim {
    /// An empty network.
    pub fn new(config: SimConfig) -> Self {
        let rng = SmallRng::seed_from_u64(mix(config.seed));
        Self {
            nodes: Vec::new(),
            status: Vec::new(),
            group: Vec::new(),
            partitioned: false,
            net: Net {
                config,
                base: Instant::now(),
                now: 0,
                seq: 0,
                rng,
                queue: Queue::new(),
                slab: Vec::new(),
                free: Vec::new(),
                touched: 0,
                failing: HashSet::new(),
                conns: HashSet::new(),
                log: None,
                trace: Fnv::default(),
                stats: NetStats::default(),
                tracker: Tracker::default(),
            },
        }
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.net.config
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.net.now)
    }

    /// The simulation rng (for scenario choices; it also decides loss and jitter).
    pub fn rng(&mut self) -> &mut SmallRng {
        &mut self.net.rng
    }

    /// The running hash of every processed event: equal seeds give equal hashes.
    pub fn trace_hash(&self) -> u64 {
        self.net.trace.finish()
    }

    /// Message counters.
    pub fn stats(&self) -> &NetStats {
        &self.net.stats
    }

    /// Broadcasts and deliveries.
    pub fn tracker(&self) -> &Tracker {
        &self.net.tracker
    }

    /// Entries in the event queue (in-flight messages and armed timers).
    pub fn pending(&self) -> usize {
        self.net.queue.len()
    }

    /// Ids handed out so far (alive or not): ids are `0..len`.
    pub fn len(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// Whether no node was ever added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node's status (`Dead` for an unknown id).
    pub fn status(&self, id: u32) -> NodeStatus {
        self.status
            .get(id as usize)
            .copied()
            .unwrap_or(NodeStatus::Dead)
    }

    /// Whether the node runs and has not left.
    pub fn is_alive(&self, id: u32) -> bool {
        self.status(id) == NodeStatus::Alive
    }

    /// The running nodes that have not left, in id order.
    pub fn alive(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len()).filter(|&i| self.is_alive(i))
    }

    /// A running node's protocol state.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes.get(id as usize)?.as_ref()
    }

    /// Add a node with empty metadata; it does nothing until it joins.
    pub fn add_node(&mut self) -> u32 {
        self.add_node_with(Bytes::new())
    }

    /// Add a node with this metadata.
    pub fn add_node_with(&mut self, metadata: Bytes) -> u32 {
        let id = self.nodes.len() as u32;
        let rng = SmallRng::seed_from_u64(mix(self.net.config.seed ^ mix(u64::from(id) + 1)));
        let now = self.net.instant();
        let state = Node::new(id, self.net.config.proto.clone(), rng, metadata, now);
        self.nodes.push(Some(state));
        self.status.push(NodeStatus::Alive);
        self.group.push(0);
        self.drain(id);
        id
    }

    /// Give node `id` an input now.
    pub fn handle(&mut self, id: u32, event: InEvent<u32>) {
        let now = self.net.instant();
        if let Some(Some(state)) = self.nodes.get_mut(id as usize) {
            state.handle(event, now);
            self.drain(id);
        }
    }

    /// Node `id` joins through `contacts`.
    pub fn join(&mut self, id: u32, contacts: Vec<u32>) {
        self.handle(id, InEvent::Join(contacts));
    }

    /// Node `id` broadcasts `payload`; the tracker records it. `None` if the node is not alive.
    pub fn broadcast(&mut self, id: u32, payload: Bytes) -> Option<MessageId<u32>> {
        if !self.is_alive(id) {
            return None;
        }
        let now = self.net.instant();
        let state = self.nodes[id as usize].as_mut()?;
        let mid = state.broadcast(payload.clone(), now);
        let population = self.nodes.len() as u32;
        self.net.tracker.sent(mid, payload, self.now(), population);
        self.drain(id);
        Some(mid)
    }

    /// Node `id` leaves gracefully; it stops `grace` later.
    pub fn leave(&mut self, id: u32, grace: Duration) {
        if !self.is_alive(id) {
            return;
        }
        self.handle(id, InEvent::Leave);
        self.status[id as usize] = NodeStatus::Leaving;
        let at = self.net.now + grace.as_nanos() as u64;
        self.net.push(at, Event::Stop { node: id });
    }

    /// Node `id` crashes: its state, timers and incoming messages vanish. With
    /// [`SimConfig::close_on_crash`], its open connections break too.
    pub fn crash(&mut self, id: u32) {
        let running = self.nodes.get(id as usize).is_some_and(|n| n.is_some());
        self.stop(id);
        let Some(delay) = self.net.config.close_on_crash else {
            return;
        };
        if !running {
            return;
        }
        let mut peers: Vec<u32> = self
            .net
            .conns
            .iter()
            .filter_map(|&(a, b)| match (a == id, b == id) {
                (true, _) => Some(b),
                (_, true) => Some(a),
                _ => None,
            })
            .collect();
        peers.sort_unstable();
        let at = self.net.now + delay.as_nanos() as u64;
        for peer in peers {
            self.net.conns.remove(&(id.min(peer), id.max(peer)));
            if self.is_alive(peer) && self.net.failing.insert((peer, id)) {
                self.net.push(
                    at,
                    Event::LinkFailed {
                        node: peer,
                        peer: id,
                    },
                );
            }
        }
    }

    /// Drop node `id`'s state, timers and incoming messages (a crash, or the end of a leave).
    fn stop(&mut self, id: u32) {
        if let Some(slot) = self.nodes.get_mut(id as usize) {
            *slot = None;
            self.status[id as usize] = NodeStatus::Dead;
        }
    }

    /// Log what happens to `nodes` (every node if empty), up to `cap` lines; see
    /// [`Sim::take_log`]. For diagnosis: the run and its trace hash stay the same.
    pub fn log_nodes(&mut self, nodes: impl IntoIterator<Item = u32>, cap: usize) {
        self.net.log = Some(EventLog {
            nodes: nodes.into_iter().collect(),
            cap,
            ..EventLog::default()
        });
    }

    /// The lines logged so far (and how many did not fit), leaving the log on and empty.
    pub fn take_log(&mut self) -> (Vec<String>, u64) {
        match &mut self.net.log {
            Some(log) => (
                std::mem::take(&mut log.lines),
                std::mem::take(&mut log.dropped),
            ),
            None => (Vec::new(), 0),
        }
    }

    /// Node `id` crashes (if it runs) and comes back as a new identity joining through
    /// `contacts`. Returns the new id.
    pub fn restart(&mut self, id: u32, contacts: Vec<u32>) -> u32 {
        self.crash(id);
        let new = self.add_node();
        self.group[new as usize] = self.group.get(id as usize).copied().unwrap_or(0);
        self.join(new, contacts);
        new
    }

    /// Split the network: `group(id)` for every existing node; new nodes go to group 0.
    /// Messages between groups are dropped on arrival, the sender gets `LinkFailed`.
    pub fn partition(&mut self, group: impl Fn(u32) -> u16) {
        for id in 0..self.len() {
            self.group[id as usize] = group(id);
        }
        self.partitioned = true;
    }

    /// Change the fault settings from now on: loss and duplication probabilities, jitter.
    pub fn set_faults(&mut self, loss: f64, duplicate: f64, jitter: Duration) {
        self.net.config.loss = loss;
        self.net.config.duplicate = duplicate;
        self.net.config.jitter = jitter;
    }

    /// End the partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
        self.partitioned = false;
    }

    /// The one-way latency of the link between `a` and `b` (without jitter).
    pub fn link_latency(&self, a: u32, b: u32) -> Duration {
        Duration::from_nanos(self.net.link_latency(a, b))
    }

    /// Whether `a` and `b` are on different sides of a partition.
    pub fn separated(&self, a: u32, b: u32) -> bool {
        self.partitioned && self.group.get(a as usize) != self.group.get(b as usize)
    }

    /// Process the next event if it is due at or before `until`; `false` if there was none.
    pub fn step(&mut self, until: Duration) -> bool {
        let end = until.as_nanos() as u64;
        match self.net.queue.peek() {
            Some(t) if t <= end => {}
            _ => return false,
        }
        if self.net.queue.loads != self.net.touched {
            // A new bucket is up: read its events' slab slots, and the nodes they go to, in
            // one tight loop, so the cache misses overlap instead of stalling one by one as
            // each event is processed.
            self.net.touched = self.net.queue.loads;
            let slab = &self.net.slab;
            let nodes = &self.nodes;
            let current = &self.net.queue.current;
            let live = current
                .iter()
                .filter_map(|e| slab.get(e.item as usize)?.as_ref())
                .filter(|event| {
                    let node = match event {
                        Event::Msg { to, .. } => *to,
                        Event::Timer { node, .. }
                        | Event::LinkFailed { node, .. }
                        | Event::Stop { node } => *node,
                    };
                    nodes.get(node as usize).is_some_and(|n| n.is_some())
                })
                .count();
            std::hint::black_box(live);
        }
        let Some(Entry {
            at: t, item: slot, ..
        }) = self.net.queue.pop()
        else {
            return false;
        };
        let event = self.net.slab[slot as usize]
            .take()
            .expect("a queued slot holds its event");
        self.net.free.push(slot);
        self.net.now = self.net.now.max(t);
        self.dispatch(event);
        true
    }

    /// Run every event due up to `until`, then set the clock to `until`.
    pub fn run_until(&mut self, until: Duration) {
        while self.step(until) {}
        self.net.now = self.net.now.max(until.as_nanos() as u64);
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    /// Run until `done` holds (checked after every event) or `until` passes. Returns whether
    /// `done` held. `done` is called often: keep it cheap.
    pub fn run_until_or(&mut self, until: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if !self.step(until) {
                self.net.now = self.net.now.max(until.as_nanos() as u64);
                return done(self);
            }
        }
    }

    fn dispatch(&mut self, event: Event) {
        self.net.stats.events += 1;
        let t = self.net.now;
        match event {
            Event::Msg { from, to, msg } => {
                let reachable = self.nodes.get(to as usize).is_some_and(|n| n.is_some())
                    && !self.separated(from, to);
                if !reachable {
                    self.net.stats.unreachable += 1;
                    if let Some(log) = &mut self.net.log
                        && log.wants(from, to)
                    {
                        log.push(t, format_args!("{from} -> {to} UNREACHABLE {msg:?}"));
                    }
                    let sender_up = self.nodes.get(from as usize).is_some_and(|n| n.is_some());
                    if sender_up && self.net.failing.insert((from, to)) {
                        let at = t + self.net.config.connect_timeout.as_nanos() as u64;
                        self.net.push(
                            at,
                            Event::LinkFailed {
                                node: from,
                                peer: to,
                            },
                        );
                    }
                    return;
                }
                let mut kind = message_kind(&msg) ^ u64::from(from) << 40;
                if let Message::Broadcast(
                    plumtree::Message::Gossip(g) | plumtree::Message::CatchUp(g),
                ) = &msg
                {
                    kind ^= mix(u64::from(g.id.origin) << 32 ^ g.id.seq);
                }
                self.trace(t, to, kind);
                if let Some(log) = &mut self.net.log
                    && log.wants(from, to)
                {
                    log.push(t, format_args!("{from} -> {to} {msg:?}"));
                }
                self.handle(to, InEvent::RecvMessage(from, msg));
            }
            Event::Timer { node, timer } => {
                if self.nodes.get(node as usize).is_some_and(|n| n.is_some()) {
                    let layer = match timer {
                        Timer::Membership(_) => 0,
                        Timer::Broadcast(_) => 1,
                        Timer::Detector(_) => 2,
                        Timer::Directory(_) => 3,
                    };
                    self.net.stats.timers[layer] += 1;
                    self.trace(t, node, timer_kind(&timer));
                    if let Some(log) = &mut self.net.log
                        && log.wants(node, node)
                    {
                        log.push(t, format_args!("{node} timer {timer:?}"));
                    }
                    self.handle(node, InEvent::TimerExpired(timer));
                }
            }
            Event::LinkFailed { node, peer } => {
                self.net.failing.remove(&(node, peer));
                if self.net.config.close_on_crash.is_some() {
                    self.net.conns.remove(&(node.min(peer), node.max(peer)));
                }
                if self.nodes.get(node as usize).is_some_and(|n| n.is_some()) {
                    if let Some(log) = &mut self.net.log
                        && log.wants(node, peer)
                    {
                        log.push(t, format_args!("{node} link to {peer} failed"));
                    }
                    self.net.stats.link_failures += 1;
                    self.trace(t, node, 0x4c46 ^ u64::from(peer) << 40);
                    self.handle(node, InEvent::LinkFailed(peer));
                }
            }
            Event::Stop { node } => {
                self.trace(t, node, 0x5354);
                self.stop(node);
            }
        }
    }

    fn trace(&mut self, t: u64, node: u32, kind: u64) {
        self.net.trace.write_u64(t);
        self.net.trace.write_u64(u64::from(node));
        self.net.trace.write_u64(kind);
    }

    fn drain(&mut self, id: u32) {
        let Some(Some(state)) = self.nodes.get_mut(id as usize) else {
            return;
        };
        while let Some(out) = state.poll() {
            self.net.route(id, out);
        }
    }
}

/// Peak resident memory of this process in MiB (`VmHWM`), where `/proc` exists.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_latency_is_symmetric_and_in_range() {
        let sim = Sim::new(SimConfig {
            seed: 7,
            ..SimConfig::default()
        });
        let mut seen = HashSet::new();
        for a in 0..50 {
            for b in 0..50 {
                let l = sim.net.link_latency(a, b);
                assert_eq!(l, sim.net.link_latency(b, a));
                assert!((10_000_000..100_000_000).contains(&l), "{l}");
                seen.insert(l / 1_000_000);
            }
        }
        // Uniform over 90 ms buckets: 2,500 draws hit nearly all of them.
        assert!(seen.len() > 80, "{}", seen.len());
    }

    #[test]
    fn queue_orders_by_time_then_insertion() {
        let mut sim = Sim::new(SimConfig::default());
        sim.net.push(20, Event::Stop { node: 2 });
        sim.net.push(10, Event::Stop { node: 0 });
        sim.net.push(10, Event::Stop { node: 1 });
        let mut order = Vec::new();
        while let Some(Entry { at, item, .. }) = sim.net.queue.pop() {
            let Some(Event::Stop { node }) = sim.net.slab[item as usize].take() else {
                panic!("an event changed kind")
            };
            order.push((at, node));
        }
        assert_eq!(order, vec![(10, 0), (10, 1), (20, 2)]);
    }

    #[test]
    fn wheel_queue_pops_in_the_same_order_as_a_heap() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut q = Queue::new();
        let mut heap = BinaryHeap::new();
        let (mut now, mut seq) = (0u64, 0u64);
        for round in 0..20_000u32 {
            // Mostly near-future entries, some at `now`, some far beyond the wheel.
            for _ in 0..rng.random_range(0..4) {
                seq += 1;
                let delay = match rng.random_range(0..10) {
                    0 => 0,
                    1 => rng.random_range(0..20_000_000_000),
                    _ => rng.random_range(0..200_000_000),
                };
                let e = (now + delay, seq, round);
                q.push(Entry {
                    at: e.0,
                    seq: e.1,
                    item: e.2,
                });
                heap.push(Reverse(e));
            }
            if rng.random_range(0..3) > 0 {
                let a = q.pop().map(|e| (e.at, e.seq, e.item));
                let b = heap.pop().map(|Reverse(e)| e);
                assert_eq!(a, b);
                if let Some(e) = a {
                    now = e.0;
                }
            }
            assert_eq!(q.len(), heap.len());
        }
        while let Some(Reverse(e)) = heap.pop() {
            assert_eq!(q.pop().map(|e| (e.at, e.seq, e.item)), Some(e));
        }
        assert!(q.pop().is_none());
    }

    #[test]
    fn tracker_counts_duplicates_and_phantoms() {
        let mut t = Tracker::default();
        let id = MessageId { origin: 1, seq: 1 };
        let payload = Bytes::from_static(b"x");
        t.sent(id, payload.clone(), Duration::ZERO, 3);
        let d = |id, hops| plumtree::Delivery {
            id,
            kind: plumtree::PayloadKind::User,
            payload: payload.clone(),
            hops,
            from: 1,
        };
        t.delivered(2, &d(id, 3), Duration::from_millis(5));
        t.delivered(0, &d(id, 1), Duration::from_millis(7));
        assert_eq!(t.violations(), 0);
        t.delivered(2, &d(id, 3), Duration::from_millis(9));
        assert_eq!(t.duplicates, 1);
        t.delivered(
            2,
            &d(MessageId { origin: 1, seq: 2 }, 1),
            Duration::from_millis(9),
        );
        assert_eq!(t.phantoms, 1);
        let r = t.record(&id).unwrap();
        assert_eq!((r.deliveries, r.max_hops), (2, 3));
        assert!(r.delivered_to(0) && r.delivered_to(2) && !r.delivered_to(1));
        assert_eq!(r.last_delivery, Duration::from_millis(7));
    }

    #[test]
    fn crashed_peer_gives_one_link_failure_after_the_timeout() {
        let mut sim = Sim::new(SimConfig::default());
        let a = sim.add_node();
        let b = sim.add_node();
        sim.crash(b);
        let msg = Message::Detector(proto::detector::Message::Heartbeat);
        for _ in 0..3 {
            sim.net.route(a, OutEvent::SendMessage(b, msg.clone()));
        }
        sim.run_for(Duration::from_millis(500));
        assert_eq!(sim.stats().unreachable, 3);
        assert_eq!(sim.stats().link_failures, 0);
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.stats().link_failures, 1);
    }

    #[test]
    fn partition_drops_across_groups_only() {
        let mut sim = Sim::new(SimConfig::default());
        let ids: Vec<u32> = (0..4).map(|_| sim.add_node()).collect();
        sim.partition(|id| (id % 2) as u16);
        assert!(sim.separated(ids[0], ids[1]));
        assert!(!sim.separated(ids[0], ids[2]));
        let msg = Message::Detector(proto::detector::Message::Heartbeat);
        sim.net
            .route(ids[0], OutEvent::SendMessage(ids[1], msg.clone()));
        sim.net.route(ids[0], OutEvent::SendMessage(ids[2], msg));
        sim.run_for(Duration::from_millis(200));
        assert_eq!(sim.stats().unreachable, 1);
        sim.heal();
        assert!(!sim.separated(ids[0], ids[1]));
    }
}
