//! [`State`]: the layers composed into one node's protocol.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::directory::{Member, MemberEvent};
use super::plumtree::{Delivery, PayloadKind};
use super::{Instant, MessageId, PeerId, detector, directory, hyparview, plumtree};

/// Every protocol setting, by layer.
///
/// Two presets: [`Config::default`] suits a WAN and the simulator (links of 10-100 ms; the
/// simulator's figures were measured with it), [`Config::lan`] suits a LAN or an in-memory
/// cluster (links of a few milliseconds) and is what `gossip::Config::default()` uses.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// HyParView overlay.
    pub membership: hyparview::Config,
    /// Plumtree broadcast, catch-up and FIFO delivery.
    pub broadcast: plumtree::Config,
    /// Phi-accrual failure detection.
    pub detector: detector::Config,
    /// Cluster directory.
    pub directory: directory::Config,
}

impl Config {
    /// The preset for LAN latencies (well under 10 ms per hop): the broadcast layer repairs a
    /// missing message after tens of milliseconds instead of half a second (see
    /// [`plumtree::Config::lan`]) and catches up every second on messages a quarter of a
    /// second old; the directory re-broadcasts a fact no batch covered after 1 s instead of 3 s
    /// and retries a lost snapshot after 1 s. The other settings keep their defaults.
    pub fn lan() -> Self {
        let mut broadcast = plumtree::Config::lan();
        broadcast.catchup_interval = Duration::from_secs(1);
        broadcast.catchup_min_age = Duration::from_millis(250);
        let directory = directory::Config {
            forward_grace: Duration::from_secs(1),
            sync_timeout: Duration::from_secs(1),
            ..directory::Config::default()
        };
        Self {
            broadcast,
            directory,
            ..Self::default()
        }
    }
}

/// A message between two nodes: one variant per layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Message<P: PeerId> {
    /// Overlay maintenance (HyParView).
    Membership(hyparview::Message<P>),
    /// Broadcast (Plumtree, catch-up).
    Broadcast(plumtree::Message<P>),
    /// Heartbeats.
    Detector(detector::Message),
    /// Directory sync and probes.
    Directory(directory::Message<P>),
}

/// A timer of one of the layers. Opaque to drivers: hand it back when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Timer<P: PeerId> {
    /// Overlay timer.
    Membership(hyparview::Timer<P>),
    /// Broadcast timer.
    Broadcast(plumtree::Timer<P>),
    /// Detector timer.
    Detector(detector::Timer),
    /// Directory timer.
    Directory(directory::Timer<P>),
}

/// An input to [`State::handle`].
#[derive(Debug)]
pub enum InEvent<P: PeerId> {
    /// A message arrived from `P`.
    RecvMessage(P, Message<P>),
    /// A timer set by [`OutEvent::ScheduleTimer`] fired.
    TimerExpired(Timer<P>),
    /// The transport lost, or could not open, the link to `P`.
    LinkFailed(P),
    /// Join the cluster through these contacts (any one member is enough).
    Join(Vec<P>),
    /// Change this node's metadata; the directory spreads it.
    SetMetadata(Bytes),
    /// Leave gracefully: announce `Left`, close the active links.
    Leave,
}

/// An output drained with [`State::poll`].
#[derive(Debug)]
pub enum OutEvent<P: PeerId> {
    /// Send a message to a peer (opening a link if there is none).
    SendMessage(P, Message<P>),
    /// Hand back `Timer` through [`InEvent::TimerExpired`] at this instant.
    ScheduleTimer(Instant, Timer<P>),
    /// A user broadcast reached this node.
    Deliver(Delivery<P>),
    /// Membership changed.
    MemberEvent(MemberEvent<P>),
    /// Close the link to this peer: it is no longer needed.
    Disconnect(P),
}

/// Capacity an output queue keeps once drained; bursts beyond it are given back (the output
/// queue keeps up to four times its latest drain, see [`State::poll`]).
const QUEUE_KEEP: usize = 64;

/// Work passed between layers while one input is processed.
enum Step<P: PeerId> {
    Membership(hyparview::InEvent<P>),
    Broadcast(plumtree::InEvent<P>),
    Detector(detector::InEvent<P>),
    Directory(directory::InEvent<P>),
    SystemBroadcast(Bytes),
}

