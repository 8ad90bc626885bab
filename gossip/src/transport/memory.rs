//! An in-process network with fault injection, for demos, tests and simulations on tokio.
//!
//! A [`MemoryNetwork`] is a shared switchboard (cheap to clone). [`MemoryNetwork::bind`] attaches
//! a [`MemoryTransport`] at an address, like a TCP listener; frames sent to a [`NodeId`] reach the
//! transport bound at that address if, and only if, it is the same generation: a send to a node
//! that crashed, was dropped, or restarted under a new generation fails with
//! [`TransportEvent::LinkFailed`], as a TCP dial or handshake would.
//!
//! Faults are set at runtime on the network and apply to frames sent afterwards:
//!
//! - [`set_loss`](MemoryNetwork::set_loss): each frame is dropped with probability `p`, silently
//!   (like a lossy path; the failure detector has to notice).
//! - [`set_latency`](MemoryNetwork::set_latency): each frame is delayed by a uniform draw from
//!   `min..max`. Frames on one link may be reordered when the range is wide.
//! - [`partition`](MemoryNetwork::partition) / [`heal`](MemoryNetwork::heal): frames between the
//!   two sets are dropped silently until healed.
//! - [`crash`](MemoryNetwork::crash): the transport at that address stops (`poll_recv` returns
//!   `None`), frames in flight to it are lost and later sends to it fail with `LinkFailed`.
//!
//! All randomness comes from one rng seeded by [`MemoryNetwork::new`]; with tokio's paused clock
//! a run is repeatable. Queues are bounded: each transport's inbox holds at most
//! [`INBOX_CAPACITY`] frames in flight; beyond that the newest frame is dropped and counted in the
//! sender's `dropped_overflow`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use super::{Transport, TransportEvent, TransportStats};
use crate::NodeId;

/// Frames in flight to one transport, at most.
pub const INBOX_CAPACITY: usize = 8192;
const FIRST_AUTO_PORT: u16 = 10_000;

/// Binding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// A live transport is already bound at this address.
    #[error("{0} is already bound on this memory network: pick another address, or port 0")]
    AddrInUse(SocketAddr),
    /// Every automatic port on this IP is taken.
    #[error("no free port left on {0} in this memory network")]
    NoFreePort(std::net::IpAddr),
}

/// Counters of the whole network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Frames accepted for delivery (after loss and partitions).
    pub sent: u64,
    /// Frames dropped by the loss setting.
    pub dropped_loss: u64,
    /// Frames dropped by a partition.
    pub dropped_partition: u64,
    /// Sends to a missing, crashed or other-generation node.
    pub dropped_unreachable: u64,
    /// Frames dropped because the receiver's inbox was full.
    pub dropped_overflow: u64,
    /// Frames lost in flight because their receiver crashed.
    pub lost_in_crash: u64,
}

struct Delivery {
    at: Instant,
    from: NodeId,
    frame: Bytes,
}

struct Endpoint {
    generation: u64,
    tx: mpsc::Sender<Delivery>,
    crashed: Arc<AtomicBool>,
}

struct Net {
    endpoints: HashMap<SocketAddr, Endpoint>,
    rng: SmallRng,
    loss: f64,
    latency: Range<Duration>,
    partitions: Vec<(HashSet<SocketAddr>, HashSet<SocketAddr>)>,
    next_port: u16,
    stats: NetworkStats,
    /// Latest delivery time per directed link: frames on one link arrive in order, as on TCP.
    link_clock: HashMap<(SocketAddr, SocketAddr), Instant>,
    /// The latest delivery time in `link_clock`: from then on, while there is no latency, a
    /// frame is due when sent and no link's clock needs reading or moving.
    latest: Option<Instant>,
}

impl Net {
    fn partitioned(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.partitions
            .iter()
            .any(|(x, y)| (x.contains(&a) && y.contains(&b)) || (x.contains(&b) && y.contains(&a)))
    }
}

/// An in-process network shared by many [`MemoryTransport`]s. Clones share the same network.
#[derive(Clone)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Net>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let net = self.lock();
        f.debug_struct("MemoryNetwork")
            .field("endpoints", &net.endpoints.len())
            .field("loss", &net.loss)
            .field("latency", &net.latency)
            .field("partitions", &net.partitions.len())
            .finish()
    }
}

