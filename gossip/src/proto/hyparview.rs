//! HyParView membership overlay.
//!
//! Source: João Leitão, José Pereira, Luís Rodrigues, *HyParView: a membership protocol for
//! reliable gossip-based broadcast*, DSN 2007.
//!
//! # The protocol in words
//!
//! Every node keeps two partial views of the cluster:
//!
//! - the **active view**, a small set (default 5) of peers with an open link. Links are
//!   symmetric: when `a` has `b` in its active view, `b` has `a` in its own, once messages in
//!   flight have arrived. The broadcast layer sends along these links and the failure detector
//!   watches them, so a crashed neighbour is noticed quickly.
//! - the **passive view**, a larger list (default 30) of addresses with no link. It is the
//!   reserve from which the active view is repaired.
//!
//! A new node sends `JOIN` to a contact. The contact adds it to its active view (dropping a
//! random neighbour with `DISCONNECT` if full) and starts a random walk, `FORWARDJOIN`, through
//! each of its other neighbours. A walk carries a time to live (the *active random walk length*,
//! ARWL, default 6); the node where it ends opens a link to the new node, and the node the walk
//! passes when the TTL equals the *passive random walk length* (PRWL, default 3) remembers the
//! new node in its passive view. A new node thus gets links spread over the overlay instead of
//! crowding its contact.
//!
//! Links open with `NEIGHBOR` requests. A request is *high priority* when the requester has no
//! active link at all: the receiver then accepts even when full, dropping a random neighbour.
//! A *low priority* request is accepted only when the receiver has room. The requester adds the
//! link once it reads the accepting `NEIGHBORREPLY`; a `JOIN` is answered the same way.
//!
//! When an active neighbour fails (the transport or the failure detector says so), it is dropped
//! from both views and replaced by a `NEIGHBOR` request to a random passive peer; a timeout or a
//! rejection moves on to the next one. A periodic repair timer tops up any active view below
//! capacity, so a node keeps trying until it is full again.
//!
//! Every `shuffle_interval`, a node sends `SHUFFLE` with a few peers of its active (ka) and
//! passive (kp) views on a short random walk; the node where it ends answers `SHUFFLEREPLY` with
//! as many peers from its passive view, and both merge what they received into their passive
//! views. Passive views so keep a fresh, uniform sample of the cluster, which is what lets the
//! overlay heal after large failures.
//!
//! # Symmetry
//!
//! Links form only through a request and an accepting reply, and end only through `DISCONNECT`
//! or a failure. A reply that arrives after the requester gave up (the request timed out) is
//! declined with `DISCONNECT`, so both ends agree. A link-only message (`FORWARDJOIN`,
//! forwarded `SHUFFLE`) from a peer that is not an active neighbour is answered with
//! `DISCONNECT`, which removes a half-open link on the other side. The driver must deliver the
//! messages between two nodes in order (TCP does; the simulator must too).
//!
//! # Hostile input
//!
//! Peer lists are capped ([`Config::max_shuffle_nodes`]; the excess is ignored), TTLs are
//! clamped to this node's own settings, this node's own id is never added to a view, and
//! unsolicited replies are ignored. Each such event is counted in [`Stats`].
use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

use super::{Instant, PeerId};