/// One node's protocol state: the four layers and the rng they share.
#[derive(Debug)]
pub struct State<P: PeerId, R: Rng> {
    me: P,
    rng: R,
    membership: hyparview::State<P>,
    broadcast: plumtree::State<P>,
    detector: detector::State<P>,
    directory: directory::State<P>,
    out: VecDeque<OutEvent<P>>,
    /// Most outputs queued at once since the output queue was last empty.
    out_peak: usize,
    hpv_out: VecDeque<hyparview::OutEvent<P>>,
    plum_out: VecDeque<plumtree::OutEvent<P>>,
    det_out: VecDeque<detector::OutEvent<P>>,
    dir_out: VecDeque<directory::OutEvent<P>>,
}

impl<P: PeerId, R: Rng> State<P, R> {
    /// A node `me` with its settings, its own seeded rng and its initial metadata.
    ///
    /// Arms the periodic timers at once: drain [`State::poll`] after creating it.
    pub fn new(me: P, config: Config, rng: R, metadata: Bytes, now: Instant) -> Self {
        let mut state = Self {
            me,
            rng,
            membership: hyparview::State::new(me, config.membership),
            broadcast: plumtree::State::new(me, config.broadcast),
            detector: detector::State::new(config.detector),
            directory: directory::State::new(me, config.directory, metadata),
            out: VecDeque::new(),
            out_peak: 0,
            hpv_out: VecDeque::new(),
            plum_out: VecDeque::new(),
            det_out: VecDeque::new(),
            dir_out: VecDeque::new(),
        };
        state
            .membership
            .start(now, &mut state.rng, &mut state.hpv_out);
        state
            .broadcast
            .start(now, &mut state.rng, &mut state.plum_out);
        state.detector.start(now, &mut state.det_out);
        state
            .directory
            .start(now, &mut state.rng, &mut state.dir_out);
        state.run(VecDeque::new(), now);
        state
    }

    /// This node's id.
    pub fn me(&self) -> P {
        self.me
    }

    /// Handle one input; then drain [`State::poll`].
    pub fn handle(&mut self, event: InEvent<P>, now: Instant) {
        let mut work = VecDeque::new();
        match event {
            // Nobody else may speak as this node (a spoofed or looped-back message).
            InEvent::RecvMessage(from, _) if from == self.me => return,
            InEvent::RecvMessage(from, message) => {
                // Any message is a sign of life; outputs (a re-armed check) are collected in `run`.
                let received = detector::InEvent::Received(from);
                self.detector.handle(received, now, &mut self.det_out);
                match message {
                    Message::Membership(m) => {
                        work.push_back(Step::Membership(hyparview::InEvent::RecvMessage(from, m)))
                    }
                    // Most inputs of a busy node: handled here rather than queued, so the
                    // queue stays unallocated. The same order as through the queue: the
                    // detector's outputs are collected first, and this step runs before any
                    // step they queue.
                    Message::Broadcast(m) => {
                        self.collect(&mut work, now);
                        let ev = plumtree::InEvent::RecvMessage(from, m);
                        self.broadcast
                            .handle(ev, now, &mut self.rng, &mut self.plum_out);
                    }
                    // Heartbeats and detector checks, most inputs of a quiet node, go straight to
                    // the detector: nothing else is queued, and the queue stays unallocated.
                    Message::Detector(m) => {
                        let ev = detector::InEvent::RecvMessage(from, m);
                        self.detector.handle(ev, now, &mut self.det_out)
                    }
                    Message::Directory(m) => {
                        work.push_back(Step::Directory(directory::InEvent::RecvMessage(from, m)))
                    }
                }
            }
            InEvent::TimerExpired(timer) => match timer {
                Timer::Membership(t) => {
                    work.push_back(Step::Membership(hyparview::InEvent::TimerExpired(t)))
                }
                // Graft and dispatch timers of a busy node: handled here like broadcast
                // messages (nothing is left to collect before them).
                Timer::Broadcast(t) => {
                    let ev = plumtree::InEvent::TimerExpired(t);
                    self.broadcast
                        .handle(ev, now, &mut self.rng, &mut self.plum_out);
                }
                Timer::Detector(t) => {
                    let ev = detector::InEvent::TimerExpired(t);
                    self.detector.handle(ev, now, &mut self.det_out)
                }
                Timer::Directory(t) => {
                    work.push_back(Step::Directory(directory::InEvent::TimerExpired(t)))
                }
            },
            InEvent::LinkFailed(peer) => {
                // A broken active link is a hint of a failure, which the directory confirms
                // by probing before it suspects anyone: a live peer's connection also breaks
                // when it is replaced or the peer drops us from its view. Any other closed
                // link is routine. The overlay goes first: it closes the link, so the
                // directory's probe opens a fresh one.
                let active = self.membership.is_active(&peer);
                work.push_back(Step::Membership(hyparview::InEvent::PeerFailed(peer)));
                if active {
                    tracing::debug!(me = ?self.me, ?peer, "an active link broke: the directory probes the peer");
                    work.push_back(Step::Directory(directory::InEvent::LinkLost(peer)));
                } else {
                    // Only matters if it is the collector the directory waits on.
                    work.push_back(Step::Directory(directory::InEvent::Unreachable(peer)));
                }
            }
            InEvent::Join(contacts) => {
                work.push_back(Step::Directory(directory::InEvent::Join(contacts.clone())));
                for contact in contacts.into_iter().filter(|c| *c != self.me) {
                    work.push_back(Step::Membership(hyparview::InEvent::RequestJoin(contact)));
                }
            }
            InEvent::SetMetadata(metadata) => {
                work.push_back(Step::Directory(directory::InEvent::SetMetadata(metadata)))
            }
            InEvent::Leave => {
                // The directory announces Left through the tree before the links close.
                work.push_back(Step::Directory(directory::InEvent::Leave));
                work.push_back(Step::Membership(hyparview::InEvent::Leave));
            }
        }
        self.run(work, now);
    }