impl MemoryNetwork {
    /// A network without faults whose random draws (loss, latency) come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Net {
                endpoints: HashMap::new(),
                rng: SmallRng::seed_from_u64(seed),
                loss: 0.0,
                latency: Duration::ZERO..Duration::ZERO,
                partitions: Vec::new(),
                next_port: FIRST_AUTO_PORT,
                stats: NetworkStats::default(),
                link_clock: HashMap::new(),
                latest: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        // The state stays consistent between statements: recover from a poisoned lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a transport at `addr` as node generation `generation`. Port 0 picks a free port.
    /// The address of a crashed or dropped transport can be bound again (a restart).
    pub fn bind(&self, addr: SocketAddr, generation: u64) -> Result<MemoryTransport, MemoryError> {
        let mut net = self.lock();
        let addr = if addr.port() == 0 {
            let start = net.next_port;
            let mut port = start;
            loop {
                let candidate = SocketAddr::new(addr.ip(), port);
                port = port.checked_add(1).unwrap_or(FIRST_AUTO_PORT);
                if !net.endpoints.contains_key(&candidate) {
                    net.next_port = port;
                    break candidate;
                }
                if port == start {
                    return Err(MemoryError::NoFreePort(addr.ip()));
                }
            }
        } else {
            if net.endpoints.contains_key(&addr) {
                return Err(MemoryError::AddrInUse(addr));
            }
            addr
        };
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let crashed = Arc::new(AtomicBool::new(false));
        net.endpoints.insert(
            addr,
            Endpoint {
                generation,
                tx,
                crashed: crashed.clone(),
            },
        );
        Ok(MemoryTransport {
            id: NodeId::new(addr, generation),
            net: self.clone(),
            rx,
            crashed,
            pending: BinaryHeap::new(),
            seq: 0,
            sleep: None,
            ready: VecDeque::new(),
            failed_pending: HashSet::new(),
            waker: None,
            stats: TransportStats::default(),
            joined_head: Vec::new(),
            joined: None,
            arena: bytes::BytesMut::new(),
            clock: Instant::now(),
        })
    }

    /// Drops each frame with probability `p` (clamped to `0.0..=1.0`).
    pub fn set_loss(&self, p: f64) {
        self.lock().loss = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    }

    /// Delays each frame by a uniform draw from `latency` (`min..max`; an empty range means `min`).
    pub fn set_latency(&self, latency: Range<Duration>) {
        self.lock().latency = latency;
    }

    /// Drops every frame between a node of `a` and a node of `b` until [`heal`](Self::heal).
    pub fn partition(&self, a: &[SocketAddr], b: &[SocketAddr]) {
        let a = a.iter().copied().collect();
        let b = b.iter().copied().collect();
        self.lock().partitions.push((a, b));
    }

    /// Removes every partition.
    pub fn heal(&self) {
        self.lock().partitions.clear();
    }

    /// Crashes the transport at `addr`: it shuts down, frames in flight to it are lost, later
    /// sends to it fail with `LinkFailed`. Its address may be bound again. Returns whether a
    /// transport was bound there.
    pub fn crash(&self, addr: SocketAddr) -> bool {
        let mut net = self.lock();
        match net.endpoints.remove(&addr) {
            Some(ep) => {
                ep.crashed.store(true, AtomicOrdering::Release);
                net.stats.lost_in_crash += (INBOX_CAPACITY - ep.tx.capacity()) as u64;
                // Dropping `ep.tx` closes the inbox, which wakes the transport.
                true
            }
            None => false,
        }
    }

    /// The network's counters.
    pub fn stats(&self) -> NetworkStats {
        self.lock().stats.clone()
    }

    /// Routes one frame. Returns `Err(())` when the target is unreachable.
    fn route(&self, from: NodeId, to: NodeId, frame: Bytes, stats: &mut TransportStats) -> bool {
        let mut guard = self.lock();
        // Through a plain reference, so `ep` and the other fields borrow apart (one lookup).
        let net = &mut *guard;
        let Some(ep) = net.endpoints.get(&to.addr) else {
            net.stats.dropped_unreachable += 1;
            return false;
        };
        // Generation 0 reaches whoever is bound at the address (joining through an address).
        let other_node = to.generation != 0 && ep.generation != to.generation;
        if other_node || ep.crashed.load(AtomicOrdering::Acquire) {
            net.stats.dropped_unreachable += 1;
            return false;
        }
        if net.partitioned(from.addr, to.addr) {
            net.stats.dropped_partition += 1;
            return true;
        }
        let loss = net.loss;
        if loss > 0.0 && net.rng.random::<f64>() < loss {
            net.stats.dropped_loss += 1;
            return true;
        }
        let Range { start, end } = net.latency;
        let now = Instant::now();
        let at = if end.is_zero() && net.latest.is_none_or(|t| t <= now) {
            // No latency, and every delay given earlier has passed: the frame is due now, after
            // everything sent before it on its link (one clock reading, no link clock).
            net.latest = None;
            now
        } else {
            let delay = if end > start {
                start + (end - start).mul_f64(net.rng.random::<f64>())
            } else {
                start
            };
            let link = (from.addr, to.addr);
            let at = (now + delay).max(net.link_clock.get(&link).copied().unwrap_or(now));
            net.link_clock.insert(link, at);
            net.latest = Some(net.latest.map_or(at, |t| t.max(at)));
            at
        };
        let len = frame.len() as u64;
        let delivery = Delivery { at, from, frame };
        match ep.tx.try_send(delivery) {
            Ok(()) => {
                net.stats.sent += 1;
                stats.bytes_sent += len;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                net.stats.dropped_overflow += 1;
                stats.dropped_overflow += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                net.stats.dropped_unreachable += 1;
                false
            }
        }
    }