/// Membership overlay settings. `Default` gives the paper's values, tuned for a LAN.
#[derive(Debug, Clone)]
pub struct Config {
    /// Maximum number of active links (paper: `log10(n) + c`; default 5). More links cost more
    /// heartbeats and more redundant broadcast traffic, but survive larger failures.
    pub active_view_capacity: usize,
    /// Maximum size of the passive view (default 30). A larger reserve heals the overlay after
    /// bigger failures, at a few bytes per entry.
    pub passive_view_capacity: usize,
    /// Active random walk length (ARWL, default 6): hops a `FORWARDJOIN` walks before the node
    /// it reaches links to the new node. Longer walks spread new nodes further from their
    /// contact.
    pub active_random_walk_length: u16,
    /// Passive random walk length (PRWL, default 3): the walk's TTL at which a node stores the
    /// new node in its passive view. Must be below the ARWL.
    pub passive_random_walk_length: u16,
    /// Period of the shuffle (default 5 s, with +-10% jitter). Shorter keeps passive views
    /// fresher at the cost of more idle traffic.
    pub shuffle_interval: Duration,
    /// Peers from the active view sent in a shuffle (ka, default 3).
    pub shuffle_active_view_count: usize,
    /// Peers from the passive view sent in a shuffle (kp, default 4).
    pub shuffle_passive_view_count: usize,
    /// TTL of a shuffle's random walk (default 3).
    pub shuffle_random_walk_length: u16,
    /// Cap on the peers read from one `SHUFFLE` or `SHUFFLEREPLY` (default 16); the excess of a
    /// larger list is ignored and counted. Keep it at least `ka + kp` of every node.
    pub max_shuffle_nodes: usize,
    /// How long to wait for a `NEIGHBORREPLY` before trying another passive peer (default
    /// 500 ms). A peer that does not answer in time is dropped from the passive view.
    pub neighbor_request_timeout: Duration,
    /// Period of the repair timer that tops up an active view below capacity (default 1 s, with
    /// jitter). It is also how long a peer that rejected a request is not asked again.
    pub repair_interval: Duration,
    /// First wait for a `JOIN` to be answered before it is sent again, to the next contact
    /// (default 1 s; doubles on each retry, up to 8 times this value).
    pub join_timeout: Duration,
    /// How many join contacts are remembered to retry and rejoin through (default 8).
    pub max_join_contacts: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            active_view_capacity: 5,
            passive_view_capacity: 30,
            active_random_walk_length: 6,
            passive_random_walk_length: 3,
            shuffle_interval: Duration::from_secs(5),
            shuffle_active_view_count: 3,
            shuffle_passive_view_count: 4,
            shuffle_random_walk_length: 3,
            max_shuffle_nodes: 16,
            neighbor_request_timeout: Duration::from_millis(500),
            repair_interval: Duration::from_secs(1),
            join_timeout: Duration::from_secs(1),
            max_join_contacts: 8,
        }
    }
}

/// Priority of a `NEIGHBOR` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Priority {
    /// The requester has no active link: accept even when full, dropping a random neighbour.
    High,
    /// Accept only if the active view has room.
    Low,
}

/// Wire messages of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// The sender joins the overlay through the receiver; answered with
    /// [`Message::NeighborReply`].
    Join,
    /// A random walk announcing `peer`, a new node.
    ForwardJoin {
        /// The node that joined.
        peer: P,
        /// Hops left.
        ttl: u16,
    },
    /// Asks the receiver to open an active link; answered with [`Message::NeighborReply`].
    Neighbor {
        /// High when the sender has no active link.
        priority: Priority,
    },
    /// Answer to [`Message::Join`] or [`Message::Neighbor`].
    NeighborReply {
        /// True: the receiver added the sender to its active view.
        accepted: bool,
    },
    /// The sender closed its active link to the receiver (or declines one).
    Disconnect {
        /// True: the sender leaves the cluster; do not keep it in the passive view.
        leaving: bool,
    },
    /// A shuffle on its random walk.
    Shuffle {
        /// The node that started the shuffle and waits for the reply.
        origin: P,
        /// Hops left.
        ttl: u16,
        /// A sample of the origin's views.
        nodes: Vec<P>,
    },
    /// Answer to a [`Message::Shuffle`], sent straight to its origin.
    ShuffleReply {
        /// A sample of the replier's passive view.
        nodes: Vec<P>,
    },
}

/// Timers of the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Start a shuffle.
    Shuffle,
    /// Top up an active view below capacity; rejoin through a contact if isolated.
    Repair,
    /// A `NEIGHBOR` or `JOIN` request to this peer may have timed out.
    PendingExpired(P),
}

/// Inputs of the overlay.
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A message from a peer.
    RecvMessage(P, Message<P>),
    /// A timer this layer asked for fired.
    TimerExpired(Timer<P>),
    /// Join the overlay through this contact. While a join is in flight, further contacts are
    /// kept as fallbacks; once the node has an active link, this acts as [`InEvent::Reach`].
    RequestJoin(P),
    /// The link to this peer failed (transport error or failure detector).
    PeerFailed(P),
    /// Try to open an active link to this peer if the active view has room (partition healing);
    /// otherwise remember it in the passive view.
    Reach(P),
    /// Leave: tell the active view and stop.
    Leave,
}

