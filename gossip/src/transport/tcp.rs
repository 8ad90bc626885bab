//! TCP transport: length-prefixed frames over tokio, one connection per peer, a handshake on
//! every connection, optional encryption, and bounds on everything a peer can make it hold.
//!
//! # Connections
//!
//! The first [`send`](Transport::send) to a peer dials it; frames wait in that peer's bounded
//! queue ([`TcpConfig::outbound_queue`] frames, those of the current turn not yet flushed
//! included) while the connection opens. When the queue is full the **newest** frame is dropped
//! and counted in `dropped_overflow`: the protocol above tolerates loss, and old frames already
//! queued are the ones closest to being sent.
//!
//! A connection carries frames both ways. Every frame is a 4-byte big-endian length and a body
//! ([`tokio_util::codec::LengthDelimitedCodec`]); the length is checked against
//! [`TcpConfig::max_frame_size`] before any buffer is allocated. If two nodes dial each other at
//! the same time, both keep the connection dialed by the node with the smaller [`NodeId`]: the
//! other dialer hands its queue over to that connection (directly, task to task), stops writing
//! on its own and both close it once drained. Frames already written on the losing connection
//! are still read, so nothing is lost, though frames of the two connections may interleave. A
//! new connection from a peer that already has one replaces it (the peer must have lost the old
//! one). A send to an address alone (generation 0, as when joining) goes over the open
//! connection to the node at that address, if there is one, rather than dialing a second.
//!
//! [`TransportEvent::LinkFailed`] is reported when a dial or handshake fails, when the
//! connection holding a peer's queue breaks, and when the peer closes it without a goodbye; not
//! when a connection closes for idleness, after [`disconnect`](Transport::disconnect), or when a
//! redundant connection from a simultaneous dial is retired. A side that closes a connection on
//! purpose (disconnect, retired or replaced connection, idleness, [`TcpTransport::close`]) sends
//! a *goodbye*, an empty frame, before its end of stream, and the peer closes its side quietly
//! too (unless frames it had queued there are lost). A peer that crashed or was dropped closes
//! without one. Taking a goodbye for a failure made HyParView drop live peers from its passive
//! view: every rejected `NEIGHBOR` request and every `DISCONNECT` did so at the other end.
//!
//! Connection bookkeeping (which connection holds a peer's queue, failures, backoff) happens in
//! [`poll_recv`](Transport::poll_recv): the node must keep polling it, as its actor loop does.
//!
//! If a dial fails, the peer is backed off (from [`TcpConfig::backoff_min`] doubling up to
//! [`TcpConfig::backoff_max`]); sends to it during the backoff fail at once with
//! [`TransportEvent::LinkFailed`].
//!
//! # Handshake
//!
//! See [`crate::wire`]: magic, protocol version, cluster label, the sender's [`NodeId`], the
//! `NodeId` the dialer expects (a node restarted under a new generation answers "not this node",
//! reported as `LinkFailed`), the encryption flag and, with a keyring, a key proof. A handshake
//! refused for a reason the user must fix (label, version, key) is reported to the dialer as
//! [`TransportEvent::Rejected`]; the accepting side logs it at warn and counts it.
//!
//! # Timeouts and limits
//!
//! - connect: [`TcpConfig::connect_timeout`]; handshake: [`TcpConfig::handshake_timeout`] for the
//!   whole exchange (a silent or half-open connection is closed and counted in
//!   `handshake_timeouts`);
//! - read: a frame whose first bytes arrived must be complete within one to two
//!   [`TcpConfig::read_timeout`] periods (slowloris writers are closed); a connection with no
//!   traffic in either direction for [`TcpConfig::idle_timeout`] is closed quietly;
//! - write: a batch of frames (at most 256 frames, and no frame more once it holds 256 KiB) must
//!   be written within [`TcpConfig::write_timeout`];
//! - at most [`TcpConfig::max_inbound_connections`] accepted connections (extra connections
//!   are closed at once) and [`TcpConfig::max_pending_handshakes`] handshakes in progress (extra
//!   connections wait in the kernel's accept queue, of up to 1024 connections, until
//!   one finishes).
//!
//! # Batching
//!
//! A connection reads up to 64 KiB per system call and cuts every complete frame out of the
//! buffer as a slice (no copy); the frames of one read reach the node as one event (at most
//! 256 frames per event). Frames sent to a peer in one turn of the node reach its connection
//! together: [`send`](Transport::send) keeps them with the peer (it looks the peer up anyway)
//! and [`flush`](Transport::flush), which the node calls at the end of every turn, appends each
//! peer's run to its queue in one operation and wakes the writer if it waits. Until a first
//! `flush`, every frame is handed over at once, so a caller that never flushes loses nothing.
//! The writer takes what is queued for its peer (at most 256 frames, and no frame more once it
//! holds 256 KiB) in one operation, yields once so that the turns other tasks run meanwhile
//! join the batch, takes what they added, and writes it all with one vectored write.
//! A frame given as a head and a body ([`Transport::send_parts`], as the node sends payloads)
//! is written from both parts, so a payload going to several peers is shared by their queues,
//! never copied. One timer per connection checks the read and idle timeouts, rather than one
//! armed per read.
//!
//! Memory per connection is bounded by its read buffer (one wire body of at most
//! `max_frame_size + 32` bytes, or 64 KiB if more) plus its queue (`outbound_queue` frames);
//! before the handshake completes, by 512 bytes. Received frames pass through one bounded
//! channel ([`TcpConfig::event_queue`] events, each at most one read buffer's worth of frames);
//! when the node reads slowly, reading from sockets pauses and TCP pushes back on senders.
//! Frames are slices of the read buffer they arrived in, so a payload the node keeps (its
//! message cache) keeps that buffer's allocation alive until the payload is evicted.
//!
//! # Encryption
//!
//! With a [`Keyring`] the frames queued together (up to 256) are packed into one record
//! (`u32` length and body per frame, at most `max_frame_size + 4` bytes) sealed once with
//! ChaCha20-Poly1305: 28 bytes (nonce and tag) per record plus 4 per frame on top of the
//! plaintext framing, so a lone frame costs 32 bytes more than plaintext and a busy link close
//! to 4. Records are bound to the connection (both handshake nonces), their direction and their
//! sequence number through the associated data: they cannot be replayed on another connection,
//! reflected or reordered.
//!
//! Identities are claimed, not proven, unless the cluster is encrypted: without a keyring anyone
//! who can reach the port and knows the label can pose as a member (the label separates
//! clusters, it is not a secret). With a keyring, only holders of a cluster key can complete a
//! handshake, and every frame is authenticated.
//!
//! Every bad input (malformed or oversized frame, wrong version, label or key, undecryptable
//! frame, slow writer) closes only that connection, is logged at warn with a typed reason and
//! counted in `rejected_connections`; the listener keeps serving everyone else.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Transport, TransportEvent, TransportStats};
use crate::NodeId;
use crate::keyring::{self, Keyring, KeyringError};
use crate::wire::{self, Handshake, Hello, RejectReason};

/// Settings of a [`TcpTransport`]. `Default` suits a LAN.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Nodes with different labels refuse each other (at most 64 bytes). Default `"default"`.
    pub cluster_label: String,
    /// The address other nodes reach this node at, when it is not the bound one (binding
    /// `0.0.0.0`, NAT, containers). Port 0 means "the bound port". Default `None`: the bound
    /// address, which must then be a specific IP.
    pub advertise_addr: Option<SocketAddr>,
    /// Seal every frame with this keyring; `None` (the default) sends plaintext. Every node of
    /// a cluster must agree. Keep a clone to rotate keys at runtime.
    pub keyring: Option<Keyring>,
    /// Largest frame body accepted or sent, before encryption. Default 1 MiB.
    pub max_frame_size: usize,
    /// Time to open a TCP connection. Default 3 s.
    pub connect_timeout: Duration,
    /// Time for the whole handshake. Default 3 s.
    pub handshake_timeout: Duration,
    /// A frame once started must arrive within one to two of these. Default 10 s.
    pub read_timeout: Duration,
    /// A connection with no traffic either way for this long is closed quietly. Default 60 s.
    pub idle_timeout: Duration,
    /// Time to write a batch of frames. Default 10 s.
    pub write_timeout: Duration,
    /// Frames queued per peer; beyond it new frames are dropped. Default 1024.
    pub outbound_queue: usize,
    /// Accepted connections open at once; more are closed at once. Default 256.
    pub max_inbound_connections: usize,
    /// Inbound handshakes in progress at once; more wait in the listen backlog. Default 64.
    pub max_pending_handshakes: usize,
    /// First delay before redialing a peer whose dial failed. Default 100 ms.
    pub backoff_min: Duration,
    /// Longest such delay. Default 10 s.
    pub backoff_max: Duration,
    /// Received frames and connection events buffered for the node. Default 1024.
    pub event_queue: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            cluster_label: "default".into(),
            advertise_addr: None,
            keyring: None,
            max_frame_size: 1 << 20,
            connect_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            outbound_queue: 1024,
            max_inbound_connections: 256,
            max_pending_handshakes: 64,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            event_queue: 1024,
        }
    }
}

/// Why a [`TcpTransport`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The listening socket could not be opened.
    #[error("could not listen on {addr}: {source}: pick a free port, or port 0")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid TCP transport config: {0}")]
    Config(&'static str),
}

/// Why a connection was closed (logged; bad input is counted in `rejected_connections`).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error(
        "frame larger than the {max}-byte maximum: raise max_frame_size on every node if it was legitimate"
    )]
    Oversized { max: usize },
    #[error("a frame took longer than the read timeout to arrive (slow or stalled writer)")]
    SlowRead,
    #[error("writing to the peer took longer than the write timeout")]
    WriteTimeout,
    #[error(transparent)]
    Undecryptable(#[from] KeyringError),
    #[error("malformed encrypted record: a peer holding the cluster key is buggy or hostile")]
    BadRecord,
    #[error("handshake refused: {0}")]
    Handshake(RejectReason),
    #[error("handshake not finished within the handshake timeout")]
    HandshakeTimeout,
    #[error("connection closed during the handshake")]
    ClosedInHandshake,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ConnError {
    fn from_codec(e: std::io::Error, max: usize) -> Self {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
        {
            ConnError::Oversized { max }
        } else {
            ConnError::Io(e)
        }
    }

    /// Bad input from the peer, as opposed to a network failure.
    fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::Oversized { .. }
                | Self::SlowRead
                | Self::Undecryptable(_)
                | Self::BadRecord
                | Self::Handshake(_)
        )
    }
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    dropped_overflow: AtomicU64,
    rejected_connections: AtomicU64,
    handshake_timeouts: AtomicU64,
    dropped_oversized: AtomicU64,
    dropped_unreachable: AtomicU64,
    rejected_by_peer: AtomicU64,
    open_connections: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