    /// Broadcast a user payload to every other node; it is not delivered locally.
    pub fn broadcast(&mut self, payload: Bytes, now: Instant) -> MessageId<P> {
        let id = self.broadcast.broadcast(
            payload,
            PayloadKind::User,
            now,
            &mut self.rng,
            &mut self.plum_out,
        );
        self.run(VecDeque::new(), now);
        id
    }

    /// The next output, if any.
    #[must_use]
    pub fn poll(&mut self) -> Option<OutEvent<P>> {
        let event = self.out.pop_front();
        if event.is_some() {
            self.out_peak = self.out_peak.max(self.out.len() + 1);
        } else {
            // A burst (a directory batch yields one member event per fact) must not pin its
            // capacity: 10,000 simulated nodes would keep ~1 GiB of empty queues. A steady
            // load (a runtime handling a batch of frames per drain) keeps what it uses:
            // shrinking after every drain grew the queue again in steps each time.
            let cap = self.out.capacity();
            if cap > QUEUE_KEEP && cap > 4 * self.out_peak {
                self.out.shrink_to(QUEUE_KEEP.max(self.out_peak));
            }
            self.out_peak = 0;
        }
        event
    }

    /// Every member this node knows, itself included.
    pub fn members(&self) -> Vec<Member<P>> {
        self.directory.members()
    }

    /// The directory layer (read-only).
    pub fn directory(&self) -> &directory::State<P> {
        &self.directory
    }

    /// The overlay layer (read-only): active and passive views.
    pub fn membership(&self) -> &hyparview::State<P> {
        &self.membership
    }

    /// The broadcast layer (read-only): cache and counters.
    pub fn broadcast_layer(&self) -> &plumtree::State<P> {
        &self.broadcast
    }

    /// Run the work queue until every layer is quiet.
    fn run(&mut self, mut work: VecDeque<Step<P>>, now: Instant) {
        loop {
            self.collect(&mut work, now);
            let Some(step) = work.pop_front() else { break };
            match step {
                Step::Membership(ev) => {
                    self.membership
                        .handle(ev, now, &mut self.rng, &mut self.hpv_out)
                }
                Step::Broadcast(ev) => {
                    self.broadcast
                        .handle(ev, now, &mut self.rng, &mut self.plum_out)
                }
                Step::Detector(ev) => self.detector.handle(ev, now, &mut self.det_out),
                Step::Directory(ev) => {
                    self.directory
                        .handle(ev, now, &mut self.rng, &mut self.dir_out)
                }
                Step::SystemBroadcast(payload) => {
                    self.broadcast.broadcast(
                        payload,
                        PayloadKind::System,
                        now,
                        &mut self.rng,
                        &mut self.plum_out,
                    );
                }
            }
        }
    }

