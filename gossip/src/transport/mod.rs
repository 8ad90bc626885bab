//! Transports: how frames travel between nodes.
//!
//! A [`Transport`] moves opaque frames (encoded protocol messages) between [`NodeId`]s. It owns
//! connection management: dialing on first send, the handshake (protocol version, cluster label,
//! node ids, optional encryption), framing, timeouts, bounded queues. The node's actor only calls
//! [`Transport::send`], [`Transport::disconnect`], [`Transport::flush`] (at the end of each of
//! its turns) and polls [`Transport::poll_recv`].

use std::net::SocketAddr;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::NodeId;
pub use crate::wire::RejectReason;

pub mod memory;
pub mod tcp;

pub use memory::{MemoryError, MemoryNetwork, MemoryTransport, NetworkStats};
pub use tcp::{TcpConfig, TcpError, TcpTransport};

/// What a transport reports to the node.
#[derive(Debug)]
pub enum TransportEvent {
    /// A whole frame from an authenticated peer.
    Frame {
        /// The peer, as its handshake identified it.
        from: NodeId,
        /// The frame's bytes (one encoded protocol message).
        frame: Bytes,
    },
    /// The link to this peer failed or could not be opened; queued frames to it were dropped.
    LinkFailed(NodeId),
    /// A peer refused our handshake for a reason the user must fix (cluster label, protocol
    /// version, cluster key). Followed by `LinkFailed` for the node that was dialed. Display it
    /// as `"{addr} rejected us: {reason}"`.
    Rejected {
        /// The address that was dialed.
        addr: SocketAddr,
        /// Why, from this node's point of view.
        reason: RejectReason,
    },
}

/// Counters every transport keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames handed to `send`.
    pub frames_sent: u64,
    /// Bytes written to the wire (headers and encryption included).
    pub bytes_sent: u64,
    /// Frames received and passed up.
    pub frames_received: u64,
    /// Bytes read from the wire.
    pub bytes_received: u64,
    /// Frames dropped because a peer's outbound queue was full.
    pub dropped_overflow: u64,
    /// Connections closed for bad input (malformed, oversized, wrong version, label or key).
    pub rejected_connections: u64,
    /// Handshakes that did not finish in time.
    pub handshake_timeouts: u64,
    /// Frames dropped because they were larger than the maximum frame size.
    pub dropped_oversized: u64,
    /// Frames dropped because the peer could not be reached (dial failed, backing off, crashed,
    /// or it is another generation of the node at that address).
    pub dropped_unreachable: u64,
    /// Handshakes the peer refused (reported as [`TransportEvent::Rejected`] when the user must
    /// act).
    pub rejected_by_peer: u64,
    /// Connections open now, past their handshake (a gauge, not a counter; 0 for memory).
    pub open_connections: u64,
}

/// One duty each: `send` never blocks, `poll_recv` yields every event exactly once.
pub trait Transport: Send + 'static {
    /// The address this transport listens on (what other nodes dial).
    fn local_addr(&self) -> SocketAddr;
    /// Queue `frame` for `to`, connecting first if there is no link. Never blocks: when the
    /// peer's bounded queue is full the frame is dropped and counted. An empty frame carries
    /// nothing: TCP drops it (on the wire it is the goodbye that ends a connection on purpose).
    fn send(&mut self, to: NodeId, frame: Bytes);
    /// Queue one frame made of `head` followed by `body` (`head.len() + body.len()` bytes on the
    /// wire, exactly as if they had been joined and passed to [`send`](Transport::send)). A
    /// transport that writes frames to a socket writes the two parts one after the other, so a
    /// payload sent to several peers is shared, not copied for each. The default joins them.
    fn send_parts(&mut self, to: NodeId, head: &[u8], body: Bytes) {
        let mut frame = bytes::BytesMut::with_capacity(head.len() + body.len());
        frame.extend_from_slice(head);
        frame.extend_from_slice(&body);
        self.send(to, frame.freeze())
    }
    /// Close the link to `peer`, if any, once queued frames are flushed.
    fn disconnect(&mut self, peer: NodeId);
    /// The end of a turn: hand the frames queued since the last call on to their links. A
    /// caller that sends in turns (as the node's actor does, calling this at the end of each)
    /// lets a transport hand a peer's frames of one turn to its connection in one operation
    /// rather than one each. Once a caller has called it, it must call it after every turn of
    /// sends; a caller that never calls it has every frame handed over at once. The default
    /// does nothing.
    fn flush(&mut self) {}
    /// The next event. `Poll::Ready(None)` means the transport has shut down.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>>;
    /// Counters.
    fn stats(&self) -> TransportStats;
}

/// A boxed transport is a transport, so a node can hold `Box<dyn Transport>` and pick the
/// memory or TCP transport at runtime.
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn local_addr(&self) -> SocketAddr {
        (**self).local_addr()
    }
    fn send(&mut self, to: NodeId, frame: Bytes) {
        (**self).send(to, frame)
    }
    fn send_parts(&mut self, to: NodeId, head: &[u8], body: Bytes) {
        (**self).send_parts(to, head, body)
    }
    fn disconnect(&mut self, peer: NodeId) {
        (**self).disconnect(peer)
    }
    fn flush(&mut self) {
        (**self).flush()
    }
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>> {
        (**self).poll_recv(cx)
    }
    fn stats(&self) -> TransportStats {
        (**self).stats()
    }
}