/// Outputs of the overlay.
#[derive(Debug, PartialEq, Eq)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer.
    SendMessage(P, Message<P>),
    /// Call back with `TimerExpired` after the duration.
    ScheduleTimer(Duration, Timer<P>),
    /// An active link opened.
    NeighborUp(P),
    /// An active link closed.
    NeighborDown(P),
    /// Close the transport connection to this peer once the messages already queued to it are
    /// sent: the overlay no longer needs it (a new send opens a new one).
    Disconnect(P),
}

/// Counters of noteworthy events, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages ignored as invalid: from ourselves, about ourselves, unsolicited replies.
    pub ignored_messages: u64,
    /// Peers dropped from oversized shuffle lists.
    pub truncated_peers: u64,
    /// `NEIGHBOR` requests sent (joins excluded).
    pub neighbor_requests: u64,
    /// Requests this node rejected (low priority while full).
    pub rejected_by_us: u64,
    /// Our requests that a peer rejected.
    pub rejected_by_peer: u64,
    /// Our requests that timed out.
    pub request_timeouts: u64,
    /// Active neighbours dropped to make room for a new link.
    pub evictions: u64,
    /// Shuffles started.
    pub shuffles: u64,
}

/// An outstanding `NEIGHBOR` or `JOIN` request.
#[derive(Debug, Clone)]
struct Pending<P> {
    peer: P,
    expires: Instant,
    join: bool,
}

/// Overlay state of one node.
#[derive(Debug)]
pub struct State<P: PeerId> {
    me: P,
    config: Config,
    active: Vec<P>,
    passive: Vec<P>,
    pending: Vec<Pending<P>>,
    /// Peers not to ask again before the instant (they rejected us).
    cooldown: Vec<(P, Instant)>,
    /// Join contacts, kept to retry and to rejoin when isolated.
    contacts: Vec<P>,
    next_contact: usize,
    join_attempts: u32,
    /// What our outstanding shuffle sent: replaced first when the reply is merged.
    shuffle_sent: Option<Vec<P>>,
    left: bool,
    stats: Stats,
}

impl<P: PeerId> State<P> {
    /// A new overlay for node `me`.
    pub fn new(me: P, config: Config) -> Self {
        Self {
            me,
            active: Vec::with_capacity(config.active_view_capacity + 1),
            passive: Vec::with_capacity(config.passive_view_capacity),
            pending: Vec::new(),
            cooldown: Vec::new(),
            contacts: Vec::new(),
            next_contact: 0,
            join_attempts: 0,
            shuffle_sent: None,
            left: false,
            stats: Stats::default(),
            config,
        }
    }

    /// Arm the periodic timers (shuffle, repair). Called once by the composed state.
    pub fn start<R: Rng>(&mut self, _now: Instant, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        // Random first phases keep nodes started together from shuffling in lockstep.
        let first_shuffle = self
            .config
            .shuffle_interval
            .mul_f64(rng.random_range(0.5..1.5));
        out.push_back(OutEvent::ScheduleTimer(first_shuffle, Timer::Shuffle));
        let first_repair = self
            .config
            .repair_interval
            .mul_f64(rng.random_range(0.5..1.5));
        out.push_back(OutEvent::ScheduleTimer(first_repair, Timer::Repair));
    }

    /// Handle one input. After [`InEvent::Leave`], every input is ignored.
    pub fn handle<R: Rng>(
        &mut self,
        event: InEvent<P>,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if self.left {
            return;
        }
        match event {
            InEvent::RecvMessage(from, message) => {
                if from == self.me {
                    self.stats.ignored_messages += 1;
                    return;
                }
                match message {
                    Message::Join => self.on_join(from, now, rng, out),
                    Message::ForwardJoin { peer, ttl } => {
                        self.on_forward_join(from, peer, ttl, now, rng, out)
                    }
                    Message::Neighbor { priority } => self.on_neighbor(from, priority, rng, out),
                    Message::NeighborReply { accepted } => {
                        self.on_neighbor_reply(from, accepted, now, rng, out)
                    }
                    Message::Disconnect { leaving } => {
                        self.on_disconnect(from, leaving, now, rng, out)
                    }
                    Message::Shuffle { origin, ttl, nodes } => {
                        self.on_shuffle(from, origin, ttl, nodes, rng, out)
                    }
                    Message::ShuffleReply { nodes } => self.on_shuffle_reply(from, nodes, rng, out),
                }
            }
            InEvent::TimerExpired(Timer::Shuffle) => self.on_shuffle_timer(rng, out),
            InEvent::TimerExpired(Timer::Repair) => self.on_repair_timer(now, rng, out),
            InEvent::TimerExpired(Timer::PendingExpired(peer)) => {
                self.on_pending_expired(peer, now, rng, out)
            }
            InEvent::RequestJoin(contact) => self.on_request_join(contact, now, rng, out),
            InEvent::PeerFailed(peer) => self.on_peer_failed(peer, now, rng, out),
            InEvent::Reach(peer) => self.reach(peer, now, rng, out),
            InEvent::Leave => self.on_leave(out),
        }
    }

