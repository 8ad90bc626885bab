//! [`NodeId`]: who a node is on the network.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's identity: the address it listens on and a generation drawn when it starts.
///
/// A node restarted at the same address gets a new generation, so it is a new identity: stale
/// state about its previous life (suspicions, message ids, cached links) never shadows it.
///
/// Ids are ordered by address (IPv4 before IPv6, then IP, port, and for IPv6 flow info and scope)
/// and then generation: the order a derived `Ord` on the fields gives. It is written out by hand
/// because the protocol core keeps its caches in ordered maps keyed by message ids, and the
/// derived comparison (an enum match, then byte-slice comparisons of the IP) was a sizeable share
/// of the CPU per delivered message; comparing one or two integers gives the same order.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct NodeId {
    /// Where the node listens.
    pub addr: SocketAddr,
    /// Drawn at random each time the node starts.
    pub generation: u64,
}

impl NodeId {
    /// An id for a node listening on `addr`, started as `generation`.
    pub fn new(addr: SocketAddr, generation: u64) -> Self {
        Self { addr, generation }
    }
}

impl PartialEq for NodeId {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        // The generation differs between most distinct ids and is one integer: test it first.
        self.generation == other.generation && self.addr == other.addr
    }
}

impl Eq for NodeId {}

impl Ord for NodeId {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.addr, other.addr) {
            (SocketAddr::V4(a), SocketAddr::V4(b)) => {
                // IP, port and generation in one 128-bit comparison.
                let pack = |ip: std::net::Ipv4Addr, port: u16, generation: u64| {
                    (u128::from(ip.to_bits()) << 80)
                        | (u128::from(port) << 64)
                        | u128::from(generation)
                };
                pack(*a.ip(), a.port(), self.generation).cmp(&pack(
                    *b.ip(),
                    b.port(),
                    other.generation,
                ))
            }
            (SocketAddr::V4(_), SocketAddr::V6(_)) => Ordering::Less,
            (SocketAddr::V6(_), SocketAddr::V4(_)) => Ordering::Greater,
            (SocketAddr::V6(a), SocketAddr::V6(b)) => (
                a.ip().to_bits(),
                a.port(),
                a.flowinfo(),
                a.scope_id(),
                self.generation,
            )
                .cmp(&(
                    b.ip().to_bits(),
                    b.port(),
                    b.flowinfo(),
                    b.scope_id(),
                    other.generation,
                )),
        }
    }
}

impl PartialOrd for NodeId {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for NodeId {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Consistent with `Eq` (equal ids hash alike); a few integers instead of the address's
        // derived field-by-field hash.
        match self.addr {
            SocketAddr::V4(a) => {
                state.write_u64((u64::from(a.ip().to_bits()) << 16) | u64::from(a.port()));
            }
            SocketAddr::V6(a) => {
                state.write_u128(a.ip().to_bits());
                state.write_u16(a.port());
                state.write_u32(a.flowinfo());
                state.write_u32(a.scope_id());
            }
        }
        state.write_u64(self.generation);
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:04x}", self.addr, self.generation & 0xffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    /// Ids that differ in every field, at the edges of each field's range.
    fn samples() -> Vec<NodeId> {
        let mut addrs = Vec::new();
        for ip in [0u32, 1, 0x7f00_0001, 0x8000_0000, u32::MAX] {
            for port in [0u16, 1, 7000, u16::MAX] {
                addrs.push(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from_bits(ip),
                    port,
                )));
            }
        }
        for ip in [0u128, 1, 1 << 127, u128::MAX] {
            for port in [0u16, 7000, u16::MAX] {
                for (flow, scope) in [(0, 0), (0, 1), (1, 0), (u32::MAX, u32::MAX)] {
                    addrs.push(SocketAddr::V6(SocketAddrV6::new(
                        Ipv6Addr::from_bits(ip),
                        port,
                        flow,
                        scope,
                    )));
                }
            }
        }
        let mut ids = Vec::new();
        for addr in addrs {
            for generation in [0u64, 1, 1 << 63, u64::MAX] {
                ids.push(NodeId::new(addr, generation));
            }
        }
        ids
    }

    #[test]
    fn order_and_equality_are_those_of_the_fields() {
        let ids = samples();
        for a in &ids {
            for b in &ids {
                let fields = (a.addr, a.generation).cmp(&(b.addr, b.generation));
                assert_eq!(a.cmp(b), fields, "{a:?} vs {b:?}");
                assert_eq!(a.partial_cmp(b), Some(fields));
                assert_eq!(a == b, fields.is_eq(), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn equal_ids_hash_alike() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let ids = samples();
        for a in &ids {
            let copy = NodeId::new(a.addr, a.generation);
            assert_eq!(state.hash_one(a), state.hash_one(copy));
        }
        // Distinct ids almost never collide (a check that the hash reads every field).
        let mut hashes: Vec<u64> = ids.iter().map(|id| state.hash_one(id)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), ids.len());
    }
}
