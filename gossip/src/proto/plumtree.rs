//! Plumtree broadcast, with catch-up by digests and optional per-sender FIFO delivery.
//!
//! Based on João Leitão, José Pereira and Luís Rodrigues, *Epidemic Broadcast Trees*, 26th IEEE
//! International Symposium on Reliable Distributed Systems (SRDS), 2007.
//!
//! # The protocol in words
//!
//! Every node splits its active view (the neighbours HyParView gives it) into two sets. Over the
//! links in the *eager* set it pushes whole messages (GOSSIP) as soon as it first receives them;
//! over the links in the *lazy* set it only announces their ids (IHAVE), batched per neighbour
//! and flushed after a short dispatch delay (sooner only once a batch holds
//! [`MAX_IHAVE_RANGES`] ranges of consecutive ids, or [`MAX_IHAVE_WIRE`] ids: a busy link
//! sends one IHAVE per delay, not one per few hundred ids). A new neighbour starts eager
//! (except for origins whose tree is built here already, see below), so the first broadcast
//! floods the overlay. A node that receives a message it already has answers with PRUNE and
//! both ends move that link to the lazy set: after a few broadcasts the eager links form a
//! spanning tree and each node receives each payload exactly once.
//!
//! The lazy links repair the tree. When an IHAVE announces a message this node does not have, a
//! timer starts (`graft_timeout_1`); if the message has not arrived when it fires, the node sends
//! GRAFT to the announcer, which answers with the payload and moves the link back to eager. If
//! that announcer does not answer within `graft_timeout_2`, the next one is grafted. The tree
//! also improves itself: when an IHAVE shows that a message could have arrived
//! `optimization_threshold` hops sooner over a lazy link than it did over the tree, the node
//! grafts that link (without asking for the payload) and prunes the old one.
//!
//! The first flood builds the *first-arrival* tree: each node's parent is the neighbour whose
//! copy came first, so the tree follows the fastest paths, which are long in hops (at 10,000
//! nodes with 10-100 ms links, 15-17 hops deep where the overlay allows 9). The paper's rule
//! alone pulls it down slowly and stops up to `threshold` hops short per level: with the
//! former default of 2, the stable-phase LDH was still 15 after 35 broadcasts. So:
//!
//! - the threshold defaults to 1: any strictly shorter path is taken (ties never move the
//!   tree), so once settled every node's depth is its fewest-hop distance from the origin;
//! - the check also runs when the IHAVE overtook the payload, and a duplicate that came by a
//!   shorter path keeps its link and prunes the longer one;
//! - a node whose path to a message got shorter announces the new hop count to its other
//!   neighbours at once (IHAVE again): its children learn that their own path shrank and pass
//!   it on, lazy neighbours may find it a shorter path for them. The improvements spread
//!   through the overlay within one broadcast (a distributed Bellman-Ford relaxation) rather
//!   than one level per broadcast, so the tree is near the fewest-hop tree after the first
//!   flood. It costs control messages only while the tree changes (a node announces at most
//!   once per hop it gains);
//! - a neighbour that comes up while an origin's tree has its parent starts lazy for that
//!   origin. An eager new link closes a cycle, and the copy that comes over it first (fast,
//!   but maybe many hops deeper) would become the parent of this node and its whole subtree
//!   for a broadcast; while the overlay was still settling after the bootstrap, that alone
//!   kept the LDH 2-4 hops above the fewest-hop depth. A tree whose parent went down (an
//!   *orphan*) takes new links eagerly. An orphan, and a tree whose parent is not a
//!   neighbour at all (the overlay was briefly asymmetric, and the peer that pushed to us
//!   dropped a link we never had up), grafts at once an IHAVE for a missing message that is
//!   at most one hop farther from the origin than the lost parent was (the tree will not bring it; a
//!   deeper announcer waits `graft_timeout_1` like any other, so that the repair does not
//!   hang the orphan's subtree from a deep path). In the 200-node TCP bench, waiting for a
//!   replacement link one hop deeper was the ~70 ms outlier of the spread.
//!
//! # Many senders
//!
//! The paper shares one tree among all senders. With many concurrent senders that tree does
//! not hold: a PRUNE only proves that a link was redundant for the message that crossed it,
//! and two messages from different origins crossing a cycle at the same time prune two
//! different links of it, which splits the eager graph; the next messages are then repaired
//! by GRAFT (a timeout late), the grafts make new cycles, and so on. In a 50-node cluster with
//! 200 broadcasts from random nodes, about half the deliveries went through IHAVE and GRAFT.
//! So the eager/lazy split is kept per origin for the `max_origin_trees` most recently active
//! origins: PRUNE and the optimisation's GRAFT name the origin (`PruneOrigin`, `GraftOrigin`)
//! and change that origin's tree only, and within one origin the paper's argument holds (the
//! link a node first received a message by is never pruned, so the eager links stay a
//! spanning tree). A new origin's tree starts with every link eager (its first message floods,
//! as in the paper); a copy of another origin's tree saved that flood, but the two ends of a
//! link did not copy the same tree once nodes tracked different origins, which left regions
//! without an eager path (see `tree_mut`). An origin beyond the cap uses the shared sets,
//! which every PRUNE and GRAFT also updates, as the paper's single tree. A duplicate from a
//! link that is already lazy here for its origin still gets a PRUNE: the two ends disagree, and
//! otherwise the sender keeps pushing. Memory: one small list of lazy neighbours per tracked
//! origin.
//!
//! One origin sending flat out breaks the same argument in time rather than in space: many of
//! its messages are in flight at once, and the first copy of each comes by whichever path is
//! faster at that moment, so pruning every link a duplicate came by pruned a node's parents one
//! after the other and left it to GRAFT repairs, a `graft_timeout_1` late each. So each tree
//! remembers its *parent*, the link the latest new message came by: a duplicate from it is not
//! pruned; a PRUNE from it (an older copy of ours reached it second) is answered with GRAFT; a
//! new message over a link that is lazy here grafts it back at the other end too; an IHAVE
//! from the parent for a missing message is grafted at once, as the tree will not bring it
//! (also when other links announced it first: their timer would add `graft_timeout_1`);
//! and a message that came by another link is only announced to the previous parent, since a
//! pushed copy would reach it second and make it prune the link this node depends on.
//!
//! Messages are named by [`MessageId`]: the origin and a per-origin sequence number, so the
//! same content can be broadcast twice and the record of received ids is compact: per origin,
//! the highest sequence number seen and the few holes below it.
//!
//! # Catch-up
//!
//! Plumtree alone cannot help a node that missed a message while no neighbour announced it to
//! it: a late joiner, a node on the other side of a healed partition, a GRAFT that was lost.
//! So every `catchup_interval` a node sends one random neighbour (and each new neighbour at
//! once) a *digest* of what it has: per origin, the highest sequence number and the holes. The
//! neighbour answers with the messages from its cache that the digest shows are lacking
//! (CATCHUP), at most `max_catchup_reply` per digest and only those it received at least
//! `catchup_min_age` ago, so catch-up never races the tree. When it lacks more than that, the
//! most urgent go first: user messages before system ones (directory updates, which later
//! ones supersede), then the oldest, which leave the caches first. A node that receives a
//! full reply sends the next digest to that neighbour at once instead of a
//! `catchup_interval` later: in the chaos runs, a node back from a partition or a restart
//! lacked hundreds of messages, and at 64 per 2 s in (origin, sequence) order its user
//! messages expired from every cache before their turn came. The window of catch-up is the
//! cache: `cache_capacity` messages, `cache_bytes` of payload and `cache_retention` of age,
//! the oldest messages evicted first whichever bound is reached. A digest lists at most
//! `max_digest_origins` origins and rotates through them; it states which range of origins it
//! covers, so the receiver can tell "lacks every message of this origin" from "not listed".
//! A node that catches a message up announces it to its neighbours with IHAVE, so a whole
//! region that missed it pulls it through the usual GRAFT path.
//!
//! # FIFO delivery
//!
//! With [`Config::fifo`] set, one origin's messages are delivered in sequence order: a message
//! after a gap is held until catch-up fills the gap or `fifo_gap_timeout` passes, then the gap
//! is skipped. A message that arrives after its gap was skipped is not delivered (that would
//! break the order); it is counted in [`Stats::fifo_dropped_late`]. The first message seen
//! from an origin opens a window of `first_contact_holes` numbers below it, so a late joiner
//! starts delivering from the oldest message catch-up can still find, after at most one gap
//! timeout.
//!
//! # Forged sequence numbers
//!
//! Sequence numbers are not authenticated (in a plaintext cluster anyone who can connect can
//! send a GOSSIP under any origin), and the record cannot tell a forged number from a message
//! it missed. Taking every number as the origin's newest let one forged GOSSIP with a far
//! future number censor its origin: the real messages below it looked old and were dropped,
//! by the victim and by every node it relayed the forgery to. So a number more than
//! `max_seq_jump` ahead of the origin's record (of 0 for an origin never heard of) is *out of
//! window*: it is dropped, not relayed, counted in [`Stats::seq_out_of_window`] and only noted
//! as evidence. Within the window a message moves the record as before (the numbers it skips
//! become holes, which the real messages fill). Once `seq_jump_evidence` distinct
//! out-of-window numbers within `max_seq_jump` of each other have been seen, the origin really
//! is that far ahead: a real origin that sent more than `max_seq_jump` messages while this
//! node was partitioned away, or a busy origin a new node first hears of. The record jumps,
//! and the noted numbers, which were dropped, become holes that catch-up fetches from the
//! neighbours' caches, so they are delivered a catch-up round late rather than lost. Keeping
//! them in a set of received ids outside the window instead would need that set to grow with
//! every message of the far origin until the record could move, and forgetting an entry of it
//! would deliver a message twice.
//!
//! A forger can still take numbers inside the window (its payload is delivered in place of
//! the real message with that number), or send `seq_jump_evidence` forged numbers to move the
//! record; against members that forge, use the transport's keyring. A restarted node gets a
//! new id (see the directory docs), so an origin's numbers never go back.
//!
//! # Limits
//!
//! - The record of received ids forgets an origin `record_retention` after its last message
//!   (and the least recently active one when `max_origins` is reached). A copy of a message
//!   that arrives later than that would be delivered again; keep `record_retention` far above
//!   `cache_retention` and the worst delivery delay.
//! - A hole (a missing sequence number below the highest seen) stays open for
//!   `record_retention`, and catch-up asks for it during `cache_retention`. A hole pushed out
//!   of the per-origin window (`max_holes_per_origin`), beyond the global budget
//!   (`max_holes_total`) or older than `record_retention` is given up
//!   ([`Stats::holes_given_up`]): that message counts as received, and a copy arriving later
//!   is dropped as a duplicate.
//! - Origins are not authenticated here: a member can forge any id. That is for the transport's
//!   keyring to prevent.
//!
//! # Hostile input
//!
//! Every message from any peer, at any time, is handled without panicking. Repeated fields are
//! capped on receipt (ids per IHAVE, origins and holes per digest): the excess is ignored and
//! counted in [`Stats::dropped_invalid`]. Control messages (IHAVE, GRAFT, PRUNE, DIGEST) from a
//! peer that is not a neighbour are ignored and counted. Every map has a count bound and an age
//! bound.
use foldhash::fast::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Instant, MessageId, PeerId};

