//! [`Node`]: the tokio runtime around the sans-IO protocol core.
//!
//! One task per node (the *actor*) owns the [`proto::State`], the timers and the transport.
//! [`Node`] handles are cheap clones that talk to it through a bounded command channel;
//! deliveries reach users through a bounded inbox that reports lag instead of blocking the actor.
//! The actor is a `select!` over commands, transport events and the earliest timer; for each
//! input it calls the core once and then drains [`proto::State::poll`]. It makes no decisions of
//! its own.
//!
//! Dropping the last handle stops the actor cleanly; [`Node::leave`] first tells the cluster.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, warn};

use crate::config::Config;
use crate::error::{FromMessageError, TransportError};
use crate::inbox::{Inbox, Pop};
use crate::proto::directory::MemberEvent;
use crate::proto::{self, InEvent, OutEvent};
use crate::transport::memory::MemoryNetwork;
use crate::transport::tcp::TcpTransport;
use crate::transport::{Transport, TransportEvent, TransportStats};
use crate::{Error, Member, Message, MessageId, NodeId, Tag, Tags};

type State = proto::State<NodeId, SmallRng>;

/// A change of cluster membership, as seen by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A member joined, or came back after being suspected or declared dead.
    MemberUp(Member),
    /// A member is suspected to have failed; it may still refute.
    MemberSuspect(Member),
    /// A member was declared dead.
    MemberDown(Member),
    /// A member left gracefully.
    MemberLeft(Member),
    /// A member changed its metadata.
    MemberUpdated(Member),
}

/// Counters of one node, for monitoring and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct NodeStats {
    /// The transport's counters (bytes and frames on the wire, drops, rejections).
    pub transport: TransportStats,
    /// User broadcasts delivered to this node.
    pub delivered: u64,
    /// Deliveries skipped because the user fell behind (see [`Error::Lagged`]).
    pub lagged: u64,
    /// Messages `recv_typed` skipped because the `Tags` enum does not list their tag.
    pub unlisted: u64,
    /// Frames from peers that did not decode (the connection was closed).
    pub bad_frames: u64,
    /// Broadcast envelopes that did not parse (dropped, not delivered).
    pub bad_envelopes: u64,
    /// Broadcast-layer counters of the protocol core.
    pub broadcast: proto::plumtree::Stats,
    /// Peers in the active view.
    pub active_view: usize,
    /// The active view itself: the peers this node has open links to.
    pub active_peers: Vec<NodeId>,
    /// Peers in the passive view.
    pub passive_view: usize,
}

enum Command {
    Broadcast(Bytes, oneshot::Sender<MessageId>),
    Join(Vec<SocketAddr>, oneshot::Sender<Result<(), Error>>),
    Leave(oneshot::Sender<()>),
    SetMetadata(Bytes),
    Members(oneshot::Sender<Vec<Member>>),
    Stats(oneshot::Sender<NodeStats>),
}

struct Shared {
    id: NodeId,
    config: Config,
    commands: mpsc::Sender<Command>,
    inbox: Arc<Inbox<Message>>,
    events: broadcast::Sender<Event>,
    unlisted: AtomicU64,
    /// Where broadcasts are encoded (see [`crate::codec::EncodeArena`]). Held only while one
    /// message is encoded, never across an await, and never waited for.
    arena: std::sync::Mutex<crate::codec::EncodeArena>,
}

/// A handle to one running node. Clone it freely: every clone talks to the same node.
///
/// Receiving is shared: each message is handed to exactly one caller of [`Node::recv`] (or
/// [`Node::recv_typed`]) among the clones; [`Node::events`] gives each subscriber every event.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.shared.id).finish()
    }
}