    /// Peers in the active view.
    pub fn active_view(&self) -> impl Iterator<Item = &P> {
        self.active.iter()
    }

    /// Peers in the passive view.
    pub fn passive_view(&self) -> impl Iterator<Item = &P> {
        self.passive.iter()
    }

    /// Whether `peer` is an active neighbour.
    pub fn is_active(&self, peer: &P) -> bool {
        self.active.contains(peer)
    }

    /// Number of outstanding `NEIGHBOR` and `JOIN` requests.
    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    /// Whether this node left (every input is now ignored).
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Counters of noteworthy events.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- messages ----

    fn on_join<R: Rng>(
        &mut self,
        from: P,
        _now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if self.active.contains(&from) {
            // A retried join whose first answer was slow: answer again, walk only once.
            send(out, from, Message::NeighborReply { accepted: true });
            return;
        }
        self.add_active(from, rng, out);
        send(out, from, Message::NeighborReply { accepted: true });
        let ttl = self.config.active_random_walk_length;
        for &peer in self.active.iter().filter(|p| **p != from) {
            send(out, peer, Message::ForwardJoin { peer: from, ttl });
        }
    }

    fn on_forward_join<R: Rng>(
        &mut self,
        from: P,
        peer: P,
        ttl: u16,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if peer == self.me {
            // A walk that came back to the node it announces: nothing to learn.
            self.stats.ignored_messages += 1;
            return;
        }
        if !self.active.contains(&from) {
            // Walks travel over active links only: the sender believes in a link we do not
            // have. Close it on its side; the walk itself is still valid.
            send(out, from, Message::Disconnect { leaving: false });
        }
        let ttl = ttl.min(self.config.active_random_walk_length);
        let next = if ttl == 0 || self.active.len() <= 1 {
            None
        } else {
            let forward_to: Vec<P> = self
                .active
                .iter()
                .copied()
                .filter(|p| *p != from && *p != peer)
                .collect();
            forward_to.choose(rng).copied()
        };
        let Some(next) = next else {
            // The walk ends here: link to the new node (high priority: as in the paper, the
            // new node always accepts the ends of its walks).
            if !self.active.contains(&peer) && !self.is_pending(&peer) {
                self.request_neighbor(peer, Priority::High, now, out);
            }
            return;
        };
        if ttl == self.config.passive_random_walk_length {
            self.add_passive(peer, &[], rng);
        }
        send(out, next, Message::ForwardJoin { peer, ttl: ttl - 1 });
    }

    fn on_neighbor<R: Rng>(
        &mut self,
        from: P,
        priority: Priority,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if self.active.contains(&from) {
            send(out, from, Message::NeighborReply { accepted: true });
            return;
        }
        // Accept a low-priority request when there is room, or when we asked the sender too
        // (crossed requests): otherwise both would wait for each other.
        let accept = priority == Priority::High
            || self.active.len() < self.config.active_view_capacity
            || self.is_pending(&from);
        if accept {
            self.add_active(from, rng, out);
            send(out, from, Message::NeighborReply { accepted: true });
        } else {
            self.stats.rejected_by_us += 1;
            self.add_passive(from, &[], rng);
            send(out, from, Message::NeighborReply { accepted: false });
        }
    }