type Reader = FramedRead<OwnedReadHalf, LengthDelimitedCodec>;
type Writer = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

/// A peer's outbound queue: the frames the transport handed over and the connection writing
/// them has not taken yet. The transport appends a peer's frames of one turn of the node in one
/// operation (see [`Transport::flush`]) and wakes the writer only if it waits; the writer takes
/// a batch in one operation. A frame costs neither side a synchronised operation of its own.
struct Chan(std::sync::Mutex<ChanState>);

struct ChanState {
    frames: Vec<Out>,
    /// The writer, when it waits for frames.
    waker: Option<Waker>,
    /// The transport dropped its end: the writer writes what is left, then closes.
    tx_gone: bool,
    /// The connection dropped its end: what is queued will never be written.
    rx_gone: bool,
}

impl Chan {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChanState> {
        // Nothing panics while holding the lock; if it ever did, the frames are still sound.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The transport's end of a peer's queue. Dropping it lets the writer finish, then close.
struct QueueTx(Arc<Chan>);

/// The writing connection's end of a peer's queue (handed from connection to connection).
struct Queue(Arc<Chan>);

/// A queue holding `frames` already.
fn queue_pair(frames: Vec<Out>) -> (QueueTx, Queue) {
    let chan = Arc::new(Chan(std::sync::Mutex::new(ChanState {
        frames,
        waker: None,
        tx_gone: false,
        rx_gone: false,
    })));
    (QueueTx(chan.clone()), Queue(chan))
}

impl QueueTx {
    /// Appends all of `frames` (leaving it empty, with spare capacity) and wakes the writer if
    /// it waits. Returns how many frames the queue holds now, or `Err` (with `frames`
    /// untouched) when the connection holding the queue is gone.
    fn give(&self, frames: &mut Vec<Out>) -> Result<usize, ()> {
        let mut s = self.0.lock();
        if s.rx_gone {
            return Err(());
        }
        if s.frames.is_empty() {
            // The usual case (the writer took the last turn's frames): no frame moves.
            std::mem::swap(&mut s.frames, frames);
        } else {
            s.frames.append(frames);
        }
        let queued = s.frames.len();
        wake_writer(s);
        Ok(queued)
    }

    /// Frames queued and not taken by the writer yet.
    fn len(&self) -> usize {
        self.0.lock().frames.len()
    }
}

/// Wakes the writer if it waits, after letting go of the queue's lock.
fn wake_writer(mut s: std::sync::MutexGuard<'_, ChanState>) {
    let waker = s.waker.take();
    drop(s);
    if let Some(w) = waker {
        w.wake();
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.tx_gone = true;
        wake_writer(s);
    }
}

impl Queue {
    /// Waits until frames are queued. `Ready(false)`: the transport dropped its end and
    /// everything was taken.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.0.lock();
        if !s.frames.is_empty() {
            return Poll::Ready(true);
        }
        if s.tx_gone {
            return Poll::Ready(false);
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Moves queued frames to the end of `batch`, which holds `bytes` bytes on the wire, until
    /// it holds [`MAX_BATCH`] frames or no frame more once it holds [`MAX_BATCH_BYTES`].
    fn take(&mut self, batch: &mut Vec<Out>, bytes: &mut u64) {
        let mut s = self.0.lock();
        let n = s
            .frames
            .iter()
            .take(MAX_BATCH - batch.len())
            .take_while(|f| {
                let under = *bytes < MAX_BATCH_BYTES;
                if under {
                    *bytes += f.len() as u64 + 4;
                }
                under
            })
            .count();
        if batch.is_empty() && n == s.frames.len() {
            // The usual case: no frame moves.
            std::mem::swap(&mut s.frames, batch);
        } else {
            batch.extend(s.frames.drain(..n));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.lock().frames.is_empty()
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.rx_gone = true;
        // Release the payloads now (a kept frame pins its payload's read buffer).
        let frames = std::mem::take(&mut s.frames);
        drop(s);
        drop(frames);
    }
}

/// A queued frame: its head (empty for most frames) and its body, written one after the other
/// so that a payload going to several peers is shared, not copied (see
/// [`Transport::send_parts`]). The head is kept inline, after room for the frame's length
/// prefix: queueing a frame allocates nothing, and the writer sends prefix and head as one piece.
struct Out {
    head_len: u8,
    /// The length prefix (written by the writer), then the head.
    prefix: [u8; 4 + wire::MAX_FRAME_HEAD],
    body: Bytes,
}

impl Out {
    fn whole(body: Bytes) -> Self {
        Self {
            head_len: 0,
            prefix: [0; 4 + wire::MAX_FRAME_HEAD],
            body,
        }
    }

    fn head(&self) -> &[u8] {
        &self.prefix[4..4 + self.head_len as usize]
    }

    /// The length prefix (set by [`Out::set_prefix`]) and the head, ready to write.
    fn prefixed_head(&self) -> &[u8] {
        &self.prefix[..4 + self.head_len as usize]
    }

    fn set_prefix(&mut self) {
        let len = (self.len() as u32).to_be_bytes();
        self.prefix[..4].copy_from_slice(&len);
    }

    /// The frame's length on the wire, without its length prefix.
    fn len(&self) -> usize {
        self.head_len as usize + self.body.len()
    }
}
/// Where a connection that must stop writing sends its queue: straight to the connection that
/// replaces it, so the handover needs no round trip through the transport.
type Handover = oneshot::Sender<Option<Queue>>;

enum Internal {
    /// Frames read from one connection, in order.
    Frames { from: NodeId, frames: Vec<Bytes> },
    Connected {
        /// The id that was dialed (generation 0 when only the address was known).
        peer: NodeId,
        /// The id the handshake revealed.
        actual: NodeId,
        conn: u64,
    },
    DialFailed {
        peer: NodeId,
        conn: u64,
        reason: Option<RejectReason>,
        cause: &'static str,
    },
    Inbound {
        peer: NodeId,
        conn: u64,
        give: Handover,
        stop: oneshot::Sender<Handover>,
    },
    Closed {
        peer: NodeId,
        conn: u64,
        failed: bool,
        cause: &'static str,
    },
}

struct Shared {
    cfg: TcpConfig,
    local: NodeId,
    counters: Counters,
    events: mpsc::Sender<Internal>,
    cancel: CancellationToken,
    inbound_permits: Arc<Semaphore>,
    handshake_permits: Arc<Semaphore>,
    next_conn: AtomicU64,
    epoch: Instant,
    /// Emptied `Internal::Frames` vectors, for the readers' next events (see `FrameVecs`).
    frame_vecs: FrameVecs,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn codec(&self, max: usize) -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder()
            .max_frame_length(max)
            .new_codec()
    }

    /// Largest body on the wire: a frame, or an encrypted record of frames.
    fn wire_max(&self) -> usize {
        self.cfg.max_frame_size + 4 + keyring::OVERHEAD
    }

    fn spawn(self: &Arc<Self>, fut: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                // Cancellation first: a dropped transport is a crash, so its connections must
                // not get to say goodbye (dropping the queues would otherwise let them).
                biased;
                _ = cancel.cancelled() => {}
                _ = fut => {}
            }
        });
    }
}

/// Encryption state of one connection: frames are bound to the session (both handshake nonces),
/// their direction and their position, so they cannot be replayed, reflected or reordered.
#[derive(Clone)]
struct Session {
    keyring: Keyring,
    id: [u8; 32],
    /// Direction byte of frames this side sends (0 = dialer to acceptor).
    out_dir: u8,
}

impl Session {
    fn aad(&self, dir: u8, counter: u64) -> [u8; 41] {
        let mut aad = [0u8; 41];
        aad[..32].copy_from_slice(&self.id);
        aad[32] = dir;
        aad[33..].copy_from_slice(&counter.to_be_bytes());
        aad
    }
    fn seal(&self, counter: u64, frame: &[u8]) -> Bytes {
        self.keyring.seal(&self.aad(self.out_dir, counter), frame)
    }
    fn open(&self, counter: u64, buf: BytesMut) -> Result<Bytes, KeyringError> {
        self.keyring.open(&self.aad(1 - self.out_dir, counter), buf)
    }
}

fn proof_aad_dialer(nonce_d: &[u8; 16]) -> Vec<u8> {
    [b"gossip key proof: dialer".as_slice(), nonce_d].concat()
}

fn proof_aad_acceptor(nonce_d: &[u8; 16], nonce_a: &[u8; 16]) -> Vec<u8> {
    [b"gossip key proof: acceptor".as_slice(), nonce_d, nonce_a].concat()
}

fn verify_proof(
    keyring: &Keyring,
    aad: &[u8],
    proof: Option<&Vec<u8>>,
) -> Result<(), RejectReason> {
    let proof = proof.ok_or(RejectReason::PeerHasNoKey)?;
    keyring
        .open(aad, BytesMut::from(&proof[..]))
        .map(|_| ())
        .map_err(|_| RejectReason::WrongKey)
}

fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    rand::rng().fill_bytes(&mut n);
    n
}

/// A [`Transport`] over TCP. See the [module docs](self) for the behaviour.
pub struct TcpTransport {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    events: mpsc::Receiver<Internal>,
    /// Looked up for every frame sent: foldhash, randomly seeded, is cheaper than std's
    /// SipHash on these small keys, and its random seed keeps chosen collisions out.
    peers: HashMap<NodeId, Peer, foldhash::fast::RandomState>,
    backoff: HashMap<NodeId, Backoff>,
    ready: VecDeque<TransportEvent>,
    failed_pending: HashSet<NodeId>,
    waker: Option<Waker>,
    /// Set by the first [`Transport::flush`]: the caller flushes at the end of every turn, so
    /// frames wait in their peer's `staged` until then. Before, every frame is handed over at
    /// once.
    turns: bool,
    /// Peers with staged frames, each once per turn (or more if it was dialed again).
    dirty: Vec<NodeId>,
}

struct Peer {
    tx: QueueTx,
    /// Frames of the current turn, handed to `tx` together by [`Transport::flush`].
    staged: Vec<Out>,
    /// Frames that may still be staged: the queue's free room when last looked at (the writer
    /// only ever takes frames out, so the room is at least that).
    room: usize,
    /// The connection that holds (or is dialing with) the queue.
    conn: u64,
    dialed: bool,
    /// Asks `conn` to hand its queue to another connection.
    stop: Option<oneshot::Sender<Handover>>,
    /// The peer's own connection, read-only because our dial won the tie-break; kept until our
    /// dial is up, to take over if it fails.
    spare: Option<Spare>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Disconnect, close, or a connection's queue replaced: what the node queued still
        // leaves, ahead of the goodbye.
        if !self.staged.is_empty() {
            let _ = self.tx.give(&mut self.staged);
        }
    }
}

