//! The cluster directory: every node's view of every member, spread as system broadcasts.
//!
//! # What it keeps
//!
//! One entry per member: its id, its [`MemberState`] (`Alive`, `Suspect`, `Dead`, `Left`), its
//! incarnation and the user metadata it published. The design follows SWIM (Das, Gupta,
//! Motivala, *SWIM: Scalable Weakly-consistent Infection-style Process Group Membership
//! Protocol*, DSN 2002) and its descendants memberlist and serf, adapted to a cluster that already
//! has a reliable broadcast tree (Plumtree) and a failure detector on every active link.
//!
//! # Facts and how they merge
//!
//! Everything the directory learns is a *fact*: `(id, incarnation, state, metadata?)`. Two facts
//! about one member are ordered by incarnation first, then by state with
//! `Left > Dead > Suspect > Alive`; the greater one wins and merging is commutative and
//! idempotent, so facts may arrive in any order, any number of times. Only a member itself raises
//! its incarnation: to publish new metadata, or to *refute* a suspicion or a death it hears about
//! (it answers with `incarnation + 1, Alive`, which beats every fact of the older incarnation).
//! Metadata belongs to an incarnation: the member publishes it in its own facts, a newer
//! incarnation replaces it, and at equal incarnation any fact that carries it fills it in.
//!
//! # Spreading facts cheaply
//!
//! Only facts learned *first hand* are spread: a joiner's entry (from its
//! [`Message::SyncRequest`]), this node's own metadata, a suspicion it raised, a death it
//! declared, its own departure. Facts heard from a broadcast or a join snapshot are never
//! re-broadcast.
//!
//! First-hand facts are not broadcast by whoever learned them. They wait in an outbox for
//! [`Config::forward_delay`] and are then forwarded in one [`Message::Announce`] to the
//! *collector*: the smallest id this node believes `Alive` (often itself). The collector merges
//! them as its own first-hand news and flushes its outbox as one system broadcast every
//! [`Config::flush_interval`] (or at once when it holds [`Config::max_batch_entries`] facts).
//! Whoever receives an announcement acts as its collector: it broadcasts the facts even if it
//! believes in another collector (views differ during a join storm, and forwarding again made
//! chains) and even if it knew them already (from a snapshot, say, which nobody else heard). So
//! a join storm or a mass crash, where thousands of nodes each learn a little, costs a few large
//! broadcasts instead of one per node: in the simulator, 1,000 nodes losing half of them sent
//! 17 system broadcasts instead of about 1,700.
//!
//! The collector is a role, not a leader: any node accepts announcements, and a node that
//! forwarded a fact keeps it until a broadcast covering it arrives. The collector acknowledges
//! announcements; if it does not within the probe timeouts, it is probed like a lost link (see
//! "Failure handling") and, if that goes unanswered too, suspected first hand: the waiting facts
//! go to the next smallest id;
//! if nothing covered a fact within [`Config::forward_grace`], the node broadcasts it itself.
//! If the announcement cannot even be sent (the transport fails to reach the collector,
//! [`InEvent::Unreachable`]), the collector is passed over at once while it is probed: when
//! the smallest ids crash together, every survivor's news used to wait `forward_grace` (their
//! own suspicions of the collectors were stuck the same way), and now goes down the list one
//! failed dial at a time.
//! Refutations and departures skip all this and are broadcast at once.
//!
//! # Anti-entropy
//!
//! Every [`Config::anti_entropy_interval`] a node sends one random neighbour a digest: 64 bucket
//! checksums over its `Alive` and `Suspect` entries (tombstones are left out so that nodes reaping
//! at different moments still agree). The neighbour answers only for the buckets that differ, and
//! asks for the same buckets back. Facts learned this way are not re-broadcast (the node only
//! missed them), except in a *healing* exchange, described below.
//!
//! A joiner's snapshot is taken before it has a link, so broadcasts sent in between miss it.
//! Shortly after its first link comes up, it sends that neighbour a [`Message::CatchUp`] digest;
//! the neighbour answers with the differing buckets if they hold few entries (a node far
//! behind is left to plumtree's catch-up and to anti-entropy).
//!
//! Every other round, when the node is quiet (its live view did not change for
//! [`Config::anti_entropy_quiet`]), the digest goes to a random `Alive` member *outside* the
//! active view instead. That is how a split overlay is noticed: a receiver that is quiet too and
//! finds buckets that differ knows of news at least that old which never crossed between them,
//! so likely no broadcast path joins them. It counts a suspected split, asks the overlay to reach
//! the sender (HyParView forces the link when both are full) and answers with a healing
//! exchange. In a healthy quiet cluster the digests agree and nothing happens; a lost broadcast
//! costs one forced link and one re-announcement.
//!
//! # Failure handling
//!
//! A broken or silent active link ([`InEvent::LinkLost`], from the transport or the phi
//! detector) is only a hint: a live peer's connection also breaks when it is replaced or the peer
//! drops this node from its view, and a peer starved of CPU for a second looks silent. The peer
//! is probed first, like SWIM's probe round but with both halves at once (the direct path is
//! the one in doubt, and waiting for it first would delay detecting a real crash): a
//! [`Message::Ping`] over a fresh connection and [`Config::indirect_probes`] neighbours asked to
//! ping it. Only if no ack comes back within the longer of [`Config::probe_timeout`] and
//! [`Config::indirect_probe_timeout`] is the failure taken as observed.
//!
//! A failure observed first hand (such an unconfirmed link, [`InEvent::PeerFailed`], or a failed
//! probe) turns an `Alive` member `Suspect` and arms a suspicion timer stamped with the
//! incarnation; when it fires and the member is still suspect at that incarnation it is declared
//! `Dead`. Only nodes that observed the failure run that timer, so a crash costs a handful of
//! facts, not one per node. The suspecter also tells the member directly; a live member
//! refutes at once, by broadcast and by a direct answer to the suspecter, so a false suspicion
//! costs one round trip, not two trips through the broadcast tree.
//!
//! Members nobody is adjacent to are *probed* (SWIM): every [`Config::probe_interval`] one random
//! `Alive` or `Suspect` member outside the active view gets a [`Message::Ping`]; with no
//! [`Message::Ack`] in time, [`Config::indirect_probes`] neighbours are asked to ping it
//! ([`Message::PingReq`]); with still nothing, it is suspected. A node with no neighbour to ask
//! waits just as long before it suspects anyone.
//!
//! # Partition healing
//!
//! Both sides of a split may also list the same members (the split formed after the news
//! spread, and nothing changed since): no digest shows it. With [`Config::beacon_interval`] set
//! (it is off by default), the member with the smallest id broadcasts a tiny beacon (an empty
//! batch) every interval; a node that has heard nothing from it for three intervals while
//! holding it alive, and is not linked to it, pings it (about four such nodes per heal interval
//! in the whole cluster) and its answer forces a link.
//!
//! Besides the anti-entropy rounds outside the active view (above), every
//! [`Config::heal_interval`] a node pings a random recently dead member or one of its seeds
//! (the join contacts; with no neighbour, a seed or, every other round, a random member it holds alive: its seeds may all have died). A seed known by address only
//! answers from its real id: its ack is matched by sequence number and the real id reached. In a large cluster only about
//! [`Config::heal_fanout`] nodes do so per interval. If it answers, the node asks the
//! overlay to reach it ([`OutEvent::Reach`]) and starts a *healing* anti-entropy exchange with
//! it: facts that change either side during it are re-announced (through the collector), so each
//! former partition learns the other's news, and members the other side declared dead hear it
//! and refute. Expect a refutation broadcast from each wrongly dead member, and `Down`/`Up`
//! flaps on the side that learns of a death before the refutation.
//!
//! # Tombstones
//!
//! `Dead` and `Left` entries are reaped [`Config::reap_after`] after they became so here. A small
//! bounded graveyard remembers the incarnation of recently reaped members, so a stale snapshot from
//! a node that did not reap yet cannot bring them back: a tombstone only ever turns `Alive` again
//! by a higher incarnation.
//!
//! # Memory
//!
//! An entry is a map slot of the id plus 4 bytes (incarnation in 30 bits, state in 2); metadata
//! lives in a side map holding only members that have any, and `Dead`/`Left` entries wait for
//! reaping in a queue (12 bytes each with `P = u32`) ordered by when they died. With `P = u32` that is about 15 bytes per member (a hash
//! table with one control byte per slot, at its usual load). Random picks for probing come from a
//! small pool refilled by reservoir sampling, not from a second list of every id. Incarnations
//! above [`MAX_INCARNATION`] are refused.
//!
//! # Hostile input
//!
//! Broadcast batches are decoded with a size limit and trailing bytes refused; every repeated
//! field is capped ([`Config::max_batch_entries`]); over-long metadata, impossible incarnations and
//! a full directory ([`Config::max_members`]) make a fact be ignored. Nothing from a peer can panic
//! or grow memory without bound; what is ignored is counted in [`Stats`].

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

#[cfg(test)]
mod tests;

/// Number of checksum buckets in an anti-entropy digest.
pub const DIGEST_BUCKETS: usize = 64;

/// Hard cap on the encoded size of one broadcast batch accepted from the network.
const MAX_BATCH_DECODE: usize = 1 << 20;

/// Version byte of the broadcast batch format.
const BATCH_VERSION: u8 = 1;

/// Relayed ping-requests remembered at once (older ones are forgotten).
const MAX_RELAYS: usize = 64;

/// Active neighbours remembered (the overlay's active view is far smaller).
const MAX_NEIGHBOURS: usize = 64;

/// Facts learned from one anti-entropy chunk that are still passed on (see `Message::Sync`).
const RELAY_LEARNED: usize = 16;

/// Members drawn at a time for probing.
const PROBE_POOL: usize = 64;

/// Seeds remembered from `Join`.
const MAX_SEEDS: usize = 16;

/// Lost links being confirmed by probes at once; beyond this, a lost link is suspected at once.
const MAX_CONFIRMS: usize = 64;

/// About how many nodes of the whole cluster ping a silent beacon source per heal interval.
const BEACON_FANOUT: usize = 4;

/// Most former neighbours remembered, whose failed sends are probed (see
/// [`InEvent::Unreachable`]).
const MAX_FORMER_NEIGHBOURS: usize = 16;

/// Most collectors passed over at once for being unreachable (see [`InEvent::Unreachable`]).
const MAX_UNREACHABLE: usize = 32;