/// Builds a [`Node`] with a [`Config`]. See [`Node::builder`].
#[derive(Debug, Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Use these settings.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Listen on `addr` over TCP ("127.0.0.1:0" picks a free port) and start the node.
    pub async fn bind(self, addr: impl tokio::net::ToSocketAddrs) -> Result<Node, Error> {
        crate::tag::check_registry()?;
        let generation = new_generation();
        let addr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| Error::Resolve(e.to_string()))?
            .next()
            .ok_or_else(|| Error::Resolve("the bind address resolved to nothing".into()))?;
        let transport = TcpTransport::bind(addr, self.config.transport_config(), generation)
            .await
            .map_err(TransportError::from)?;
        Ok(Node::start(self.config, transport, generation))
    }

    /// Start the node on an in-memory network (for tests, demos and simulations in one process).
    pub fn memory(self, network: &MemoryNetwork) -> Result<Node, Error> {
        crate::tag::check_registry()?;
        let generation = new_generation();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let transport = network
            .bind(any, generation)
            .map_err(TransportError::from)?;
        Ok(Node::start(self.config, transport, generation))
    }

    /// Start the node on an in-memory network at a chosen address (to restart a node "at the
    /// same address").
    pub fn memory_at(self, network: &MemoryNetwork, addr: SocketAddr) -> Result<Node, Error> {
        crate::tag::check_registry()?;
        let generation = new_generation();
        let transport = network
            .bind(addr, generation)
            .map_err(TransportError::from)?;
        Ok(Node::start(self.config, transport, generation))
    }
}

fn new_generation() -> u64 {
    // Never 0: 0 means "whoever listens at this address" when joining through an address.
    rand::random::<u64>() | 1
}

impl Node {
    /// A TCP node with default settings listening on `addr` ("127.0.0.1:0" picks a free port).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), gossip::Error> {
    /// let node = gossip::Node::bind("127.0.0.1:0").await?;
    /// println!("listening on {}", node.local_addr());
    /// # Ok(()) }
    /// ```
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> Result<Node, Error> {
        Self::builder().bind(addr).await
    }

    /// A builder, to pass a [`Config`] or pick the in-memory transport.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Start a node over any transport.
    pub fn with_transport<T: Transport>(
        config: Config,
        transport: T,
        generation: u64,
    ) -> Result<Node, Error> {
        crate::tag::check_registry()?;
        Ok(Self::start(config, transport, generation))
    }

    fn start<T: Transport>(config: Config, transport: T, generation: u64) -> Node {
        let id = NodeId::new(transport.local_addr(), generation);
        let (commands, command_rx) = mpsc::channel(config.command_capacity.max(1));
        let inbox = Arc::new(Inbox::new(config.recv_capacity));
        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let now = TokioInstant::now().into_std();
        let state = State::new(
            id,
            config.protocol.clone(),
            rng,
            config.metadata.clone(),
            now,
        );
        let actor = Actor {
            id,
            state,
            transport,
            commands: command_rx,
            inbox: inbox.clone(),
            delivered: Vec::new(),
            events: events.clone(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            joins: Vec::new(),
            stats: NodeStats::default(),
            max_frame: config.max_frame_size,
            origins: Default::default(),
            heads: Default::default(),
            join_timeout: config.join_timeout,
            leave_linger: config.leave_linger,
        };
        tokio::spawn(actor.run());
        Node {
            shared: Arc::new(Shared {
                id,
                config,
                commands,
                inbox,
                events,
                unlisted: AtomicU64::new(0),
                arena: Default::default(),
            }),
        }
    }

    /// This node's identity: its address and the generation drawn when it started.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The address other nodes reach this one at.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.id.addr
    }