/// Broadcast settings.
///
/// The defaults suit links with 10-100 ms latency: the graft timeouts exceed the latency spread,
/// so the tree is not repaired while the eager copy is merely late.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long IHAVE announcements wait to be batched before they are sent (default 10 ms).
    /// Longer batches mean fewer control messages and slower repair.
    pub dispatch_timeout: Duration,
    /// How long after the first IHAVE for a missing message this node waits for the eager copy
    /// before it sends GRAFT (default 500 ms). Must exceed the spread of arrival times along
    /// the tree, or the tree is "repaired" needlessly and payloads travel twice: with 10-100 ms
    /// per hop on 10,000 nodes the stable-phase RMR was 0.13 at 150 ms, 0.056 at 200 ms,
    /// 0.003 at 300 ms and 0.0001 at 500 ms. Lower it on a LAN, where hops take well under a millisecond.
    pub graft_timeout_1: Duration,
    /// How long to wait for a grafted peer to answer before grafting the next announcer
    /// (default 100 ms, about one round trip).
    pub graft_timeout_2: Duration,
    /// Re-shape the tree when an IHAVE or a duplicate shows a path shorter by at least this
    /// many hops than the one the message came by (default 1; 0 counts as 1). 1 settles on
    /// the fewest-hop tree (at 10,000 nodes: LDH 10 where 2 left it at 15); higher means
    /// fewer GRAFT/PRUNE while the tree settles and less churn when many nodes broadcast, at
    /// the cost of a deeper tree.
    pub optimization_threshold: u16,
    /// How many messages the payload cache keeps (default 8192; with 1 KiB payloads, 8 MiB).
    /// It serves GRAFT and catch-up, so it must hold what the busiest senders broadcast
    /// within `graft_timeout_1` plus a few `graft_timeout_2`: a message evicted before its
    /// GRAFT arrives is lost to the node that asked. At 2048, one sender at 33,000 messages a
    /// second (in memory, 16 nodes) lost 0.3% of its messages that way.
    pub cache_capacity: usize,
    /// How many payload bytes the payload cache keeps (default 64 MiB), counted on the
    /// payloads' lengths; both this and `cache_capacity` hold, the oldest messages evicted first
    /// whichever is reached. Without it, 8192 messages of 1 MiB could hold 8 GiB. At the
    /// default, the cache holds all 8192 messages up to 8 KiB each, and 64 messages of 1 MiB:
    /// keep it above the bytes the busiest senders broadcast within the GRAFT window (see
    /// `cache_capacity`). A payload longer than this is not cached at all, so it cannot be
    /// served to GRAFT or catch-up ([`Stats::too_large_to_cache`]): keep it well above the
    /// largest message.
    pub cache_bytes: usize,
    /// How long a message stays in the payload cache (default 30 s): the catch-up window.
    pub cache_retention: Duration,
    /// How many origins the received-id record tracks (default 65536).
    pub max_origins: usize,
    /// How long an origin stays in the record after its last message (default 300 s). Keep it
    /// well above `cache_retention`: a message older than the record could be delivered twice.
    pub record_retention: Duration,
    /// How many holes (missing sequence numbers) are tracked per origin (default 8192); a hole
    /// pushed out of this window is given up and its message is never delivered.
    ///
    /// This is the reorder window of one origin: when a sender broadcasts flat out, a message
    /// the tree failed to bring is repaired by GRAFT only after `graft_timeout_1`, and in that
    /// time the sender's later messages keep arriving. Keep it above the sender's rate times
    /// (`graft_timeout_1` + a few `graft_timeout_2`). At 128, a single sender flat out on 16
    /// nodes lost 3.5% of its messages for good. Costs 16 bytes per open hole, within
    /// `max_holes_total`.
    pub max_holes_per_origin: usize,
    /// How many numbers below the first message seen from an origin are recorded as holes for
    /// catch-up to fill (default 128, at most `max_holes_per_origin`): how far back a late
    /// joiner starts.
    pub first_contact_holes: usize,
    /// How many holes are tracked over all origins (default 65536, about 1.5 MiB), so forged
    /// sequence numbers cannot make the record large.
    pub max_holes_total: usize,
    /// How far past the highest sequence number received from an origin one message may move
    /// the record on its own (default 8192). A message further ahead is *out of window*: not
    /// delivered, not relayed, only noted as evidence ([`Stats::seq_out_of_window`]), so one
    /// forged number cannot make the origin's real messages below it look old. See "Forged
    /// sequence numbers" in the module docs.
    pub max_seq_jump: u64,
    /// How many distinct out-of-window numbers of one origin, within `max_seq_jump` of each
    /// other, move the record there (default 3): the origin really is that far ahead (it sent
    /// many messages while this node was cut off). The numbers noted become holes that
    /// catch-up fills. Clamped to 1..=8.
    pub seq_jump_evidence: usize,
    /// How often the cache and the record are swept for expired entries (default 5 s).
    pub evict_interval: Duration,
    /// Cap on ids in one IHAVE, applied when sending and on receipt (default and most
    /// [`MAX_IHAVE_WIRE`], 4096). A batch is sent when it holds this many ids or
    /// [`MAX_IHAVE_RANGES`] ranges (what it costs on the wire), and otherwise every
    /// `dispatch_timeout`: under one busy sender a lazy link's batch is one range of
    /// consecutive ids, so it waits for the timer. A receiver with a smaller cap than its
    /// neighbours drops the ids past it (counted in [`Stats::dropped_invalid`]); catch-up
    /// fetches any it then misses.
    pub max_ihave_ids: usize,
    /// Cap on messages announced but not yet received that this node waits for (default 8192).
    pub max_missing: usize,
    /// Cap on announcers remembered per missing message (default 4).
    pub max_announcers: usize,
    /// How often a digest goes to one random neighbour (default 2 s).
    pub catchup_interval: Duration,
    /// A cached message is offered by catch-up only once it is this old here (default 1 s), so
    /// catch-up does not race the tree.
    pub catchup_min_age: Duration,
    /// Cap on origins in one digest, sent and received (default 256).
    pub max_digest_origins: usize,
    /// Cap on holes per origin in one digest, sent and received (default 32).
    pub max_digest_holes: usize,
    /// Cap on messages sent back for one digest (default 64).
    pub max_catchup_reply: usize,
    /// Deliver each origin's messages in sequence order (default off).
    pub fifo: bool,
    /// How long a FIFO gap is held open before it is skipped (default 5 s; keep it above
    /// `catchup_interval + catchup_min_age` so catch-up has a chance to fill it).
    pub fifo_gap_timeout: Duration,
    /// Cap on messages held back by FIFO ordering (default 4096); beyond it gaps are skipped.
    pub fifo_max_held: usize,
    /// How many origins get a tree of their own (default 64): which neighbours are eager and
    /// which lazy for that origin's messages. The least recently active origin's tree is
    /// dropped when a new one is needed; the messages of an origin without a tree use the
    /// shared sets. 0 gives the paper's single shared tree. See "Many senders" in the module
    /// docs.
    pub max_origin_trees: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dispatch_timeout: Duration::from_millis(10),
            graft_timeout_1: Duration::from_millis(500),
            graft_timeout_2: Duration::from_millis(100),
            optimization_threshold: 1,
            cache_capacity: 8192,
            cache_bytes: 64 << 20,
            cache_retention: Duration::from_secs(30),
            max_origins: 65536,
            record_retention: Duration::from_secs(300),
            max_holes_per_origin: 8192,
            first_contact_holes: 128,
            max_holes_total: 65536,
            max_seq_jump: 8192,
            seq_jump_evidence: 3,
            evict_interval: Duration::from_secs(5),
            max_ihave_ids: MAX_IHAVE_WIRE,
            max_missing: 8192,
            max_announcers: 4,
            catchup_interval: Duration::from_secs(2),
            catchup_min_age: Duration::from_secs(1),
            max_digest_origins: 256,
            max_digest_holes: 32,
            max_catchup_reply: 64,
            fifo: false,
            fifo_gap_timeout: Duration::from_secs(5),
            fifo_max_held: 4096,
            max_origin_trees: 64,
        }
    }
}

impl Config {
    /// The preset for LAN latencies (a few milliseconds per hop, or an in-memory cluster).
    ///
    /// The graft timeouts only need to exceed the spread of arrival times along the tree,
    /// which on a LAN is a few milliseconds per hop: `graft_timeout_1` 60 ms, `graft_timeout_2`
    /// 30 ms, so a message the tree failed to bring arrives tens of milliseconds late instead
    /// of half a second. IHAVE batches are flushed after 5 ms. Everything else is
    /// [`Config::default`], the WAN (10-100 ms links) preset the simulator uses.
    pub fn lan() -> Self {
        Self {
            dispatch_timeout: Duration::from_millis(5),
            graft_timeout_1: Duration::from_millis(60),
            graft_timeout_2: Duration::from_millis(30),
            ..Self::default()
        }
    }
}

/// Whether a broadcast is for the application or for the protocol itself (directory updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PayloadKind {
    /// An application message: delivered to the user.
    User,
    /// A protocol message (directory update): handed to the directory, never to the user.
    System,
}

/// A broadcast payload on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Gossip<P: PeerId> {
    /// Its id.
    pub id: MessageId<P>,
    /// User or system.
    pub kind: PayloadKind,
    /// The payload, shared, never copied.
    pub payload: Bytes,
    /// Hops travelled when it arrives (1 for the origin's own sends).
    pub hops: u16,
}

/// One announcement inside an IHAVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct IHave<P: PeerId> {
    /// The announced message.
    pub id: MessageId<P>,
    /// Hops it would have on arrival if the announcer pushed it.
    pub hops: u16,
}

/// What one node knows of one origin, in a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct DigestEntry<P: PeerId> {
    /// The origin.
    pub origin: P,
    /// Highest sequence number received from it.
    pub high: u64,
    /// Sequence numbers below `high` not received (ascending, capped: the highest ones).
    pub holes: Vec<u64>,
}

/// A summary of the received ids of the sender, for catch-up.
///
/// It covers the origins in `(after, until]` (`None` = unbounded): an origin in that range but
/// not listed is one the sender has never heard of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Digest<P: PeerId> {
    /// Exclusive lower bound of the covered origins.
    pub after: Option<P>,
    /// Inclusive upper bound of the covered origins.
    pub until: Option<P>,
    /// Ascending by origin.
    pub entries: Vec<DigestEntry<P>>,
}

/// Most ids one IHAVE may carry on the wire; a longer one does not decode (the link closes).
/// Senders batch at most `min(max_ihave_ids, MAX_IHAVE_WIRE)` ids.
pub const MAX_IHAVE_WIRE: usize = 4096;

/// Most ranges (see [`IHaves`]) a sender puts in one IHAVE: what bounds its size on the wire
/// (an origin and a few varints per range) and the work of reading it, where the id count
/// does not (one range may hold thousands of ids). Many interleaved origins make one range
/// per id, so the batch is then sent at this many ids, before the dispatch timer.
pub const MAX_IHAVE_RANGES: usize = 512;

/// A batch of IHAVE announcements, in order, held as ranges: consecutive sequence numbers of
/// one origin at one hop count are one entry `(origin, first, count, hops)`.
///
/// Under one busy sender a batch to a lazy peer is a single range however many ids it holds,
/// so queueing an announcement is a comparison and an increment rather than a 56-byte entry
/// per id, and the wire form ([`Message::IHave`]) is written from the ranges as they are. The
/// ranges are always as long as they can be (an id that continues the last range extends it),
/// so two batches of the same ids in the same order are equal.
///
/// Build one with [`IHaves::push`], `collect()` or `From<Vec<IHave<P>>>`; read it with
/// [`IHaves::iter`] (or `for ihave in batch`), which gives back every id in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IHaves<P: PeerId> {
    ranges: Vec<IHaveRange<P>>,
    /// Ids over all ranges.
    len: usize,
}

/// `count` consecutive sequence numbers of `origin` from `first`, all at `hops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IHaveRange<P> {
    origin: P,
    first: u64,
    count: u32,
    hops: u16,
}

impl<P: PeerId> IHaveRange<P> {
    /// Whether `ihave` is the id right after this range, at its hop count (and the range has
    /// room for it).
    fn continued_by(&self, ihave: &IHave<P>) -> bool {
        self.hops == ihave.hops
            && self.origin == ihave.id.origin
            && self.count < u32::MAX
            && self.first.checked_add(u64::from(self.count)) == Some(ihave.id.seq)
    }

    fn iter(&self) -> impl Iterator<Item = IHave<P>> + use<P> {
        let Self {
            origin,
            first,
            count,
            hops,
        } = *self;
        (0..u64::from(count)).map(move |i| IHave {
            id: MessageId {
                origin,
                seq: first + i,
            },
            hops,
        })
    }
}

impl<P: PeerId> Default for IHaves<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: PeerId> IHaves<P> {
    /// An empty batch (allocates nothing).
    pub fn new() -> Self {
        Self {
            ranges: Vec::new(),
            len: 0,
        }
    }

    /// Ids in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no id.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one announcement: it extends the last range when it continues it.
    pub fn push(&mut self, ihave: IHave<P>) {
        self.push_range(ihave.id.origin, ihave.id.seq, 1, ihave.hops);
    }

    /// Add one announcement, extending the range of its origin among the last
    /// [`IHAVE_GROUP_SCAN`] ranges when it continues it, else appending it: with many origins
    /// interleaved, each origin's ids stay one range instead of one range per id. The ids of one
    /// origin keep their order; those of different origins may not.
    fn push_grouped(&mut self, ihave: IHave<P>) {
        let origin = ihave.id.origin;
        if let Some(r) = self
            .ranges
            .iter_mut()
            .rev()
            .take(IHAVE_GROUP_SCAN)
            .find(|r| r.origin == origin)
            && r.continued_by(&ihave)
        {
            r.count += 1;
            self.len += 1;
            return;
        }
        self.push(ihave);
    }

    /// Add a range of ids as [`IHaves::push_grouped`] would add them one by one (the first
    /// finds or starts the origin's range, the others extend it).
    fn push_grouped_run(&mut self, run: IHaveRange<P>) {
        let first = IHave {
            id: MessageId {
                origin: run.origin,
                seq: run.first,
            },
            hops: run.hops,
        };
        if let Some(r) = self
            .ranges
            .iter_mut()
            .rev()
            .take(IHAVE_GROUP_SCAN)
            .find(|r| r.origin == run.origin)
            && r.continued_by(&first)
            && let Some(sum) = r.count.checked_add(run.count)
        {
            r.count = sum;
            self.len += run.count as usize;
            return;
        }
        self.push_range(run.origin, run.first, run.count, run.hops);
    }

    /// Append `count` (at least 1) consecutive ids from `first`, as `count` pushes would.
    fn push_range(&mut self, origin: P, first: u64, count: u32, hops: u16) {
        let ihave = IHave {
            id: MessageId { origin, seq: first },
            hops,
        };
        if let Some(last) = self.ranges.last_mut()
            && last.continued_by(&ihave)
            && let Some(sum) = last.count.checked_add(count)
        {
            last.count = sum;
        } else {
            self.ranges.push(IHaveRange {
                origin,
                first,
                count,
                hops,
            });
        }
        self.len += count as usize;
    }

    /// Keep the first `n` ids.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        let mut left = n;
        let mut keep = 0;
        for r in &mut self.ranges {
            if left == 0 {
                break;
            }
            // `left` < the ids from here on, so a range it cuts has more than `left`.
            r.count = r.count.min(u32::try_from(left).unwrap_or(u32::MAX));
            left -= r.count as usize;
            keep += 1;
        }
        self.ranges.truncate(keep);
        self.len = n;
    }

    /// Every announcement, in order.
    pub fn iter(&self) -> impl Iterator<Item = IHave<P>> + '_ {
        self.ranges.iter().flat_map(IHaveRange::iter)
    }
}

/// How many of a batch's last ranges [`IHaves::push_grouped`] looks through for the range of
/// an id's origin: a few more than the origins usually active at once.
const IHAVE_GROUP_SCAN: usize = 32;

/// IHAVE announcements queued for lazy links, each recorded once however many peers it goes
/// to: runs of consecutive ids of one origin at one hop count, each with the peers it goes to
/// (in queueing order). An id extends the last run when it continues it and goes to the same
/// peers; then, for each of those peers, [`IHaves::push_grouped`] would have extended the last
/// range of its batch too (the one holding that run's last id). So splitting the log run by run
/// into the per-peer batches ([`IHaves::push_grouped_run`]) builds the very batches that
/// queueing each id to each peer at once would have. (Extending an earlier run of the id's
/// origin, as `push_grouped` does within a batch, would not be exact: a peer's range holding
/// that run may have more than [`IHAVE_GROUP_SCAN`] ranges after it, from runs the log
/// already merged into earlier ranges.)
///
/// Under one busy sender the log is one run whatever the number of lazy peers, so queueing
/// an announcement is a comparison and an increment, once per delivery instead of once per
/// lazy peer (a search of the queue by peer and a push into its batch, ~2% of the CPU per
/// delivery with one sender flat out). Bounded like the batches: the state only logs an id
/// while every batch plus the whole log stays below `max_ihave_ids` ids and
/// [`MAX_IHAVE_RANGES`] ranges, so the log holds fewer runs and ids than that, and each run's
/// peers are at most the active view.
#[derive(Debug)]
struct LazyLog<P> {
    runs: Vec<LogRun<P>>,
    /// The peers of every run, each run's a slice of this.
    peers: Vec<P>,
    /// Ids over all runs.
    ids: usize,
}

/// A range of announcements and the slice of [`LazyLog::peers`] it goes to.
#[derive(Debug)]
struct LogRun<P> {
    range: IHaveRange<P>,
    peers: (u32, u32),
}