struct Spare {
    conn: u64,
    give: Handover,
    stop: oneshot::Sender<Handover>,
}

struct Backoff {
    until: Instant,
    attempts: u32,
}

const MAX_BACKOFF_ENTRIES: usize = 4096;
/// Frames written per batch, at most: two slices each, within the system's 1024 (`IOV_MAX`).
/// Busy links fill batches of 64 often; bigger ones cut the system calls per frame by a quarter.
const MAX_BATCH: usize = 256;
/// A batch stops growing past this many bytes, so a write timeout applies to a bounded amount.
const MAX_BATCH_BYTES: u64 = 256 * 1024;

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.shared.local)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Listens on `addr` (port 0 picks a free port) as node generation `generation`: this
    /// node's [`NodeId`] is `(local_addr(), generation)`. Must be called inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        config: TcpConfig,
        generation: u64,
    ) -> Result<Self, TcpError> {
        if config.cluster_label.len() > wire::MAX_LABEL_LEN {
            return Err(TcpError::Config("cluster_label is longer than 64 bytes"));
        }
        if config.outbound_queue == 0
            || config.event_queue == 0
            || config.max_frame_size == 0
            || config.max_inbound_connections == 0
            || config.max_pending_handshakes == 0
        {
            return Err(TcpError::Config(
                "queue sizes, max_frame_size and connection limits must be at least 1",
            ));
        }
        if config.max_frame_size > (u32::MAX as usize) - 4 - keyring::OVERHEAD {
            return Err(TcpError::Config("max_frame_size must fit a 32-bit length"));
        }
        let listener = listen(addr).map_err(|source| TcpError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| TcpError::Bind { addr, source })?;
        let local_addr = match config.advertise_addr {
            Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
            Some(a) => a,
            None if bound.ip().is_unspecified() => {
                return Err(TcpError::Config(
                    "bound to an unspecified IP (0.0.0.0 or ::): set advertise_addr to the address other nodes dial",
                ));
            }
            None => bound,
        };
        let (tx, rx) = mpsc::channel(config.event_queue);
        let shared = Arc::new(Shared {
            inbound_permits: Arc::new(Semaphore::new(config.max_inbound_connections)),
            handshake_permits: Arc::new(Semaphore::new(config.max_pending_handshakes)),
            cfg: config,
            local: NodeId::new(local_addr, generation),
            counters: Counters::default(),
            events: tx,
            cancel: CancellationToken::new(),
            next_conn: AtomicU64::new(1),
            epoch: Instant::now(),
            frame_vecs: FrameVecs::default(),
        });
        shared.spawn(accept_loop(shared.clone(), listener));
        Ok(Self {
            shared,
            local_addr,
            events: rx,
            peers: HashMap::default(),
            backoff: HashMap::new(),
            ready: VecDeque::new(),
            failed_pending: HashSet::new(),
            waker: None,
            turns: false,
            dirty: Vec::new(),
        })
    }

    /// This node's identity: the advertised (or bound) address and the generation given to
    /// `bind`.
    pub fn local_id(&self) -> NodeId {
        self.shared.local
    }

    /// Flushes every peer's queue, closes every connection gracefully and stops the transport,
    /// waiting at most `deadline`. Use it after sending a last message (a graceful leave), since
    /// merely dropping the transport closes connections at once, losing queued frames. Frames
    /// received meanwhile are discarded.
    pub async fn close(mut self, deadline: Duration) {
        let mut open: HashSet<u64> = self.peers.values().map(|p| p.conn).collect();
        // Dropping the queues' senders (staged frames handed over first) makes each writer
        // flush, then shut its side down; the peer answers by closing, which ends the
        // connection.
        self.peers.clear();
        let _ = timeout(deadline, async {
            while !open.is_empty() {
                match self.events.recv().await {
                    Some(Internal::Closed { conn, .. } | Internal::DialFailed { conn, .. }) => {
                        open.remove(&conn);
                    }
                    Some(Internal::Inbound { give, .. }) => {
                        let _ = give.send(None);
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        })
        .await;
    }

    /// The keyring this transport seals frames with, if any (rotate keys through it).
    pub fn keyring(&self) -> Option<&Keyring> {
        self.shared.cfg.keyring.as_ref()
    }

    fn push(&mut self, ev: TransportEvent) {
        if let TransportEvent::LinkFailed(p) = &ev
            && !self.failed_pending.insert(*p)
        {
            return; // one pending LinkFailed per peer is enough
        }
        self.ready.push_back(ev);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Dials `to` with `frames` queued (at most `outbound_queue`).
    fn dial(&mut self, to: NodeId, frames: Vec<Out>) {
        let room = self.shared.cfg.outbound_queue.saturating_sub(frames.len());
        let (tx, rx) = queue_pair(frames);
        let conn = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = oneshot::channel();
        self.shared
            .spawn(dial_task(self.shared.clone(), to, conn, rx, stop_rx));
        self.peers.insert(
            to,
            Peer {
                tx,
                staged: Vec::new(),
                room,
                conn,
                dialed: true,
                stop: Some(stop_tx),
                spare: None,
            },
        );
    }

    fn on_internal(&mut self, ev: Internal) -> Option<TransportEvent> {
        match ev {
            Internal::Frames { from, mut frames } => {
                let mut drain = frames.drain(..);
                let first = drain.next();
                self.ready
                    .extend(drain.map(|frame| TransportEvent::Frame { from, frame }));
                self.shared.frame_vecs.give(frames);
                return first.map(|frame| TransportEvent::Frame { from, frame });
            }
            Internal::Connected { peer, actual, conn } => {
                self.backoff.remove(&peer);
                if let Some(p) = self.peers.get_mut(&peer)
                    && p.conn == conn
                    && let Some(spare) = p.spare.take()
                {
                    let _ = spare.give.send(None);
                }
                if peer != actual
                    && self.peers.get(&peer).is_some_and(|p| p.conn == conn)
                    && !self.peers.contains_key(&actual)
                {
                    // Dialed by address only: file the connection under the real identity,
                    // so later sends to it reuse this connection.
                    let p = self.peers.remove(&peer).expect("checked");
                    if !p.staged.is_empty() {
                        self.dirty.push(actual);
                    }
                    self.peers.insert(actual, p);
                }
            }
            Internal::DialFailed {
                peer,
                conn,
                reason,
                cause,
            } => {
                self.set_backoff(peer);
                if let Some(reason) = reason.filter(RejectReason::needs_user_action) {
                    self.push(TransportEvent::Rejected {
                        addr: peer.addr,
                        reason,
                    });
                }
                if self.peers.get(&peer).is_some_and(|p| p.conn == conn) {
                    // Frames queued for the dial are lost either way; the peer's own
                    // connection, if it opened one, carries what comes next.
                    let staged = self.promote_spare(peer);
                    self.lost(staged);
                    debug!(%peer, conn, cause, "link failed: the dial failed");
                    self.push(TransportEvent::LinkFailed(peer));
                }
            }
            Internal::Inbound {
                peer,
                conn,
                give,
                stop,
            } => self.on_inbound(peer, conn, give, stop),
            Internal::Closed {
                peer,
                conn,
                failed,
                cause,
            } => {
                // Connections that no longer hold the queue (replaced, read-only) end quietly.
                let p = self.peers.get_mut(&peer)?;
                if p.spare.as_ref().is_some_and(|s| s.conn == conn) {
                    p.spare = None;
                } else if p.conn == conn {
                    let dialed = p.dialed;
                    let staged = self.promote_spare(peer);
                    if failed {
                        self.lost(staged);
                        debug!(%peer, conn, cause, dialed, "link failed: the connection closed");
                        self.push(TransportEvent::LinkFailed(peer));
                    } else if !staged.is_empty() {
                        // Closed quietly (idle, or the peer said goodbye) while this turn
                        // queued frames: they open a new connection, as a send after the
                        // close would.
                        self.dial_or_fail(peer, staged);
                    }
                }
            }
        }
        None
    }

    fn on_inbound(
        &mut self,
        peer: NodeId,
        conn: u64,
        give: Handover,
        stop: oneshot::Sender<Handover>,
    ) {
        let local = self.shared.local;
        let capacity = self.shared.cfg.outbound_queue;
        match self.peers.get_mut(&peer) {
            // Simultaneous dials: the connection dialed by the smaller id wins; ours does, and
            // the new one stays read-only until the peer closes it.
            Some(p) if p.dialed && local < peer => {
                if let Some(old) = p.spare.replace(Spare { conn, give, stop }) {
                    let _ = old.give.send(None);
                }
            }
            Some(p) => {
                debug!(%peer, old = p.conn, new = conn, old_dialed = p.dialed, "an inbound connection replaces the current one");
                // The new connection takes over: the current one hands it the queue directly.
                // If that connection is already gone, so is its queue: start a fresh one.
                let handed = match p.stop.take() {
                    Some(old) => old.send(give),
                    None => Err(give),
                };
                if let Err(give) = handed {
                    let (tx, rx) = queue_pair(Vec::new());
                    p.tx = tx;
                    p.room = capacity;
                    let _ = give.send(Some(rx));
                }
                p.conn = conn;
                p.dialed = false;
                p.stop = Some(stop);
                if let Some(old) = p.spare.take() {
                    let _ = old.give.send(None);
                }
            }
            None => {
                let (tx, rx) = queue_pair(Vec::new());
                if give.send(Some(rx)).is_ok() {
                    self.peers.insert(
                        peer,
                        Peer {
                            tx,
                            staged: Vec::new(),
                            room: capacity,
                            conn,
                            dialed: false,
                            stop: Some(stop),
                            spare: None,
                        },
                    );
                }
            }
        }
    }

    /// The connection holding `peer`'s queue is gone: hand a fresh queue to the spare
    /// connection if there is one (the frames staged this turn go on it), else forget the
    /// peer and return the frames staged for it.
    fn promote_spare(&mut self, peer: NodeId) -> Vec<Out> {
        let Some(mut p) = self.peers.remove(&peer) else {
            return Vec::new();
        };
        if let Some(spare) = p.spare.take() {
            let (tx, rx) = queue_pair(Vec::new());
            if spare.give.send(Some(rx)).is_ok() {
                p.tx = tx;
                p.room = self.shared.cfg.outbound_queue;
                p.conn = spare.conn;
                p.dialed = false;
                p.stop = Some(spare.stop);
                self.peers.insert(peer, p);
                return Vec::new();
            }
        }
        std::mem::take(&mut p.staged)
    }

    /// Frames lost with a link that failed (reported as `LinkFailed`).
    fn lost(&self, frames: Vec<Out>) {
        add(
            &self.shared.counters.dropped_unreachable,
            frames.len() as u64,
        );
    }

    fn dial_or_fail(&mut self, to: NodeId, frames: Vec<Out>) {
        if self
            .backoff
            .get(&to)
            .is_some_and(|b| b.until > Instant::now())
        {
            add(
                &self.shared.counters.dropped_unreachable,
                frames.len() as u64,
            );
            debug!(peer = %to, "link failed: the peer is backed off after a failed dial");
            self.push(TransportEvent::LinkFailed(to));
            return;
        }
        self.dial(to, frames);
    }

    /// Queue `frame` for `to` (see [`Transport::send`]).
    fn queue(&mut self, to: NodeId, frame: Out) {
        let c = &self.shared.counters;
        add(&c.frames_sent, 1);
        if frame.len() > self.shared.cfg.max_frame_size {
            add(&c.dropped_oversized, 1);
            warn!(
                peer = %to,
                len = frame.len(),
                max = self.shared.cfg.max_frame_size,
                "frame over max_frame_size dropped: send smaller messages or raise max_frame_size on every node"
            );
            return;
        }
        if frame.len() == 0 {
            // An empty frame is the goodbye (see `close_writer`) and no node frame is empty.
            debug!(peer = %to, "empty frame dropped: it would read as a goodbye");
            return;
        }
        if to == self.shared.local {
            add(&c.dropped_unreachable, 1);
            debug!("frame to self dropped");
            return;
        }
        // Generation 0 means whoever listens at the address: a connection to the node there
        // serves. A second dial would replace that connection at the peer, closing the first
        // under frames in flight (join retries did so during join storms).
        let to = match to.generation {
            0 if !self.peers.contains_key(&to) => self
                .peers
                .keys()
                .copied()
                .find(|id| id.addr == to.addr)
                .unwrap_or(to),
            _ => to,
        };
        let Some(p) = self.peers.get_mut(&to) else {
            return self.dial_or_fail(to, vec![frame]);
        };
        if p.staged.len() >= p.room {
            // Full when last looked at: look again (the writer may have taken some since).
            p.room = self.shared.cfg.outbound_queue.saturating_sub(p.tx.len());
            if p.staged.len() >= p.room {
                add(&c.dropped_overflow, 1);
                return;
            }
        }
        p.staged.push(frame);
        if !self.turns {
            self.hand_over(to);
        } else if p.staged.len() == 1 {
            self.dirty.push(to);
        }
    }

    /// Hands `to`'s staged frames to the connection holding its queue, in one operation.
    fn hand_over(&mut self, to: NodeId) {
        let Some(p) = self.peers.get_mut(&to) else {
            return;
        };
        if p.staged.is_empty() {
            return;
        }
        match p.tx.give(&mut p.staged) {
            Ok(queued) => p.room = self.shared.cfg.outbound_queue.saturating_sub(queued),
            Err(()) => {
                // The connection holding the queue is gone (a handover that found it dead):
                // forget it and dial again.
                let frames = std::mem::take(&mut p.staged);
                self.peers.remove(&to);
                self.dial_or_fail(to, frames);
            }
        }
    }

    fn set_backoff(&mut self, peer: NodeId) {
        let now = Instant::now();
        if self.backoff.len() >= MAX_BACKOFF_ENTRIES {
            self.backoff.retain(|_, b| b.until > now);
            if self.backoff.len() >= MAX_BACKOFF_ENTRIES {
                self.backoff.clear();
            }
        }
        let cfg = &self.shared.cfg;
        let b = self.backoff.entry(peer).or_insert(Backoff {
            until: now,
            attempts: 0,
        });
        let delay = cfg
            .backoff_min
            .saturating_mul(1u32 << b.attempts.min(16))
            .min(cfg.backoff_max);
        b.attempts = b.attempts.saturating_add(1);
        b.until = now + delay;
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

impl Transport for TcpTransport {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn send(&mut self, to: NodeId, frame: Bytes) {
        self.queue(to, Out::whole(frame));
    }

    fn send_parts(&mut self, to: NodeId, head: &[u8], body: Bytes) {
        if head.len() > wire::MAX_FRAME_HEAD {
            // Longer than any head this crate writes: join the parts.
            let mut frame = BytesMut::with_capacity(head.len() + body.len());
            frame.extend_from_slice(head);
            frame.extend_from_slice(&body);
            return self.send(to, frame.freeze());
        }
        let mut out = Out::whole(body);
        out.prefix[4..4 + head.len()].copy_from_slice(head);
        out.head_len = head.len() as u8;
        self.queue(to, out);
    }

    fn disconnect(&mut self, peer: NodeId) {
        // Dropping the peer hands its staged frames over; dropping the queue's sender then
        // lets the writer flush what is queued, and close.
        self.peers.remove(&peer);
    }

    fn flush(&mut self) {
        self.turns = true;
        let mut dirty = std::mem::take(&mut self.dirty);
        for to in dirty.drain(..) {
            self.hand_over(to);
        }
        // Handing over never stages: `self.dirty` is still empty; keep the capacity.
        debug_assert!(self.dirty.is_empty());
        self.dirty = dirty;
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                if let TransportEvent::LinkFailed(p) = &ev {
                    self.failed_pending.remove(p);
                }
                return Poll::Ready(Some(ev));
            }
            match self.events.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    if let Some(ev) = self.on_internal(ev) {
                        return Poll::Ready(Some(ev));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    self.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }

    fn stats(&self) -> TransportStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            frames_sent: g(&c.frames_sent),
            bytes_sent: g(&c.bytes_sent),
            frames_received: g(&c.frames_received),
            bytes_received: g(&c.bytes_received),
            dropped_overflow: g(&c.dropped_overflow),
            rejected_connections: g(&c.rejected_connections),
            handshake_timeouts: g(&c.handshake_timeouts),
            dropped_oversized: g(&c.dropped_oversized),
            dropped_unreachable: g(&c.dropped_unreachable),
            rejected_by_peer: g(&c.rejected_by_peer),
            open_connections: g(&c.open_connections),
        }
    }
}

/// Connections the kernel completes and queues for `accept` (capped by the OS, e.g. Linux's
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// A listening socket with a backlog of [`LISTEN_BACKLOG`]. The standard library's 128 is too
/// small for a cluster joining through one node: with 200 nodes dialing it at once the kernel's
/// accept queue overflowed, dropped the handshakes' last packets, and the dialers waited for
/// TCP's 1 s retransmission before their first frame got through.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As the standard library and mio do: rebind a port at once after a restart.
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        // Beyond the pending-handshake limit, connections wait in the kernel's accept queue
        // (bounded by the backlog) until a handshake finishes. Refusing them instead cost a
        // join storm dozens of resets: dialers that are merely early, backed off and retried.
        let Ok(hs_permit) = shared.handshake_permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(conn_permit) = shared.inbound_permits.clone().try_acquire_owned() else {
            add(&shared.counters.rejected_connections, 1);
            warn!(%addr, "connection refused: too many inbound connections");
            continue;
        };
        let s = shared.clone();
        shared.spawn(async move {
            let _conn_permit = conn_permit;
            inbound_task(s, stream, addr, hs_permit).await;
        });
    }
}

fn split(shared: &Shared, stream: TcpStream) -> (Reader, Writer) {
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut w = FramedWrite::new(w, shared.codec(shared.wire_max()));
    // Write a whole batch with one system call rather than one per 8 KiB.
    w.set_backpressure_boundary(MAX_BATCH_BYTES as usize);
    (FramedRead::new(r, shared.codec(wire::MAX_HANDSHAKE_LEN)), w)
}

async fn write_handshake(shared: &Shared, w: &mut Writer, h: Handshake) -> Result<(), ConnError> {
    let frame = h.encode();
    add(&shared.counters.bytes_sent, frame.len() as u64 + 4);
    w.send(frame).await?;
    Ok(())
}

async fn read_handshake(shared: &Shared, r: &mut Reader) -> Result<Handshake, ConnError> {
    let frame = match r.next().await {
        None => return Err(ConnError::ClosedInHandshake),
        Some(Err(e)) => {
            return Err(match ConnError::from_codec(e, wire::MAX_HANDSHAKE_LEN) {
                ConnError::Oversized { .. } => {
                    ConnError::Handshake(RejectReason::Malformed("oversized handshake".into()))
                }
                other => other,
            });
        }
        Some(Ok(f)) => f,
    };
    add(&shared.counters.bytes_received, frame.len() as u64 + 4);
    Handshake::decode(&frame).map_err(ConnError::Handshake)
}

/// Dialer side of the handshake. Returns the session (with a keyring).
async fn dial_handshake(
    shared: &Shared,
    peer: NodeId,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<(Option<Session>, NodeId), ConnError> {
    let cfg = &shared.cfg;
    let nonce_d = nonce();
    let hello = Hello {
        label: cfg.cluster_label.clone(),
        from: shared.local,
        expected: Some(peer),
        encrypted: cfg.keyring.is_some(),
        nonce: nonce_d,
        key_proof: cfg
            .keyring
            .as_ref()
            .map(|k| k.seal(&proof_aad_dialer(&nonce_d), &[]).to_vec()),
    };
    write_handshake(shared, w, Handshake::Hello(hello)).await?;
    let reply = match read_handshake(shared, r).await? {
        Handshake::Reject(reason) => {
            add(&shared.counters.rejected_by_peer, 1);
            return Err(ConnError::Handshake(reason.flip()));
        }
        Handshake::Hello(h) => h,
    };
    reply
        .check(&cfg.cluster_label, cfg.keyring.is_some(), shared.local)
        .map_err(ConnError::Handshake)?;
    // The generation identifies a node's life; addresses may legitimately differ (advertised
    // address, NAT), so only the generation is compared.
    // Generation 0 accepts whichever node listens at the address (joining through it).
    if peer.generation != 0 && reply.from.generation != peer.generation {
        return Err(ConnError::Handshake(RejectReason::NotThisNode {
            expected: peer,
            actual: reply.from,
        }));
    }
    let actual = reply.from;
    let Some(keyring) = cfg.keyring.clone() else {
        return Ok((None, actual));
    };
    verify_proof(
        &keyring,
        &proof_aad_acceptor(&nonce_d, &reply.nonce),
        reply.key_proof.as_ref(),
    )
    .map_err(ConnError::Handshake)?;
    let mut id = [0u8; 32];
    id[..16].copy_from_slice(&nonce_d);
    id[16..].copy_from_slice(&reply.nonce);
    Ok((
        Some(Session {
            keyring,
            id,
            out_dir: 0,
        }),
        actual,
    ))
}

/// Acceptor side of the handshake: the peer's id and the session.
async fn accept_handshake(
    shared: &Shared,
    r: &mut Reader,
    w: &mut Writer,
) -> Result<(NodeId, Option<Session>), ConnError> {
    let cfg = &shared.cfg;
    let first = match read_handshake(shared, r).await {
        Err(ConnError::Handshake(reason @ RejectReason::Version { .. })) => {
            // Another version of this crate: tell it which version we speak.
            let _ = write_handshake(shared, w, Handshake::Reject(reason.clone())).await;
            return Err(ConnError::Handshake(reason));
        }
        other => other?,
    };
    let hello = match first {
        Handshake::Hello(h) => h,
        Handshake::Reject(_) => {
            return Err(ConnError::Handshake(RejectReason::Malformed(
                "reject sent by a dialer".into(),
            )));
        }
    };
    let checked = hello
        .check(&cfg.cluster_label, cfg.keyring.is_some(), shared.local)
        .and_then(|()| match &cfg.keyring {
            Some(k) => verify_proof(k, &proof_aad_dialer(&hello.nonce), hello.key_proof.as_ref()),
            None => Ok(()),
        });
    if let Err(reason) = checked {
        // Best effort: tell the dialer why, so its user can fix it.
        let _ = write_handshake(shared, w, Handshake::Reject(reason.clone())).await;
        return Err(ConnError::Handshake(reason));
    }
    let nonce_a = nonce();
    let reply = Hello {
        label: cfg.cluster_label.clone(),
        from: shared.local,
        expected: None,
        encrypted: cfg.keyring.is_some(),
        nonce: nonce_a,
        key_proof: cfg.keyring.as_ref().map(|k| {
            k.seal(&proof_aad_acceptor(&hello.nonce, &nonce_a), &[])
                .to_vec()
        }),
    };
    write_handshake(shared, w, Handshake::Hello(reply)).await?;
    let session = cfg.keyring.clone().map(|keyring| {
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(&hello.nonce);
        id[16..].copy_from_slice(&nonce_a);
        Session {
            keyring,
            id,
            out_dir: 1,
        }
    });
    Ok((hello.from, session))
}

/// Resolves when a handover is requested; pends forever if the transport dropped the sender.
async fn stop_requested(stop: &mut Option<oneshot::Receiver<Handover>>) -> Handover {
    if let Some(rx) = stop {
        let r = rx.await;
        *stop = None;
        if let Ok(give) = r {
            return give;
        }
    }
    std::future::pending().await
}

async fn dial_task(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: u64,
    queue: Queue,
    stop: oneshot::Receiver<Handover>,
) {
    let mut stop = Some(stop);
    let cfg = &shared.cfg;
    let attempt = async {
        let stream = match timeout(cfg.connect_timeout, TcpStream::connect(peer.addr)).await {
            Err(_) => {
                return Err(ConnError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )));
            }
            Ok(r) => r?,
        };
        let (mut r, mut w) = split(&shared, stream);
        match timeout(
            cfg.handshake_timeout,
            dial_handshake(&shared, peer, &mut r, &mut w),
        )
        .await
        {
            Err(_) => Err(ConnError::HandshakeTimeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok((session, actual))) => Ok((r, w, session, actual)),
        }
    };
    let result = tokio::select! {
        result = attempt => result,
        give = stop_requested(&mut stop) => {
            let _ = give.send(Some(queue));
            return;
        }
    };
    match result {
        Err(e) => {
            let cause = match &e {
                ConnError::Io(io) => match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "refused",
                    std::io::ErrorKind::ConnectionReset => "reset",
                    std::io::ErrorKind::TimedOut => "connect timeout",
                    _ => "io",
                },
                ConnError::HandshakeTimeout => "handshake timeout",
                ConnError::ClosedInHandshake => "closed in handshake",
                ConnError::Handshake(_) => "handshake refused",
                _ => "other",
            };
            let reason = match e {
                ConnError::Handshake(reason) => {
                    if reason.needs_user_action() {
                        warn!(%peer, %reason, "peer refused the handshake");
                    } else {
                        debug!(%peer, %reason, "handshake failed");
                    }
                    Some(reason)
                }
                e => {
                    debug!(%peer, error = %e, "dial failed");
                    None
                }
            };
            let _ = shared
                .events
                .send(Internal::DialFailed {
                    peer,
                    conn,
                    reason,
                    cause,
                })
                .await;
        }
        Ok((r, w, session, actual)) => {
            if shared
                .events
                .send(Internal::Connected { peer, actual, conn })
                .await
                .is_ok()
            {
                // Frames on this connection come from the identity the handshake revealed.
                run_conn(
                    shared.clone(),
                    actual,
                    conn,
                    r,
                    w,
                    session,
                    QueueSource::Have(queue),
                    stop,
                )
                .await;
            }
        }
    }
}