    async fn command<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> Command,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Join the cluster through the member listening at `addr`: any one member is enough.
    ///
    /// Retries with backoff until a member answers; fails with [`Error::JoinTimeout`] when none
    /// answered within [`Config::join_timeout`], or [`Error::JoinRejected`] when the member
    /// refused this node (wrong cluster label or key, incompatible version).
    pub async fn join(&self, addr: impl tokio::net::ToSocketAddrs) -> Result<(), Error> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| Error::Resolve(e.to_string()))?
            .collect();
        self.join_many(addrs).await
    }

    /// Join through several known members at once; the first that answers is enough.
    pub async fn join_many(&self, addrs: Vec<SocketAddr>) -> Result<(), Error> {
        if addrs.is_empty() {
            return Err(Error::Resolve("no address to join through".into()));
        }
        self.command(|tx| Command::Join(addrs, tx)).await?
    }

    /// Broadcast `message` to every other member. It is not delivered to this node.
    ///
    /// A message larger than [`Config::max_message_size`] is an error at once
    /// ([`Error::Encode`]); it is never dropped silently.
    pub async fn broadcast<T: Tag>(&self, message: &T) -> Result<MessageId, Error> {
        let limit = self.shared.config.max_message_size;
        let envelope = match self.shared.arena.try_lock() {
            Ok(mut arena) => arena.encode(message, limit)?,
            // A panic in a `Serialize` while encoding leaves nothing the next encode relies on.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().encode(message, limit)?,
            // Another task is encoding: never wait for it, encode into a buffer of its own.
            Err(std::sync::TryLockError::WouldBlock) => crate::codec::encode(message, limit)?,
        };
        self.command(|tx| Command::Broadcast(envelope, tx)).await
    }

    /// The next message broadcast by another member, untyped.
    ///
    /// # Errors
    /// [`Error::Lagged`] with the number of messages skipped when this node's receive queue
    /// ([`Config::recv_capacity`]) overflowed because nobody received fast enough; receiving
    /// again continues with the oldest message still queued. [`Error::Closed`] once the node
    /// stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is never lost if the future is dropped before it completes.
    pub async fn recv(&self) -> Result<Message, Error> {
        match self.shared.inbox.pop().await {
            Pop::Item(message) => Ok(message),
            Pop::Lagged(skipped) => Err(Error::Lagged(skipped)),
            Pop::Closed => Err(Error::Closed),
        }
    }

    /// Waits for at least one message, then appends up to `limit` (at least 1) of the messages
    /// already queued to `buffer`, oldest first, and returns how many. One call takes a whole
    /// burst under one lock of the receive queue, where [`Node::recv`] takes it per message:
    /// use it when messages arrive by the thousand per second. As tokio's
    /// `mpsc::Receiver::recv_many`, it appends to `buffer` and does not clear it.
    ///
    /// # Errors
    /// As [`Node::recv`]. [`Error::Lagged`] comes alone (nothing appended) before the messages
    /// that follow the skipped ones; a lag behind messages already queued is reported by the
    /// next call.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Node::recv`].
    pub async fn recv_many(&self, buffer: &mut Vec<Message>, limit: usize) -> Result<usize, Error> {
        match self.shared.inbox.pop_many(buffer, limit).await {
            Pop::Item(n) => Ok(n),
            Pop::Lagged(skipped) => Err(Error::Lagged(skipped)),
            Pop::Closed => Err(Error::Closed),
        }
    }

    /// The next message whose tag `E` lists, decoded into `E`.
    ///
    /// Messages with a tag that `E` does not list, when `E` has no `#[tags(other)]` variant,
    /// are skipped: counted in [`NodeStats::unlisted`] and logged at debug level. Use an
    /// `other` variant, or [`Node::recv`], to see them.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Node::recv`].
    pub async fn recv_typed<E: Tags>(&self) -> Result<E, Error> {
        loop {
            let message = self.recv().await?;
            match E::from_message(message) {
                Ok(typed) => return Ok(typed),
                Err(FromMessageError::Unlisted(message)) => {
                    self.shared.unlisted.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        tag = message.tag(),
                        "recv_typed skipped a message its enum does not list"
                    );
                }
                Err(FromMessageError::Decode(e)) => return Err(Error::Decode(e)),
            }
        }
    }

    /// Received messages as a [`Stream`] (each item as [`Node::recv`] returns it). The stream
    /// ends when the node stops.
    pub fn messages(&self) -> impl Stream<Item = Result<Message, Error>> + Send + 'static {
        futures::stream::unfold(self.clone(), |node| async move {
            match node.recv().await {
                Err(Error::Closed) => None,
                item => Some((item, node)),
            }
        })
    }

    /// Membership changes as a [`Stream`]. Each call subscribes anew and sees the events from
    /// then on. A subscriber that falls more than [`Config::event_capacity`] events behind gets
    /// `Err(Error::Lagged(n))` and continues with the oldest event still buffered.
    pub fn events(&self) -> Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send + 'static>> {
        let rx = self.shared.events.subscribe();
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(event) => Some((Ok(event), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((Err(Error::Lagged(n)), rx)),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        }))
    }

    /// Every member this node knows (itself included), in every state.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        self.command(Command::Members).await
    }

    /// Replace this node's metadata; it spreads to every member.
    pub async fn set_metadata(&self, metadata: impl Into<Bytes>) -> Result<(), Error> {
        let metadata = metadata.into();
        if metadata.len() > self.shared.config.max_metadata_size {
            return Err(Error::MetadataTooLarge {
                size: metadata.len(),
                limit: self.shared.config.max_metadata_size,
            });
        }
        self.shared
            .commands
            .send(Command::SetMetadata(metadata))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Counters of this node.
    pub async fn stats(&self) -> Result<NodeStats, Error> {
        let mut stats = self.command(Command::Stats).await?;
        stats.unlisted = self.shared.unlisted.load(Ordering::Relaxed);
        stats.lagged = self.shared.inbox.total_lagged();
        Ok(stats)
    }

    /// Leave the cluster gracefully: members see this node as Left, not Dead. The node stops;
    /// every handle then returns [`Error::Closed`].
    pub async fn leave(&self) -> Result<(), Error> {
        self.command(Command::Leave).await
    }
}