    fn unbind(&self, id: NodeId) {
        let mut net = self.lock();
        if net
            .endpoints
            .get(&id.addr)
            .is_some_and(|ep| ep.generation == id.generation)
        {
            net.endpoints.remove(&id.addr);
            net.link_clock
                .retain(|(a, b), _| *a != id.addr && *b != id.addr);
        }
    }
}

struct Pending {
    at: Instant,
    seq: u64,
    from: NodeId,
    frame: Bytes,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Reversed: BinaryHeap is a max-heap and we want the earliest delivery on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One node's attachment to a [`MemoryNetwork`]. Dropping it unbinds its address.
pub struct MemoryTransport {
    id: NodeId,
    net: MemoryNetwork,
    rx: mpsc::Receiver<Delivery>,
    crashed: Arc<AtomicBool>,
    pending: BinaryHeap<Pending>,
    seq: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    ready: VecDeque<TransportEvent>,
    failed_pending: HashSet<NodeId>,
    waker: Option<Waker>,
    stats: TransportStats,
    /// The head of the last frame joined by `send_parts`, and its body and the joined frame:
    /// the same parts sent on to further peers (a payload to every eager neighbour) are joined
    /// once and shared.
    joined_head: Vec<u8>,
    joined: Option<(Bytes, Bytes)>,
    /// Where joined frames are written, one after the other: one allocation per
    /// [`JOIN_ARENA`] bytes instead of one per frame (receivers cache payloads, slices of these
    /// frames, and freeing them one by one, long after, cost more than joining them).
    arena: bytes::BytesMut,
    /// A clock reading no older than any due frame seen: frames due by then need no new one.
    clock: Instant,
}

/// Bytes of joined frames per allocation (see `MemoryTransport::arena`). A cached payload pins
/// at most this much, or its own frame if larger, as on TCP.
const JOIN_ARENA: usize = 64 * 1024;

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// This node's identity on the network.
    pub fn local_id(&self) -> NodeId {
        self.id
    }

    fn crashed(&self) -> bool {
        self.crashed.load(AtomicOrdering::Acquire)
    }

    fn link_failed(&mut self, peer: NodeId) {
        // At most one pending LinkFailed per peer keeps this queue bounded by the peer count.
        if self.failed_pending.insert(peer) {
            self.ready.push_back(TransportEvent::LinkFailed(peer));
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.net.unbind(self.id);
    }
}

impl Transport for MemoryTransport {
    fn local_addr(&self) -> SocketAddr {
        self.id.addr
    }

    fn send(&mut self, to: NodeId, frame: Bytes) {
        if self.crashed() {
            return;
        }
        self.stats.frames_sent += 1;
        let reachable = self.net.route(self.id, to, frame, &mut self.stats);
        if !reachable {
            self.stats.dropped_unreachable += 1;
            self.link_failed(to);
        }
    }

    fn send_parts(&mut self, to: NodeId, head: &[u8], body: Bytes) {
        let frame = match &self.joined {
            Some((b, frame))
                if b.as_ptr() == body.as_ptr()
                    && b.len() == body.len()
                    && self.joined_head == head =>
            {
                frame.clone()
            }
            _ => {
                let len = head.len() + body.len();
                if self.arena.capacity() - self.arena.len() < len {
                    // A fresh arena: the frames cut from the last one keep it alive.
                    self.arena = bytes::BytesMut::with_capacity(len.max(JOIN_ARENA));
                }
                self.arena.extend_from_slice(head);
                self.arena.extend_from_slice(&body);
                let frame = self.arena.split_to(len).freeze();
                self.joined_head.clear();
                self.joined_head.extend_from_slice(head);
                self.joined = Some((body, frame.clone()));
                frame
            }
        };
        self.send(to, frame)
    }