async fn inbound_task(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    hs_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut r, mut w) = split(&shared, stream);
    let hs = timeout(
        shared.cfg.handshake_timeout,
        accept_handshake(&shared, &mut r, &mut w),
    )
    .await;
    drop(hs_permit);
    let (peer, session) = match hs {
        Err(_) => {
            add(&shared.counters.handshake_timeouts, 1);
            warn!(%addr, "inbound handshake timed out; connection closed");
            return;
        }
        Ok(Err(e)) => {
            // A dialer that expected this node's previous life is routine, not bad input.
            let routine = matches!(e, ConnError::Handshake(RejectReason::NotThisNode { .. }));
            if matches!(e, ConnError::Handshake(_)) && !routine {
                add(&shared.counters.rejected_connections, 1);
                warn!(%addr, error = %e, "inbound connection rejected");
            } else {
                debug!(%addr, error = %e, "inbound connection failed in handshake");
            }
            return;
        }
        Ok(Ok(x)) => x,
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (give_tx, give_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel();
    let ev = Internal::Inbound {
        peer,
        conn,
        give: give_tx,
        stop: stop_tx,
    };
    if shared.events.send(ev).await.is_ok() {
        run_conn(
            shared.clone(),
            peer,
            conn,
            r,
            w,
            session,
            QueueSource::Wait(give_rx),
            Some(stop_rx),
        )
        .await;
    }
}

enum QueueSource {
    Have(Queue),
    Wait(oneshot::Receiver<Option<Queue>>),
}

enum ReadEnd {
    Eof,
    /// End of stream after the peer's goodbye: it closed the connection on purpose.
    Goodbye,
    Idle,
    Error(ConnError),
    Shutdown,
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_conn(
    shared: Arc<Shared>,
    peer: NodeId,
    conn: u64,
    reader: Reader,
    writer: Writer,
    session: Option<Session>,
    source: QueueSource,
    mut stop: Option<oneshot::Receiver<Handover>>,
) {
    struct Open<'a>(&'a AtomicU64);
    impl Drop for Open<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    add(&shared.counters.open_connections, 1);
    let _open = Open(&shared.counters.open_connections);
    let last_write = Arc::new(AtomicU64::new(shared.now_ms()));
    let mut read_task = AbortOnDrop(tokio::spawn(read_loop(
        shared.clone(),
        peer,
        reader,
        session.clone(),
        last_write.clone(),
    )));
    let (mut queue, mut wait) = match source {
        QueueSource::Have(q) => (Some(q), None),
        QueueSource::Wait(w) => (None, Some(w)),
    };
    let mut writer = Some(writer);
    let mut counter = 0u64;
    // The frames of a batch, kept between batches so a batch allocates nothing.
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let end = loop {
        tokio::select! {
            end = &mut read_task.0 => break end.unwrap_or(ReadEnd::Shutdown),
            given = async { wait.as_mut().expect("guarded").await }, if wait.is_some() => {
                wait = None;
                queue = given.ok().flatten();
            }
            give = stop_requested(&mut stop), if queue.is_some() => {
                // Another connection to this peer won: hand the queue over, stop writing.
                let _ = give.send(queue.take());
                if let Some(mut w) = writer.take() {
                    close_writer(&shared, &mut w).await;
                }
            }
            more = std::future::poll_fn(|cx| queue.as_mut().expect("guarded").poll_ready(cx)), if queue.is_some() => {
                let Some(w) = writer.as_mut() else { break ReadEnd::Shutdown };
                if more {
                    let q = queue.as_mut().expect("guarded");
                    // Empty unless an earlier batch was cut short (timeout, error): those
                    // frames are gone.
                    batch.clear();
                    let mut bytes = 0;
                    q.take(&mut batch, &mut bytes);
                    if batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                        // Yield once: the turns that other tasks (the node, other nodes of
                        // the process) run meanwhile join the batch, and leave with it in one
                        // system call instead of one each.
                        tokio::task::yield_now().await;
                        q.take(&mut batch, &mut bytes);
                    }
                    let r = timeout(
                        shared.cfg.write_timeout,
                        write_batch(&shared, w, &mut batch, session.as_ref(), &mut counter),
                    )
                    .await;
                    last_write.store(shared.now_ms(), Ordering::Relaxed);
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break ReadEnd::Error(e),
                        Err(_) => break ReadEnd::Error(ConnError::WriteTimeout),
                    }
                    // A burst may have grown the batch (it trades places with the queue):
                    // do not keep more than a batch's room.
                    if batch.capacity() > 2 * MAX_BATCH {
                        batch.shrink_to(MAX_BATCH);
                    }
                } else {
                    // disconnect(): everything queued is written; close our side.
                    queue = None;
                    if let Some(mut w) = writer.take() {
                        close_writer(&shared, &mut w).await;
                    }
                }
            }
        }
    };
    if matches!(end, ReadEnd::Idle)
        && let Some(mut w) = writer.take()
    {
        // Say goodbye, so the peer does not take the close for a failure.
        close_writer(&shared, &mut w).await;
    }
    let cause = match &end {
        ReadEnd::Eof => "eof",
        ReadEnd::Goodbye => "goodbye",
        ReadEnd::Idle => "idle",
        ReadEnd::Shutdown => "shutdown",
        ReadEnd::Error(ConnError::Io(_)) => "io",
        ReadEnd::Error(_) => "error",
    };
    let failed = match end {
        ReadEnd::Eof => true,
        // Frames still queued here are lost: say so, as for a failure.
        ReadEnd::Goodbye => queue.as_ref().is_some_and(|q| !q.is_empty()),
        ReadEnd::Idle | ReadEnd::Shutdown => false,
        ReadEnd::Error(e) => {
            if e.is_bad_input() {
                add(&shared.counters.rejected_connections, 1);
                warn!(%peer, error = %e, "connection closed for bad input");
            } else {
                debug!(%peer, error = %e, "connection failed");
            }
            true
        }
    };
    let _ = shared
        .events
        .send(Internal::Closed {
            peer,
            conn,
            failed,
            cause,
        })
        .await;
}