/// Directory settings. `Default` suits a LAN.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long first-hand facts wait in the outbox before they go out as one broadcast.
    /// Shorter spreads news faster; longer makes fewer, larger broadcasts. 100-200 ms is sensible.
    pub flush_interval: Duration,
    /// How long first-hand facts wait before they are forwarded to the collector (when this node
    /// is not the collector itself).
    pub forward_delay: Duration,
    /// How long a fact forwarded to the collector may wait for the collector's broadcast before
    /// this node broadcasts it itself. Must exceed a flush interval plus the broadcast latency.
    pub forward_grace: Duration,
    /// Most facts in one broadcast batch or one sync message; also the cap applied to every
    /// repeated field received from a peer (larger messages are ignored).
    pub max_batch_entries: usize,
    /// Largest encoded broadcast batch this node sends; larger batches are split.
    pub max_batch_bytes: usize,
    /// Facts per state-transfer message (join snapshots and anti-entropy exchanges).
    pub sync_chunk_entries: usize,
    /// A joiner that got no snapshot within this time asks another node.
    pub sync_timeout: Duration,
    /// How often a digest is exchanged with one random neighbour (10-30 s is sensible).
    pub anti_entropy_interval: Duration,
    /// An anti-entropy round is skipped while the live view changed within this time: news is
    /// still arriving by broadcast and the digests would differ for nothing. At most three
    /// rounds in a row are skipped. A busy node also declines digests for the same reason.
    pub anti_entropy_quiet: Duration,
    /// Most digests answered with a state transfer per anti-entropy interval (others are
    /// ignored). A node receives about one digest per interval from its neighbours.
    pub max_exchanges: usize,
    /// How often one member outside the active view is probed.
    pub probe_interval: Duration,
    /// How long a direct probe waits for its ack before asking neighbours to help.
    pub probe_timeout: Duration,
    /// How long the indirect probes wait before the member is suspected.
    pub indirect_probe_timeout: Duration,
    /// Neighbours asked to ping an unresponsive member (SWIM's k).
    pub indirect_probes: usize,
    /// How long a member stays suspect before the node that suspected it declares it dead.
    /// The suspecter tells the member directly and the member answers directly, so this must
    /// exceed one round trip between them plus scheduling delays; longer gives overloaded
    /// nodes more time to refute, shorter detects crashes sooner.
    pub suspicion_timeout: Duration,
    /// How long `Dead` and `Left` entries are kept before they are removed.
    pub reap_after: Duration,
    /// How often a dead member or a seed may be pinged to heal partitions.
    pub heal_interval: Duration,
    /// About how many nodes of the whole cluster ping a dead member or a seed each heal
    /// interval (each node does with probability `heal_fanout / alive members`; an isolated
    /// node always does).
    pub heal_fanout: usize,
    /// How often the member with the smallest id broadcasts a small beacon (an empty batch);
    /// default `None`, never. A node that hears nothing from it for three intervals, while
    /// holding it alive, is cut off from it by an overlay split that its directory cannot show
    /// (both sides list the same members, and nothing changed since): it pings it and forces a
    /// link to it (about four nodes of the cluster do so per heal interval). Splits where the
    /// directories differ are found without it (anti-entropy outside the active view). Off by
    /// default because a second broadcast origin perturbs plumtree's tree: in the 10,000-node
    /// simulator with one sender, 5 s took the stable phase from RMR 0.034 / LDH 27 to 0.133 / 36
    /// and 30 s to 0.036 / 32. 5-30 s is sensible when it is worth that.
    pub beacon_interval: Option<Duration>,
    /// Largest metadata accepted, in bytes; facts with more are ignored, and so is
    /// [`InEvent::SetMetadata`] with more (the runtime should check first).
    pub max_metadata_len: usize,
    /// Most members this directory holds; new members beyond it are ignored and counted.
    pub max_members: usize,
    /// Recently reaped members remembered to refuse stale facts about them.
    pub graveyard_capacity: usize,
    /// Emit [`MemberEvent`]s. Simulators of huge clusters turn this off.
    pub emit_events: bool,
    /// Run the directory at all (default on). Off, the layer stays idle: no timers, no
    /// messages, no broadcasts, and it lists only this node. The simulator's `--directory off`
    /// uses it to measure the overlay and broadcast alone.
    pub enabled: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(150),
            forward_delay: Duration::from_millis(30),
            forward_grace: Duration::from_secs(3),
            max_batch_entries: 1024,
            max_batch_bytes: 48 * 1024,
            sync_chunk_entries: 256,
            sync_timeout: Duration::from_secs(2),
            anti_entropy_interval: Duration::from_secs(15),
            anti_entropy_quiet: Duration::from_secs(3),
            max_exchanges: 8,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(400),
            indirect_probe_timeout: Duration::from_millis(600),
            indirect_probes: 3,
            suspicion_timeout: Duration::from_millis(500),
            reap_after: Duration::from_secs(60),
            heal_interval: Duration::from_secs(5),
            heal_fanout: 32,
            beacon_interval: None,
            max_metadata_len: 1024,
            max_members: 1 << 20,
            graveyard_capacity: 4096,
            emit_events: true,
            enabled: true,
        }
    }
}

/// State of a member as this node believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Up.
    Alive,
    /// Suspected failed; it can refute.
    Suspect,
    /// Failed.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Precedence at equal incarnation: `Left > Dead > Suspect > Alive`.
    pub fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        }
    }

    /// `Alive` or `Suspect`: still counted as part of the cluster.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member<P: PeerId> {
    /// Its id.
    pub id: P,
    /// Its state.
    pub state: MemberState,
    /// Its incarnation.
    pub incarnation: u64,
    /// User metadata.
    pub metadata: Bytes,
}

/// A change of membership, for the user. Each is emitted once per transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent<P: PeerId> {
    /// A member came up (or came back: refuted a suspicion, or rejoined with a higher incarnation).
    Up(Member<P>),
    /// A member is suspected failed; it may still refute.
    Suspect(Member<P>),
    /// A member was declared dead.
    Down(Member<P>),
    /// A member left gracefully.
    Left(Member<P>),
    /// An alive member published new metadata.
    Updated(Member<P>),
}

/// One piece of knowledge about one member, as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Fact<P: PeerId> {
    /// The member.
    pub id: P,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its state at that incarnation.
    pub state: MemberState,
    /// Its metadata at that incarnation, `None` when the sender does not know it.
    pub metadata: Option<Bytes>,
}

/// A broadcast batch of facts (the payload of [`OutEvent::Broadcast`]).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
struct Batch<P: PeerId> {
    version: u8,
    facts: Vec<Fact<P>>,
}

/// Direct (non-broadcast) messages of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// A joiner asks for a snapshot; carries its own entry, which the receiver announces.
    SyncRequest {
        /// The requester's own fact (with its metadata).
        entry: Fact<P>,
    },
    /// A chunk of state: a join snapshot or one side of an anti-entropy exchange.
    Sync {
        /// The facts.
        facts: Vec<Fact<P>>,
        /// Facts that change the receiver's state are re-broadcast (anti-entropy, healing).
        announce: bool,
        /// The last chunk of this transfer.
        last: bool,
        /// On the last chunk: send back your facts in these buckets (a bit per bucket).
        reply: Option<u64>,
    },
    /// First-hand facts forwarded to the collector, which merges and broadcasts them.
    Announce {
        /// The facts.
        facts: Vec<Fact<P>>,
        /// Non-zero: answer with `Ack { seq }`, so the sender learns the collector is alive.
        seq: u64,
    },
    /// Anti-entropy digest: one checksum per bucket of live entries.
    Digest {
        /// [`DIGEST_BUCKETS`] checksums.
        buckets: Vec<u64>,
        /// A healing exchange (the peer was dead here): facts that change either side are
        /// re-broadcast, so both former partitions learn them.
        heal: bool,
    },
    /// The sender just got its first link (its join snapshot may predate it): send the facts
    /// of the buckets that differ, if they are few.
    CatchUp {
        /// [`DIGEST_BUCKETS`] checksums.
        buckets: Vec<u64>,
    },
    /// Are you there?
    Ping {
        /// Echoed in the ack.
        seq: u64,
    },
    /// Answer to a ping (directly, or relayed for a ping-request).
    Ack {
        /// The sequence number of the ping answered.
        seq: u64,
    },
    /// Please ping `target` for me and relay its ack (SWIM ping-req).
    PingReq {
        /// The member to ping.
        target: P,
        /// The requester's probe sequence number, echoed in the relayed ack.
        seq: u64,
    },
}

/// Timers of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Work through the outbox: forward new facts to the collector, broadcast the rest.
    Flush,
    /// The suspicion of `id` at `incarnation` expires; stale if it was refuted since.
    Suspect {
        /// The suspected member.
        id: P,
        /// Its incarnation when the suspicion started.
        incarnation: u64,
    },
    /// Periodic: probe one member outside the active view.
    Probe,
    /// The probe with this sequence number got no ack in time.
    ProbeTimeout {
        /// The probe.
        seq: u64,
    },
    /// The probe confirming a lost link to `id` got no ack in time.
    ConfirmTimeout {
        /// The member whose link was lost.
        id: P,
        /// The probe.
        seq: u64,
    },
    /// The collector did not acknowledge forwarded facts in time.
    CollectorTimeout {
        /// The acknowledgement awaited.
        seq: u64,
    },
    /// Periodic: exchange a digest with a random neighbour.
    AntiEntropy,
    /// Periodic: ping a dead member or a seed to heal partitions.
    Heal,
    /// Periodic: remove old tombstones.
    Reap,
    /// Periodic: the beacon of the member with the smallest id.
    Beacon,
    /// No snapshot arrived yet: ask someone else.
    SyncRetry,
    /// Ask a neighbour for what the join snapshot missed.
    CatchUp,
}

/// Inputs of the directory.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A direct message from a peer.
    RecvMessage(P, Message<P>),
    /// A system broadcast delivered by plumtree.
    Update(P, Bytes),
    /// A timer fired.
    TimerExpired(Timer<P>),
    /// Joining through these contacts (remember them as seeds for healing).
    Join(Vec<P>),
    /// An active link opened to this peer (it is alive).
    NeighborUp(P),
    /// An active link to this peer closed (not a failure by itself).
    NeighborDown(P),
    /// The peer failed: suspect it at once.
    PeerFailed(P),
    /// The active link to this peer broke, or the failure detector gave up on it: a hint, not
    /// proof. The peer is probed first, directly and then through neighbours, and suspected
    /// only if neither answers (see "Failure handling").
    LinkLost(P),
    /// A message to this peer, outside the active view, could not be delivered: the transport
    /// could not open the link or lost it. Routine for most peers; but if facts forwarded to
    /// it as the collector wait for its acknowledgement, they go to the next collector at once
    /// while it is probed (see "Spreading facts cheaply"). A recent neighbour (its link closed
    /// without a failure, e.g. evicted for a newcomer) is probed like a lost link: its crash
    /// may have shown only here.
    Unreachable(P),
    /// Change this node's metadata.
    SetMetadata(Bytes),
    /// This node leaves.
    Leave,
}

/// Outputs of the directory.
#[derive(Debug)]
pub enum OutEvent<P: PeerId> {
    /// Send a direct message.
    SendMessage(P, Message<P>),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer<P>),
    /// Broadcast this system payload through plumtree.
    Broadcast(Bytes),
    /// Tell the user.
    Event(MemberEvent<P>),
    /// Ask the overlay to reach this peer (partition healing).
    Reach(P),
}