    /// There are no connections in memory: nothing to close.
    fn disconnect(&mut self, _peer: NodeId) {}

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>> {
        loop {
            if self.crashed() {
                self.pending.clear();
                return Poll::Ready(None);
            }
            if let Some(ev) = self.ready.pop_front() {
                if let TransportEvent::LinkFailed(p) = &ev {
                    self.failed_pending.remove(p);
                }
                return Poll::Ready(Some(ev));
            }
            let mut closed = false;
            while self.pending.len() < INBOX_CAPACITY {
                match self.rx.poll_recv(cx) {
                    Poll::Ready(Some(d)) => {
                        self.seq += 1;
                        self.pending.push(Pending {
                            at: d.at,
                            seq: self.seq,
                            from: d.from,
                            frame: d.frame,
                        });
                    }
                    Poll::Ready(None) => {
                        closed = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if closed && self.crashed() {
                continue;
            }
            let Some(top) = self.pending.peek() else {
                self.waker = Some(cx.waker().clone());
                return if closed {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            };
            if top.at <= self.clock || {
                self.clock = Instant::now();
                top.at <= self.clock
            } {
                let p = self.pending.pop().expect("peeked");
                self.sleep = None;
                self.stats.frames_received += 1;
                self.stats.bytes_received += p.frame.len() as u64;
                return Poll::Ready(Some(TransportEvent::Frame {
                    from: p.from,
                    frame: p.frame,
                }));
            }
            let at = top.at;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => {
                    self.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }

    fn stats(&self) -> TransportStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn addr(port: u16) -> SocketAddr {
        ([10, 0, 0, 1], port).into()
    }

    async fn recv(t: &mut MemoryTransport) -> Option<TransportEvent> {
        poll_fn(|cx| t.poll_recv(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn delivers_between_two_nodes() {
        let net = MemoryNetwork::new(1);
        let mut a = net.bind(addr(1), 1).unwrap();
        let mut b = net.bind(addr(0), 2).unwrap();
        assert_eq!(b.local_addr().port(), FIRST_AUTO_PORT);
        a.send(b.local_id(), Bytes::from_static(b"hi"));
        match recv(&mut b).await {
            Some(TransportEvent::Frame { from, frame }) => {
                assert_eq!(from, a.local_id());
                assert_eq!(&frame[..], b"hi");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            net.bind(addr(1), 5).unwrap_err(),
            MemoryError::AddrInUse(addr(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn other_generation_is_link_failed() {
        let net = MemoryNetwork::new(1);
        let mut a = net.bind(addr(1), 1).unwrap();
        let _b = net.bind(addr(2), 2).unwrap();
        let stale = NodeId::new(addr(2), 99);
        a.send(stale, Bytes::from_static(b"x"));
        a.send(stale, Bytes::from_static(b"y"));
        assert!(matches!(recv(&mut a).await, Some(TransportEvent::LinkFailed(p)) if p == stale));
        assert_eq!(a.stats().dropped_unreachable, 2);
        // Deduplicated: only one LinkFailed was queued for two sends.
        assert!(a.ready.is_empty());
    }

    async fn frame(t: &mut MemoryTransport) -> Bytes {
        match recv(t).await {
            Some(TransportEvent::Frame { frame, .. }) => frame,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn frames_sent_after_latency_is_removed_do_not_overtake_delayed_ones() {
        let net = MemoryNetwork::new(1);
        let mut a = net.bind(addr(1), 1).unwrap();
        let mut b = net.bind(addr(2), 2).unwrap();
        net.set_latency(Duration::from_millis(50)..Duration::from_millis(50));
        a.send(b.local_id(), Bytes::from_static(b"delayed"));
        net.set_latency(Duration::ZERO..Duration::ZERO);
        a.send(b.local_id(), Bytes::from_static(b"after"));
        let start = Instant::now();
        assert_eq!(&frame(&mut b).await[..], b"delayed");
        assert_eq!(&frame(&mut b).await[..], b"after", "same link, same order");
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Once the delay has passed, a frame is due when sent.
        a.send(b.local_id(), Bytes::from_static(b"now"));
        let start = Instant::now();
        assert_eq!(&frame(&mut b).await[..], b"now");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn joined_frames_are_whole_and_shared_along_a_row() {
        let net = MemoryNetwork::new(1);
        let mut a = net.bind(addr(1), 1).unwrap();
        let mut b = net.bind(addr(2), 2).unwrap();
        let mut c = net.bind(addr(3), 3).unwrap();
        // Payloads larger than what is left of the arena start a fresh one.
        let payloads: Vec<Bytes> = (0..200u32)
            .map(|i| Bytes::from(vec![i as u8; 100 + (i as usize * 97) % 3000]))
            .collect();
        for (i, p) in payloads.iter().enumerate() {
            let head = [i as u8; 5];
            a.send_parts(b.local_id(), &head, p.clone());
            a.send_parts(c.local_id(), &head, p.clone());
        }
        for (i, p) in payloads.iter().enumerate() {
            let (fb, fc) = (frame(&mut b).await, frame(&mut c).await);
            assert_eq!(&fb[..5], &[i as u8; 5]);
            assert_eq!(&fb[5..], &p[..]);
            assert_eq!(
                fb.as_ptr(),
                fc.as_ptr(),
                "one joined frame for the whole row"
            );
        }
    }
}