/// Closes this side of a connection on purpose: an empty frame (a goodbye: no protocol frame
/// is empty, and no sealed record is) and then the end of the stream. The peer reads the
/// goodbye and does not report the close as [`TransportEvent::LinkFailed`]; a peer that
/// crashed closes without one.
async fn close_writer(shared: &Shared, w: &mut Writer) {
    let _ = timeout(shared.cfg.write_timeout, async {
        w.send(Bytes::new()).await?;
        add(&shared.counters.bytes_sent, 4);
        SinkExt::<Bytes>::close(w).await
    })
    .await;
}

/// Writes the frames of `batch`, then flushes, and leaves `batch` empty.
/// Plaintext, they leave straight from their own buffers (see [`write_frames`]). Encrypted,
/// they are packed into records of at most `max_frame_size + 4` bytes (`u32` length and body
/// per frame), each sealed once.
async fn write_batch(
    shared: &Shared,
    w: &mut Writer,
    batch: &mut Vec<Out>,
    session: Option<&Session>,
    counter: &mut u64,
) -> Result<(), ConnError> {
    let mut bytes = 0u64;
    match session {
        None => {
            bytes = batch.iter().map(|f| f.len() as u64 + 4).sum();
            // With the codec's buffer flushed (it holds nothing after the handshake), write the
            // frames straight from their own buffers, lengths, heads and bodies in one writev,
            // instead of copying them into it first.
            SinkExt::<Bytes>::flush(w).await?;
            write_frames(w.get_mut(), batch).await?;
        }
        Some(s) => {
            let cap = shared.cfg.max_frame_size + 4;
            let mut record = BytesMut::new();
            for frame in batch.iter() {
                if !record.is_empty() && record.len() + 4 + frame.len() > cap {
                    let sealed = s.seal(*counter, &record);
                    *counter += 1;
                    bytes += sealed.len() as u64 + 4;
                    w.feed(sealed).await?;
                    record.clear();
                }
                record.put_u32(frame.len() as u32);
                record.extend_from_slice(frame.head());
                record.extend_from_slice(&frame.body);
            }
            if !record.is_empty() {
                let sealed = s.seal(*counter, &record);
                *counter += 1;
                bytes += sealed.len() as u64 + 4;
                w.feed(sealed).await?;
            }
            SinkExt::<Bytes>::flush(w).await?;
        }
    }
    // Drop the frames now: a kept frame would pin its payload's read buffer.
    batch.clear();
    add(&shared.counters.bytes_sent, bytes);
    Ok(())
}