/// Counters of the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages or batches from peers that were malformed or over a cap, ignored.
    pub invalid_messages: u64,
    /// Facts ignored: impossible incarnation, metadata too long, directory full.
    pub invalid_facts: u64,
    /// Facts merged (any source), whether or not they changed anything.
    pub facts_merged: u64,
    /// Broadcast batches sent.
    pub batches_sent: u64,
    /// Facts sent in broadcast batches.
    pub facts_broadcast: u64,
    /// Snapshots served to joiners.
    pub snapshots_served: u64,
    /// Anti-entropy exchanges where the digests differed.
    pub exchanges: u64,
    /// Direct probes sent.
    pub probes_sent: u64,
    /// Probes that ended in a suspicion.
    pub probes_failed: u64,
    /// Times this node refuted a suspicion or death about itself.
    pub refutations: u64,
    /// Facts dropped because they did not fit in a batch even alone.
    pub facts_dropped: u64,
    /// Local `SetMetadata` refused for being over `max_metadata_len`.
    pub metadata_rejected: u64,
    /// Digests from outside the active view that differed while both sides were quiet: the
    /// overlay looked split, so the sender was reached and a healing exchange started.
    pub splits_suspected: u64,
    /// Small gaps filled for a neighbour that just got its first link.
    pub catch_ups_served: u64,
}

/// Largest incarnation a member can have: it shares a `u32` with the state.
pub const MAX_INCARNATION: u64 = (1 << 30) - 1;

/// A member entry packed in 4 bytes next to the id: incarnation (30 bits) and state (2 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry(u32);

impl Entry {
    fn new(incarnation: u32, state: MemberState) -> Self {
        debug_assert!(incarnation as u64 <= MAX_INCARNATION);
        Entry((incarnation << 2) | state.rank() as u32)
    }

    fn incarnation(self) -> u32 {
        self.0 >> 2
    }

    fn state(self) -> MemberState {
        match self.0 & 3 {
            0 => MemberState::Alive,
            1 => MemberState::Suspect,
            2 => MemberState::Dead,
            _ => MemberState::Left,
        }
    }
}

/// Where a fact came from: decides whether a change is re-broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Observed by this node (a joiner's request).
    FirstHand,
    /// A broadcast batch: everyone gets it anyway.
    Broadcast,
    /// A join snapshot: this node is catching up.
    Snapshot,
    /// Anti-entropy or healing exchange: others may lack it too.
    Exchange,
    /// Forwarded to this node as the collector (an [`Message::Announce`]): broadcast it.
    Announced,
}

/// A `Dead` or `Left` entry and when it became so, in seconds of the directory's clock.
#[derive(Debug, Clone, Copy)]
struct Tomb<P> {
    since: u32,
    id: P,
    entry: Entry,
}

/// A first-hand fact waiting in the outbox.
#[derive(Debug, Clone)]
struct Pending<P: PeerId> {
    fact: Fact<P>,
    /// Forwarded to the collector: broadcast it ourselves if still uncovered at this time.
    deadline: Option<Instant>,
    /// Announced to this node: broadcast it at the next flush, never forward it again.
    collect: bool,
}