    /// Move every layer's outputs either out of the state or into the work queue.
    fn collect(&mut self, work: &mut VecDeque<Step<P>>, now: Instant) {
        let at = |d: Duration| now + d;
        while let Some(ev) = self.hpv_out.pop_front() {
            match ev {
                hyparview::OutEvent::SendMessage(to, m) => {
                    // Only moves a deadline, outputs nothing: no need to queue it.
                    let sent = detector::InEvent::Sent(to);
                    self.detector.handle(sent, now, &mut self.det_out);
                    self.out
                        .push_back(OutEvent::SendMessage(to, Message::Membership(m)));
                }
                hyparview::OutEvent::ScheduleTimer(d, t) => self
                    .out
                    .push_back(OutEvent::ScheduleTimer(at(d), Timer::Membership(t))),
                hyparview::OutEvent::NeighborUp(p) => {
                    work.push_back(Step::Detector(detector::InEvent::LinkUp(p)));
                    work.push_back(Step::Broadcast(plumtree::InEvent::NeighborUp(p)));
                    work.push_back(Step::Directory(directory::InEvent::NeighborUp(p)));
                }
                hyparview::OutEvent::NeighborDown(p) => {
                    work.push_back(Step::Detector(detector::InEvent::LinkDown(p)));
                    work.push_back(Step::Broadcast(plumtree::InEvent::NeighborDown(p)));
                    work.push_back(Step::Directory(directory::InEvent::NeighborDown(p)));
                }
                hyparview::OutEvent::Disconnect(p) => self.out.push_back(OutEvent::Disconnect(p)),
            }
        }
        while let Some(ev) = self.plum_out.pop_front() {
            match ev {
                plumtree::OutEvent::SendMessage(to, m) => {
                    let sent = detector::InEvent::Sent(to);
                    self.detector.handle(sent, now, &mut self.det_out);
                    self.out
                        .push_back(OutEvent::SendMessage(to, Message::Broadcast(m)));
                }
                plumtree::OutEvent::ScheduleTimer(d, t) => self
                    .out
                    .push_back(OutEvent::ScheduleTimer(at(d), Timer::Broadcast(t))),
                plumtree::OutEvent::Deliver(d) => match d.kind {
                    PayloadKind::User => self.out.push_back(OutEvent::Deliver(d)),
                    PayloadKind::System => work.push_back(Step::Directory(
                        directory::InEvent::Update(d.id.origin, d.payload),
                    )),
                },
            }
        }
        while let Some(ev) = self.det_out.pop_front() {
            match ev {
                detector::OutEvent::SendMessage(to, m) => self
                    .out
                    .push_back(OutEvent::SendMessage(to, Message::Detector(m))),
                detector::OutEvent::ScheduleTimer(d, t) => self
                    .out
                    .push_back(OutEvent::ScheduleTimer(at(d), Timer::Detector(t))),
                detector::OutEvent::PeerFailed(p) => {
                    tracing::debug!(me = ?self.me, peer = ?p, "phi gave up on an active link: the directory probes the peer");
                    work.push_back(Step::Membership(hyparview::InEvent::PeerFailed(p)));
                    work.push_back(Step::Directory(directory::InEvent::LinkLost(p)));
                }
            }
        }
        while let Some(ev) = self.dir_out.pop_front() {
            match ev {
                directory::OutEvent::SendMessage(to, m) => self
                    .out
                    .push_back(OutEvent::SendMessage(to, Message::Directory(m))),
                directory::OutEvent::ScheduleTimer(d, t) => self
                    .out
                    .push_back(OutEvent::ScheduleTimer(at(d), Timer::Directory(t))),
                directory::OutEvent::Broadcast(payload) => {
                    work.push_back(Step::SystemBroadcast(payload))
                }
                directory::OutEvent::Event(e) => self.out.push_back(OutEvent::MemberEvent(e)),
                directory::OutEvent::Reach(p) => {
                    work.push_back(Step::Membership(hyparview::InEvent::Reach(p)))
                }
            }
        }
        if self.dir_out.capacity() > QUEUE_KEEP {
            self.dir_out.shrink_to(QUEUE_KEEP);
        }
    }
}