/// Writes each frame as its 4-byte big-endian length, its head and its body, with vectored
/// writes (two slices per frame: length and head, then body).
async fn write_frames(io: &mut OwnedWriteHalf, frames: &mut [Out]) -> std::io::Result<()> {
    use std::io::IoSlice;
    use tokio::io::AsyncWriteExt;
    // A batch holds at most MAX_BATCH frames: the slices live on the stack.
    for frames in frames.chunks_mut(MAX_BATCH) {
        frames.iter_mut().for_each(Out::set_prefix);
        let mut slices = [IoSlice::new(&[]); 2 * MAX_BATCH];
        let mut n = 0;
        for frame in frames.iter() {
            slices[n] = IoSlice::new(frame.prefixed_head());
            n += 1;
            if !frame.body.is_empty() {
                slices[n] = IoSlice::new(&frame.body);
                n += 1;
            }
        }
        let mut bufs = &mut slices[..n];
        while !bufs.is_empty() {
            let n = io.write_vectored(bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
    }
    Ok(())
}

/// Splits an opened record into its frames.
fn split_record(mut record: Bytes, max: usize, out: &mut Vec<Bytes>) -> Result<(), ConnError> {
    while !record.is_empty() {
        if record.len() < 4 {
            return Err(ConnError::BadRecord);
        }
        let len = u32::from_be_bytes(record[..4].try_into().expect("4 bytes")) as usize;
        if len > max {
            return Err(ConnError::Oversized { max });
        }
        if len > record.len() - 4 {
            return Err(ConnError::BadRecord);
        }
        record.advance(4);
        out.push(record.split_to(len));
    }
    Ok(())
}

/// Bytes asked of the socket per read: a busy link hands over dozens of frames per system call.
const READ_CHUNK: usize = 64 * 1024;
/// Frames passed to the node per event, at most (bounds one event's memory with `READ_CHUNK`).
const FRAMES_PER_EVENT: usize = 256;
/// Emptied frame vectors kept for the readers, at most (see [`FrameVecs`]).
const SPARE_FRAME_VECS: usize = 16;

/// Vectors that carried frames from a reader to the transport, emptied, for the next event:
/// one short lock on each side instead of an allocation per event, freed on another thread.
/// Neither side waits for the lock (a futex wait and wake cost more than the allocation): the
/// reader then allocates, the transport frees.
/// At most `SPARE_FRAME_VECS` vectors of room for at most `FRAMES_PER_EVENT` frames (128 KiB).
#[derive(Default)]
struct FrameVecs(std::sync::Mutex<Vec<Vec<Bytes>>>);

impl FrameVecs {
    /// `frames` in a vector of the pool (or a new one); `frames` is left empty.
    fn take(&self, frames: &mut Vec<Bytes>) -> Vec<Bytes> {
        // Never waits: when the other side holds the lock, a new vector is cheaper.
        let spare = self.0.try_lock().ok().and_then(|mut pool| pool.pop());
        let mut batch = spare.unwrap_or_else(|| Vec::with_capacity(frames.len()));
        batch.append(frames);
        batch
    }

    /// Keeps `frames` (emptied) for a later event, if the pool has room.
    fn give(&self, mut frames: Vec<Bytes>) {
        frames.clear();
        if frames.capacity() > FRAMES_PER_EVENT {
            return;
        }
        if let Ok(mut pool) = self.0.try_lock()
            && pool.len() < SPARE_FRAME_VECS
        {
            pool.push(frames);
        }
    }
}

/// Read buffers a connection keeps after moving on from them, at most (see [`Spares`]).
const SPARE_BUFFERS: usize = 256;
/// Spares looked at for a free one, oldest first (see [`Spares`]).
const SPARE_WINDOW: usize = 4;

/// The `READ_CHUNK` buffers a connection's reader moved on from, oldest first, to be read into
/// again once every frame cut from them is gone, instead of allocating a fresh one per
/// `READ_CHUNK` read and freeing the old one on whichever thread drops its last frame (another
/// thread's allocator arena, behind its lock). Frames die roughly in the order they arrived
/// (the payload cache evicts the oldest first), so only the oldest `SPARE_WINDOW` are looked
/// at (a buffer of control frames only is free at once, though older ones may not be). A
/// spare still pinned by a frame costs nothing: the frame keeps that memory alive anyway. A
/// spare whose frames are all gone is memory held for later: at most `SPARE_BUFFERS`; a busy
/// connection frees one whenever all those looked at are free (so the list tracks how long
/// frames live, plus a few), and every free one is dropped at the connection's next timeout
/// check (`Spares::trim`), so a quiet connection holds none.
#[derive(Default)]
struct Spares(std::collections::VecDeque<BytesMut>);

impl Spares {
    /// Whether no frame uses the spare at `at` any more (it is then emptied and whole again).
    fn is_free(&mut self, at: usize) -> bool {
        self.0.get_mut(at).is_some_and(|b| {
            b.clear();
            b.try_reclaim(READ_CHUNK)
        })
    }

    /// The oldest free spare among the oldest `SPARE_WINDOW`, emptied.
    fn take_free(&mut self) -> Option<BytesMut> {
        let window = self.0.len().min(SPARE_WINDOW);
        let mut free = [false; SPARE_WINDOW];
        for (i, f) in free.iter_mut().enumerate().take(window) {
            *f = self.is_free(i);
        }
        let at = free.iter().position(|f| *f)?;
        let spare = self.0.remove(at);
        if window == SPARE_WINDOW && free.iter().all(|f| *f) {
            // Every one looked at is free: more spares than the frames' lifetime needs. Free
            // one, so the list shrinks back to that lifetime instead of holding unused ones.
            self.0.pop_front();
        }
        spare
    }

    /// Keeps `buf`, a `READ_CHUNK` buffer moved on from; the oldest spare is let go when full.
    fn retire(&mut self, mut buf: BytesMut) {
        if self.0.len() >= SPARE_BUFFERS {
            self.0.pop_front();
        }
        buf.clear();
        self.0.push_back(buf);
    }

    /// Frees the spares no frame uses any more.
    fn trim(&mut self) {
        self.0.retain_mut(|b| !b.try_reclaim(READ_CHUNK));
    }
}

/// Cuts the complete wire bodies (`u32` big-endian length, then the body) off the front of
/// `buf`, at most `limit` of them; the bodies are slices of the read buffer, not copies.
/// A length over `max` is refused before anything is allocated for it. `alloc` is the size of
/// the allocation `buf` is in, updated when room for a large body takes a fresh one.
fn cut_bodies(
    buf: &mut BytesMut,
    alloc: &mut usize,
    spares: &mut Spares,
    max: usize,
    limit: usize,
    out: &mut Vec<BytesMut>,
) -> Result<(), ConnError> {
    while out.len() < limit && buf.len() >= 4 {
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > max {
            return Err(ConnError::Oversized { max });
        }
        if buf.len() < 4 + len {
            // Room for the rest of this body (bounded by `max`), so it arrives in one piece.
            make_room(buf, alloc, spares, 4 + len - buf.len());
            break;
        }
        buf.advance(4);
        out.push(buf.split_to(len));
    }
    Ok(())
}

/// Makes room in the read buffer for `need` more bytes: in place when every frame cut from it
/// is gone, else in another buffer that takes only the bytes not cut yet: the oldest spare
/// when it is free, or a fresh one. Never by growing the buffer in place, which copies it
/// whole (frames already cut included). Another buffer is `READ_CHUNK` unless a large frame
/// needs more; `alloc` becomes its size. The buffer moved on from becomes a spare when it is
/// `READ_CHUNK`.
fn make_room(buf: &mut BytesMut, alloc: &mut usize, spares: &mut Spares, need: usize) {
    if buf.capacity() - buf.len() >= need || buf.try_reclaim(need) {
        return;
    }
    let want = buf.len() + need;
    let spare = if want <= READ_CHUNK {
        spares.take_free()
    } else {
        None
    };
    let mut next = spare.unwrap_or_else(|| BytesMut::with_capacity(want.max(READ_CHUNK)));
    next.extend_from_slice(buf);
    let old = std::mem::replace(buf, next);
    if *alloc == READ_CHUNK {
        spares.retire(old);
    }
    *alloc = buf.capacity();
}

/// A frame the node may keep (a cached broadcast payload is a slice of it) pins the whole
/// allocation it was read into. An allocation larger than `READ_CHUNK` exists only for a large
/// frame, so a frame under an eighth of it is copied out: a kept frame then pins at most
/// `READ_CHUNK` or eight times its own size (SECURITY.md, "Pinned read buffers").
fn detach_small(frame: Bytes, alloc: usize) -> Bytes {
    if alloc > READ_CHUNK && frame.len().saturating_mul(8) < alloc {
        Bytes::copy_from_slice(&frame)
    } else {
        frame
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    peer: NodeId,
    reader: Reader,
    session: Option<Session>,
    last_write: Arc<AtomicU64>,
) -> ReadEnd {
    use tokio::io::AsyncReadExt;
    let cfg = &shared.cfg;
    let wire_max = shared.wire_max();
    let mut counter = 0u64;
    let mut last_read = shared.now_ms();
    let mut partial_since: Option<u64> = None;
    let mut goodbye = false;
    // Whatever the handshake reader already buffered past the handshake belongs to us.
    let mut reader = reader;
    let mut buf = std::mem::take(reader.read_buffer_mut());
    // At least the size of the allocation `buf` is in (exact once `make_room` replaces it).
    let mut alloc = buf.capacity() + buf.len();
    let mut io = reader.into_inner();
    let mut bodies = Vec::with_capacity(FRAMES_PER_EVENT);
    let mut frames = Vec::with_capacity(FRAMES_PER_EVENT);
    let mut spares = Spares::default();
    // One timer for the connection, checked every read timeout, instead of one armed per read.
    let tick = tokio::time::sleep(cfg.read_timeout);
    tokio::pin!(tick);
    loop {
        // Hand over every complete frame already buffered, in events of bounded size.
        loop {
            if let Err(e) = cut_bodies(
                &mut buf,
                &mut alloc,
                &mut spares,
                wire_max,
                FRAMES_PER_EVENT,
                &mut bodies,
            ) {
                return ReadEnd::Error(e);
            }
            if bodies.is_empty() {
                break;
            }
            partial_since = None;
            // One update of the node-wide counter per read, not per frame: every connection's
            // reader shares it.
            let received = bodies.iter().map(|b| b.len() as u64 + 4).sum();
            add(&shared.counters.bytes_received, received);
            for body in bodies.drain(..) {
                if body.is_empty() {
                    // The peer's goodbye (see `close_writer`): the end of stream is on purpose.
                    goodbye = true;
                    continue;
                }
                match &session {
                    Some(s) => {
                        let record = match s.open(counter, body) {
                            Ok(r) => r,
                            Err(e) => return ReadEnd::Error(e.into()),
                        };
                        counter += 1;
                        // The record is opened in place: its frames are in the read buffer.
                        let first = frames.len();
                        if let Err(e) = split_record(record, cfg.max_frame_size, &mut frames) {
                            return ReadEnd::Error(e);
                        }
                        for f in &mut frames[first..] {
                            *f = detach_small(std::mem::take(f), alloc);
                        }
                    }
                    None if body.len() > cfg.max_frame_size => {
                        return ReadEnd::Error(ConnError::Oversized {
                            max: cfg.max_frame_size,
                        });
                    }
                    None => frames.push(detach_small(body.freeze(), alloc)),
                }
            }
            add(&shared.counters.frames_received, frames.len() as u64);
            // The event takes the frames in a vector of the pool; the scratch stays.
            let batch = shared.frame_vecs.take(&mut frames);
            if shared
                .events
                .send(Internal::Frames {
                    from: peer,
                    frames: batch,
                })
                .await
                .is_err()
            {
                return ReadEnd::Shutdown;
            }
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK / 2);
        }
        tokio::select! {
            read = io.read_buf(&mut buf) => match read {
                Ok(0) if goodbye => return ReadEnd::Goodbye,
                Ok(0) => {
                    // The peer closes an idle connection at its own check, which may run up to
                    // one check period before ours: an end of stream that close to the idle
                    // timeout is that quiet close, not a failure.
                    let quiet = shared
                        .now_ms()
                        .saturating_sub(last_read.max(last_write.load(Ordering::Relaxed)));
                    let margin = 2 * cfg.read_timeout.as_millis() as u64;
                    return if quiet + margin >= cfg.idle_timeout.as_millis() as u64 {
                        ReadEnd::Idle
                    } else {
                        ReadEnd::Eof
                    };
                }
                Ok(_) => last_read = shared.now_ms(),
                Err(e) => return ReadEnd::Error(ConnError::Io(e)),
            },
            _ = &mut tick => {
                spares.trim();
                let now = shared.now_ms();
                tick.as_mut().reset(Instant::now() + cfg.read_timeout);
                if !buf.is_empty() {
                    // A frame started and is not complete: the writer gets one to two periods.
                    match partial_since {
                        Some(t) if now.saturating_sub(t) >= cfg.read_timeout.as_millis() as u64 => {
                            return ReadEnd::Error(ConnError::SlowRead);
                        }
                        Some(_) => {}
                        None => partial_since = Some(now),
                    }
                    continue;
                }
                let active = last_read.max(last_write.load(Ordering::Relaxed));
                if now.saturating_sub(active) >= cfg.idle_timeout.as_millis() as u64 {
                    return ReadEnd::Idle;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(parts: &[&[u8]]) -> Bytes {
        let mut r = BytesMut::new();
        for p in parts {
            r.put_u32(p.len() as u32);
            r.extend_from_slice(p);
        }
        r.freeze()
    }

    #[test]
    fn records_split_into_their_frames() {
        let mut out = Vec::new();
        split_record(record(&[b"a", b"", b"hello"]), 16, &mut out).unwrap();
        assert_eq!(out, vec![&b"a"[..], &b""[..], &b"hello"[..]]);
    }

    #[test]
    fn malformed_records_are_refused() {
        let mut out = Vec::new();
        let r = record(&[b"hello"]);
        // Truncated body, truncated length, oversized frame.
        assert!(matches!(
            split_record(r.slice(..r.len() - 1), 16, &mut out),
            Err(ConnError::BadRecord)
        ));
        assert!(matches!(
            split_record(Bytes::from_static(&[0, 0]), 16, &mut out),
            Err(ConnError::BadRecord)
        ));
        assert!(matches!(
            split_record(r, 4, &mut out),
            Err(ConnError::Oversized { max: 4 })
        ));
        let mut huge = BytesMut::new();
        huge.put_u32(u32::MAX);
        assert!(split_record(huge.freeze(), 1 << 20, &mut out).is_err());
    }

    /// Where a frame's bytes live: inside the allocation `(start, len)` or not.
    fn inside(frame: &[u8], (start, len): (usize, usize)) -> bool {
        let f = frame.as_ptr() as usize;
        f >= start && f + frame.len() <= start + len
    }

    #[test]
    fn a_small_frame_behind_a_large_one_does_not_pin_the_large_buffer() {
        // A 1 KiB frame arrives on a fresh 64 KiB buffer: it stays a slice (no copy).
        let mut buf = BytesMut::new();
        let mut alloc = 0;
        let mut spares = Spares::default();
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK / 2);
        assert_eq!(alloc, READ_CHUNK, "an ordinary read buffer is READ_CHUNK");
        buf.put_u32(1024);
        buf.extend_from_slice(&[1; 1024]);
        let region = (buf.as_ptr() as usize, alloc);
        let mut bodies = Vec::new();
        cut_bodies(&mut buf, &mut alloc, &mut spares, 1 << 20, 16, &mut bodies).unwrap();
        let small = detach_small(bodies.pop().unwrap().freeze(), alloc);
        assert!(
            inside(&small, region),
            "a frame in an ordinary buffer is not copied"
        );

        // A 600 KiB frame needs a larger buffer; a 100-byte frame read behind it into the same
        // buffer is copied out, so keeping it does not keep the 600 KiB alive.
        let mut buf = BytesMut::new();
        let mut alloc = 0;
        let mut spares = Spares::default();
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK / 2);
        buf.put_u32(600 * 1024);
        buf.extend_from_slice(&[2; 1000]);
        cut_bodies(&mut buf, &mut alloc, &mut spares, 1 << 20, 16, &mut bodies).unwrap();
        assert!(bodies.is_empty(), "the large frame is not complete yet");
        assert!(
            alloc >= 600 * 1024,
            "room was made for the whole frame: {alloc}"
        );
        buf.extend_from_slice(&vec![2; 600 * 1024 - 1000]);
        buf.put_u32(100);
        buf.extend_from_slice(&[3; 100]);
        let region = (buf.as_ptr() as usize, alloc);
        cut_bodies(&mut buf, &mut alloc, &mut spares, 1 << 20, 16, &mut bodies).unwrap();
        let mut kept: Vec<Bytes> = bodies
            .drain(..)
            .map(|b| detach_small(b.freeze(), alloc))
            .collect();
        let small = kept.pop().unwrap();
        let large = kept.pop().unwrap();
        assert_eq!((large.len(), &small[..]), (600 * 1024, &[3u8; 100][..]));
        assert!(
            inside(&large, region),
            "the large frame itself is not copied"
        );
        assert!(!inside(&small, region), "the small frame was copied out");
    }

    /// Reads `n` frames of 1 KiB into `buf` and cuts them, as `read_loop` does.
    fn read_frames(
        buf: &mut BytesMut,
        alloc: &mut usize,
        spares: &mut Spares,
        n: usize,
    ) -> Vec<Bytes> {
        let mut bodies = Vec::new();
        let mut frames = Vec::new();
        for _ in 0..n {
            if buf.capacity() - buf.len() < 1028 {
                make_room(buf, alloc, spares, READ_CHUNK / 2);
            }
            buf.put_u32(1024);
            buf.extend_from_slice(&[4; 1024]);
            cut_bodies(buf, alloc, spares, 1 << 20, 16, &mut bodies).unwrap();
            frames.extend(bodies.drain(..).map(|b| detach_small(b.freeze(), *alloc)));
        }
        frames
    }

    #[test]
    fn a_read_buffer_is_read_into_again_once_its_frames_are_gone_and_not_before() {
        let (mut buf, mut alloc, mut spares) = (BytesMut::new(), 0, Spares::default());
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK / 2);
        let first = (buf.as_ptr() as usize, alloc);
        // Fill the first buffer and move on; one of its frames is kept.
        let frames = read_frames(&mut buf, &mut alloc, &mut spares, 70);
        assert!(inside(&frames[0], first) && !inside(&frames[69], first));
        let kept = frames[3].clone();
        drop(frames);
        // Another buffer's worth: the first is pinned by `kept`, so a fresh one is taken.
        let frames = read_frames(&mut buf, &mut alloc, &mut spares, 64);
        assert!(frames.iter().all(|f| !inside(f, first)));
        assert_eq!(spares.0.len(), 2);
        drop(frames);
        drop(kept);
        // Both spares are free now: the oldest, the first buffer, is read into again.
        let frames = read_frames(&mut buf, &mut alloc, &mut spares, 64);
        assert!(frames.iter().any(|f| inside(f, first)));
        assert!(frames.iter().all(|f| f[..] == [4; 1024][..]));
        assert_eq!(alloc, READ_CHUNK);
        // A timeout check frees the spares no frame uses and keeps the others.
        let pinned = frames.last().unwrap().clone();
        drop(frames);
        // Another buffer's worth, dropped at once: the buffer `pinned` is in became a spare.
        drop(read_frames(&mut buf, &mut alloc, &mut spares, 64));
        spares.trim();
        assert_eq!(spares.0.len(), 1, "only the spare holding `pinned` stays");
        drop(pinned);
        spares.trim();
        assert!(spares.0.is_empty());
    }

    #[test]
    fn a_pinned_old_spare_does_not_hold_up_free_ones_and_surplus_spares_are_freed() {
        let (mut buf, mut alloc, mut spares) = (BytesMut::new(), 0, Spares::default());
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK / 2);
        let first = (buf.as_ptr() as usize, alloc);
        // Eight buffers' worth; a frame of the first one is kept, the rest are dropped.
        let frames = read_frames(&mut buf, &mut alloc, &mut spares, 8 * 63);
        // The current buffer stays pinned too, so room means moving on from it.
        let (kept, tail) = (frames[0].clone(), frames.last().unwrap().clone());
        drop(frames);
        let before = spares.0.len();
        assert!(before >= SPARE_WINDOW + 2, "{before} spares");
        // Moving on reuses the oldest free spare (the second buffer), not the pinned first.
        assert!(!spares.is_free(0) && spares.is_free(1));
        let (front, second) = (spares.0[0].as_ptr(), spares.0[1].as_ptr());
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK);
        assert_eq!(buf.as_ptr(), second, "the oldest free spare is read into");
        assert_eq!(
            spares.0[0].as_ptr(),
            front,
            "the pinned one stays, costing nothing"
        );
        assert!(inside(&kept, first));
        // Not every spare looked at was free (the first is pinned): none was freed.
        assert_eq!(spares.0.len(), before);
        drop(kept);
        let tail2 = read_frames(&mut buf, &mut alloc, &mut spares, 1);
        // Now every spare looked at is free: one is read into and one more is freed, so the
        // list shrinks (the buffer moved on from joins it).
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK);
        assert_eq!(
            buf.as_ptr() as usize,
            first.0,
            "the first buffer, free at last"
        );
        drop((tail, tail2));
        assert_eq!(spares.0.len(), before - 1);
    }

    #[test]
    fn spares_are_bounded_and_a_large_buffer_is_never_one() {
        let (mut buf, mut alloc, mut spares) = (BytesMut::new(), 0, Spares::default());
        // Every frame kept: no spare is ever free, and at most SPARE_BUFFERS are held.
        let kept = read_frames(&mut buf, &mut alloc, &mut spares, 63 * (SPARE_BUFFERS + 10));
        assert_eq!(spares.0.len(), SPARE_BUFFERS);
        assert!(kept.iter().all(|f| f.len() == 1024));
        drop(kept);
        spares.trim();
        assert!(spares.0.is_empty());
        // A buffer made for a large frame is not kept as a spare.
        buf.put_u32(200 * 1024);
        let mut bodies = Vec::new();
        cut_bodies(&mut buf, &mut alloc, &mut spares, 1 << 20, 16, &mut bodies).unwrap();
        assert!(alloc >= 200 * 1024);
        buf.extend_from_slice(&vec![5; 200 * 1024]);
        cut_bodies(&mut buf, &mut alloc, &mut spares, 1 << 20, 16, &mut bodies).unwrap();
        assert_eq!(bodies.len(), 1);
        let before = spares.0.len();
        make_room(&mut buf, &mut alloc, &mut spares, READ_CHUNK * 2);
        assert_eq!(spares.0.len(), before, "the large buffer is not a spare");
    }

    #[test]
    fn frame_vectors_are_reused_and_the_pool_is_bounded() {
        let pool = FrameVecs::default();
        let mut frames = vec![Bytes::from_static(b"a"); 3];
        let batch = pool.take(&mut frames);
        assert_eq!((frames.len(), batch.len()), (0, 3));
        let first = batch.as_ptr();
        pool.give(batch);
        frames.push(Bytes::from_static(b"b"));
        let again = pool.take(&mut frames);
        assert_eq!(
            again.as_ptr(),
            first,
            "the emptied vector carries the next event"
        );
        assert_eq!(again, vec![Bytes::from_static(b"b")]);
        for _ in 0..SPARE_FRAME_VECS + 5 {
            pool.give(Vec::with_capacity(4));
        }
        pool.give(Vec::with_capacity(FRAMES_PER_EVENT + 1));
        let kept = pool.0.lock().unwrap();
        assert_eq!(kept.len(), SPARE_FRAME_VECS);
        assert!(
            kept.iter()
                .all(|v| v.is_empty() && v.capacity() <= FRAMES_PER_EVENT)
        );
    }

    #[test]
    fn session_frames_are_bound_to_direction_and_position() {
        let ring = Keyring::new([3; 32]);
        let dialer = Session {
            keyring: ring.clone(),
            id: [1; 32],
            out_dir: 0,
        };
        let acceptor = Session {
            out_dir: 1,
            ..dialer.clone()
        };
        let sealed = dialer.seal(5, b"x");
        let buf = || BytesMut::from(&sealed[..]);
        assert_eq!(&acceptor.open(5, buf()).unwrap()[..], b"x");
        // Replayed at another position, reflected back to its sender, or on another session.
        assert!(acceptor.open(6, buf()).is_err());
        assert!(dialer.open(5, buf()).is_err());
        let other = Session {
            id: [2; 32],
            ..acceptor.clone()
        };
        assert!(other.open(5, buf()).is_err());
    }
}