#[derive(Debug, Clone, Copy)]
struct Probe<P> {
    target: P,
    seq: u64,
    indirect: bool,
    sent: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Relay<P> {
    seq: u64,
    requester: P,
    requester_seq: u64,
}

/// A small, fast, deterministic hasher (FxHash-style mixing with a murmur3 finaliser).
///
/// Deterministic so the simulator is reproducible and digests agree between nodes.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const FX_K: u64 = 0xf135_7aea_2e62_a9c5;

impl IdHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(26) ^ word).wrapping_mul(FX_K);
    }
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.add(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

fn id_hash<P: Hash>(id: &P) -> u64 {
    let mut h = IdHasher::default();
    id.hash(&mut h);
    h.finish()
}

fn bucket_of(id_hash: u64) -> usize {
    (id_hash >> 58) as usize
}

fn entry_hash(id_hash: u64, incarnation: u32, state: MemberState, has_metadata: bool) -> u64 {
    fmix64(
        id_hash
            ^ (incarnation as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ ((state.rank() as u64) + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9)
            ^ (has_metadata as u64).wrapping_mul(0x94d0_49bb_1331_11eb),
    )
}

/// A periodic timer's interval, never zero (a zero interval would spin the driver).
fn periodic(interval: Duration) -> Duration {
    interval.max(Duration::from_millis(1))
}

fn jitter<R: Rng>(rng: &mut R, base: Duration) -> Duration {
    // Uniform in [base/2, 3*base/2): spreads periodic work of many nodes.
    let nanos = base.as_nanos().min(u64::MAX as u128) as u64;
    if nanos < 2 {
        return base;
    }
    Duration::from_nanos(nanos / 2 + rng.random_range(0..nanos))
}

/// Directory state of one node.
#[derive(Debug)]
pub struct State<P: PeerId> {
    me: P,
    config: Config,
    entries: Map<P, Entry>,
    /// A random sample of members still to probe, refilled from `entries` when empty.
    probe_pool: Vec<P>,
    metadata: Map<P, Bytes>,
    /// When each `Dead`/`Left` entry became so here.
    /// `Dead`/`Left` entries in the order they became so (records go stale when the entry
    /// changes again): reaping pops the old end.
    tombstones: VecDeque<Tomb<P>>,
    /// Origin of the coarse clock used for tombstones.
    base: Option<Instant>,
    graveyard: Map<P, u32>,
    graveyard_order: VecDeque<P>,
    buckets: [u64; DIGEST_BUCKETS],
    alive: usize,
    /// First-hand facts not yet covered by a broadcast, by member.
    outbox: Map<P, Pending<P>>,
    /// Ids pushed since the outbox was last processed (may repeat or be stale).
    fresh: Vec<P>,
    /// Forwarded facts by fallback deadline, oldest first (entries may be stale).
    waiting: VecDeque<(Instant, P)>,
    /// When the earliest pending `Flush` timer fires.
    flush_at: Option<Instant>,
    /// The collector lost its `Alive` state: re-forward the outbox at the end of this input.
    reforward: bool,
    /// Cached collector: the smallest `Alive` id (valid while it stays `Alive`).
    collector: Option<P>,
    /// The collector and the sequence number of the acknowledgement awaited from it.
    collector_check: Option<(P, u64)>,
    /// Collectors that could not be reached while facts waited on them: passed over while they
    /// are probed, until they answer or stop being `Alive` (at most [`MAX_UNREACHABLE`]).
    unreachable: Vec<P>,
    /// Changes of the live view so far, and how many of them `last_change` accounts for.
    changes: u64,
    changes_seen: u64,
    /// When the live view last changed.
    last_change: Option<Instant>,
    /// Anti-entropy rounds skipped in a row.
    ae_skipped: u32,
    /// Anti-entropy rounds run: every other one goes outside the active view.
    ae_rounds: u64,
    /// Start of the current exchange-limit window and the exchanges answered in it.
    exchange_window: Option<(Instant, usize)>,
    neighbours: Vec<P>,
    /// The last neighbours whose link closed without a failure (an eviction, a shuffle), at
    /// most [`MAX_FORMER_NEIGHBOURS`]: a failed send to one of them is probed like a lost
    /// link (see [`InEvent::Unreachable`]).
    former_neighbours: VecDeque<P>,
    seeds: Vec<P>,
    synced: bool,
    sync_requested: bool,
    /// A snapshot was asked of an active neighbour (not only of a seed).
    sync_asked_neighbour: bool,
    /// A catch-up was scheduled since this node last had no link.
    catch_up_armed: bool,
    suspecting: Map<P, u32>,
    /// Members whose link was lost, being probed before they are suspected.
    confirming: Map<P, u64>,
    probe: Option<Probe<P>>,
    /// A heal ping in flight: target, sequence number, and whether an answer forces a link.
    heal_probe: Option<(P, u64, bool)>,
    /// The beacon's source and when it was last heard (or became the source).
    beacon: Option<(P, Instant)>,
    /// Cached smallest `Alive` id (`None`: to compute), the beacon's source.
    smallest: Option<P>,
    next_seq: u64,
    relays: VecDeque<Relay<P>>,
    left: bool,
    stats: Stats,
}

impl<P: PeerId> State<P> {
    /// A new directory for node `me`, which starts `Alive` at incarnation 0 with `metadata`.
    pub fn new(me: P, config: Config, metadata: Bytes) -> Self {
        let mut state = Self {
            me,
            config,
            entries: Map::default(),
            probe_pool: Vec::new(),
            metadata: Map::default(),
            tombstones: VecDeque::new(),
            base: None,
            graveyard: Map::default(),
            graveyard_order: VecDeque::new(),
            buckets: [0; DIGEST_BUCKETS],
            alive: 0,
            outbox: Map::default(),
            fresh: Vec::new(),
            waiting: VecDeque::new(),
            flush_at: None,
            reforward: false,
            collector: None,
            collector_check: None,
            unreachable: Vec::new(),
            changes: 0,
            changes_seen: 0,
            last_change: None,
            ae_skipped: 0,
            ae_rounds: 0,
            exchange_window: None,
            neighbours: Vec::new(),
            former_neighbours: VecDeque::new(),
            seeds: Vec::new(),
            synced: false,
            sync_requested: false,
            sync_asked_neighbour: false,
            catch_up_armed: false,
            suspecting: Map::default(),
            confirming: Map::default(),
            probe: None,
            heal_probe: None,
            beacon: None,
            smallest: None,
            next_seq: 0,
            relays: VecDeque::new(),
            left: false,
            stats: Stats::default(),
        };
        let entry = Entry::new(0, MemberState::Alive);
        state.entries.insert(me, entry);
        if !metadata.is_empty() {
            state.metadata.insert(me, metadata);
        }
        state.recount(&me, (0, false));
        state
    }

    /// Arm the periodic timers (probes, anti-entropy, healing, reaping). Called once.
    pub fn start<R: Rng>(&mut self, _now: Instant, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        if !self.config.enabled {
            return;
        }
        let c = &self.config;
        out.push_back(OutEvent::ScheduleTimer(
            jitter(rng, c.probe_interval),
            Timer::Probe,
        ));
        out.push_back(OutEvent::ScheduleTimer(
            jitter(rng, c.anti_entropy_interval),
            Timer::AntiEntropy,
        ));
        out.push_back(OutEvent::ScheduleTimer(
            jitter(rng, c.heal_interval),
            Timer::Heal,
        ));
        out.push_back(OutEvent::ScheduleTimer(self.reap_interval(), Timer::Reap));
        if let Some(interval) = c.beacon_interval {
            out.push_back(OutEvent::ScheduleTimer(
                jitter(rng, periodic(interval)),
                Timer::Beacon,
            ));
        }
    }

    /// Handle one input.
    pub fn handle<R: Rng>(
        &mut self,
        event: InEvent<P>,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if !self.config.enabled {
            return;
        }
        match event {
            InEvent::RecvMessage(from, message) => self.on_message(from, message, now, rng, out),
            InEvent::Update(origin, payload) => {
                self.on_update(&payload, now, out);
                if self.smallest_alive() == origin {
                    self.beacon = Some((origin, now));
                }
            }
            InEvent::TimerExpired(timer) => self.on_timer(timer, now, rng, out),
            InEvent::Join(contacts) => self.on_join(contacts, now, rng, out),
            InEvent::NeighborUp(peer) => self.on_neighbor_up(peer, now, out),
            InEvent::NeighborDown(peer) => {
                self.neighbours.retain(|p| *p != peer);
                self.former_neighbours.retain(|p| *p != peer);
                if self.former_neighbours.len() >= MAX_FORMER_NEIGHBOURS {
                    self.former_neighbours.pop_front();
                }
                self.former_neighbours.push_back(peer);
                // Isolated again: broadcasts will miss it until its next link.
                self.catch_up_armed &= !self.neighbours.is_empty();
            }
            InEvent::PeerFailed(peer) => {
                self.neighbours.retain(|p| *p != peer);
                self.catch_up_armed &= !self.neighbours.is_empty();
                self.failure_observed(peer, now, out);
            }
            InEvent::LinkLost(peer) => {
                self.neighbours.retain(|p| *p != peer);
                self.catch_up_armed &= !self.neighbours.is_empty();
                self.pass_over_collector(peer);
                self.confirm(peer, now, rng, out);
            }
            InEvent::Unreachable(peer) => {
                // A neighbour dropped from the view (evicted for a newcomer) just before its
                // crash showed: its failed send is the only hint this node will get, so probe
                // it as a lost link (traced: 10k nodes, half crashed, a survivor evicted its
                // crashed neighbour 64 ms before the link failed; no one else watched it and
                // the random probe found it 25 s later).
                let former = self.former_neighbours.iter().position(|p| *p == peer);
                if let Some(i) = former {
                    self.former_neighbours.remove(i);
                }
                if self.pass_over_collector(peer) | former.is_some() {
                    self.confirm(peer, now, rng, out);
                }
            }
            InEvent::SetMetadata(metadata) => self.on_set_metadata(metadata, now, out),
            InEvent::Leave => self.on_leave(now, out),
        }
        self.after_input(now, out);
    }

    // ----- getters -----

    /// All known members, this node included, tombstones included.
    pub fn members(&self) -> Vec<Member<P>> {
        self.entries
            .iter()
            .map(|(id, e)| self.member(*id, *e))
            .collect()
    }

    /// One member's state and incarnation.
    pub fn get(&self, id: &P) -> Option<(MemberState, u64)> {
        self.entries
            .get(id)
            .map(|e| (e.state(), e.incarnation() as u64))
    }

    /// One member's metadata (empty if it published none or it is unknown).
    pub fn metadata(&self, id: &P) -> Bytes {
        self.metadata.get(id).cloned().unwrap_or_default()
    }

    /// Number of entries, tombstones and this node included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the directory is empty (it never is: it holds this node).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of `Alive` entries, this node included.
    pub fn alive_count(&self) -> usize {
        self.alive
    }

    /// Order-independent checksum of the `Alive` and `Suspect` entries (id, incarnation, state,
    /// whether metadata is known). Two nodes with the same live view have the same checksum.
    pub fn checksum(&self) -> u64 {
        self.buckets.iter().fold(0u64, |a, b| a.wrapping_add(*b))
    }

    /// This node's current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.entries
            .get(&self.me)
            .map_or(0, |e| e.incarnation() as u64)
    }

    /// Whether this node received a snapshot (or never needed one).
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The active neighbours as this layer knows them.
    pub fn neighbours(&self) -> &[P] {
        &self.neighbours
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The digest buckets and alive count recomputed from scratch (tests check the running ones).
    #[cfg(test)]
    fn recomputed(&self) -> ([u64; DIGEST_BUCKETS], usize) {
        let mut buckets = [0u64; DIGEST_BUCKETS];
        let mut alive = 0;
        for id in self.entries.keys() {
            let (h, a) = self.contribution(id);
            let b = bucket_of(id_hash(id));
            buckets[b] = buckets[b].wrapping_add(h);
            alive += a as usize;
        }
        (buckets, alive)
    }

    fn member(&self, id: P, e: Entry) -> Member<P> {
        Member {
            id,
            state: e.state(),
            incarnation: e.incarnation() as u64,
            metadata: self.metadata.get(&id).cloned().unwrap_or_default(),
        }
    }

    fn reap_interval(&self) -> Duration {
        (self.config.reap_after / 2).max(Duration::from_secs(1))
    }

    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    // ----- bookkeeping -----

    /// What one entry adds to its digest bucket, and whether it counts as alive.
    fn contribution(&self, id: &P) -> (u64, bool) {
        self.contribution_hashed(id, id_hash(id))
    }

    /// [`State::contribution`] with the id's hash already computed.
    fn contribution_hashed(&self, id: &P, id_hash: u64) -> (u64, bool) {
        match self.entries.get(id) {
            Some(e) if e.state().is_live() => {
                let has_metadata = !self.metadata.is_empty() && self.metadata.contains_key(id);
                let h = entry_hash(id_hash, e.incarnation(), e.state(), has_metadata);
                (h, e.state() == MemberState::Alive)
            }
            _ => (0, false),
        }
    }

    /// Keep the bucket checksums and the alive count in step with a change of `id`'s entry or
    /// metadata; `before` is its [`State::contribution`] before the change.
    fn recount(&mut self, id: &P, before: (u64, bool)) {
        let h = id_hash(id);
        let after = self.contribution_hashed(id, h);
        if before == after {
            return;
        }
        self.changes += 1;
        // The beacon's source is exactly the smallest alive id, so that every node agrees on it.
        if !before.1 && after.1 && self.smallest.is_some_and(|c| *id < c) {
            self.smallest = Some(*id);
        }
        if before.1 && !after.1 && self.smallest == Some(*id) {
            self.smallest = None;
        }
        if before.1 && !after.1 && self.collector == Some(*id) {
            self.collector = None;
            self.reforward = true;
        }
        if before.1 && !after.1 {
            self.unreachable.retain(|p| p != id);
        }
        let b = bucket_of(h);
        self.buckets[b] = self.buckets[b].wrapping_sub(before.0).wrapping_add(after.0);
        self.alive = self.alive + after.1 as usize - before.1 as usize;
    }

    fn emit(
        &mut self,
        out: &mut VecDeque<OutEvent<P>>,
        id: P,
        old: Option<MemberState>,
        metadata_changed: bool,
    ) {
        if !self.config.emit_events || id == self.me {
            return;
        }
        let Some(e) = self.entries.get(&id).copied() else {
            return;
        };
        let member = self.member(id, e);
        let event = match (old, e.state()) {
            (Some(MemberState::Alive), MemberState::Alive) if metadata_changed => {
                MemberEvent::Updated(member)
            }
            (Some(MemberState::Alive), MemberState::Alive) => return,
            (_, MemberState::Alive) => MemberEvent::Up(member),
            (Some(MemberState::Suspect), MemberState::Suspect) => return,
            (_, MemberState::Suspect) => MemberEvent::Suspect(member),
            (Some(MemberState::Dead), MemberState::Dead) | (None, MemberState::Dead) => return,
            (_, MemberState::Dead) => MemberEvent::Down(member),
            (Some(MemberState::Left), MemberState::Left) | (None, MemberState::Left) => return,
            (_, MemberState::Left) => MemberEvent::Left(member),
        };
        out.push_back(OutEvent::Event(event));
    }

    /// The fact this node would tell about `id`.
    fn fact_of(&self, id: P, e: Entry) -> Fact<P> {
        let metadata = if id == self.me {
            Some(self.metadata.get(&id).cloned().unwrap_or_default())
        } else {
            self.metadata.get(&id).cloned()
        };
        Fact {
            id,
            incarnation: e.incarnation() as u64,
            state: e.state(),
            metadata,
        }
    }

    fn own_fact(&self) -> Fact<P> {
        let e = self.entries[&self.me];
        self.fact_of(self.me, e)
    }

    /// Merge one fact. Returns whether it changed this directory.
    fn merge(
        &mut self,
        fact: Fact<P>,
        source: Source,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) -> bool {
        self.stats.facts_merged += 1;
        if fact.id == self.me {
            self.fact_about_me(&fact, now, out);
            return false;
        }
        if fact.incarnation > MAX_INCARNATION {
            self.stats.invalid_facts += 1;
            return false;
        }
        let incarnation = fact.incarnation as u32;
        if fact
            .metadata
            .as_ref()
            .is_some_and(|m| m.len() > self.config.max_metadata_len)
        {
            self.stats.invalid_facts += 1;
            return false;
        }
        let id = fact.id;
        if let Some(&buried) = self.graveyard.get(&id) {
            if incarnation <= buried {
                return false;
            }
            self.graveyard.remove(&id);
        }
        let new = Entry::new(incarnation, fact.state);
        let changed = match self.entries.get(&id).copied() {
            None => {
                if self.entries.len() >= self.config.max_members {
                    self.stats.invalid_facts += 1;
                    return false;
                }
                self.entries.insert(id, new);
                if let Some(m) = fact.metadata.as_ref().filter(|m| !m.is_empty()) {
                    self.metadata.insert(id, m.clone());
                }
                self.recount(&id, (0, false));
                if !new.state().is_live() {
                    self.entomb(id, new, now);
                }
                self.emit(out, id, None, false);
                true
            }
            Some(old) => {
                let before = self.contribution(&id);
                // Metadata belongs to an incarnation: a newer incarnation replaces it (`None`
                // clears it); at the same incarnation any fact carrying it fills it in. With
                // the state order this keeps merging commutative and idempotent.
                let metadata_changed = if incarnation > old.incarnation()
                    || (incarnation == old.incarnation() && !self.metadata.contains_key(&id))
                {
                    self.replace_metadata(id, fact.metadata.as_ref())
                } else {
                    false
                };
                let newer =
                    (incarnation, fact.state.rank()) > (old.incarnation(), old.state().rank());
                if newer {
                    self.entries.insert(id, new);
                    if !new.state().is_live() {
                        self.entomb(id, new, now);
                    }
                    if new.state() != MemberState::Suspect {
                        self.suspecting.remove(&id);
                    }
                    // A waiting first-hand fact older than what we now know is useless.
                    if self.outbox.get(&id).is_some_and(|p| {
                        (p.fact.incarnation, p.fact.state.rank())
                            < (incarnation as u64, fact.state.rank())
                    }) {
                        self.outbox.remove(&id);
                    }
                }
                if newer || metadata_changed {
                    self.recount(&id, before);
                    self.emit(out, id, Some(old.state()), metadata_changed);
                }
                newer || metadata_changed
            }
        };
        if source == Source::Broadcast {
            self.drop_covered_outbox(&fact, incarnation);
        }
        let relay = match source {
            Source::FirstHand | Source::Exchange => changed,
            // The forwarder waits for a broadcast of it, and this node may know it only from
            // a snapshot or an exchange, which nobody else heard: relay it even if it is no
            // news here. Dropping such facts made a join storm wait for the forwarders' grace
            // period (1 s on a LAN). A newer fact held here came from somewhere else, and
            // covers the forwarder's once it is broadcast.
            Source::Announced => {
                changed
                    || self.entries.get(&id).is_some_and(|e| {
                        (e.incarnation() as u64, e.state().rank())
                            == (fact.incarnation, fact.state.rank())
                    })
            }
            Source::Broadcast | Source::Snapshot => false,
        };
        if relay {
            let f = self.fact_of(id, self.entries[&id]);
            self.push_outbox_as(f, source == Source::Announced, now, out);
        }
        changed
    }

    /// Replace `id`'s metadata by a fact's (`None` or empty clears it). Returns whether it changed.
    fn replace_metadata(&mut self, id: P, metadata: Option<&Bytes>) -> bool {
        match metadata.filter(|m| !m.is_empty()) {
            None => self.metadata.remove(&id).is_some(),
            Some(m) => match self.metadata.get(&id) {
                Some(c) if c == m => false,
                _ => {
                    self.metadata.insert(id, m.clone());
                    true
                }
            },
        }
    }

    /// Someone already broadcast a fact at least as strong as the one waiting in our outbox.
    fn drop_covered_outbox(&mut self, fact: &Fact<P>, incarnation: u32) {
        if self.outbox.is_empty() {
            return;
        }
        let covered = self.outbox.get(&fact.id).is_some_and(|p| {
            let f = &p.fact;
            (f.incarnation, f.state.rank()) <= (incarnation as u64, fact.state.rank())
                && (f.metadata.as_ref().is_none_or(|m| m.is_empty())
                    || fact.metadata.is_some()
                    || incarnation as u64 > f.incarnation)
        });
        if covered {
            self.outbox.remove(&fact.id);
        }
    }

    /// A fact about this node arrived: refute it if it says less than the truth.
    fn fact_about_me(&mut self, fact: &Fact<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if self.left {
            return;
        }
        let mine = self.incarnation();
        let contradicts = fact.incarnation > mine
            || (fact.incarnation == mine && fact.state != MemberState::Alive);
        if !contradicts {
            return;
        }
        let Some(next) = fact
            .incarnation
            .checked_add(1)
            .filter(|n| *n <= MAX_INCARNATION)
        else {
            self.stats.invalid_facts += 1;
            return;
        };
        self.stats.refutations += 1;
        self.set_own(next as u32, MemberState::Alive);
        let f = self.own_fact();
        self.push_outbox(f, now, out);
        self.flush(out);
    }

    fn set_own(&mut self, incarnation: u32, state: MemberState) {
        let me = self.me;
        let before = self.contribution(&me);
        self.entries.insert(me, Entry::new(incarnation, state));
        self.recount(&me, before);
    }

    // ----- outbox -----

    /// The collector: the smallest id this node believes `Alive` (itself, possibly).
    ///
    /// Every node sends its first-hand facts there, so a burst of news (a join storm, a mass
    /// crash) goes out as a few large broadcasts from one node instead of one small broadcast
    /// from each node that saw something. Nodes with the same view pick the same collector; if
    /// it fails, sends to it fail, it becomes suspect, and the next smallest takes over.
    ///
    /// A collector that could not be reached while facts waited on it is passed over until it
    /// answers a probe ([`InEvent::Unreachable`]): when the smallest ids crashed together, the
    /// facts go down the list a dial each, not a probe round and a suspicion each.
    fn collector(&mut self) -> P {
        if let Some(c) = self.collector
            && self
                .entries
                .get(&c)
                .is_some_and(|e| e.state() == MemberState::Alive)
            && !self.unreachable.contains(&c)
        {
            return c;
        }
        let c = if self.unreachable.is_empty() {
            self.min_alive_id()
        } else {
            self.entries
                .iter()
                .filter(|(id, e)| e.state() == MemberState::Alive && !self.unreachable.contains(id))
                .map(|(id, _)| *id)
                .min()
                .unwrap_or(self.me)
        };
        self.collector = Some(c);
        c
    }

    /// `peer` could not be reached: if facts forwarded to it as the collector wait for its
    /// acknowledgement, pass it over, so they go to the next collector at the end of this
    /// input. Returns whether it was passed over (the caller probes it: if it is alive it
    /// answers and is collector again, otherwise it is suspected).
    fn pass_over_collector(&mut self, peer: P) -> bool {
        let waiting = self.collector_check.is_some_and(|(c, _)| c == peer);
        if !waiting || peer == self.me || self.unreachable.len() >= MAX_UNREACHABLE {
            return false;
        }
        tracing::debug!(me = ?self.me, member = ?peer, "the collector is unreachable: the waiting facts go to the next one while it is probed");
        self.unreachable.push(peer);
        self.collector_check = None;
        if self.collector == Some(peer) {
            self.collector = None;
        }
        self.reforward = true;
        true
    }

    /// The smallest id held `Alive` (this node's own when it knows no other).
    fn min_alive_id(&self) -> P {
        self.entries
            .iter()
            .filter(|(_, e)| e.state() == MemberState::Alive)
            .map(|(id, _)| *id)
            .min()
            .unwrap_or(self.me)
    }

    /// The smallest `Alive` id, this node included: the source of the beacon. Unlike the
    /// collector (kept while it lives, so forwarded facts do not chase every new small id), it
    /// follows every change, so all nodes that agree on the members agree on it.
    fn smallest_alive(&mut self) -> P {
        if let Some(c) = self.smallest {
            return c;
        }
        let c = self.min_alive_id();
        self.smallest = Some(c);
        c
    }

    fn push_outbox(&mut self, fact: Fact<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        self.push_outbox_as(fact, false, now, out);
    }

    /// `collect`: the fact was announced to this node, which broadcasts it itself rather than
    /// forward it to the collector it believes in. Views differ during a join storm, and
    /// announcements went along chains of three collectors, a forward delay and a turn each.
    fn push_outbox_as(
        &mut self,
        fact: Fact<P>,
        collect: bool,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let id = fact.id;
        let collect = collect || self.outbox.get(&id).is_some_and(|p| p.collect);
        self.outbox.insert(
            id,
            Pending {
                fact,
                deadline: None,
                collect,
            },
        );
        self.fresh.push(id);
        if self.fresh.len() >= self.config.max_batch_entries {
            self.process_outbox(now, out);
        } else {
            let delay = if collect || self.collector() == self.me {
                self.config.flush_interval
            } else {
                self.config.forward_delay
            };
            self.flush_at_latest(now + delay, now, out);
        }
    }

    /// Make sure a `Flush` timer fires no later than `at`.
    fn flush_at_latest(&mut self, at: Instant, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if self.flush_at.is_some_and(|t| t <= at) {
            return;
        }
        self.flush_at = Some(at);
        out.push_back(OutEvent::ScheduleTimer(
            at.saturating_duration_since(now),
            Timer::Flush,
        ));
    }

    /// Forward new facts to the collector, or broadcast them if this node is the collector;
    /// broadcast forwarded facts nobody broadcast within the grace period. Costs the number of
    /// new and expired facts, not the size of the outbox.
    fn process_outbox(&mut self, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let mut broadcast = Vec::new();
        while let Some(&(deadline, id)) = self.waiting.front() {
            if deadline > now {
                break;
            }
            self.waiting.pop_front();
            if self
                .outbox
                .get(&id)
                .is_some_and(|p| p.deadline == Some(deadline))
            {
                broadcast.push(self.outbox.remove(&id).expect("checked").fact);
            }
        }
        let mut forward = Vec::new();
        if !self.fresh.is_empty() {
            let collector = self.collector();
            let deadline = now + self.config.forward_grace;
            for id in std::mem::take(&mut self.fresh) {
                let Some(p) = self.outbox.get_mut(&id) else {
                    continue;
                };
                if p.deadline.is_some() {
                    continue; // a repeated id, already handled
                }
                if collector == self.me || p.collect {
                    broadcast.push(self.outbox.remove(&id).expect("checked").fact);
                } else {
                    p.deadline = Some(deadline);
                    forward.push(p.fact.clone());
                    self.waiting.push_back((deadline, id));
                }
            }
            if !forward.is_empty() {
                // One ack per collector at a time tells whether it still listens: a collector
                // that crashed is suspected after the probe timeouts and the facts move on,
                // without waiting for the transport or for someone to announce its death.
                let seq = match self.collector_check {
                    Some((c, seq)) if c == collector => seq,
                    _ => {
                        let seq = self.next_seq();
                        self.collector_check = Some((collector, seq));
                        out.push_back(OutEvent::ScheduleTimer(
                            self.config.probe_timeout + self.config.indirect_probe_timeout,
                            Timer::CollectorTimeout { seq },
                        ));
                        seq
                    }
                };
                for chunk in forward.chunks(self.config.max_batch_entries.max(1)) {
                    out.push_back(OutEvent::SendMessage(
                        collector,
                        Message::Announce {
                            facts: chunk.to_vec(),
                            seq,
                        },
                    ));
                }
            }
        }
        for chunk in broadcast.chunks(self.config.max_batch_entries.max(1)) {
            self.send_batch(chunk, out);
        }
        if let Some(&(deadline, _)) = self.waiting.front() {
            self.flush_at_latest(deadline, now, out);
        }
    }

    /// The collector is no longer alive here: forward the waiting facts again, to the next one.
    fn after_input(&mut self, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if self.changes != self.changes_seen {
            self.changes_seen = self.changes;
            self.last_change = Some(now);
        }
        if std::mem::take(&mut self.reforward) && !self.outbox.is_empty() {
            self.waiting.clear();
            self.fresh.clear();
            for (id, p) in self.outbox.iter_mut() {
                p.deadline = None;
                self.fresh.push(*id);
            }
            let at = now + self.config.forward_delay;
            self.flush_at_latest(at, now, out);
        }
    }

    /// Broadcast everything in the outbox now (refutations, leaving).
    fn flush(&mut self, out: &mut VecDeque<OutEvent<P>>) {
        self.fresh.clear();
        self.waiting.clear();
        let facts: Vec<Fact<P>> = self.outbox.drain().map(|(_, p)| p.fact).collect();
        for chunk in facts.chunks(self.config.max_batch_entries.max(1)) {
            self.send_batch(chunk, out);
        }
    }

    fn send_batch(&mut self, facts: &[Fact<P>], out: &mut VecDeque<OutEvent<P>>) {
        let bytes = encode_batch(facts);
        if bytes.len() <= self.config.max_batch_bytes {
            self.stats.batches_sent += 1;
            self.stats.facts_broadcast += facts.len() as u64;
            out.push_back(OutEvent::Broadcast(bytes));
        } else if facts.len() > 1 {
            let (a, b) = facts.split_at(facts.len() / 2);
            self.send_batch(a, out);
            self.send_batch(b, out);
        } else {
            self.stats.facts_dropped += 1;
        }
    }

    // ----- inputs -----

    fn on_update(&mut self, payload: &[u8], now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let Some(facts) = decode_batch::<P>(payload, self.config.max_batch_entries) else {
            self.stats.invalid_messages += 1;
            return;
        };
        for fact in facts {
            self.merge(fact, Source::Broadcast, now, out);
        }
    }

    fn on_join<R: Rng>(
        &mut self,
        contacts: Vec<P>,
        _now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        for c in contacts {
            if c != self.me && !self.seeds.contains(&c) && self.seeds.len() < MAX_SEEDS {
                self.seeds.push(c);
            }
        }
        if self.seeds.is_empty() {
            // The first node of a cluster: nothing to catch up with.
            self.synced = true;
            return;
        }
        if !self.synced {
            let contact = self.seeds[rng.random_range(0..self.seeds.len())];
            self.request_sync(contact, out);
        }
    }

    fn request_sync(&mut self, to: P, out: &mut VecDeque<OutEvent<P>>) {
        let first = !self.sync_requested;
        self.sync_requested = true;
        let entry = self.own_fact();
        out.push_back(OutEvent::SendMessage(to, Message::SyncRequest { entry }));
        if first {
            out.push_back(OutEvent::ScheduleTimer(
                self.config.sync_timeout,
                Timer::SyncRetry,
            ));
        }
    }

    fn on_neighbor_up(&mut self, peer: P, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if peer == self.me {
            return;
        }
        self.former_neighbours.retain(|p| *p != peer);
        if !self.neighbours.contains(&peer) {
            if self.neighbours.len() >= MAX_NEIGHBOURS {
                // The overlay's active view is far smaller; a missed `NeighborDown` must not
                // make this grow.
                self.neighbours.remove(0);
            }
            self.neighbours.push(peer);
        }
        if !self.entries.contains_key(&peer) {
            // It is alive: we hold a link to it. Its own entry (with metadata) is announced by
            // the node it asked for a snapshot, so this is not broadcast.
            let fact = Fact {
                id: peer,
                incarnation: 0,
                state: MemberState::Alive,
                metadata: None,
            };
            self.merge(fact, Source::Snapshot, now, out);
        }
        // The request to a seed may be lost: a seed flooded by a whole cluster joining at once
        // turns dials away. Ask the first neighbour too, rather than wait `sync_timeout`: it
        // also announces this node, so the others learn of it without that wait.
        if !self.synced && !self.sync_asked_neighbour {
            self.sync_asked_neighbour = true;
            self.request_sync(peer, out);
        }
        // A joiner's snapshot is taken before it has a link, so the broadcasts sent in between
        // never reach it; plumtree's catch-up fills that in only after a while. Once the news
        // in flight had time to land, ask a neighbour for what is still missing.
        if !self.seeds.is_empty() && !self.catch_up_armed && !self.left {
            self.catch_up_armed = true;
            out.push_back(OutEvent::ScheduleTimer(
                self.config.flush_interval * 2,
                Timer::CatchUp,
            ));
        }
    }

    fn on_set_metadata(&mut self, metadata: Bytes, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if self.left {
            return;
        }
        if metadata.len() > self.config.max_metadata_len {
            self.stats.metadata_rejected += 1;
            return;
        }
        let inc = self.incarnation();
        if inc >= MAX_INCARNATION {
            self.stats.metadata_rejected += 1;
            return;
        }
        let me = self.me;
        let before = self.contribution(&me);
        if metadata.is_empty() {
            self.metadata.remove(&me);
        } else {
            self.metadata.insert(me, metadata);
        }
        self.entries
            .insert(me, Entry::new(inc as u32 + 1, MemberState::Alive));
        self.recount(&me, before);
        let f = self.own_fact();
        self.push_outbox(f, now, out);
    }

    fn on_leave(&mut self, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if self.left {
            return;
        }
        let inc = self.incarnation() as u32;
        self.set_own(inc, MemberState::Left);
        self.left = true;
        let f = self.own_fact();
        self.push_outbox(f, now, out);
        self.flush(out);
    }

    /// This node saw `peer` fail (link failure, detector, or a failed probe).
    fn failure_observed(&mut self, peer: P, _now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if peer == self.me || self.left {
            return;
        }
        let Some(e) = self.entries.get(&peer).copied() else {
            return;
        };
        match e.state() {
            MemberState::Alive => {
                let new = Entry::new(e.incarnation(), MemberState::Suspect);
                let before = self.contribution(&peer);
                self.entries.insert(peer, new);
                self.recount(&peer, before);
                self.emit(out, peer, Some(e.state()), false);
                let f = self.fact_of(peer, new);
                // Tell the member itself at once: if it is alive it refutes in one round trip,
                // long before the suspicion timer fires. If it is dead the send fails quietly.
                out.push_back(OutEvent::SendMessage(
                    peer,
                    Message::Announce {
                        facts: vec![f.clone()],
                        seq: 0,
                    },
                ));
                self.push_outbox(f, _now, out);
                self.arm_suspicion(peer, e.incarnation(), out);
            }
            MemberState::Suspect => self.arm_suspicion(peer, e.incarnation(), out),
            MemberState::Dead | MemberState::Left => {}
        }
    }

    /// A lost link is a hint: a peer restarting a connection, evicting us from its view or
    /// starved of CPU for a moment is alive. Ping it (over a fresh connection) and ask
    /// neighbours to, at once; suspect it only if no ack comes back in time. SWIM suspects only
    /// after a failed probe round, for this reason.
    fn confirm<R: Rng>(
        &mut self,
        peer: P,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if peer == self.me || self.left || self.confirming.contains_key(&peer) {
            return;
        }
        match self.entries.get(&peer).map(|e| e.state()) {
            Some(MemberState::Alive) => {}
            // Already suspected (by us or someone else): nothing to confirm, keep the timer.
            Some(MemberState::Suspect) => return self.failure_observed(peer, now, out),
            _ => return,
        }
        if self.confirming.len() >= MAX_CONFIRMS {
            return self.failure_observed(peer, now, out);
        }
        let seq = self.next_seq();
        self.confirming.insert(peer, seq);
        self.stats.probes_sent += 1;
        out.push_back(OutEvent::SendMessage(peer, Message::Ping { seq }));
        let helpers = self.helpers(peer, rng);
        let wait = if helpers.is_empty() {
            self.config.probe_timeout
        } else {
            self.config
                .probe_timeout
                .max(self.config.indirect_probe_timeout)
        };
        for h in helpers {
            out.push_back(OutEvent::SendMessage(
                h,
                Message::PingReq { target: peer, seq },
            ));
        }
        out.push_back(OutEvent::ScheduleTimer(
            wait,
            Timer::ConfirmTimeout { id: peer, seq },
        ));
    }

    fn on_confirm_timeout(
        &mut self,
        id: P,
        seq: u64,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if self.confirming.get(&id) != Some(&seq) {
            return; // answered (or reaped) already
        }
        self.confirming.remove(&id);
        self.unreachable.retain(|p| *p != id);
        self.stats.probes_failed += 1;
        tracing::debug!(me = ?self.me, member = ?id, "suspected: a probe after its link was lost went unanswered");
        self.failure_observed(id, now, out);
    }

    /// Up to [`Config::indirect_probes`] random neighbours other than `target`.
    fn helpers<R: Rng>(&self, target: P, rng: &mut R) -> Vec<P> {
        let candidates: Vec<P> = self
            .neighbours
            .iter()
            .copied()
            .filter(|p| *p != target)
            .collect();
        let k = self.config.indirect_probes.min(candidates.len());
        rand::seq::index::sample(rng, candidates.len(), k)
            .into_iter()
            .map(|i| candidates[i])
            .collect()
    }

    fn arm_suspicion(&mut self, peer: P, incarnation: u32, out: &mut VecDeque<OutEvent<P>>) {
        if self.suspecting.get(&peer) == Some(&incarnation) {
            return;
        }
        self.suspecting.insert(peer, incarnation);
        out.push_back(OutEvent::ScheduleTimer(
            self.config.suspicion_timeout,
            Timer::Suspect {
                id: peer,
                incarnation: incarnation as u64,
            },
        ));
    }

    fn on_message<R: Rng>(
        &mut self,
        from: P,
        message: Message<P>,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        match message {
            Message::SyncRequest { entry } => {
                if entry.id != from {
                    self.stats.invalid_messages += 1;
                    return;
                }
                if self.left {
                    return;
                }
                self.merge(entry, Source::FirstHand, now, out);
                self.stats.snapshots_served += 1;
                self.send_state(from, u64::MAX, false, None, out);
            }
            Message::Sync {
                facts,
                announce,
                last,
                reply,
            } => {
                if facts.len() > self.config.max_batch_entries {
                    self.stats.invalid_messages += 1;
                    return;
                }
                let was_synced = std::mem::replace(&mut self.synced, true);
                let source = if announce {
                    Source::Exchange
                } else {
                    Source::Snapshot
                };
                let mut learned = Vec::new();
                for fact in facts {
                    let id = fact.id;
                    if self.merge(fact, source, now, out) && learned.len() <= RELAY_LEARNED {
                        learned.push(id);
                    }
                }
                // A synced node that learns a few facts from anti-entropy probably missed a
                // broadcast others missed too (lost on the way): pass them on. One that learns
                // many is catching up on its own and keeps them (re-announcing would cost a
                // broadcast of everything it lacked).
                if !announce && was_synced && !learned.is_empty() && learned.len() <= RELAY_LEARNED
                {
                    for id in learned {
                        if let Some(e) = self.entries.get(&id).copied() {
                            let f = self.fact_of(id, e);
                            self.push_outbox(f, now, out);
                        }
                    }
                }
                if let (true, Some(mask)) = (last, reply)
                    && mask != 0
                    && !self.left
                {
                    self.send_state(from, mask, announce, None, out);
                }
            }
            Message::Announce { facts, seq } => {
                if facts.len() > self.config.max_batch_entries {
                    self.stats.invalid_messages += 1;
                    return;
                }
                if self.left {
                    return;
                }
                if seq != 0 {
                    out.push_back(OutEvent::SendMessage(from, Message::Ack { seq }));
                }
                let refutations = self.stats.refutations;
                for fact in facts {
                    // A member's word about itself (a refutation sent back to its suspecter) was
                    // broadcast by the member: merge it without announcing it again.
                    let source = if fact.id == from {
                        Source::Snapshot
                    } else {
                        Source::Announced
                    };
                    self.merge(fact, source, now, out);
                }
                if self.stats.refutations > refutations {
                    // Someone suspects us: answer it directly, the broadcast may take longer.
                    let facts = vec![self.own_fact()];
                    out.push_back(OutEvent::SendMessage(
                        from,
                        Message::Announce { facts, seq: 0 },
                    ));
                }
            }
            Message::Digest { buckets, heal } => {
                if buckets.len() != DIGEST_BUCKETS {
                    self.stats.invalid_messages += 1;
                    return;
                }
                if self.left || (!heal && self.busy(now)) {
                    return;
                }
                let mask = self.differing_buckets(&buckets);
                if mask != 0 && self.exchange_allowed(now) {
                    self.stats.exchanges += 1;
                    // From outside the active view, while both sides are quiet (a busy sender
                    // sends no such digest): news of seconds ago reached one side and not the
                    // other, so likely no broadcast path joins them. Link to the sender (the
                    // overlay forces it if full) and heal: what changes either side is
                    // re-announced on both.
                    let split = !heal && !self.neighbours.contains(&from);
                    if split {
                        self.stats.splits_suspected += 1;
                        out.push_back(OutEvent::Reach(from));
                    }
                    self.send_state(from, mask, heal || split, Some(mask), out);
                }
            }
            Message::CatchUp { buckets } => {
                if buckets.len() != DIGEST_BUCKETS {
                    self.stats.invalid_messages += 1;
                    return;
                }
                if self.left {
                    return;
                }
                let mask = self.differing_buckets(&buckets);
                if mask == 0 {
                    return;
                }
                // Only a small gap is filled here: a node far behind would cost the whole
                // directory, and plumtree and anti-entropy catch it up anyway.
                let owed = self
                    .entries
                    .keys()
                    .filter(|id| mask & (1 << bucket_of(id_hash(*id))) != 0)
                    .take(self.config.sync_chunk_entries + 1)
                    .count();
                if owed <= self.config.sync_chunk_entries && self.exchange_allowed(now) {
                    self.stats.catch_ups_served += 1;
                    self.send_state(from, mask, false, None, out);
                }
            }
            Message::Ping { seq } => {
                if !self.left {
                    out.push_back(OutEvent::SendMessage(from, Message::Ack { seq }));
                }
            }
            Message::Ack { seq } => self.on_ack(from, seq, rng, out),
            Message::PingReq { target, seq } => {
                if self.left {
                    return;
                }
                if target == self.me {
                    out.push_back(OutEvent::SendMessage(from, Message::Ack { seq }));
                    return;
                }
                let relay_seq = self.next_seq();
                if self.relays.len() >= MAX_RELAYS {
                    self.relays.pop_front();
                }
                self.relays.push_back(Relay {
                    seq: relay_seq,
                    requester: from,
                    requester_seq: seq,
                });
                out.push_back(OutEvent::SendMessage(
                    target,
                    Message::Ping { seq: relay_seq },
                ));
            }
        }
    }

    fn on_ack<R: Rng>(&mut self, from: P, seq: u64, _rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        // A confirmation's ack comes from the member or, relayed, from a neighbour.
        if let Some(id) = self
            .confirming
            .iter()
            .find_map(|(id, s)| (*s == seq).then_some(*id))
        {
            self.confirming.remove(&id);
            // Reachable after all: it may be the collector again.
            self.unreachable.retain(|p| *p != id);
            return;
        }
        if self.probe.is_some_and(|p| p.seq == seq) {
            self.probe = None;
            return;
        }
        if self
            .collector_check
            .is_some_and(|(c, s)| s == seq && c == from)
        {
            self.collector_check = None;
            return;
        }
        // A seed given by address only (the runtime's generation-0 ids) answers from its real
        // id: match its ack by sequence number, and reach the id that answered.
        if let Some((target, s, force)) = self.heal_probe
            && s == seq
            && (target == from || self.seeds.contains(&target))
        {
            self.heal_probe = None;
            if target != from {
                // Remember the seed by its real id from now on. Pinging it by address again
                // would open a second connection to a node this one may already be linked to,
                // and a node that gets a new connection from a peer drops the old one: the
                // link would break under both of them.
                self.seeds.retain(|s| *s != target && *s != from);
                self.seeds.push(from);
            }
            let target = from;
            // A member we hold alive needs no exchange, and no new link unless this node is cut
            // off: forcing a link evicts a healthy one and churns the overlay. One we hold dead
            // (or do not know) answering means two views split: link to it, exchange and
            // re-announce.
            let alive = self
                .entries
                .get(&target)
                .is_some_and(|e| e.state() == MemberState::Alive);
            if !alive || force || self.neighbours.is_empty() {
                out.push_back(OutEvent::Reach(target));
            }
            if !alive {
                let buckets = self.buckets.to_vec();
                out.push_back(OutEvent::SendMessage(
                    target,
                    Message::Digest {
                        buckets,
                        heal: true,
                    },
                ));
            }
            return;
        }
        if let Some(i) = self.relays.iter().position(|r| r.seq == seq) {
            let r = self.relays.remove(i).expect("index from position");
            out.push_back(OutEvent::SendMessage(
                r.requester,
                Message::Ack {
                    seq: r.requester_seq,
                },
            ));
        }
    }

    /// At most [`Config::max_exchanges`] state transfers answer digests per anti-entropy
    /// interval: a digest is small and the answer can be the whole directory, so this bounds
    /// what a peer sending digests in a loop can make this node send.
    fn exchange_allowed(&mut self, now: Instant) -> bool {
        let window = self.config.anti_entropy_interval;
        match self.exchange_window {
            Some((start, n)) if now.saturating_duration_since(start) < window => {
                if n >= self.config.max_exchanges {
                    return false;
                }
                self.exchange_window = Some((start, n + 1));
            }
            _ => self.exchange_window = Some((now, 1)),
        }
        true
    }

    /// The live view changed within [`Config::anti_entropy_quiet`].
    fn busy(&self, now: Instant) -> bool {
        self.last_change
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.anti_entropy_quiet)
    }

    fn differing_buckets(&self, theirs: &[u64]) -> u64 {
        let mut mask = 0u64;
        for (i, (a, b)) in self.buckets.iter().zip(theirs).enumerate() {
            if a != b {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Send every entry whose bucket is in `mask` to `to`, chunked.
    fn send_state(
        &mut self,
        to: P,
        mask: u64,
        announce: bool,
        reply: Option<u64>,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let chunk_len = self
            .config
            .sync_chunk_entries
            .clamp(1, self.config.max_batch_entries.max(1));
        let mut chunk = Vec::with_capacity(chunk_len.min(self.entries.len()));
        let mut pending: Option<Vec<Fact<P>>> = None;
        // Every chunk but the last goes without the reply token; the last one carries it.
        let sync = |facts, last: bool| {
            OutEvent::SendMessage(
                to,
                Message::Sync {
                    facts,
                    announce,
                    last,
                    reply: if last { reply } else { None },
                },
            )
        };
        for (id, e) in &self.entries {
            if mask != u64::MAX && mask & (1 << bucket_of(id_hash(id))) == 0 {
                continue;
            }
            chunk.push(self.fact_of(*id, *e));
            if chunk.len() == chunk_len {
                if let Some(facts) = pending.take() {
                    out.push_back(sync(facts, false));
                }
                pending = Some(std::mem::replace(&mut chunk, Vec::with_capacity(chunk_len)));
            }
        }
        if let Some(facts) = pending.take() {
            if chunk.is_empty() {
                chunk = facts;
            } else {
                out.push_back(sync(facts, false));
            }
        }
        out.push_back(sync(chunk, true));
    }

    fn on_timer<R: Rng>(
        &mut self,
        timer: Timer<P>,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        match timer {
            Timer::Flush => {
                if self.flush_at.is_some_and(|t| t <= now) {
                    self.flush_at = None;
                }
                self.process_outbox(now, out);
            }
            Timer::Suspect { id, incarnation } => {
                if self
                    .suspecting
                    .get(&id)
                    .is_some_and(|i| *i as u64 == incarnation)
                {
                    self.suspecting.remove(&id);
                }
                let Some(e) = self.entries.get(&id).copied() else {
                    return;
                };
                if self.left
                    || e.state() != MemberState::Suspect
                    || e.incarnation() as u64 != incarnation
                {
                    return; // refuted, or already dead: a stale timer does nothing
                }
                let new = Entry::new(e.incarnation(), MemberState::Dead);
                let before = self.contribution(&id);
                self.entries.insert(id, new);
                self.recount(&id, before);
                self.entomb(id, new, now);
                self.emit(out, id, Some(e.state()), false);
                let f = self.fact_of(id, new);
                self.push_outbox(f, now, out);
            }
            Timer::Probe => {
                if self.left {
                    return;
                }
                out.push_back(OutEvent::ScheduleTimer(
                    self.config.probe_interval,
                    Timer::Probe,
                ));
                self.start_probe(now, rng, out);
            }
            Timer::ProbeTimeout { seq } => self.on_probe_timeout(seq, now, rng, out),
            Timer::ConfirmTimeout { id, seq } => self.on_confirm_timeout(id, seq, now, out),
            Timer::CollectorTimeout { seq } => {
                if let Some((collector, s)) = self.collector_check
                    && s == seq
                {
                    self.collector_check = None;
                    tracing::debug!(me = ?self.me, member = ?collector, "the collector did not acknowledge forwarded facts: probing it");
                    // A collector busy with a join storm answers late: probe it like a lost
                    // link before suspecting it. Suspecting it changes the collector: the
                    // waiting facts go to the next one; if it answers, they wait for its
                    // broadcast (or `forward_grace`).
                    self.confirm(collector, now, rng, out);
                }
            }
            Timer::AntiEntropy => {
                if self.left {
                    return;
                }
                out.push_back(OutEvent::ScheduleTimer(
                    jitter(rng, self.config.anti_entropy_interval),
                    Timer::AntiEntropy,
                ));
                if self.busy(now) && self.ae_skipped < 3 {
                    self.ae_skipped += 1;
                    return;
                }
                self.ae_skipped = 0;
                self.ae_rounds = self.ae_rounds.wrapping_add(1);
                // Every other round, when quiet, goes to a member outside the active view: a
                // difference there is how a split overlay is noticed (see `Message::Digest`).
                let stranger = if self.ae_rounds.is_multiple_of(2) && !self.busy(now) {
                    self.random_stranger(rng)
                } else {
                    None
                };
                let to = stranger.or_else(|| {
                    (!self.neighbours.is_empty())
                        .then(|| self.neighbours[rng.random_range(0..self.neighbours.len())])
                });
                if let Some(to) = to {
                    let buckets = self.buckets.to_vec();
                    out.push_back(OutEvent::SendMessage(
                        to,
                        Message::Digest {
                            buckets,
                            heal: false,
                        },
                    ));
                }
            }
            Timer::Heal => {
                if self.left {
                    return;
                }
                out.push_back(OutEvent::ScheduleTimer(
                    jitter(rng, self.config.heal_interval),
                    Timer::Heal,
                ));
                if !self.reach_silent_source(now, rng, out) {
                    self.start_heal(rng, out);
                }
            }
            Timer::Beacon => {
                let Some(interval) = self.config.beacon_interval else {
                    return;
                };
                if self.left {
                    return;
                }
                out.push_back(OutEvent::ScheduleTimer(
                    jitter(rng, periodic(interval)),
                    Timer::Beacon,
                ));
                if !self.neighbours.is_empty() && self.smallest_alive() == self.me {
                    self.send_batch(&[], out);
                }
            }
            Timer::Reap => {
                out.push_back(OutEvent::ScheduleTimer(self.reap_interval(), Timer::Reap));
                self.reap(now);
            }
            Timer::CatchUp => {
                if self.left || self.neighbours.is_empty() {
                    return;
                }
                let to = self.neighbours[rng.random_range(0..self.neighbours.len())];
                let buckets = self.buckets.to_vec();
                out.push_back(OutEvent::SendMessage(to, Message::CatchUp { buckets }));
            }
            Timer::SyncRetry => {
                if self.synced || self.left {
                    return;
                }
                let pool = if self.neighbours.is_empty() {
                    &self.seeds
                } else {
                    &self.neighbours
                };
                if !pool.is_empty() {
                    let to = pool[rng.random_range(0..pool.len())];
                    let entry = self.own_fact();
                    out.push_back(OutEvent::SendMessage(to, Message::SyncRequest { entry }));
                }
                out.push_back(OutEvent::ScheduleTimer(
                    self.config.sync_timeout,
                    Timer::SyncRetry,
                ));
            }
        }
    }

    fn start_probe<R: Rng>(&mut self, now: Instant, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        if self.probe.is_some() || self.entries.len() < 2 {
            return;
        }
        for _ in 0..16 {
            if self.probe_pool.is_empty() {
                self.refill_probe_pool(rng);
            }
            let Some(id) = self.probe_pool.pop() else {
                return;
            };
            if id == self.me || self.neighbours.contains(&id) {
                continue;
            }
            if !self.entries.get(&id).is_some_and(|e| e.state().is_live()) {
                continue;
            }
            let seq = self.next_seq();
            self.probe = Some(Probe {
                target: id,
                seq,
                indirect: false,
                sent: now,
            });
            self.stats.probes_sent += 1;
            out.push_back(OutEvent::SendMessage(id, Message::Ping { seq }));
            out.push_back(OutEvent::ScheduleTimer(
                self.config.probe_timeout,
                Timer::ProbeTimeout { seq },
            ));
            return;
        }
    }

    fn on_probe_timeout<R: Rng>(
        &mut self,
        seq: u64,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let Some(probe) = self.probe.filter(|p| p.seq == seq) else {
            return;
        };
        if self.left {
            self.probe = None;
            return;
        }
        if !probe.indirect {
            // With no neighbour to ask (a node still joining), the target still gets the whole
            // probe round to answer: a node that cannot get a second opinion should not accuse
            // sooner than one that can.
            for h in self.helpers(probe.target, rng) {
                out.push_back(OutEvent::SendMessage(
                    h,
                    Message::PingReq {
                        target: probe.target,
                        seq,
                    },
                ));
            }
            self.probe = Some(Probe {
                indirect: true,
                ..probe
            });
            out.push_back(OutEvent::ScheduleTimer(
                self.config.indirect_probe_timeout,
                Timer::ProbeTimeout { seq },
            ));
            return;
        }
        self.probe = None;
        self.stats.probes_failed += 1;
        tracing::debug!(
            me = ?self.me,
            member = ?probe.target,
            asked_neighbours = probe.indirect,
            elapsed_ms = now.saturating_duration_since(probe.sent).as_millis() as u64,
            "suspected: a probe went unanswered"
        );
        self.failure_observed(probe.target, now, out);
    }

    /// Heard nothing from the beacon's source (the smallest alive id) for three beacon
    /// intervals while holding it alive and not linked to it: this node is likely on the other
    /// side of an overlay split. Ping it; its answer forces a link. Returns whether a ping was
    /// sent.
    fn reach_silent_source<R: Rng>(
        &mut self,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) -> bool {
        let Some(interval) = self.config.beacon_interval else {
            return false;
        };
        if self.neighbours.is_empty() || !self.synced {
            return false;
        }
        let source = self.smallest_alive();
        if source == self.me || self.neighbours.contains(&source) {
            self.beacon = Some((source, now));
            return false;
        }
        match self.beacon {
            Some((c, heard)) if c == source => {
                if now.saturating_duration_since(heard) <= periodic(interval) * 3 {
                    return false;
                }
            }
            _ => {
                // A new source: give it time to be heard.
                self.beacon = Some((source, now));
                return false;
            }
        }
        // The whole cut-off side notices at once, and every answer forces a link at the
        // source: only about `BEACON_FANOUT` nodes of the cluster ping it per round.
        let p = (BEACON_FANOUT as f64 / self.alive.max(1) as f64).min(1.0);
        if !rng.random_bool(p) {
            return false;
        }
        self.beacon = Some((source, now));
        let seq = self.next_seq();
        self.stats.splits_suspected += 1;
        self.heal_probe = Some((source, seq, true));
        out.push_back(OutEvent::SendMessage(source, Message::Ping { seq }));
        true
    }

    fn start_heal<R: Rng>(&mut self, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        let seeds: Vec<P> = self
            .seeds
            .iter()
            .copied()
            .filter(|s| !self.neighbours.contains(s))
            .collect();
        // An isolated node always tries a seed. Otherwise only about `heal_fanout` nodes of the
        // whole cluster ping someone each round: one exchange across a healed cut is enough
        // (it re-announces what each side lacked), thousands at once would flood both sides.
        if !self.neighbours.is_empty() {
            let p = (self.config.heal_fanout as f64 / self.alive.max(1) as f64).min(1.0);
            if !rng.random_bool(p) {
                return;
            }
        }
        let isolated = self.neighbours.is_empty();
        // Isolated, every other round pings a random member it holds alive: its seeds may all
        // have died (a node restarted through one contact that crashed next would otherwise
        // ping that dead seed forever and stay alone).
        let member = if isolated && (seeds.is_empty() || rng.random_bool(0.5)) {
            self.random_alive_member(rng)
        } else {
            None
        };
        let use_seed = !seeds.is_empty() && (isolated || rng.random_bool(0.5));
        let target = if member.is_some() {
            member
        } else if use_seed {
            Some(seeds[rng.random_range(0..seeds.len())])
        } else {
            // A random recently dead member (not one that left: it is gone on purpose).
            (0..8).find_map(|_| {
                if self.tombstones.is_empty() {
                    return None;
                }
                let t = self.tombstones[rng.random_range(0..self.tombstones.len())];
                (t.entry.state() == MemberState::Dead && self.entries.get(&t.id) == Some(&t.entry))
                    .then_some(t.id)
            })
        };
        if let Some(target) = target {
            let seq = self.next_seq();
            self.heal_probe = Some((target, seq, false));
            out.push_back(OutEvent::SendMessage(target, Message::Ping { seq }));
        }
    }

    /// A random member other than this node that it holds alive, if any (O(members): only
    /// called by an isolated node, once per heal interval).
    fn random_alive_member<R: Rng>(&self, rng: &mut R) -> Option<P> {
        let others = self.alive.saturating_sub(1);
        if others == 0 {
            return None;
        }
        let pick = rng.random_range(0..others);
        self.entries
            .iter()
            .filter(|(id, e)| **id != self.me && e.state() == MemberState::Alive)
            .nth(pick)
            .map(|(id, _)| *id)
    }

    /// Remember a reaped member's last incarnation, forgetting the oldest beyond the capacity.
    fn bury(&mut self, id: P, incarnation: u32) {
        let capacity = self.config.graveyard_capacity;
        if capacity == 0 {
            return;
        }
        while self.graveyard.len() >= capacity {
            let Some(old) = self.graveyard_order.pop_front() else {
                break;
            };
            self.graveyard.remove(&old);
        }
        if self.graveyard.insert(id, incarnation).is_none() {
            self.graveyard_order.push_back(id);
        }
        if self.graveyard_order.len() > 2 * capacity {
            // Members that came back left stale ids behind: drop them.
            let graveyard = &self.graveyard;
            self.graveyard_order.retain(|id| graveyard.contains_key(id));
        }
    }

    /// Seconds since the first instant this directory saw (tombstones need no finer clock).
    fn secs(&mut self, now: Instant) -> u32 {
        let base = *self.base.get_or_insert(now);
        now.saturating_duration_since(base)
            .as_secs()
            .min(u32::MAX as u64) as u32
    }

    /// Record that `id` became `Dead` or `Left` (as `entry`) now.
    fn entomb(&mut self, id: P, entry: Entry, now: Instant) {
        let since = self.secs(now);
        self.tombstones.push_back(Tomb { since, id, entry });
        if self.tombstones.len() > 2 * self.entries.len() + 1024 {
            // Members dying and coming back left stale records behind: drop them.
            let entries = &self.entries;
            self.tombstones
                .retain(|t| entries.get(&t.id) == Some(&t.entry));
        }
    }

    fn reap(&mut self, now: Instant) {
        let now = self.secs(now);
        let after = self.config.reap_after.as_secs().min(u32::MAX as u64) as u32;
        while let Some(&t) = self.tombstones.front() {
            if now.saturating_sub(t.since) < after {
                break;
            }
            self.tombstones.pop_front();
            if self.entries.get(&t.id) != Some(&t.entry) {
                continue; // it changed since: a newer record (or none) stands for it
            }
            let before = self.contribution(&t.id);
            self.metadata.remove(&t.id);
            self.suspecting.remove(&t.id);
            self.confirming.remove(&t.id);
            self.entries.remove(&t.id);
            self.recount(&t.id, before);
            self.bury(t.id, t.entry.incarnation());
        }
    }

    /// A random `Alive` member outside the active view, if one turns up in a few draws.
    fn random_stranger<R: Rng>(&mut self, rng: &mut R) -> Option<P> {
        for _ in 0..8 {
            if self.probe_pool.is_empty() {
                self.refill_probe_pool(rng);
            }
            if self.probe_pool.is_empty() {
                return None;
            }
            let id = self.probe_pool[rng.random_range(0..self.probe_pool.len())];
            if id != self.me
                && !self.neighbours.contains(&id)
                && self
                    .entries
                    .get(&id)
                    .is_some_and(|e| e.state() == MemberState::Alive)
            {
                return Some(id);
            }
        }
        None
    }

    /// Draw [`PROBE_POOL`] random members (reservoir sampling over the entries): probes take
    /// them one by one, so every member is probed in turn without keeping a second list of all
    /// ids (which would cost a fifth of the directory's memory).
    fn refill_probe_pool<R: Rng>(&mut self, rng: &mut R) {
        self.probe_pool.clear();
        for (i, id) in self.entries.keys().enumerate() {
            if i < PROBE_POOL {
                self.probe_pool.push(*id);
            } else {
                let j = rng.random_range(0..=i);
                if j < PROBE_POOL {
                    self.probe_pool[j] = *id;
                }
            }
        }
        // Reservoir order follows the map's; shuffle so the pool is drawn in random order.
        for i in (1..self.probe_pool.len()).rev() {
            let j = rng.random_range(0..=i);
            self.probe_pool.swap(i, j);
        }
    }
}

/// Encode a batch of facts for [`OutEvent::Broadcast`].
pub fn encode_batch<P: PeerId>(facts: &[Fact<P>]) -> Bytes {
    #[derive(Serialize)]
    #[serde(bound = "")]
    struct BatchRef<'a, P: PeerId> {
        version: u8,
        facts: &'a [Fact<P>],
    }
    let batch = BatchRef {
        version: BATCH_VERSION,
        facts,
    };
    let bytes = bincode::serde::encode_to_vec(&batch, bincode::config::standard())
        .expect("encoding facts into a Vec cannot fail");
    Bytes::from(bytes)
}

/// Decode a broadcast batch: `None` if it is malformed, over 1 MiB, has
/// trailing bytes, an unknown version, or more than `max_entries` facts.
pub fn decode_batch<P: PeerId>(payload: &[u8], max_entries: usize) -> Option<Vec<Fact<P>>> {
    if payload.len() > MAX_BATCH_DECODE {
        return None;
    }
    let config = bincode::config::standard().with_limit::<MAX_BATCH_DECODE>();
    let (batch, used): (Batch<P>, usize) =
        bincode::serde::decode_from_slice(payload, config).ok()?;
    if used != payload.len() || batch.version != BATCH_VERSION || batch.facts.len() > max_entries {
        return None;
    }
    Some(batch.facts)
}