    fn on_neighbor_reply<R: Rng>(
        &mut self,
        from: P,
        accepted: bool,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let was_pending = self.take_pending(&from).is_some();
        if self.active.contains(&from) {
            // Crossed requests: the link is already up, whatever this reply says.
            return;
        }
        if accepted {
            if was_pending {
                self.add_active(from, rng, out);
            } else {
                // Late (we gave up) or unsolicited: the peer added us, so decline to keep
                // both ends in agreement.
                self.stats.ignored_messages += 1;
                send(out, from, Message::Disconnect { leaving: false });
            }
        } else {
            if !was_pending {
                self.stats.ignored_messages += 1;
                return;
            }
            self.stats.rejected_by_peer += 1;
            self.cool_down(from, now);
            out.push_back(OutEvent::Disconnect(from));
            self.refill(now, rng, out);
        }
    }

    fn on_disconnect<R: Rng>(
        &mut self,
        from: P,
        leaving: bool,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let was_active = self.remove_active(from, out);
        if leaving {
            self.passive.retain(|p| *p != from);
            self.contacts.retain(|p| *p != from);
        } else if was_active {
            self.add_passive(from, &[], rng);
        }
        if was_active {
            self.refill(now, rng, out);
        }
    }

    fn on_shuffle<R: Rng>(
        &mut self,
        from: P,
        origin: P,
        ttl: u16,
        mut nodes: Vec<P>,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if origin == self.me {
            self.stats.ignored_messages += 1;
            return;
        }
        if !self.active.contains(&from) {
            // Shuffles travel over active links: close the sender's half-open link.
            send(out, from, Message::Disconnect { leaving: false });
        }
        self.cap_nodes(&mut nodes);
        let ttl = ttl
            .min(self.config.shuffle_random_walk_length)
            .saturating_sub(1);
        if ttl > 0 {
            let forward_to: Vec<P> = self
                .active
                .iter()
                .copied()
                .filter(|p| *p != from && *p != origin)
                .collect();
            if let Some(&next) = forward_to.choose(rng) {
                send(out, next, Message::Shuffle { origin, ttl, nodes });
                return;
            }
        }
        // The walk ends here: answer with as many passive peers, then merge what came in,
        // replacing first the peers just sent away.
        let reply: Vec<P> = self
            .passive
            .iter()
            .copied()
            .filter(|p| *p != origin)
            .collect::<Vec<_>>()
            .choose_multiple(rng, nodes.len() + 1)
            .copied()
            .collect();
        send(
            out,
            origin,
            Message::ShuffleReply {
                nodes: reply.clone(),
            },
        );
        nodes.push(origin);
        for node in nodes {
            self.add_passive(node, &reply, rng);
        }
    }

    fn on_shuffle_reply<R: Rng>(
        &mut self,
        from: P,
        mut nodes: Vec<P>,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let Some(sent) = self.shuffle_sent.take() else {
            self.stats.ignored_messages += 1;
            return;
        };
        self.cap_nodes(&mut nodes);
        for node in nodes {
            self.add_passive(node, &sent, rng);
        }
        if !self.active.contains(&from) && !self.is_pending(&from) {
            // The exchange is over: the temporary link is no longer needed.
            out.push_back(OutEvent::Disconnect(from));
        }
    }

    // ---- timers and commands ----

    fn on_shuffle_timer<R: Rng>(&mut self, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        let next = self
            .config
            .shuffle_interval
            .mul_f64(rng.random_range(0.9..1.1));
        out.push_back(OutEvent::ScheduleTimer(next, Timer::Shuffle));
        let Some(&target) = self.active.choose(rng) else {
            return;
        };
        let others: Vec<P> = self
            .active
            .iter()
            .copied()
            .filter(|p| *p != target)
            .collect();
        let mut nodes: Vec<P> = others
            .choose_multiple(rng, self.config.shuffle_active_view_count)
            .copied()
            .collect();
        nodes.extend(
            self.passive
                .choose_multiple(rng, self.config.shuffle_passive_view_count)
                .copied()
                .filter(|p| *p != target),
        );
        self.stats.shuffles += 1;
        self.shuffle_sent = Some(nodes.clone());
        let ttl = self.config.shuffle_random_walk_length;
        send(
            out,
            target,
            Message::Shuffle {
                origin: self.me,
                ttl,
                nodes,
            },
        );
    }