impl<P: PeerId> LazyLog<P> {
    fn new() -> Self {
        Self {
            runs: Vec::new(),
            peers: Vec::new(),
            ids: 0,
        }
    }

    /// Record `ihave` for `peers` (not empty).
    fn push(&mut self, ihave: IHave<P>, peers: &[P]) {
        self.ids += 1;
        let origin = ihave.id.origin;
        if let Some(run) = self.runs.last_mut()
            && run.range.continued_by(&ihave)
            && self.peers[run.peers.0 as usize..run.peers.1 as usize] == *peers
        {
            run.range.count += 1;
            return;
        }
        let start = self.peers.len();
        self.peers.extend_from_slice(peers);
        // Fewer than MAX_IHAVE_RANGES runs of at most an active view of peers each.
        let span = (start as u32, self.peers.len() as u32);
        self.runs.push(LogRun {
            range: IHaveRange {
                origin,
                first: ihave.id.seq,
                count: 1,
                hops: ihave.hops,
            },
            peers: span,
        });
    }
}

impl<P: PeerId> FromIterator<IHave<P>> for IHaves<P> {
    fn from_iter<I: IntoIterator<Item = IHave<P>>>(iter: I) -> Self {
        let mut batch = Self::new();
        for ihave in iter {
            batch.push(ihave);
        }
        batch
    }
}

impl<P: PeerId> From<Vec<IHave<P>>> for IHaves<P> {
    fn from(ids: Vec<IHave<P>>) -> Self {
        ids.into_iter().collect()
    }
}

impl<P: PeerId> IntoIterator for IHaves<P> {
    type Item = IHave<P>;
    type IntoIter = IHavesIntoIter<P>;

    fn into_iter(self) -> IHavesIntoIter<P> {
        IHavesIntoIter {
            ranges: self.ranges.into_iter(),
            current: None,
        }
    }
}

/// The announcements of an [`IHaves`] batch, in order, by value.
#[derive(Debug)]
pub struct IHavesIntoIter<P: PeerId> {
    ranges: std::vec::IntoIter<IHaveRange<P>>,
    /// What is left of the range being read.
    current: Option<IHaveRange<P>>,
}

impl<P: PeerId> Iterator for IHavesIntoIter<P> {
    type Item = IHave<P>;

    fn next(&mut self) -> Option<IHave<P>> {
        loop {
            if let Some(r) = &mut self.current
                && r.count > 0
            {
                let seq = r.first;
                r.count -= 1;
                // Past the range's last id only once it is used up.
                r.first = r.first.wrapping_add(1);
                return Some(IHave {
                    id: MessageId {
                        origin: r.origin,
                        seq,
                    },
                    hops: r.hops,
                });
            }
            self.current = Some(self.ranges.next()?);
        }
    }
}

/// The wire form of an IHAVE: the announcements grouped in runs of one origin, so an origin
/// (a full node id) is written once per run rather than once per id, and within a run the
/// announcements grouped in ranges of consecutive sequence numbers with one hop count, written
/// `(first seq, count, hops)`: under one busy sender an IHAVE batch to a lazy peer is a run of
/// consecutive ids of one origin, a few bytes on the wire. Order is kept exactly. These are
/// the ranges [`IHaves`] holds, written and read as they are.
///
/// Decoding is bounded by the ids the ranges stand for, not by the bytes: the sum of the counts
/// is capped at [`MAX_IHAVE_WIRE`] (checked before a range is taken), a count of zero or a
/// range past `u64::MAX` is refused, so a hostile range neither allocates nor loops beyond the
/// cap.
mod ihave_wire {
    use std::marker::PhantomData;

    use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
    use serde::ser::{SerializeSeq, SerializeTuple};
    use serde::{Deserializer, Serialize, Serializer};

    use super::{IHaveRange, IHaves, MAX_IHAVE_WIRE};
    use crate::proto::PeerId;

    pub fn serialize<P: PeerId, S: Serializer>(ids: &IHaves<P>, s: S) -> Result<S::Ok, S::Error> {
        let runs = ids.ranges.chunk_by(|a, b| a.origin == b.origin);
        let mut seq = s.serialize_seq(Some(runs.clone().count()))?;
        for run in runs {
            seq.serialize_element(&Run(run))?;
        }
        seq.end()
    }

    struct Run<'a, P: PeerId>(&'a [IHaveRange<P>]);

    impl<P: PeerId> Serialize for Run<'_, P> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&self.0[0].origin)?;
            t.serialize_element(&Ranges(self.0))?;
            t.end()
        }
    }

    struct Ranges<'a, P: PeerId>(&'a [IHaveRange<P>]);

    impl<P: PeerId> Serialize for Ranges<'_, P> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for r in self.0 {
                seq.serialize_element(&(r.first, r.count, r.hops))?;
            }
            seq.end()
        }
    }

    pub fn deserialize<'de, P: PeerId, D: Deserializer<'de>>(d: D) -> Result<IHaves<P>, D::Error> {
        d.deserialize_seq(Runs(PhantomData))
    }

    struct Runs<P>(PhantomData<P>);

    impl<'de, P: PeerId> Visitor<'de> for Runs<P> {
        type Value = IHaves<P>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("IHAVE runs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = IHaves::new();
            while seq.next_element_seed(RunSeed(&mut out))?.is_some() {}
            Ok(out)
        }
    }

    /// Appends one run to the ids decoded so far.
    struct RunSeed<'a, P: PeerId>(&'a mut IHaves<P>);

    impl<'de, P: PeerId> DeserializeSeed<'de> for RunSeed<'_, P> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_tuple(2, self)
        }
    }

    impl<'de, P: PeerId> Visitor<'de> for RunSeed<'_, P> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an origin and its announcements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let origin: P = seq
                .next_element()?
                .ok_or_else(|| A::Error::invalid_length(0, &self))?;
            seq.next_element_seed(RangesSeed(origin, self.0))?
                .ok_or_else(|| A::Error::custom("IHAVE run without announcements"))
        }
    }

    struct RangesSeed<'a, P: PeerId>(P, &'a mut IHaves<P>);

    impl<'de, P: PeerId> DeserializeSeed<'de> for RangesSeed<'_, P> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de, P: PeerId> Visitor<'de> for RangesSeed<'_, P> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("(first seq, count, hops) ranges of announcements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let RangesSeed(origin, out) = self;
            while let Some((first, count, hops)) = seq.next_element::<(u64, u32, u16)>()? {
                if count == 0 {
                    return Err(A::Error::custom("IHAVE range of no ids"));
                }
                if count as usize > MAX_IHAVE_WIRE - out.len() {
                    return Err(A::Error::custom(format_args!(
                        "IHAVE with more than {MAX_IHAVE_WIRE} ids"
                    )));
                }
                // `count - 1` fits a u64 (count <= MAX_IHAVE_WIRE).
                if first.checked_add(u64::from(count) - 1).is_none() {
                    return Err(A::Error::custom(
                        "IHAVE range past the last sequence number",
                    ));
                }
                out.push_range(origin, first, count, hops);
            }
            Ok(())
        }
    }
}

/// Wire messages of the broadcast layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// Eager push of a payload.
    Gossip(Gossip<P>),
    /// Lazy announcement of message ids (batched). On the wire, consecutive announcements of
    /// one origin share it, and consecutive sequence numbers with one hop count make a range:
    /// `[(origin, [(first seq, count, hops)])]`, at most [`MAX_IHAVE_WIRE`] ids in all.
    IHave(#[serde(with = "ihave_wire")] IHaves<P>),
    /// Move the link to eager; with an id, also send that message.
    Graft(Option<MessageId<P>>),
    /// Move the link to lazy, for the messages of every origin.
    Prune,
    /// Move the link to lazy for the messages of this origin.
    PruneOrigin(P),
    /// Move the link to eager for the messages of this origin (a tree optimisation: no
    /// payload is asked for).
    GraftOrigin(P),
    /// What the sender has received, so the receiver can send what it lacks.
    Digest(Digest<P>),
    /// A payload sent in answer to a digest.
    CatchUp(Gossip<P>),
}

impl<P: PeerId> Message<P> {
    /// How many user payloads this message carries (0 or 1); the simulator counts RMR with it.
    pub fn user_payloads(&self) -> usize {
        match self {
            Message::Gossip(g) | Message::CatchUp(g) if g.kind == PayloadKind::User => 1,
            _ => 0,
        }
    }

    /// A short name for logs and per-kind counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Gossip(_) => "gossip",
            Message::IHave(_) => "ihave",
            Message::Graft(_) | Message::GraftOrigin(_) => "graft",
            Message::Prune | Message::PruneOrigin(_) => "prune",
            Message::Digest(_) => "digest",
            Message::CatchUp(_) => "catchup",
        }
    }
}

/// Timers of the broadcast layer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Flush the batched IHAVE announcements.
    DispatchLazyPush,
    /// A message announced by IHAVE may still be missing: graft an announcer.
    SendGraft(MessageId<P>),
    /// The messages announced together (one IHAVE) may still be missing: graft announcers
    /// for those whose wait is over. One timer per batch instead of one per id.
    SendGrafts,
    /// Sweep the cache and the record for expired entries (periodic).
    Evict,
    /// Send a digest to one random neighbour (periodic).
    CatchUp,
    /// Send a second digest to a new neighbour, once the messages too young for the first one
    /// are old enough to be offered.
    CatchUpPeer(P),
    /// A FIFO gap of this origin has been held long enough: skip it.
    FifoGap(P),
}

/// Inputs of the broadcast layer.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A message from a neighbour.
    RecvMessage(P, Message<P>),
    /// A timer this layer asked for fired.
    TimerExpired(Timer<P>),
    /// The overlay opened an active link.
    NeighborUp(P),
    /// The overlay closed an active link.
    NeighborDown(P),
}

/// Outputs of the broadcast layer.
#[derive(Debug, PartialEq, Eq)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer.
    SendMessage(P, Message<P>),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer<P>),
    /// A broadcast reached this node for the first time.
    Deliver(Delivery<P>),
}

/// A broadcast delivered to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<P: PeerId> {
    /// Its id.
    pub id: MessageId<P>,
    /// User or system.
    pub kind: PayloadKind,
    /// The payload, as broadcast.
    pub payload: Bytes,
    /// Hops from the origin to this node.
    pub hops: u16,
    /// The neighbour it came from.
    pub from: P,
}

/// Counters of the broadcast layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// GOSSIP messages sent (eager pushes and GRAFT answers).
    pub gossip_sent: u64,
    /// GOSSIP messages received.
    pub gossip_received: u64,
    /// IHAVE messages sent.
    pub ihave_sent: u64,
    /// IHAVE messages received.
    pub ihave_received: u64,
    /// GRAFT messages sent (repairs and tree optimisations).
    pub graft_sent: u64,
    /// GRAFT messages received.
    pub graft_received: u64,
    /// PRUNE messages sent.
    pub prune_sent: u64,
    /// PRUNE messages received.
    pub prune_received: u64,
    /// Payloads received that had already been received.
    pub duplicates: u64,
    /// Messages handed up (user and system).
    pub delivered: u64,
    /// Tree optimisations performed (a lazy link grafted because it was shorter).
    pub optimizations: u64,
    /// Digests sent.
    pub digests_sent: u64,
    /// Digests received.
    pub digests_received: u64,
    /// CATCHUP payloads sent.
    pub catchup_sent: u64,
    /// CATCHUP payloads received.
    pub catchup_received: u64,
    /// Inputs (or parts of inputs) ignored as invalid: over a cap, malformed, or a control
    /// message from a peer that is not a neighbour.
    pub dropped_invalid: u64,
    /// Holes given up: pushed out of the per-origin window before they were filled.
    pub holes_given_up: u64,
    /// Payloads dropped because their sequence number was more than `max_seq_jump` ahead of
    /// their origin's record (forged, or the first of a far jump, fetched again once
    /// confirmed).
    pub seq_out_of_window: u64,
    /// Payloads longer than [`Config::cache_bytes`]: delivered and relayed, but not cached, so
    /// not served to GRAFT or catch-up.
    pub too_large_to_cache: u64,
    /// FIFO gaps skipped on timeout or overflow.
    pub fifo_gaps_skipped: u64,
    /// FIFO: messages that arrived after their gap was skipped, not delivered.
    pub fifo_dropped_late: u64,
    /// Neighbours that came up (overlay links opened).
    pub neighbor_up: u64,
    /// Neighbours that went down (overlay links closed).
    pub neighbor_down: u64,
    /// GRAFTs sent because an announced message did not come by the tree in time (repairs,
    /// as opposed to tree optimisations).
    pub graft_repairs: u64,
}

/// A payload in the cache.
#[derive(Debug)]
struct Cached<P> {
    kind: PayloadKind,
    payload: Bytes,
    /// Hops it had when it arrived here (0 for our own).
    hops: u16,
    /// The neighbour it came from (ourselves for our own).
    from: P,
    /// When it arrived here.
    at: Stamp,
}

/// The payload cache: per origin, a ring of slots indexed by sequence number, so a lookup is
/// one small search by origin and an index, and the steady flow of one origin (append its
/// newest, evict its oldest) allocates nothing. `order` keeps the insertion order over all
/// origins, for eviction by count and by age: the cache holds exactly what one ordered map with
/// that order would.
///
/// A ring spans from its lowest to its highest number, gaps included. So that sparse numbers
/// (a forged far jump, a straggler far below the rest) cannot make it large, a ring of `n`
/// entries spans at most [`Ring::limit`]`(n)` slots (`2n` plus a little room for reordering):
/// an entry that does not fit that way goes to `sparse`, an ordered map, as does a ring's
/// lowest entry when its newest would stretch it too far. Slots in all: at most 10 per entry.
#[derive(Debug)]
struct Cache<P: PeerId> {
    rings: BTreeMap<P, Ring<P>>,
    /// Entries that did not fit their ring.
    sparse: BTreeMap<MessageId<P>, Cached<P>>,
    /// Entries over the rings and `sparse`.
    len: usize,
    /// Payload bytes over the rings and `sparse`.
    bytes: usize,
    /// Insertion order, one entry per cached id, with when it was inserted.
    order: VecDeque<(Stamp, MessageId<P>)>,
}

/// The cached payloads of one origin: slot `i` holds sequence number `base + i`; the first and
/// the last slots are full.
#[derive(Debug)]
struct Ring<P> {
    base: u64,
    slots: VecDeque<Option<Cached<P>>>,
    count: usize,
}