struct TimerEntry {
    at: std::time::Instant,
    seq: u64,
    timer: proto::Timer<NodeId>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct PendingJoin {
    addrs: Vec<SocketAddr>,
    deadline: TokioInstant,
    next_try: TokioInstant,
    backoff: Duration,
    reply: oneshot::Sender<Result<(), Error>>,
    rejected: Option<Error>,
}

struct Actor<T: Transport> {
    id: NodeId,
    state: State,
    transport: T,
    commands: mpsc::Receiver<Command>,
    inbox: Arc<Inbox<Message>>,
    /// Deliveries of the current turn, handed to the inbox together.
    delivered: Vec<Message>,
    events: broadcast::Sender<Event>,
    timers: BinaryHeap<Reverse<TimerEntry>>,
    timer_seq: u64,
    joins: Vec<PendingJoin>,
    stats: NodeStats,
    max_frame: usize,
    /// The origin of the latest payload frame, so runs from one origin decode it once.
    origins: crate::wire::OriginCache<NodeId>,
    /// The encoding of the latest origin of a sent GOSSIP, so runs from one origin reuse it.
    heads: crate::wire::HeadEncoder<NodeId>,
    join_timeout: Duration,
    leave_linger: Duration,
}

/// Cap on timers fired per loop turn, so commands and frames are never starved.
const TIMERS_PER_TURN: usize = 256;
/// Cap on transport events handled per loop turn.
const FRAMES_PER_TURN: usize = 256;

impl<T: Transport> Actor<T> {
    async fn run(mut self) {
        self.drain();
        // One timer for the actor, moved only when the earliest deadline changes: creating and
        // registering a fresh one every turn cost more than the turn's work at high rates.
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        let mut armed: Option<TokioInstant> = None;
        loop {
            let next_timer = self
                .timers
                .peek()
                .map(|Reverse(t)| TokioInstant::from_std(t.at));
            let next_join = self.joins.iter().map(|j| j.next_try.min(j.deadline)).min();
            let wake = match (next_timer, next_join) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(at) = wake
                && armed != Some(at)
            {
                sleep.as_mut().reset(at);
                armed = Some(at);
            }
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Leave(reply)) => {
                        self.leave().await;
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => self.on_command(command),
                    // Every handle is gone: stop quietly.
                    None => break,
                },
                event = futures::future::poll_fn(|cx| self.transport.poll_recv(cx)) => match event {
                    Some(event) => {
                        // One clock reading for the whole batch.
                        let now = self.now();
                        self.on_transport(event, now);
                        for _ in 1..FRAMES_PER_TURN {
                            // The outputs of each frame leave before the next frame is handled:
                            // the core's output queue then holds one frame's worth (a few
                            // events, hot in cache) instead of a whole turn's (hundreds of
                            // events copied into a queue that regrew into fresh pages).
                            self.send_outputs();
                            match futures::poll!(futures::future::poll_fn(|cx| self.transport.poll_recv(cx))) {
                                Poll::Ready(Some(event)) => self.on_transport(event, now),
                                _ => break,
                            }
                        }
                    }
                    None => {
                        warn!(node = %self.id, "transport stopped; the node stops");
                        break;
                    }
                },
                _ = &mut sleep, if wake.is_some() => {
                    armed = None;
                    self.fire_timers();
                    self.check_joins();
                }
            }
            self.drain();
        }
        self.inbox.close();
    }

    fn now(&self) -> std::time::Instant {
        TokioInstant::now().into_std()
    }

    fn on_command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Broadcast(payload, reply) => {
                let id = self.state.broadcast(payload, now);
                let _ = reply.send(id);
            }
            Command::Join(addrs, reply) => {
                let start = TokioInstant::now();
                let join = PendingJoin {
                    addrs,
                    deadline: start + self.join_timeout,
                    next_try: start,
                    backoff: Duration::from_millis(100),
                    reply,
                    rejected: None,
                };
                self.joins.push(join);
                self.check_joins();
            }
            Command::Leave(_) => unreachable!("handled by the loop"),
            Command::SetMetadata(metadata) => {
                self.state.handle(InEvent::SetMetadata(metadata), now)
            }
            Command::Members(reply) => {
                let _ = reply.send(self.state.members());
            }
            Command::Stats(reply) => {
                let mut stats = self.stats.clone();
                stats.transport = self.transport.stats();
                stats.broadcast = self.state.broadcast_layer().stats().clone();
                stats.active_peers = self.state.membership().active_view().copied().collect();
                stats.active_view = stats.active_peers.len();
                stats.passive_view = self.state.membership().passive_view().count();
                let _ = reply.send(stats);
            }
        }
    }

    fn joined(&self) -> bool {
        self.state.membership().active_view().next().is_some()
    }

    /// Resolve, retry or fail pending joins.
    fn check_joins(&mut self) {
        if self.joins.is_empty() {
            return;
        }
        let now = TokioInstant::now();
        let joined = self.joined();
        let mut retry = Vec::new();
        for mut join in std::mem::take(&mut self.joins) {
            if joined {
                let _ = join.reply.send(Ok(()));
            } else if let Some(error) = join.rejected.take() {
                let _ = join.reply.send(Err(error));
            } else if now >= join.deadline {
                let _ = join.reply.send(Err(Error::JoinTimeout {
                    addrs: join.addrs.clone(),
                    waited: self.join_timeout,
                }));
            } else {
                if now >= join.next_try {
                    // Generation 0: whoever listens at the address now.
                    retry.extend(join.addrs.iter().map(|a| NodeId::new(*a, 0)));
                    join.next_try = now + join.backoff;
                    join.backoff = (join.backoff * 2).min(Duration::from_secs(2));
                }
                self.joins.push(join);
            }
        }
        if !retry.is_empty() {
            let at = self.now();
            self.state.handle(InEvent::Join(retry), at);
        }
    }

    fn on_transport(&mut self, event: TransportEvent, now: std::time::Instant) {
        match event {
            TransportEvent::Frame { from, frame } => {
                match crate::wire::decode_frame_with(frame, self.max_frame, &mut self.origins) {
                    Ok(message) => self.state.handle(InEvent::RecvMessage(from, message), now),
                    Err(error) => {
                        self.stats.bad_frames += 1;
                        warn!(peer = %from, %error, "closing the link to a peer that sent a bad frame");
                        self.transport.disconnect(from);
                        self.state.handle(InEvent::LinkFailed(from), now);
                    }
                }
            }
            TransportEvent::LinkFailed(peer) => self.state.handle(InEvent::LinkFailed(peer), now),
            TransportEvent::Rejected { addr, reason } => {
                warn!(%addr, %reason, "a peer rejected this node's handshake");
                for join in self.joins.iter_mut().filter(|j| j.addrs.contains(&addr)) {
                    join.rejected = Some(Error::JoinRejected {
                        addr,
                        reason: reason.clone(),
                    });
                }
                self.check_joins();
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        for _ in 0..TIMERS_PER_TURN {
            match self.timers.peek() {
                Some(Reverse(entry)) if entry.at <= now => {
                    let Reverse(entry) = self.timers.pop().expect("peeked");
                    self.state.handle(InEvent::TimerExpired(entry.timer), now);
                }
                _ => break,
            }
        }
    }

    /// Act on every output of the core, then hand the turn's deliveries to the inbox.
    fn drain(&mut self) {
        self.send_outputs();
        // The turn's frames leave: one hand-over per peer, not one per frame.
        self.transport.flush();
        // The user's task wakes once per turn, not once per message.
        self.inbox.push_all(&mut self.delivered);
        if !self.joins.is_empty() && self.joined() {
            self.check_joins();
        }
    }

    /// Act on every output of the core; deliveries are kept for the end of the turn.
    fn send_outputs(&mut self) {
        // A payload goes to every eager neighbour in a row as the same GOSSIP: its frame's head
        // is encoded once for the row, and every send shares the payload itself (the transport
        // writes head and payload one after the other), so no send copies or allocates.
        let mut head: Option<(MessageId, u16, *const u8, crate::wire::FrameHead)> = None;
        while let Some(out) = self.state.poll() {
            match out {
                OutEvent::SendMessage(
                    to,
                    proto::Message::Broadcast(proto::plumtree::Message::Gossip(g)),
                ) => {
                    let row = (g.id, g.hops, g.payload.as_ptr());
                    let cached = head
                        .as_ref()
                        .filter(|(id, hops, ptr, _)| (*id, *hops, *ptr) == row)
                        .map(|(.., h)| *h);
                    let encoded = cached.or_else(|| {
                        let h = self.heads.gossip_head(&g)?;
                        head = Some((row.0, row.1, row.2, h));
                        Some(h)
                    });
                    // The payload moves to the transport: no reference count taken and dropped.
                    match encoded {
                        Some(h) => self.transport.send_parts(to, h.as_bytes(), g.payload),
                        None => {
                            let message =
                                proto::Message::Broadcast(proto::plumtree::Message::Gossip(g));
                            self.transport.send(to, crate::wire::encode_frame(&message))
                        }
                    }
                }
                OutEvent::SendMessage(to, message) => {
                    self.transport.send(to, crate::wire::encode_frame(&message));
                }
                OutEvent::ScheduleTimer(at, timer) => {
                    self.timer_seq += 1;
                    self.timers.push(Reverse(TimerEntry {
                        at,
                        seq: self.timer_seq,
                        timer,
                    }));
                }
                OutEvent::Deliver(delivery) => {
                    let parsed = Message::from_envelope_limited(delivery.payload, self.max_frame)
                        .map(|m| {
                            m.with_source(delivery.id.origin, Some(delivery.id), delivery.hops)
                        });
                    match parsed {
                        Ok(message) => {
                            self.stats.delivered += 1;
                            self.delivered.push(message);
                        }
                        Err(error) => {
                            self.stats.bad_envelopes += 1;
                            warn!(origin = %delivery.id.origin, %error, "dropped a broadcast whose envelope does not parse");
                        }
                    }
                }
                OutEvent::MemberEvent(event) => {
                    let event = match event {
                        MemberEvent::Up(m) => Event::MemberUp(m),
                        MemberEvent::Suspect(m) => Event::MemberSuspect(m),
                        MemberEvent::Down(m) => Event::MemberDown(m),
                        MemberEvent::Left(m) => Event::MemberLeft(m),
                        MemberEvent::Updated(m) => Event::MemberUpdated(m),
                    };
                    // No subscriber is fine: events are also visible through members().
                    let _ = self.events.send(event);
                }
                OutEvent::Disconnect(peer) => self.transport.disconnect(peer),
            }
        }
    }

    /// Announce Left, then keep serving for a short linger so the announcement spreads.
    async fn leave(&mut self) {
        let now = self.now();
        self.state.handle(InEvent::Leave, now);
        self.drain();
        let linger = tokio::time::sleep(self.leave_linger);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                _ = &mut linger => break,
                event = futures::future::poll_fn(|cx| self.transport.poll_recv(cx)) => match event {
                    Some(event) => {
                        let now = self.now();
                        self.on_transport(event, now);
                    }
                    None => break,
                },
            }
            self.drain();
        }
    }
}