    fn on_repair_timer<R: Rng>(
        &mut self,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let next = self
            .config
            .repair_interval
            .mul_f64(rng.random_range(0.9..1.1));
        out.push_back(OutEvent::ScheduleTimer(next, Timer::Repair));
        self.refill(now, rng, out);
        if self.active.is_empty() && self.pending.is_empty() && !self.contacts.is_empty() {
            // Isolated with nothing left to try: start over through a contact.
            let contact = self.contacts[self.next_contact % self.contacts.len()];
            self.next_contact = self.next_contact.wrapping_add(1);
            self.send_join(contact, now, out);
        }
    }

    fn on_pending_expired<R: Rng>(
        &mut self,
        peer: P,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        let Some(i) = self
            .pending
            .iter()
            .position(|p| p.peer == peer && p.expires <= now)
        else {
            return; // answered in the meantime, or re-sent later: stale timer
        };
        let pending = self.pending.swap_remove(i);
        if pending.join {
            if self.active.is_empty() && !self.contacts.is_empty() {
                let contact = self.contacts[self.next_contact % self.contacts.len()];
                self.next_contact = self.next_contact.wrapping_add(1);
                self.send_join(contact, now, out);
            }
        } else {
            // The paper treats a peer that does not answer as failed.
            self.stats.request_timeouts += 1;
            self.passive.retain(|p| *p != peer);
            self.cool_down(peer, now);
            self.refill(now, rng, out);
        }
    }

    fn on_request_join<R: Rng>(
        &mut self,
        contact: P,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if contact == self.me {
            return;
        }
        if !self.contacts.contains(&contact) {
            if self.contacts.len() >= self.config.max_join_contacts.max(1) {
                self.contacts.remove(0);
            }
            self.contacts.push(contact);
        }
        if !self.active.is_empty() {
            self.reach(contact, now, rng, out);
        } else if !self.pending.iter().any(|p| p.join) {
            // One join at a time: the other contacts are fallbacks for the retry.
            self.next_contact = self.contacts.len();
            self.send_join(contact, now, out);
        }
    }

    fn on_peer_failed<R: Rng>(
        &mut self,
        peer: P,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        // A failed join keeps its pending entry: its expiry paces the retry with backoff.
        self.pending.retain(|p| p.peer != peer || p.join);
        self.passive.retain(|p| *p != peer);
        self.remove_active(peer, out);
        self.refill(now, rng, out);
    }

    fn reach<R: Rng>(
        &mut self,
        peer: P,
        now: Instant,
        rng: &mut R,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        if peer == self.me || self.active.contains(&peer) || self.is_pending(&peer) {
            return;
        }
        if self.active.len() + self.pending.len() < self.config.active_view_capacity {
            let priority = if self.active.is_empty() {
                Priority::High
            } else {
                Priority::Low
            };
            self.request_neighbor(peer, priority, now, out);
        } else {
            self.add_passive(peer, &[], rng);
        }
    }

    fn on_leave(&mut self, out: &mut VecDeque<OutEvent<P>>) {
        for peer in std::mem::take(&mut self.active) {
            send(out, peer, Message::Disconnect { leaving: true });
            out.push_back(OutEvent::NeighborDown(peer));
            out.push_back(OutEvent::Disconnect(peer));
        }
        self.pending.clear();
        self.passive.clear();
        self.cooldown.clear();
        self.shuffle_sent = None;
        self.left = true;
    }

    // ---- views ----

    /// Add `peer` to the active view, dropping a random neighbour if full.
    fn add_active<R: Rng>(&mut self, peer: P, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        if peer == self.me || self.active.contains(&peer) {
            return;
        }
        self.pending.retain(|p| p.peer != peer);
        self.passive.retain(|p| *p != peer);
        self.cooldown.retain(|(p, _)| *p != peer);
        if self.active.len() >= self.config.active_view_capacity.max(1) {
            let victim = self.active[rng.random_range(0..self.active.len())];
            self.stats.evictions += 1;
            send(out, victim, Message::Disconnect { leaving: false });
            self.remove_active(victim, out);
            self.add_passive(victim, &[], rng);
        }
        self.active.push(peer);
        self.join_attempts = 0;
        out.push_back(OutEvent::NeighborUp(peer));
    }

    /// Remove `peer` from the active view; true if it was there.
    fn remove_active(&mut self, peer: P, out: &mut VecDeque<OutEvent<P>>) -> bool {
        let Some(i) = self.active.iter().position(|p| *p == peer) else {
            return false;
        };
        self.active.remove(i);
        out.push_back(OutEvent::NeighborDown(peer));
        out.push_back(OutEvent::Disconnect(peer));
        true
    }