impl<P> Ring<P> {
    /// Most slots a ring of `count` entries may span: twice as many, plus room for a reorder
    /// of up to 64 numbers (less while it holds fewer than 8).
    fn limit(count: usize) -> usize {
        count.saturating_mul(2) + count.saturating_mul(8).min(64)
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    fn get(&self, seq: u64) -> Option<&Cached<P>> {
        self.slots[self.index(seq)?].as_ref()
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Cached<P>> {
        let i = self.index(seq)?;
        self.slots[i].as_mut()
    }

    fn remove(&mut self, seq: u64) -> Option<Cached<P>> {
        let i = self.index(seq)?;
        let old = self.slots[i].take()?;
        self.count -= 1;
        self.trim();
        Some(old)
    }

    /// Drop the empty slots at both ends.
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        while let Some(None) = self.slots.back() {
            self.slots.pop_back();
        }
    }

    /// The entries numbered `from` or above, ascending.
    fn from(&self, from: u64) -> impl Iterator<Item = (u64, &Cached<P>)> {
        let skip = usize::try_from(from.saturating_sub(self.base)).unwrap_or(usize::MAX);
        self.slots
            .iter()
            .enumerate()
            .skip(skip)
            .filter_map(|(i, c)| Some((self.base + i as u64, c.as_ref()?)))
    }
}

impl<P: PeerId> Cache<P> {
    fn new() -> Self {
        Self {
            rings: BTreeMap::new(),
            sparse: BTreeMap::new(),
            len: 0,
            bytes: 0,
            order: VecDeque::new(),
        }
    }

    fn get(&self, id: &MessageId<P>) -> Option<&Cached<P>> {
        let found = self.rings.get(&id.origin).and_then(|r| r.get(id.seq));
        if found.is_none() && !self.sparse.is_empty() {
            return self.sparse.get(id);
        }
        found
    }

    fn get_mut(&mut self, id: &MessageId<P>) -> Option<&mut Cached<P>> {
        if let Some(r) = self.rings.get_mut(&id.origin)
            && r.get(id.seq).is_some()
        {
            return r.get_mut(id.seq);
        }
        self.sparse.get_mut(id)
    }

    fn remove(&mut self, id: &MessageId<P>) {
        if let Some(ring) = self.rings.get_mut(&id.origin)
            && let Some(old) = ring.remove(id.seq)
        {
            self.len -= 1;
            self.bytes -= old.payload.len();
            if ring.count == 0 {
                self.rings.remove(&id.origin);
            } else {
                // Fewer entries, maybe the same span: keep it within the limit.
                while ring.slots.len() > Ring::<P>::limit(ring.count) {
                    Self::spill_lowest(ring, id.origin, &mut self.sparse);
                }
            }
        } else if let Some(old) = self.sparse.remove(id) {
            self.len -= 1;
            self.bytes -= old.payload.len();
        }
    }

    /// Move the lowest entry of `ring` (not empty) to `sparse`.
    fn spill_lowest(ring: &mut Ring<P>, origin: P, sparse: &mut BTreeMap<MessageId<P>, Cached<P>>) {
        if let Some(old) = ring.slots.pop_front().flatten() {
            let seq = ring.base;
            sparse.insert(MessageId { origin, seq }, old);
            ring.count -= 1;
        }
        ring.base += 1;
        ring.trim();
    }

    /// Evict the oldest insertions while there are more than `keep` entries or more than
    /// `max_bytes` payload bytes.
    fn evict_to(&mut self, keep: usize, max_bytes: usize) {
        while self.len > keep || self.bytes > max_bytes {
            let Some((_, id)) = self.order.pop_front() else {
                break;
            };
            self.remove(&id);
        }
    }

    /// Evict the entries at least `retention` old at `now`.
    fn expire(&mut self, now: Stamp, retention: Stamp) {
        while let Some(&(at, id)) = self.order.front() {
            if now.saturating_sub(at) < retention {
                break;
            }
            self.order.pop_front();
            self.remove(&id);
        }
    }

    /// The lowest seq in `first..=last` (`first <= last`) whose entry of `origin` is cached
    /// and matches `f`: one pass over the ring's slots when no entry is out of its ring, else
    /// one `get` per seq.
    fn find(
        &self,
        origin: P,
        first: u64,
        last: u64,
        mut f: impl FnMut(&Cached<P>) -> bool,
    ) -> Option<u64> {
        if !self.sparse.is_empty() {
            return (first..=last)
                .find(|&seq| self.get(&MessageId { origin, seq }).is_some_and(&mut f));
        }
        let ring = self.rings.get(&origin)?;
        let from = first.max(ring.base);
        let to = last.min(
            ring.base
                .checked_add(ring.slots.len() as u64)?
                .checked_sub(1)?,
        );
        if from > to {
            return None;
        }
        // Both within the ring's slots, so their offsets fit a usize.
        let (a, b) = ((from - ring.base) as usize, (to - ring.base) as usize);
        ring.slots
            .range(a..=b)
            .position(|c| c.as_ref().is_some_and(&mut f))
            .map(|i| from + i as u64)
    }

    /// Insert `id`, or replace its entry (which keeps its place in the order); at most
    /// `capacity` entries (at least 1) and `max_bytes` payload bytes are kept, the oldest
    /// insertions evicted first. A payload longer than `max_bytes` is not cached (an entry it
    /// would replace stays): returns false.
    fn insert(
        &mut self,
        id: MessageId<P>,
        c: Cached<P>,
        capacity: usize,
        max_bytes: usize,
    ) -> bool {
        let size = c.payload.len();
        if size > max_bytes {
            return false;
        }
        if let Some(old) = self.get_mut(&id) {
            let was = old.payload.len();
            *old = c;
            self.bytes = self.bytes - was + size;
            // A longer payload may push the oldest out (this entry too, if it is the oldest).
            self.evict_to(self.len, max_bytes);
            return true;
        }
        self.evict_to(capacity.saturating_sub(1), max_bytes - size);
        self.order.push_back((c.at, id));
        self.len += 1;
        self.bytes += size;
        let Some(ring) = self.rings.get_mut(&id.origin) else {
            let ring = Ring {
                base: id.seq,
                slots: VecDeque::from([Some(c)]),
                count: 1,
            };
            self.rings.insert(id.origin, ring);
            return true;
        };
        let end = ring.base + ring.slots.len() as u64;
        if id.seq < ring.base {
            // Below the lowest: in the ring only if it stays within its span.
            if end - id.seq > Ring::<P>::limit(ring.count + 1) as u64 {
                self.sparse.insert(id, c);
                return true;
            }
            for _ in id.seq + 1..ring.base {
                ring.slots.push_front(None);
            }
            ring.slots.push_front(Some(c));
            ring.base = id.seq;
        } else if id.seq >= end {
            // Above the highest: the lowest entries move to `sparse` while the span is too long.
            while id.seq - ring.base >= Ring::<P>::limit(ring.count + 1) as u64 {
                Self::spill_lowest(ring, id.origin, &mut self.sparse);
                if ring.slots.is_empty() {
                    ring.base = id.seq;
                    break;
                }
            }
            let end = ring.base + ring.slots.len() as u64;
            for _ in end..id.seq {
                ring.slots.push_back(None);
            }
            ring.slots.push_back(Some(c));
        } else {
            ring.slots[(id.seq - ring.base) as usize] = Some(c);
        }
        ring.count += 1;
        true
    }
}

/// Milliseconds since the state first saw the clock: half the size of an `Instant`, and these
/// are kept per message and per origin.
type Stamp = u64;

fn millis(d: Duration) -> Stamp {
    d.as_millis().min(u64::MAX as u128) as u64
}

/// The missing sequence numbers of one origin, ascending, with when each went missing. Boxed,
/// so a record without holes (the common case) costs one pointer.
#[derive(Debug, Default)]
#[expect(
    clippy::box_collection,
    reason = "8 bytes per record instead of 24 when empty"
)]
struct Holes(Option<Box<Vec<(u64, Stamp)>>>);