#[cfg(test)]
mod turn_tests {
    //! Sends in turns (the node's way): frames wait for `flush`, then leave together.
    use super::*;
    use std::future::poll_fn;

    const DEADLINE: Duration = Duration::from_secs(10);

    async fn bind(outbound_queue: usize, generation: u64) -> TcpTransport {
        bind_with(
            TcpConfig {
                outbound_queue,
                ..TcpConfig::default()
            },
            generation,
        )
        .await
    }

    async fn bind_with(cfg: TcpConfig, generation: u64) -> TcpTransport {
        let cfg = TcpConfig {
            cluster_label: "turns".into(),
            ..cfg
        };
        TcpTransport::bind("127.0.0.1:0".parse().unwrap(), cfg, generation)
            .await
            .unwrap()
    }

    async fn next_u32(t: &mut TcpTransport) -> u32 {
        match timeout(DEADLINE, poll_fn(|cx| t.poll_recv(cx))).await {
            Ok(Some(TransportEvent::Frame { frame, .. })) => {
                u32::from_be_bytes(frame[..].try_into().unwrap())
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn quiet(t: &mut TcpTransport, wait: Duration) -> bool {
        timeout(wait, poll_fn(|cx| t.poll_recv(cx))).await.is_err()
    }

    fn frame(i: u32) -> Bytes {
        Bytes::copy_from_slice(&i.to_be_bytes())
    }

    #[tokio::test]
    async fn frames_of_a_turn_leave_at_its_flush_in_order() {
        let mut a = bind(1024, 1).await;
        let mut b = bind(1024, 2).await;
        a.flush();
        let mut sent = 0u32;
        for turn in 0..50u32 {
            for _ in 0..turn % 7 {
                a.send(b.local_id(), frame(sent));
                sent += 1;
            }
            a.flush();
        }
        for i in 0..sent {
            assert_eq!(next_u32(&mut b).await, i);
        }
        // A turn's frames stay with the transport until its flush.
        a.send(b.local_id(), frame(sent));
        assert!(quiet(&mut b, Duration::from_millis(200)).await);
        a.flush();
        assert_eq!(next_u32(&mut b).await, sent);
        assert_eq!(a.stats().frames_sent, u64::from(sent) + 1);
    }

    #[tokio::test]
    async fn a_turn_over_the_queue_bound_drops_its_newest_frames() {
        let mut a = bind(4, 1).await;
        let mut b = bind(1024, 2).await;
        a.flush();
        // Queued while dialing (nothing is written before the handshake): 4 fit, 6 dropped,
        // whether they came in one turn or several.
        for i in 0..6 {
            a.send(b.local_id(), frame(i));
        }
        a.flush();
        for i in 6..10 {
            a.send(b.local_id(), frame(i));
        }
        a.flush();
        assert_eq!(a.stats().dropped_overflow, 6);
        for i in 0..4 {
            assert_eq!(next_u32(&mut b).await, i);
        }
        assert!(quiet(&mut b, Duration::from_millis(200)).await);
    }

    #[tokio::test]
    async fn disconnect_and_close_send_the_unflushed_turn_first() {
        let mut a = bind(1024, 1).await;
        let mut b = bind(1024, 2).await;
        let b_id = b.local_id();
        a.flush();
        for i in 0..100 {
            a.send(b_id, frame(i));
        }
        a.disconnect(b_id);
        for i in 0..100 {
            assert_eq!(next_u32(&mut b).await, i);
        }
        // A later turn dials again; closing the transport mid-turn still sends it.
        for i in 100..200 {
            a.send(b_id, frame(i));
        }
        let closing = tokio::spawn(a.close(Duration::from_secs(5)));
        for i in 100..200 {
            assert_eq!(next_u32(&mut b).await, i);
        }
        closing.await.unwrap();
    }

    #[tokio::test]
    async fn a_turn_queued_as_its_connection_closed_quietly_dials_again() {
        let cfg = || TcpConfig {
            idle_timeout: Duration::from_millis(300),
            read_timeout: Duration::from_millis(100),
            ..TcpConfig::default()
        };
        let mut a = bind_with(cfg(), 1).await;
        let mut b = bind_with(cfg(), 2).await;
        let b_id = b.local_id();
        a.flush();
        a.send(b_id, frame(1));
        a.flush();
        assert_eq!(next_u32(&mut b).await, 1);
        // Both sides close the idle connection; `a` has not looked at its events yet.
        timeout(DEADLINE, async {
            while a.stats().open_connections + b.stats().open_connections > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the idle connection closes");
        // A turn sends to `b`, and learns of the close before it ends.
        a.send(b_id, frame(2));
        assert!(
            quiet(&mut a, Duration::from_millis(100)).await,
            "no LinkFailed"
        );
        a.flush();
        assert_eq!(next_u32(&mut b).await, 2);
        assert_eq!(a.stats().dropped_unreachable, 0);
    }
}