    /// Add `peer` to the passive view; when full, replace a peer of `prefer_evict` if one is
    /// there, else a random one.
    fn add_passive<R: Rng>(&mut self, peer: P, prefer_evict: &[P], rng: &mut R) {
        if peer == self.me
            || self.active.contains(&peer)
            || self.passive.contains(&peer)
            || self.config.passive_view_capacity == 0
        {
            return;
        }
        if self.passive.len() >= self.config.passive_view_capacity {
            let i = self
                .passive
                .iter()
                .position(|p| prefer_evict.contains(p))
                .unwrap_or_else(|| rng.random_range(0..self.passive.len()));
            self.passive.swap_remove(i);
        }
        self.passive.push(peer);
    }

    /// Send `NEIGHBOR` requests to random passive peers until active plus pending reach
    /// capacity, skipping peers asked recently.
    fn refill<R: Rng>(&mut self, now: Instant, rng: &mut R, out: &mut VecDeque<OutEvent<P>>) {
        self.cooldown.retain(|(_, until)| *until > now);
        let cap = self.config.active_view_capacity;
        while self.active.len() + self.pending.len() < cap {
            let candidates: Vec<P> = self
                .passive
                .iter()
                .copied()
                .filter(|p| !self.is_pending(p) && !self.cooldown.iter().any(|(c, _)| c == p))
                .collect();
            let Some(&peer) = candidates.choose(rng) else {
                break;
            };
            // High priority only for the first request of an isolated node: each high request
            // may evict someone at the target.
            let priority = if self.active.is_empty() && self.pending.iter().all(|p| p.join) {
                Priority::High
            } else {
                Priority::Low
            };
            self.request_neighbor(peer, priority, now, out);
        }
    }

    fn request_neighbor(
        &mut self,
        peer: P,
        priority: Priority,
        now: Instant,
        out: &mut VecDeque<OutEvent<P>>,
    ) {
        self.stats.neighbor_requests += 1;
        let timeout = self.config.neighbor_request_timeout;
        self.pending.push(Pending {
            peer,
            expires: now + timeout,
            join: false,
        });
        send(out, peer, Message::Neighbor { priority });
        out.push_back(OutEvent::ScheduleTimer(
            timeout,
            Timer::PendingExpired(peer),
        ));
    }

    fn send_join(&mut self, contact: P, now: Instant, out: &mut VecDeque<OutEvent<P>>) {
        let backoff = 1u32 << self.join_attempts.min(3);
        self.join_attempts = self.join_attempts.saturating_add(1);
        let timeout = self.config.join_timeout * backoff;
        self.pending.retain(|p| p.peer != contact);
        self.pending.push(Pending {
            peer: contact,
            expires: now + timeout,
            join: true,
        });
        send(out, contact, Message::Join);
        out.push_back(OutEvent::ScheduleTimer(
            timeout,
            Timer::PendingExpired(contact),
        ));
    }

    fn is_pending(&self, peer: &P) -> bool {
        self.pending.iter().any(|p| p.peer == *peer)
    }

    fn take_pending(&mut self, peer: &P) -> Option<Pending<P>> {
        let i = self.pending.iter().position(|p| p.peer == *peer)?;
        Some(self.pending.swap_remove(i))
    }

    fn cool_down(&mut self, peer: P, now: Instant) {
        self.cooldown.retain(|(p, _)| *p != peer);
        if self.cooldown.len() >= self.config.passive_view_capacity.max(1) {
            self.cooldown.remove(0);
        }
        self.cooldown
            .push((peer, now + self.config.repair_interval));
    }

    /// Cap a received peer list and drop this node from it.
    fn cap_nodes(&mut self, nodes: &mut Vec<P>) {
        if nodes.len() > self.config.max_shuffle_nodes {
            self.stats.truncated_peers += (nodes.len() - self.config.max_shuffle_nodes) as u64;
            nodes.truncate(self.config.max_shuffle_nodes);
        }
        let me = self.me;
        nodes.retain(|p| *p != me);
    }
}

fn send<P: PeerId>(out: &mut VecDeque<OutEvent<P>>, to: P, message: Message<P>) {
    out.push_back(OutEvent::SendMessage(to, message));
}