impl Holes {
    fn from_vec(v: Vec<(u64, Stamp)>) -> Self {
        Self((!v.is_empty()).then(|| Box::new(v)))
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    fn as_slice(&self) -> &[(u64, Stamp)] {
        self.0.as_deref().map_or(&[], |v| v.as_slice())
    }

    fn vec(&mut self) -> &mut Vec<(u64, Stamp)> {
        self.0.get_or_insert_with(Default::default)
    }

    fn find(&self, seq: u64) -> Result<usize, usize> {
        self.as_slice().binary_search_by_key(&seq, |(s, _)| *s)
    }

    /// Drop the allocation once empty.
    fn shrink(&mut self) {
        if self.len() == 0 {
            self.0 = None;
        }
    }
}

/// What this node has received from one origin.
#[derive(Debug)]
struct OriginRecord {
    /// Highest sequence number received.
    high: u64,
    /// Sequence numbers below `high` not received yet.
    holes: Holes,
    /// Last time a new message of this origin arrived.
    last: Stamp,
    /// FIFO: highest sequence number handed up in order.
    delivered: u64,
}

impl OriginRecord {
    /// Note `seq` as received at `now`: new if above the highest (the numbers skipped become
    /// holes, the nearest `window` within `budget` more over all records) or a hole, a
    /// duplicate otherwise.
    fn advance(
        &mut self,
        seq: u64,
        now: Stamp,
        window: u64,
        budget: u64,
        total_holes: &mut usize,
        given_up: &mut u64,
    ) -> Accept {
        if seq > self.high {
            // The numbers skipped become holes: the nearest `window`, within the global budget.
            let skipped = seq - self.high - 1;
            let kept = skipped.min(window).min(budget);
            // A forged jump can skip almost 2^64 numbers.
            *given_up = given_up.saturating_add(skipped - kept);
            if kept > 0 {
                self.holes.vec().extend((seq - kept..seq).map(|s| (s, now)));
            }
            *total_holes += kept as usize;
            if self.holes.len() > window as usize {
                let excess = self.holes.len() - window as usize;
                self.holes.vec().drain(..excess);
                *total_holes -= excess;
                *given_up = given_up.saturating_add(excess as u64);
            }
            self.high = seq;
            self.last = now;
            Accept::New
        } else {
            match self.holes.find(seq) {
                Ok(i) => {
                    self.holes.vec().remove(i);
                    self.holes.shrink();
                    *total_holes -= 1;
                    self.last = now;
                    Accept::New
                }
                Err(_) => Accept::Duplicate,
            }
        }
    }
}

enum Accept {
    New,
    Duplicate,
    Invalid,
    /// Too far ahead of the origin's record: dropped, kept as evidence only.
    OutOfWindow,
}

/// Cap on the out-of-window numbers noted per origin ([`State::far_ahead`]).
const FAR_AHEAD_PER_ORIGIN: usize = 8;
/// Cap on the origins with out-of-window numbers noted.
const FAR_AHEAD_ORIGINS: usize = 256;

/// A message announced to us that we do not have yet.
#[derive(Debug)]
struct Missing<P> {
    /// Who announced it and with how many hops.
    announcers: Vec<(P, u16)>,
    /// A GRAFT for it went out already.
    grafted: bool,
}

/// The tree of one origin: the neighbours that are lazy for its messages (the others are
/// eager).
#[derive(Debug)]
struct OriginTree<P> {
    lazy: Vec<P>,
    /// The neighbour the latest new message of this origin came by: never pruned for a
    /// duplicate (see "Many senders" in the module docs).
    parent: Option<P>,
    /// Last time a message of this origin arrived, for least-recently-used replacement.
    last: Stamp,
    /// The parent went down and no new message has come since: the tree will not bring the
    /// next ones, so an IHAVE for a missing message from no deeper than `depth` is grafted at
    /// once.
    orphan: bool,
    /// Hops of the latest message of this origin by the tree.
    depth: u16,
}

/// Broadcast state of one node.
///
/// Every collection is ordered (no hashing), so iteration and therefore runs are deterministic.
#[derive(Debug)]
pub struct State<P: PeerId> {
    me: P,
    config: Config,
    seq: u64,
    eager: Vec<P>,
    lazy: Vec<P>,
    /// IHAVE batches waiting for the dispatch timer, per peer: what was queued before the
    /// last [`State::split_lazy_log`]; the announcements since are in `lazy_log`.
    lazy_queue: Vec<(P, IHaves<P>)>,
    /// Announcements queued since the last split, once per delivery (see [`LazyLog`]).
    lazy_log: LazyLog<P>,
    /// Most ids and most ranges of any batch in `lazy_queue` (upper bounds), so that whether
    /// an announcement may go to the log is two comparisons.
    lazy_queue_max: (usize, usize),
    dispatch_armed: bool,
    cache: Cache<P>,
    records: BTreeMap<P, OriginRecord>,
    /// Per origin, the out-of-window sequence numbers seen (ascending, at most
    /// `FAR_AHEAD_PER_ORIGIN`; at most `FAR_AHEAD_ORIGINS` origins): evidence that the origin
    /// is far ahead of its record, never counted as received.
    far_ahead: BTreeMap<P, Vec<u64>>,
    /// Holes over all records.
    total_holes: usize,
    /// Roughly in order of last activity; at most one entry per origin.
    record_order: VecDeque<(Stamp, P)>,
    /// What [`Stamp`]s count from.
    epoch: Option<Instant>,
    /// The latest instant [`Self::stamp`] converted, and its stamp: one input's handling
    /// stamps its instant several times.
    last_stamp: Option<(Instant, Stamp)>,
    /// Announced ids not received yet: an insert and a remove for each id announced before
    /// the tree brings it (under load, hundreds per IHAVE), so a hash map, with foldhash
    /// (cheaper than std's SipHash on these small keys). Its seed is random, secret to peers, so
    /// announced ids cannot be chosen to collide; it is looked up by id only, never walked,
    /// so the seed does not change what the node does (a seeded simulation stays
    /// reproducible).
    missing: HashMap<MessageId<P>, Missing<P>, RandomState>,
    digest_cursor: Option<P>,
    /// Per neighbour sent a digest, the CATCHUP payloads received from it since: a full
    /// reply (`max_catchup_reply`) means it has more, so the next digest goes at once.
    catchup_pulls: Vec<(P, usize)>,
    fifo_held: BTreeMap<MessageId<P>, Delivery<P>>,
    fifo_armed: BTreeSet<P>,
    /// Peers recently kept as the shorter path by [`Self::better_path`], for which origin,
    /// with when.
    switched: Vec<(P, P, Instant)>,
    /// Per-origin trees, at most `max_origin_trees`.
    trees: BTreeMap<P, OriginTree<P>>,
    /// Reused buffer for [`Self::forward`] (at most one entry per neighbour).
    scratch: Vec<P>,
    /// Announcer lists of missing messages that arrived, empty, for the next ones (at most
    /// `SPARE_ANNOUNCERS`): under load most payloads are announced before they come, and the
    /// list was an allocation and a free each.
    spare_announcers: Vec<Vec<(P, u16)>>,
    /// Announced ids waiting `graft_timeout_1` for their eager copy, with when the wait ends
    /// ([`Self::micros`]), in that order: one [`Timer::SendGrafts`] per distinct end. At most
    /// `max_missing`; beyond, an id gets a timer of its own.
    graft_due: VecDeque<(u64, MessageId<P>)>,
    stats: Stats,
}

/// Cap on [`State::switched`].
const SWITCHED_CAP: usize = 16;
/// Cap on [`State::spare_announcers`]: an IHAVE batch (one per lazy link and
/// `dispatch_timeout`) may announce hundreds of ids that the tree has not brought yet, each
/// a list taken from here; 512 lists of 4 `NodeId` announcers are about 100 KiB.
const SPARE_ANNOUNCERS: usize = 512;

impl<P: PeerId> State<P> {
    /// A new broadcast layer for node `me`.
    pub fn new(me: P, config: Config) -> Self {
        Self {
            me,
            config,
            seq: 0,
            eager: Vec::new(),
            lazy: Vec::new(),
            lazy_queue: Vec::new(),
            lazy_log: LazyLog::new(),
            lazy_queue_max: (0, 0),
            dispatch_armed: false,
            cache: Cache::new(),
            records: BTreeMap::new(),
            far_ahead: BTreeMap::new(),
            total_holes: 0,
            record_order: VecDeque::new(),
            epoch: None,
            last_stamp: None,
            missing: HashMap::default(),
            digest_cursor: None,
            catchup_pulls: Vec::new(),
            fifo_held: BTreeMap::new(),
            fifo_armed: BTreeSet::new(),
            switched: Vec::new(),
            trees: BTreeMap::new(),
            scratch: Vec::new(),
            spare_announcers: Vec::new(),
            graft_due: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// Arm the periodic timers (cache expiry, catch-up). Called once.
    pub fn start<R: Rng>(&mut self, _now: Instant, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        out.push_back(OutEvent::ScheduleTimer(
            self.config.evict_interval,
            Timer::Evict,
        ));
        let first = jitter(self.config.catchup_interval, rng);
        out.push_back(OutEvent::ScheduleTimer(first, Timer::CatchUp));
    }

    /// Handle one input.
    pub fn handle<R: Rng>(
        &mut self,
        event: InEvent<P>,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        match event {
            InEvent::RecvMessage(from, message) => {
                if from == self.me {
                    self.stats.dropped_invalid += 1;
                    return;
                }
                match message {
                    Message::Gossip(g) => self.on_gossip(from, g, now, out),
                    Message::IHave(ids) => self.on_ihave(from, ids, now, out),
                    Message::Graft(id) => self.on_graft(from, id, now, out),
                    Message::Prune => self.on_prune(from, None, now, out),
                    Message::PruneOrigin(origin) => self.on_prune(from, Some(origin), now, out),
                    Message::GraftOrigin(origin) => {
                        tracing::trace!(target: "gossip::spread", me = ?self.me, ?from, ?origin, "grafted");
                        self.stats.graft_received += 1;
                        if self.is_neighbor(&from) {
                            self.set_eager_for(origin, from, now);
                        } else {
                            self.stats.dropped_invalid += 1;
                        }
                    }
                    Message::Digest(d) => self.on_digest(from, d, now, out),
                    Message::CatchUp(g) => self.on_catchup(from, g, now, out),
                }
            }
            InEvent::TimerExpired(timer) => match timer {
                Timer::DispatchLazyPush => {
                    self.dispatch_armed = false;
                    self.flush_lazy(out);
                }
                Timer::SendGraft(id) => self.on_graft_timer(id, now, out),
                Timer::SendGrafts => {
                    let now_us = self.micros(now);
                    while let Some(&(due, id)) = self.graft_due.front() {
                        if due > now_us {
                            break;
                        }
                        self.graft_due.pop_front();
                        self.on_graft_timer(id, now, out);
                    }
                }
                Timer::Evict => {
                    self.evict(now);
                    out.push_back(OutEvent::ScheduleTimer(
                        self.config.evict_interval,
                        Timer::Evict,
                    ));
                }
                Timer::CatchUp => {
                    let n = self.eager.len() + self.lazy.len();
                    if n > 0 {
                        let i = rng.random_range(0..n);
                        let peer = if i < self.eager.len() {
                            self.eager[i]
                        } else {
                            self.lazy[i - self.eager.len()]
                        };
                        self.send_digest(peer, now, out);
                    }
                    let next = jitter(self.config.catchup_interval, rng);
                    out.push_back(OutEvent::ScheduleTimer(next, Timer::CatchUp));
                }
                Timer::CatchUpPeer(peer) => {
                    if self.is_neighbor(&peer) {
                        self.send_digest(peer, now, out);
                    }
                }
                Timer::FifoGap(origin) => self.on_fifo_gap(origin, out),
            },
            InEvent::NeighborUp(peer) => {
                if peer == self.me {
                    return;
                }
                tracing::trace!(target: "gossip::spread", me = ?self.me, ?peer, "up");
                self.stats.neighbor_up += 1;
                if !self.is_neighbor(&peer) {
                    self.eager.push(peer);
                    // A tree that still has its parent does not need the new link, and an
                    // eager one would close a cycle: the first copy over it, faster but
                    // possibly many hops deeper, would become the parent of this node and its
                    // whole subtree for one broadcast. Start it lazy for those origins; an
                    // orphaned tree (its parent went down) takes it eagerly.
                    for tree in self.trees.values_mut() {
                        if tree.parent.is_some() && !tree.lazy.contains(&peer) {
                            tree.lazy.push(peer);
                        }
                    }
                }
                // At once, and again when what was too young to be offered is old enough:
                // a healed partition exchanges everything over its first link.
                self.send_digest(peer, now, out);
                out.push_back(OutEvent::ScheduleTimer(
                    self.config.catchup_min_age + self.config.dispatch_timeout,
                    Timer::CatchUpPeer(peer),
                ));
            }
            InEvent::NeighborDown(peer) => {
                tracing::trace!(target: "gossip::spread", me = ?self.me, ?peer, "down");
                self.stats.neighbor_down += u64::from(self.is_neighbor(&peer));
                self.eager.retain(|p| *p != peer);
                self.lazy.retain(|p| *p != peer);
                self.split_lazy_log();
                self.lazy_queue.retain(|(p, _)| *p != peer);
                self.catchup_pulls.retain(|(p, _)| *p != peer);
                self.switched.retain(|(p, _, _)| *p != peer);
                for tree in self.trees.values_mut() {
                    tree.lazy.retain(|p| *p != peer);
                    if tree.parent == Some(peer) {
                        tree.parent = None;
                        tree.orphan = true;
                    }
                }
            }
        }
    }

    /// Broadcast `payload` from this node; it is not delivered locally.
    pub fn broadcast<R: Rng>(
        &mut self,
        payload: Bytes,
        kind: PayloadKind,
        now: Instant,
        _rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) -> MessageId<P> {
        self.seq += 1;
        let id = MessageId {
            origin: self.me,
            seq: self.seq,
        };
        self.cache_insert(id, kind, payload.clone(), 0, self.me, now);
        self.touch_tree(self.me, now);
        self.forward(
            &Gossip {
                id,
                kind,
                payload,
                hops: 0,
            },
            self.me,
            None,
            out,
        );
        id
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Peers this node pushes payloads to.
    pub fn eager_peers(&self) -> &[P] {
        &self.eager
    }

    /// Peers this node only announces ids to.
    pub fn lazy_peers(&self) -> &[P] {
        &self.lazy
    }

    /// Messages in the payload cache.
    pub fn cache_len(&self) -> usize {
        self.cache.len
    }

    /// Payload bytes in the payload cache (at most [`Config::cache_bytes`]).
    pub fn cache_payload_bytes(&self) -> usize {
        self.cache.bytes
    }

    /// Origins in the received-id record.
    pub fn received_len(&self) -> usize {
        self.records.len()
    }

    /// Holes (missing sequence numbers) tracked over all origins.
    pub fn holes_len(&self) -> usize {
        self.total_holes
    }

    /// Origins with a tree of their own (at most [`Config::max_origin_trees`]).
    pub fn origin_trees_len(&self) -> usize {
        self.trees.len()
    }

    /// Messages announced to this node that it is waiting for.
    pub fn missing_len(&self) -> usize {
        self.missing.len()
    }

    /// Messages held back by FIFO ordering.
    pub fn fifo_held_len(&self) -> usize {
        self.fifo_held.len()
    }

    /// Whether this node has received (or sent) the message `id`, as far as its record tells.
    pub fn has_received(&self, id: &MessageId<P>) -> bool {
        self.has(id)
    }

    // ----- message handlers -----

    fn on_gossip(&mut self, from: P, g: Gossip<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        self.stats.gossip_received += 1;
        match self.accept(g.id, now) {
            Accept::Invalid => self.stats.dropped_invalid += 1,
            // Counted in `accept`; not relayed, and no PRUNE: the sender may be honest.
            Accept::OutOfWindow => {}
            Accept::Duplicate => {
                self.stats.duplicates += 1;
                if self.better_path(from, g.id, g.hops, true, now, out) {
                    return;
                }
                // Prune even a link that is lazy here for this origin: the peer pushed, so it is
                // eager at its end (the two ends made their trees of this origin from different
                // shared sets), and only a PRUNE makes them agree.
                let origin = g.id.origin;
                // Never the link the latest new message came by: with many messages of one
                // origin in flight, the first copy of each comes by whichever path is faster
                // at that moment, and pruning every link a duplicate came by pruned all of a
                // node's parents in turn, leaving it to GRAFT repairs.
                let parent = self.trees.get(&origin).and_then(|t| t.parent);
                if self.is_neighbor(&from) && parent != Some(from) {
                    self.set_lazy_for(origin, from, now);
                    self.stats.prune_sent += 1;
                    out.push_back(OutEvent::SendMessage(from, self.prune_message(origin)));
                }
            }
            Accept::New => {
                // A link that delivers a new message is part of the tree (paper, Alg. 1): the
                // origin's tree (made if it has none) is refreshed and its parent is `from`, in
                // one lookup (hot path).
                let neighbor = self.is_neighbor(&from);
                let stamp = self.stamp(now);
                let hops = g.hops;
                let mut old_parent = None;
                let was_lazy = self.with_tree(g.id.origin, now, |t| {
                    t.last = stamp;
                    old_parent = t.parent.filter(|p| *p != from);
                    t.parent = Some(from);
                    t.orphan = false;
                    t.depth = hops;
                    let lazy = neighbor && t.lazy.contains(&from);
                    if lazy {
                        t.lazy.retain(|p| *p != from);
                    }
                    lazy
                });
                if was_lazy.unwrap_or_else(|| neighbor && self.lazy.contains(&from)) {
                    // We pruned it (or it pruned us) while this copy was in flight; it is our
                    // parent now, so make the link eager at both ends.
                    self.make_eager(from);
                    if self.config.max_origin_trees > 0 {
                        self.stats.graft_sent += 1;
                        out.push_back(OutEvent::SendMessage(from, self.graft_message(g.id.origin)));
                    }
                }
                let missing = self.missing.remove(&g.id);
                if g.kind == PayloadKind::User {
                    tracing::trace!(target: "gossip::spread", me = ?self.me, origin = ?g.id.origin, seq = g.id.seq, ?from, hops = g.hops, announced = missing.as_ref().map(|m| m.announcers.len()), "new");
                }
                self.cache_insert(g.id, g.kind, g.payload.clone(), g.hops, from, now);
                self.forward(&g, from, old_parent, out);
                let (id, hops) = (g.id, g.hops);
                self.deliver(g, from, out);
                // Announced earlier by a lazy link than the tree brought it: was that path
                // shorter? (The optimisation for an IHAVE that overtook the payload.)
                if let Some(m) = missing {
                    let best = m.announcers.iter().min_by_key(|(_, h)| *h).copied();
                    self.recycle(m);
                    if let Some((best, best_hops)) = best
                        && best_hops < hops
                    {
                        self.better_path(best, id, best_hops, false, now, out);
                    }
                }
            }
        }
    }

    fn on_catchup(&mut self, from: P, g: Gossip<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        self.stats.catchup_received += 1;
        let cap = self.config.max_catchup_reply;
        let mut full = false;
        if let Some((_, n)) = self.catchup_pulls.iter_mut().find(|(p, _)| *p == from) {
            *n += 1;
            full = *n == cap;
        }
        self.accept_catchup(from, g, now, out);
        if full && self.is_neighbor(&from) {
            // A full reply: the neighbour has more for us. Ask again now rather than a
            // `catchup_interval` later, while its cache still holds them.
            self.send_digest(from, now, out);
        }
    }

    fn accept_catchup(
        &mut self,
        from: P,
        g: Gossip<P>,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        match self.accept(g.id, now) {
            Accept::Invalid => self.stats.dropped_invalid += 1,
            Accept::OutOfWindow => {}
            Accept::Duplicate => self.stats.duplicates += 1,
            Accept::New => {
                if let Some(m) = self.missing.remove(&g.id) {
                    self.recycle(m);
                }
                self.cache_insert(g.id, g.kind, g.payload.clone(), g.hops, from, now);
                // Neighbours may have missed it too: announce it to all of them, so those that
                // lack it graft it through the usual path, and the others just ignore it.
                self.announce_path(g.id, from, g.hops, out);
                self.deliver(g, from, out);
            }
        }
    }

    fn on_ihave(
        &mut self,
        from: P,
        mut ids: IHaves<P>,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        self.stats.ihave_received += 1;
        if !self.is_neighbor(&from) {
            self.stats.dropped_invalid += 1;
            return;
        }
        if ids.len() > self.config.max_ihave_ids {
            self.stats.dropped_invalid += (ids.len() - self.config.max_ihave_ids) as u64;
            ids.truncate(self.config.max_ihave_ids);
        }
        // The origin of the latest range and the highest seq up to which all of its ids are
        // received: a batch is mostly runs of one origin, and its ids mostly received already
        // (pushed by the tree), so one record lookup per run answers `has` for them, and the
        // ids of a range below that floor are checked against the cache in one pass.
        let mut floor: Option<(P, u64)> = None;
        for IHaveRange {
            origin,
            first,
            count,
            hops,
        } in ids.ranges
        {
            let Some(last) = count
                .checked_sub(1)
                .and_then(|n| first.checked_add(u64::from(n)))
            else {
                continue;
            };
            let mut first = first;
            if first == 0 {
                self.stats.dropped_invalid += 1;
                if last == 0 {
                    continue;
                }
                first = 1;
            }
            if origin == self.me {
                continue;
            }
            let below = match floor {
                Some((o, f)) if o == origin => f,
                _ => {
                    let f = self.contiguous(&origin);
                    floor = Some((origin, f));
                    f
                }
            };
            if first <= below {
                self.offer_paths(from, origin, first, last.min(below), hops, now, out);
            }
            if last > below {
                for seq in first.max(below + 1)..=last {
                    let id = MessageId { origin, seq };
                    if self.has(&id) {
                        self.better_path(from, id, hops, false, now, out);
                    } else {
                        self.announced(from, id, hops, now, out);
                    }
                }
            }
        }
    }

    /// `better_path(from, id, hops, false)` for each received id of `origin` in
    /// `first..=last`, ascending, with one pass over the cache for the ids where it would not
    /// act (nearly all of them: the cached path is already as short): the same decisions,
    /// without a cache lookup per id.
    #[allow(clippy::too_many_arguments)]
    fn offer_paths(
        &mut self,
        from: P,
        origin: P,
        first: u64,
        last: u64,
        hops: u16,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let threshold = self.config.optimization_threshold.max(1);
        let bar = hops.saturating_add(threshold);
        let me = self.me;
        let mut first = first;
        loop {
            // What `better_path` checks before it acts (`from` is a neighbour: `on_ihave`
            // checked it, and `better_path` moves links between the sets only). Most cached
            // paths are no longer than the offer: that is decided on the hop counts alone,
            // before any peer id is compared.
            let acts = |c: &Cached<P>| {
                (c.hops > hops || c.hops >= bar)
                    && c.from != me
                    && if c.from == from {
                        hops < c.hops
                    } else {
                        c.hops >= bar
                    }
            };
            let Some(seq) = self.cache.find(origin, first, last, acts) else {
                return;
            };
            self.better_path(from, MessageId { origin, seq }, hops, false, now, out);
            if seq == last {
                return;
            }
            first = seq + 1;
        }
    }

    /// An announcement by `from` at `hops` of `id`, which this node has not received: note
    /// the announcer and graft now or later.
    fn announced(
        &mut self,
        from: P,
        id: MessageId<P>,
        hops: u16,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if let Some(m) = self.missing.get(&id) {
            if !m.announcers.iter().any(|(p, _)| *p == from) {
                // An announcement that would be grafted at once (below) after others
                // that were not: our parent pruned us while the message passed it (our
                // GRAFT back was crossing), or we are an orphan and this announcer is
                // the first close enough. Graft now rather than wait out the timer the
                // first announcement started (the ~80 ms spread outliers); it takes the
                // deepest announcer's place if the list is full.
                let urgent = !m.grafted && self.graft_at_once(id.origin, from, hops);
                let m = self.missing.get_mut(&id).expect("just found");
                if m.announcers.len() < self.config.max_announcers {
                    m.announcers.push((from, hops));
                } else if urgent
                    && let Some(deepest) = m.announcers.iter_mut().max_by_key(|(_, h)| *h)
                {
                    *deepest = (from, hops);
                }
                if urgent {
                    self.on_graft_timer(id, now, out);
                }
            }
        } else if self.missing.len() < self.config.max_missing {
            // Room for the usual few announcers at once (the lazy links of one node).
            let mut announcers = self
                .spare_announcers
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.config.max_announcers.clamp(1, 4)));
            announcers.push((from, hops));
            self.missing.insert(
                id,
                Missing {
                    announcers,
                    grafted: false,
                },
            );
            if self.graft_at_once(id.origin, from, hops) {
                // Our parent for this origin announces instead of pushing: it pruned the
                // link (a GRAFT back may be on its way), so the tree will not bring this
                // one. Likewise when our parent is gone, if the announcer is at most one
                // hop farther from the origin than our parent was (a deeper one would make
                // a deeper tree: wait for the others as usual; one hop more is what a
                // replacement link usually costs, and the optimisation removes it later).
                // Waiting `graft_timeout_1` would only stall it: graft now.
                self.on_graft_timer(id, now, out);
            } else {
                self.graft_later(id, now, out);
            }
        } else {
            // Full: catch-up will fetch it if the tree does not bring it.
            self.stats.dropped_invalid += 1;
        }
    }

    /// Whether an IHAVE from `from` at `hops` for a missing message of `origin` is grafted at
    /// once rather than after `graft_timeout_1` (see `on_ihave`): it comes from our
    /// parent, or we are an orphan and it is at most one hop deeper than our parent was.
    fn graft_at_once(&self, origin: P, from: P, hops: u16) -> bool {
        self.trees.get(&origin).is_some_and(|t| {
            // A parent that is not our neighbour (the overlay dropped the link, or only its
            // end ever had it up) pushes nothing: an orphan as well.
            let orphan = t.orphan || t.parent.is_some_and(|p| !self.is_neighbor(&p));
            t.parent == Some(from) || (orphan && hops <= t.depth.saturating_add(1))
        })
    }

    /// The tree optimisation (paper, Alg. 3), generalised. `from` offers `id` at `hops`, by an
    /// IHAVE or by a duplicate GOSSIP:
    ///
    /// - from the neighbour the message came by, with fewer hops: that neighbour's own path
    ///   improved, so ours did too; remember it and tell our neighbours;
    /// - from another neighbour, shorter by at least `optimization_threshold`: make that link
    ///   part of the tree (GRAFT without an id, unless it pushed the copy and so has the link
    ///   eager already), prune the old one, and tell our neighbours the new hop count.
    ///
    /// Telling the neighbours (a batched IHAVE with the new hop count) lets the improvement
    /// travel down the tree within one broadcast, so the first flood settles into a near
    /// shortest-hop tree at once instead of one level per broadcast. It costs control messages
    /// only, and only while the tree is changing.
    ///
    /// Returns whether the offer was taken (or came from the current parent), in which case a
    /// duplicate must not prune its sender.
    fn better_path(
        &mut self,
        from: P,
        id: MessageId<P>,
        hops: u16,
        duplicate: bool,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) -> bool {
        let threshold = self.config.optimization_threshold.max(1);
        let Some(&Cached {
            from: old,
            hops: have,
            ..
        }) = self.cache.get(&id)
        else {
            return false;
        };
        if old == self.me {
            return false;
        }
        if old == from {
            if !duplicate && hops < have {
                self.set_path(id, from, hops);
                if let Some(t) = self.trees.get_mut(&id.origin)
                    && t.parent == Some(from)
                {
                    t.depth = t.depth.min(hops);
                }
                self.announce_path(id, from, hops, out);
            }
            // A duplicate from the link that is our path for this message (network duplication,
            // a GRAFT answer racing the eager copy): keep the link.
            return duplicate;
        }
        if have < hops.saturating_add(threshold) || !self.is_neighbor(&from) {
            return false;
        }
        let origin = id.origin;
        tracing::trace!(target: "gossip::spread", me = ?self.me, origin = ?origin, seq = id.seq, ?from, hops, ?old, have, duplicate, "switch");
        self.set_path(id, from, hops);
        self.stats.optimizations += 1;
        if duplicate {
            // It pushes to us, so the link is eager at its end, but our own copy may be
            // crossing theirs and get this link pruned there: remember that for a short while,
            // so that PRUNE is answered with a GRAFT instead of leaving us without a parent.
            self.switched.retain(|(p, o, _)| (*p, *o) != (from, origin));
            if self.switched.len() >= SWITCHED_CAP {
                self.switched.remove(0);
            }
            self.switched.push((from, origin, now));
        } else {
            self.stats.graft_sent += 1;
            out.push_back(OutEvent::SendMessage(from, self.graft_message(origin)));
        }
        self.set_eager_for(origin, from, now);
        if let Some(t) = self.trees.get_mut(&origin) {
            t.parent = Some(from);
            t.orphan = false;
            t.depth = hops;
        }
        if self.eager_for(&origin, &old) {
            self.set_lazy_for(origin, old, now);
            self.stats.prune_sent += 1;
            out.push_back(OutEvent::SendMessage(old, self.prune_message(origin)));
        }
        self.announce_path(id, from, hops, out);
        true
    }

    /// Announce `id`, held at `hops` (received from `from`), to every other neighbour by IHAVE
    /// with that hop count: for a message caught up, and when our path to it just got shorter. A child in the tree learns that its own path shrank and
    /// passes it on; a lazy neighbour may find us a shorter path and graft us. So one
    /// broadcast relaxes the hop counts across the whole overlay (a distributed Bellman-Ford
    /// over the tree's control messages) instead of one level per broadcast. Each node
    /// announces at most once per hop it gains, so the cost is bounded by the depth.
    fn announce_path(
        &mut self,
        id: MessageId<P>,
        from: P,
        hops: u16,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let ihave = IHave {
            id,
            hops: hops.saturating_add(1),
        };
        let mut peers = std::mem::take(&mut self.scratch);
        peers.extend(
            self.eager
                .iter()
                .chain(&self.lazy)
                .copied()
                .filter(|p| *p != from),
        );
        self.queue_ihaves(ihave, &peers, out);
        peers.clear();
        self.scratch = peers;
    }

    fn set_path(&mut self, id: MessageId<P>, from: P, hops: u16) {
        if let Some(c) = self.cache.get_mut(&id) {
            c.from = from;
            c.hops = hops;
        }
    }

    fn on_graft(
        &mut self,
        from: P,
        id: Option<MessageId<P>>,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        self.stats.graft_received += 1;
        if !self.is_neighbor(&from) {
            self.stats.dropped_invalid += 1;
            return;
        }
        match id {
            Some(id) => self.set_eager_for(id.origin, from, now),
            None => {
                self.make_eager(from);
                for tree in self.trees.values_mut() {
                    tree.lazy.retain(|p| *p != from);
                }
            }
        }
        if let Some(id) = id
            && let Some(c) = self.cache.get(&id)
        {
            let g = Gossip {
                id,
                kind: c.kind,
                payload: c.payload.clone(),
                hops: c.hops.saturating_add(1),
            };
            self.stats.gossip_sent += 1;
            out.push_back(OutEvent::SendMessage(from, Message::Gossip(g)));
        }
    }

    fn on_prune(
        &mut self,
        from: P,
        origin: Option<P>,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        self.stats.prune_received += 1;
        tracing::trace!(target: "gossip::spread", me = ?self.me, ?from, ?origin, "pruned");
        if !self.is_neighbor(&from) {
            self.stats.dropped_invalid += 1;
            return;
        }
        if let Some(i) = self
            .switched
            .iter()
            .position(|(p, o, _)| *p == from && origin.is_none_or(|origin| origin == *o))
        {
            let (_, o, at) = self.switched.swap_remove(i);
            if now.saturating_duration_since(at) < self.config.graft_timeout_1
                && self.eager_for(&o, &from)
            {
                // The PRUNE answers the copy we sent before we chose `from` as the shorter
                // path: keep the link and tell them.
                tracing::trace!(target: "gossip::spread", me = ?self.me, ?from, "prune answered (switched)");
                self.stats.graft_sent += 1;
                let graft = match origin {
                    Some(o) => self.graft_message(o),
                    None => Message::Graft(None),
                };
                out.push_back(OutEvent::SendMessage(from, graft));
                return;
            }
        }
        if let Some(o) = origin
            && self.trees.get(&o).is_some_and(|t| t.parent == Some(from))
            && self.eager_for(&o, &from)
        {
            // Our parent for this origin pruned the link because one of our earlier copies
            // (sent while our parent was another neighbour) reached it second. We depend on
            // it now: keep the link. It will not see duplicates from us while we get this
            // origin's messages from it first.
            tracing::trace!(target: "gossip::spread", me = ?self.me, ?from, "prune answered (parent)");
            self.stats.graft_sent += 1;
            out.push_back(OutEvent::SendMessage(from, self.graft_message(o)));
            return;
        }
        match origin {
            Some(origin) => self.set_lazy_for(origin, from, now),
            None => {
                self.make_lazy(from);
                for tree in self.trees.values_mut() {
                    if !tree.lazy.contains(&from) {
                        tree.lazy.push(from);
                    }
                }
            }
        }
    }

    fn on_graft_timer(&mut self, id: MessageId<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        if self.has(&id) {
            if let Some(m) = self.missing.remove(&id) {
                self.recycle(m);
            }
            return;
        }
        let Some(m) = self.missing.get_mut(&id) else {
            return;
        };
        // Graft the announcer with the shortest path that is still a neighbour.
        let eager = &self.eager;
        let lazy = &self.lazy;
        m.announcers
            .retain(|(p, _)| eager.contains(p) || lazy.contains(p));
        let Some(best) = m
            .announcers
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, h))| *h)
            .map(|(i, _)| i)
        else {
            if let Some(m) = self.missing.remove(&id) {
                self.recycle(m);
            }
            return;
        };
        let (peer, _) = m.announcers.remove(best);
        m.grafted = true;
        if tracing::enabled!(target: "gossip::spread", tracing::Level::TRACE) {
            let t = self.trees.get(&id.origin);
            let tmpl = self.trees.first_key_value();
            tracing::trace!(target: "gossip::spread", me = ?self.me, origin = ?id.origin, seq = id.seq, ?peer, parent = ?t.and_then(|t| t.parent), orphan = ?t.map(|t| t.orphan), tree_lazy = ?t.map(|t| &t.lazy), tmpl = ?tmpl.map(|(o, _)| o), tmpl_eager_peer = !tmpl.map_or(&self.lazy, |(_, t)| &t.lazy).contains(&peer), tmpl_parent = ?tmpl.and_then(|(_, t)| t.parent), eager = ?self.eager, lazy = ?self.lazy, "graft");
        }
        self.set_eager_for(id.origin, peer, now);
        self.stats.graft_sent += 1;
        self.stats.graft_repairs += 1;
        out.push_back(OutEvent::SendMessage(peer, Message::Graft(Some(id))));
        out.push_back(OutEvent::ScheduleTimer(
            self.config.graft_timeout_2,
            Timer::SendGraft(id),
        ));
    }

    fn on_digest(
        &mut self,
        from: P,
        mut d: Digest<P>,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        self.stats.digests_received += 1;
        if !self.is_neighbor(&from) {
            self.stats.dropped_invalid += 1;
            return;
        }
        if d.entries.len() > self.config.max_digest_origins {
            self.stats.dropped_invalid += (d.entries.len() - self.config.max_digest_origins) as u64;
            d.entries.truncate(self.config.max_digest_origins);
            // Only what is listed is covered now.
            d.until = d.entries.last().map(|e| e.origin).or(d.after);
            if d.until.is_none() {
                return;
            }
        }
        // Entries must be strictly ascending and inside (after, until].
        let mut prev = d.after;
        for e in &mut d.entries {
            let ordered =
                prev.is_none_or(|p| p < e.origin) && d.until.is_none_or(|u| e.origin <= u);
            if !ordered {
                self.stats.dropped_invalid += 1;
                return;
            }
            prev = Some(e.origin);
            if e.holes.len() > self.config.max_digest_holes {
                self.stats.dropped_invalid += (e.holes.len() - self.config.max_digest_holes) as u64;
                e.holes.truncate(self.config.max_digest_holes);
            }
            e.holes.sort_unstable();
        }
        if let (Some(a), Some(u)) = (d.after, d.until)
            && a >= u
        {
            self.stats.dropped_invalid += 1;
            return;
        }
        let lower = match d.after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let upper = match d.until {
            Some(u) => Bound::Included(u),
            None => Bound::Unbounded,
        };
        // Walk the cache one origin at a time, seeking straight to what the digest lacks: the
        // holes, then everything above its high mark (everything, for an origin it does not
        // list). Cost: a few lookups per cached origin, one pass over the ring above the mark, plus one entry per cached message the
        // digest lacks (at most `cache_capacity`), sorted partially to pick the reply.
        let cap = self.config.max_catchup_reply;
        let min_age = millis(self.config.catchup_min_age);
        let now = self.stamp(now);
        let cache = &self.cache;
        // Everything the digest lacks that is old enough, then the `cap` most urgent: user
        // messages before system ones, and the oldest first, as they leave the caches first.
        // In (origin, seq) order, a node that lacked many messages (a restart, the other side
        // of a partition) got the directory updates of the low origins round after round while
        // the user messages of the high ones expired from every cache.
        let mut lacking: Vec<(bool, Stamp, MessageId<P>)> = Vec::new();
        let mut consider = |id: MessageId<P>, c: &Cached<P>| {
            if now.saturating_sub(c.at) >= min_age {
                lacking.push((c.kind == PayloadKind::System, c.at, id));
            }
        };
        let mut entries = d.entries.iter().peekable();
        for (&origin, ring) in cache.rings.range((lower, upper)) {
            if origin == from {
                continue;
            }
            while entries.next_if(|e| e.origin < origin).is_some() {}
            let above = match entries.peek() {
                Some(e) if e.origin == origin => {
                    for &seq in &e.holes {
                        if let Some(c) = ring.get(seq) {
                            consider(MessageId { origin, seq }, c);
                        }
                    }
                    match e.high.checked_add(1) {
                        Some(next) => next,
                        None => continue,
                    }
                }
                _ => 0,
            };
            for (seq, c) in ring.from(above) {
                consider(MessageId { origin, seq }, c);
            }
        }
        if lacking.len() > cap {
            lacking.select_nth_unstable(cap);
            lacking.truncate(cap);
        }
        lacking.sort_unstable();
        for (_, _, id) in lacking {
            let Some(c) = cache.get(&id) else { continue };
            self.stats.catchup_sent += 1;
            let g = Gossip {
                id,
                kind: c.kind,
                payload: c.payload.clone(),
                hops: c.hops.saturating_add(1),
            };
            out.push_back(OutEvent::SendMessage(from, Message::CatchUp(g)));
        }
    }

    fn on_fifo_gap(&mut self, origin: P, out: &mut VecDeque<OutEvent<P>>) {
        self.fifo_armed.remove(&origin);
        let Some(first) = self.fifo_first_held(origin) else {
            return;
        };
        self.stats.fifo_gaps_skipped += 1;
        self.fifo_release_from(origin, first.seq, out);
        if self.fifo_first_held(origin).is_some() {
            self.fifo_armed.insert(origin);
            out.push_back(OutEvent::ScheduleTimer(
                self.config.fifo_gap_timeout,
                Timer::FifoGap(origin),
            ));
        }
    }

    // ----- helpers -----

    fn is_neighbor(&self, peer: &P) -> bool {
        self.eager.contains(peer) || self.lazy.contains(peer)
    }

    /// The neighbours that are lazy for `origin`'s messages: its tree's, or the shared set.
    fn tree_lazy(&self, origin: &P) -> &[P] {
        self.trees.get(origin).map_or(&self.lazy, |t| &t.lazy)
    }

    /// Whether `peer` is a neighbour that `origin`'s messages are pushed to.
    fn eager_for(&self, origin: &P, peer: &P) -> bool {
        self.is_neighbor(peer) && !self.tree_lazy(origin).contains(peer)
    }

    /// The tree of `origin`, made from the shared sets if it has none (replacing the least
    /// recently active tree when full); `None` when per-origin trees are off.
    fn tree_mut(&mut self, origin: P, now: Instant) -> Option<&mut OriginTree<P>> {
        let cap = self.config.max_origin_trees;
        if cap == 0 {
            return None;
        }
        if !self.trees.contains_key(&origin) {
            if self.trees.len() >= cap
                && let Some(oldest) = self
                    .trees
                    .iter()
                    .min_by_key(|(_, t)| t.last)
                    .map(|(o, _)| *o)
            {
                self.trees.remove(&oldest);
            }
            let last = self.stamp(now);
            // A new origin's tree starts with every link eager: its first message floods and
            // the duplicates prune the tree to the first-arrival tree of this origin. Copying
            // another tree instead (the lowest tracked origin's, which saves the flood) relied
            // on both ends of each link copying the same one, and they do not: with more
            // origins than `max_origin_trees`, nodes track different sets (at 200 TCP nodes
            // the nodes of one cluster used two different templates), so a link was eager at
            // one end and lazy at the other, the eager links no longer reached every node and
            // whole regions waited for IHAVE and `graft_timeout_1` (one or two rounds: 70 or
            // 140 ms on a LAN). A copied tree is also rooted elsewhere, so its paths from the
            // new origin were twice as deep.
            let lazy = Vec::new();
            self.trees.insert(
                origin,
                OriginTree {
                    lazy,
                    parent: None,
                    last,
                    orphan: false,
                    depth: u16::MAX,
                },
            );
        }
        self.trees.get_mut(&origin)
    }

    /// `f` applied to the tree of `origin` as [`Self::tree_mut`] gives it, with one lookup
    /// when the tree exists.
    fn with_tree<R>(
        &mut self,
        origin: P,
        now: Instant,
        f: impl FnOnce(&mut OriginTree<P>) -> R,
    ) -> Option<R> {
        if let Some(t) = self.trees.get_mut(&origin) {
            return Some(f(t));
        }
        self.tree_mut(origin, now).map(f)
    }

    /// A message of `origin` arrived: give it a tree, or refresh the one it has.
    fn touch_tree(&mut self, origin: P, now: Instant) {
        let stamp = self.stamp(now);
        if let Some(t) = self.tree_mut(origin, now) {
            t.last = stamp;
        }
    }

    /// Push `origin`'s messages to `peer` (and, as the template for new trees, all others').
    fn set_eager_for(&mut self, origin: P, peer: P, now: Instant) {
        if !self.is_neighbor(&peer) {
            return;
        }
        self.make_eager(peer);
        if let Some(t) = self.tree_mut(origin, now) {
            t.lazy.retain(|p| *p != peer);
        }
    }

    /// Only announce `origin`'s messages to `peer` (and, as the template, all others').
    fn set_lazy_for(&mut self, origin: P, peer: P, now: Instant) {
        if !self.is_neighbor(&peer) {
            return;
        }
        self.make_lazy(peer);
        if let Some(t) = self.tree_mut(origin, now)
            && !t.lazy.contains(&peer)
        {
            t.lazy.push(peer);
        }
    }

    fn prune_message(&self, origin: P) -> Message<P> {
        if self.config.max_origin_trees == 0 {
            Message::Prune
        } else {
            Message::PruneOrigin(origin)
        }
    }

    fn graft_message(&self, origin: P) -> Message<P> {
        if self.config.max_origin_trees == 0 {
            Message::Graft(None)
        } else {
            Message::GraftOrigin(origin)
        }
    }

    fn make_eager(&mut self, peer: P) {
        if let Some(i) = self.lazy.iter().position(|p| *p == peer) {
            self.lazy.swap_remove(i);
            self.eager.push(peer);
        }
    }

    fn make_lazy(&mut self, peer: P) {
        if let Some(i) = self.eager.iter().position(|p| *p == peer) {
            self.eager.swap_remove(i);
            self.lazy.push(peer);
        }
    }

    /// Push `g` (as received, with its arrival hops) to the eager peers and announce it to the
    /// lazy peers, except `from`.
    ///
    /// `old_parent`, the link the previous message of this origin came by when this one came
    /// by another, only gets an IHAVE: it is on our way to the origin, so it has the message
    /// or gets it from its own parent, and a pushed copy would reach it second and make it
    /// prune the link we depend on. The PRUNE and the GRAFT we answer it with take a round
    /// trip, and every message of the origin that crossed the old parent meanwhile came to us
    /// by IHAVE and GRAFT: in the simulator (one sender, 10-100 ms links) a node flapped like
    /// that on every message, a graft round each time.
    fn forward(
        &mut self,
        g: &Gossip<P>,
        from: P,
        old_parent: Option<P>,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let hops = g.hops.saturating_add(1);
        let ihave = IHave { id: g.id, hops };
        // The origin's lazy set is looked up once, not once per neighbour (hot path).
        let tree_lazy = self.trees.get(&g.id.origin).map_or(&self.lazy, |t| &t.lazy);
        let mut lazy = std::mem::take(&mut self.scratch);
        for &peer in self.eager.iter().chain(&self.lazy) {
            if peer == from {
                continue;
            }
            if tree_lazy.contains(&peer) || old_parent == Some(peer) {
                lazy.push(peer);
            } else {
                self.stats.gossip_sent += 1;
                let m = Gossip {
                    id: g.id,
                    kind: g.kind,
                    payload: g.payload.clone(),
                    hops,
                };
                out.push_back(OutEvent::SendMessage(peer, Message::Gossip(m)));
            }
        }
        self.queue_ihaves(ihave, &lazy, out);
        lazy.clear();
        self.scratch = lazy;
    }

    /// Queue `ihave` for each of `peers`, in that order, as one `queue_ihave` per peer would.
    ///
    /// While no batch can reach its caps (its ids plus every id of the log, its ranges plus
    /// every run of the log, are below them), the announcement is recorded once in the log
    /// (under one busy sender, by extending its last run): no batch would be sent early, so
    /// the per-peer batches can wait for the flush. Otherwise the log is split into the
    /// batches first, and the announcement goes to each peer's batch as before, sent at once
    /// when full. The IHAVEs on the wire are the same either way.
    fn queue_ihaves(&mut self, ihave: IHave<P>, peers: &[P], out: &mut VecDeque<OutEvent<P>>) {
        if peers.is_empty() {
            return;
        }
        let full = self.ihave_cap();
        let (max_ids, max_ranges) = self.lazy_queue_max;
        if max_ids + self.lazy_log.ids + 1 < full
            && max_ranges + self.lazy_log.runs.len() + 1 < MAX_IHAVE_RANGES
        {
            self.lazy_log.push(ihave, peers);
            if !self.dispatch_armed {
                self.dispatch_armed = true;
                out.push_back(OutEvent::ScheduleTimer(
                    self.config.dispatch_timeout,
                    Timer::DispatchLazyPush,
                ));
            }
            return;
        }
        self.split_lazy_log();
        for &peer in peers {
            self.queue_ihave(peer, ihave, out);
        }
        self.lazy_queue_max = self
            .lazy_queue
            .iter()
            .fold((0, 0), |(ids, ranges), (_, b)| {
                (ids.max(b.len()), ranges.max(b.ranges.len()))
            });
    }

    /// The most ids a batch holds before it is sent without waiting for the dispatch timer.
    fn ihave_cap(&self) -> usize {
        self.config.max_ihave_ids.clamp(1, MAX_IHAVE_WIRE)
    }

    /// The index of `peer`'s batch in `queue`, an empty one appended if it has none.
    fn lazy_batch(queue: &mut Vec<(P, IHaves<P>)>, peer: P) -> usize {
        match queue.iter().position(|(p, _)| *p == peer) {
            Some(i) => i,
            None => {
                queue.push((peer, IHaves::new()));
                queue.len() - 1
            }
        }
    }

    /// Move the log's announcements into the per-peer batches, in the order they were queued
    /// (each run to each of its peers). Never fills a batch: the log only takes what fits.
    fn split_lazy_log(&mut self) {
        if self.lazy_log.runs.is_empty() {
            return;
        }
        let full = self.ihave_cap();
        for run in self.lazy_log.runs.drain(..) {
            for &peer in &self.lazy_log.peers[run.peers.0 as usize..run.peers.1 as usize] {
                let i = Self::lazy_batch(&mut self.lazy_queue, peer);
                let batch = &mut self.lazy_queue[i].1;
                batch.push_grouped_run(run.range);
                debug_assert!(batch.len() < full && batch.ranges.len() < MAX_IHAVE_RANGES);
                let (ids, ranges) = &mut self.lazy_queue_max;
                *ids = (*ids).max(batch.len());
                *ranges = (*ranges).max(batch.ranges.len());
            }
        }
        self.lazy_log.peers.clear();
        self.lazy_log.ids = 0;
    }

    /// Queue `ihave` for `peer` in its batch (the log must be split first).
    fn queue_ihave(&mut self, peer: P, ihave: IHave<P>, out: &mut VecDeque<OutEvent<P>>) {
        debug_assert!(self.lazy_log.runs.is_empty());
        let full = self.ihave_cap();
        // A batch is held as ranges (see `IHaves`): under one busy sender, one entry however
        // many ids it announces, extended in place (a 56-byte entry per id, and the regrowth
        // of the batch, were ~2% of the CPU per delivery with one sender flat out).
        let i = Self::lazy_batch(&mut self.lazy_queue, peer);
        let batch = &mut self.lazy_queue[i].1;
        batch.push_grouped(ihave);
        // Bounded by its wire cost (ranges) and by its ids; otherwise the dispatch timer
        // sends it: a lone IHAVE frame costs a write here and a read and a turn there.
        if batch.len() >= full || batch.ranges.len() >= MAX_IHAVE_RANGES {
            let batch = std::mem::take(batch);
            self.stats.ihave_sent += 1;
            out.push_back(OutEvent::SendMessage(peer, Message::IHave(batch)));
        } else if !self.dispatch_armed {
            self.dispatch_armed = true;
            out.push_back(OutEvent::ScheduleTimer(
                self.config.dispatch_timeout,
                Timer::DispatchLazyPush,
            ));
        }
    }

    fn flush_lazy(&mut self, out: &mut VecDeque<OutEvent<P>>) {
        self.split_lazy_log();
        self.lazy_queue_max = (0, 0);
        for (peer, batch) in self.lazy_queue.drain(..) {
            if !batch.is_empty() {
                self.stats.ihave_sent += 1;
                out.push_back(OutEvent::SendMessage(peer, Message::IHave(batch)));
            }
        }
    }

    fn deliver(&mut self, g: Gossip<P>, from: P, out: &mut VecDeque<OutEvent<P>>) {
        let d = Delivery {
            id: g.id,
            kind: g.kind,
            payload: g.payload,
            hops: g.hops,
            from,
        };
        if !self.config.fifo {
            self.stats.delivered += 1;
            out.push_back(OutEvent::Deliver(d));
            return;
        }
        let MessageId { origin, seq } = d.id;
        let delivered = self.records.get(&origin).map_or(0, |r| r.delivered);
        if seq <= delivered {
            // Its gap was skipped already: delivering it now would break the order.
            self.stats.fifo_dropped_late += 1;
        } else if seq == delivered + 1 {
            self.stats.delivered += 1;
            out.push_back(OutEvent::Deliver(d));
            self.set_delivered(origin, seq);
            if let Some(next) = seq.checked_add(1) {
                self.fifo_release_from(origin, next, out);
            }
        } else {
            self.fifo_held.insert(d.id, d);
            if self.fifo_armed.insert(origin) {
                out.push_back(OutEvent::ScheduleTimer(
                    self.config.fifo_gap_timeout,
                    Timer::FifoGap(origin),
                ));
            }
            if self.fifo_held.len() > self.config.fifo_max_held {
                // Over the cap: skip the first gap of the smallest held origin.
                if let Some((&first, _)) = self.fifo_held.iter().next() {
                    self.stats.fifo_gaps_skipped += 1;
                    self.fifo_release_from(first.origin, first.seq, out);
                }
            }
        }
    }

    /// Deliver the held messages of `origin` starting at `seq` while they are consecutive.
    fn fifo_release_from(&mut self, origin: P, mut seq: u64, out: &mut VecDeque<OutEvent<P>>) {
        while let Some(d) = self.fifo_held.remove(&MessageId { origin, seq }) {
            self.stats.delivered += 1;
            out.push_back(OutEvent::Deliver(d));
            self.set_delivered(origin, seq);
            let Some(next) = seq.checked_add(1) else {
                break;
            };
            seq = next;
        }
    }

    fn fifo_first_held(&self, origin: P) -> Option<MessageId<P>> {
        self.fifo_held
            .range(
                MessageId { origin, seq: 0 }..=MessageId {
                    origin,
                    seq: u64::MAX,
                },
            )
            .next()
            .map(|(id, _)| *id)
    }

    fn set_delivered(&mut self, origin: P, seq: u64) {
        if let Some(r) = self.records.get_mut(&origin) {
            r.delivered = r.delivered.max(seq);
        }
    }

    fn cache_insert(
        &mut self,
        id: MessageId<P>,
        kind: PayloadKind,
        payload: Bytes,
        hops: u16,
        from: P,
        now: Instant,
    ) {
        if self.config.cache_capacity == 0 {
            return;
        }
        let at = self.stamp(now);
        let c = Cached {
            kind,
            payload,
            hops,
            from,
            at,
        };
        if !self
            .cache
            .insert(id, c, self.config.cache_capacity, self.config.cache_bytes)
        {
            self.stats.too_large_to_cache += 1;
        }
    }

    fn stamp(&mut self, now: Instant) -> Stamp {
        if let Some((at, stamp)) = self.last_stamp
            && at == now
        {
            return stamp;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let stamp = millis(now.saturating_duration_since(epoch));
        self.last_stamp = Some((now, stamp));
        stamp
    }

    /// Keep the announcer list of a missing message that is done with, for the next one.
    fn recycle(&mut self, m: Missing<P>) {
        let mut list = m.announcers;
        if self.spare_announcers.len() < SPARE_ANNOUNCERS && list.capacity() <= 4 {
            list.clear();
            self.spare_announcers.push(list);
        }
    }

    /// Microseconds since the state first saw the clock.
    fn micros(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch)
            .as_micros()
            .min(u64::MAX as u128) as u64
    }

    /// Graft an announcer of `id` if it is still missing `graft_timeout_1` from now. The ids
    /// of one IHAVE share their deadline and so one timer: a busy node took one timer per
    /// announced id, each through the runtime's timer heap.
    fn graft_later(&mut self, id: MessageId<P>, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let wait = self.config.graft_timeout_1;
        if self.graft_due.len() >= self.config.max_missing {
            out.push_back(OutEvent::ScheduleTimer(wait, Timer::SendGraft(id)));
            return;
        }
        let due = self
            .micros(now)
            .saturating_add(wait.as_micros().min(u64::MAX as u128) as u64);
        if self.graft_due.back().is_none_or(|&(last, _)| last != due) {
            out.push_back(OutEvent::ScheduleTimer(wait, Timer::SendGrafts));
        }
        self.graft_due.push_back((due, id));
    }

    /// Whether the record shows `id` as received.
    /// The highest seq of `origin` up to which every id is received (0 for none).
    fn contiguous(&self, origin: &P) -> u64 {
        self.records.get(origin).map_or(0, |r| {
            r.holes
                .as_slice()
                .first()
                .map_or(r.high, |&(s, _)| s.saturating_sub(1))
        })
    }

    fn has(&self, id: &MessageId<P>) -> bool {
        if id.origin == self.me {
            return id.seq != 0 && id.seq <= self.seq;
        }
        match self.records.get(&id.origin) {
            None => false,
            Some(r) => id.seq <= r.high && r.holes.find(id.seq).is_err(),
        }
    }

    /// Record `id` as received if it is new.
    fn accept(&mut self, id: MessageId<P>, now: Instant) -> Accept {
        if id.seq == 0 {
            return Accept::Invalid;
        }
        if id.origin == self.me {
            // Our own messages are never delivered to us; a number we never used is forged.
            return if id.seq > self.seq {
                Accept::Invalid
            } else {
                Accept::Duplicate
            };
        }
        // The common case, a known origin within the window, with one lookup.
        let stamp = self.stamp(now);
        let window = self.config.max_holes_per_origin as u64;
        let budget = self.config.max_holes_total.saturating_sub(self.total_holes) as u64;
        let jump = self.config.max_seq_jump.max(1);
        if let Some(r) = self.records.get_mut(&id.origin)
            && id.seq <= r.high.saturating_add(jump)
        {
            return r.advance(
                id.seq,
                stamp,
                window,
                budget,
                &mut self.total_holes,
                &mut self.stats.holes_given_up,
            );
        }
        let base = self.records.get(&id.origin).map_or(0, |r| r.high);
        let far = id.seq > base.saturating_add(jump);
        if far && !self.far_jump_confirmed(id, base) {
            self.stats.seq_out_of_window += 1;
            return Accept::OutOfWindow;
        }
        let accepted = self.record(id, now);
        if far {
            self.fold_evidence(id, now);
        }
        accepted
    }

    /// Note `id`, more than `max_seq_jump` ahead of its origin's record, as evidence; whether
    /// the evidence now confirms that the origin is that far ahead: `seq_jump_evidence`
    /// distinct numbers noted within `max_seq_jump` below it, itself included. One forged
    /// number never moves the record; a real origin's next messages (or catch-up of its
    /// recent ones) soon do.
    fn far_jump_confirmed(&mut self, id: MessageId<P>, base: u64) -> bool {
        let needed = self.config.seq_jump_evidence.clamp(1, FAR_AHEAD_PER_ORIGIN);
        if needed == 1 {
            return true;
        }
        let jump = self.config.max_seq_jump.max(1);
        if !self.far_ahead.contains_key(&id.origin) && self.far_ahead.len() >= FAR_AHEAD_ORIGINS {
            self.far_ahead.pop_first();
        }
        let noted = self.far_ahead.entry(id.origin).or_default();
        // Numbers the record has come within reach of since are no evidence any more (and
        // may have been received): never make a hole of them.
        noted.retain(|&s| s > base.saturating_add(jump));
        if let Err(i) = noted.binary_search(&id.seq) {
            noted.insert(i, id.seq);
            if noted.len() > FAR_AHEAD_PER_ORIGIN {
                // Keep the lowest: the highest numbers are the least plausible.
                noted.pop();
            }
        }
        let low = id.seq.saturating_sub(jump);
        noted
            .iter()
            .filter(|&&s| (low..=id.seq).contains(&s))
            .count()
            >= needed
    }

    /// The record of `id.origin` just jumped to `id.seq` on evidence: the noted numbers below
    /// it were dropped, not received, so they become holes for catch-up to fill (within the
    /// hole limits); the ones now within reach of the record are forgotten.
    fn fold_evidence(&mut self, id: MessageId<P>, now: Instant) {
        let Some(noted) = self.far_ahead.remove(&id.origin) else {
            return;
        };
        let reach = id.seq.saturating_add(self.config.max_seq_jump.max(1));
        let keep: Vec<u64> = noted.iter().copied().filter(|&s| s > reach).collect();
        let now = self.stamp(now);
        if let Some(r) = self.records.get_mut(&id.origin) {
            for s in noted.into_iter().filter(|&s| s < id.seq) {
                if r.holes.len() >= self.config.max_holes_per_origin
                    || self.total_holes >= self.config.max_holes_total
                {
                    self.stats.holes_given_up += 1;
                    continue;
                }
                if let Err(i) = r.holes.find(s) {
                    r.holes.vec().insert(i, (s, now));
                    self.total_holes += 1;
                    r.delivered = r.delivered.min(s - 1);
                }
            }
        }
        if !keep.is_empty() {
            self.far_ahead.insert(id.origin, keep);
        }
    }

    /// Record `id` (within the window, or confirmed) as received if it is new.
    fn record(&mut self, id: MessageId<P>, now: Instant) -> Accept {
        let now = self.stamp(now);
        let window = self.config.max_holes_per_origin as u64;
        let budget = self.config.max_holes_total.saturating_sub(self.total_holes) as u64;
        let Some(r) = self.records.get_mut(&id.origin) else {
            while self.records.len() >= self.config.max_origins.max(1) {
                let Some((_, old)) = self.record_order.pop_front() else {
                    break;
                };
                if let Some(r) = self.records.remove(&old) {
                    self.total_holes -= r.holes.len();
                }
                self.far_ahead.remove(&old);
            }
            // First contact: the last few numbers below are holes catch-up may fill.
            let first = (self.config.first_contact_holes as u64).min(window);
            let low = id.seq.saturating_sub(first.min(budget)).max(1);
            let holes = Holes::from_vec((low..id.seq).map(|s| (s, now)).collect());
            self.total_holes += holes.len();
            let record = OriginRecord {
                high: id.seq,
                holes,
                last: now,
                delivered: low - 1,
            };
            self.records.insert(id.origin, record);
            self.record_order.push_back((now, id.origin));
            return Accept::New;
        };
        r.advance(
            id.seq,
            now,
            window,
            budget,
            &mut self.total_holes,
            &mut self.stats.holes_given_up,
        )
    }

    fn evict(&mut self, now: Instant) {
        let now = self.stamp(now);
        self.cache.expire(now, millis(self.config.cache_retention));
        let retention = millis(self.config.record_retention);
        while let Some(&(at, origin)) = self.record_order.front() {
            if now.saturating_sub(at) < retention {
                break;
            }
            self.record_order.pop_front();
            let Some(r) = self.records.get(&origin) else {
                continue;
            };
            if now.saturating_sub(r.last) >= retention {
                self.total_holes -= r.holes.len();
                self.records.remove(&origin);
                self.far_ahead.remove(&origin);
            } else {
                // Still active: look again once its latest activity is old enough.
                self.record_order.push_back((r.last, origin));
            }
        }
    }

    fn send_digest(&mut self, to: P, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let after = self.digest_cursor;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let cap = self.config.max_digest_origins.max(1);
        let now = self.stamp(now);
        let window = millis(self.config.cache_retention);
        let forget = millis(self.config.record_retention);
        let mut entries = Vec::new();
        let mut more = false;
        for (origin, r) in self.records.range_mut((lower, Bound::Unbounded)) {
            if entries.len() == cap {
                more = true;
                break;
            }
            // A hole older than the record retention is given up; one older than the catch-up
            // window is kept (the message is still delivered if it turns up) but not asked for.
            let before = r.holes.len();
            if let Some(v) = r.holes.0.as_mut() {
                v.retain(|(_, since)| now.saturating_sub(*since) < forget);
            }
            r.holes.shrink();
            self.stats.holes_given_up = self
                .stats
                .holes_given_up
                .saturating_add((before - r.holes.len()) as u64);
            self.total_holes -= before - r.holes.len();
            // The newest holes first: they are the likeliest to be in a neighbour's cache
            // (after a jump of thousands, the oldest are long evicted everywhere and would
            // take every digest's slots until they age out of the window).
            let mut holes: Vec<u64> = r
                .holes
                .as_slice()
                .iter()
                .rev()
                .filter(|(_, since)| now.saturating_sub(*since) < window)
                .take(self.config.max_digest_holes)
                .map(|(s, _)| *s)
                .collect();
            holes.reverse();
            entries.push(DigestEntry {
                origin: *origin,
                high: r.high,
                holes,
            });
        }
        let until = if more {
            entries.last().map(|e| e.origin)
        } else {
            None
        };
        self.digest_cursor = until;
        self.stats.digests_sent += 1;
        match self.catchup_pulls.iter_mut().find(|(p, _)| *p == to) {
            Some((_, n)) => *n = 0,
            None => self.catchup_pulls.push((to, 0)),
        }
        out.push_back(OutEvent::SendMessage(
            to,
            Message::Digest(Digest {
                after,
                until,
                entries,
            }),
        ));
    }
}

/// `base` scaled by a random factor in [0.75, 1.25), so periodic work of many nodes spreads out.
fn jitter<R: Rng>(base: Duration, rng: &mut R) -> Duration {
    base.mul_f64(rng.random_range(0.75..1.25))
}

#[cfg(test)]
mod tests;
