//! [`Config`]: every knob of a node, with defaults that work on a LAN.

use std::time::Duration;

use bytes::Bytes;

use crate::keyring::Keyring;
use crate::proto;
use crate::transport::tcp::TcpConfig;

/// Settings of one node. `Config::default()` suits a LAN; every field is public.
///
/// ```
/// let mut config = gossip::Config::default();
/// config.cluster_label = "billing-prod".into();
/// config.protocol.detector.phi_threshold = 10.0;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// The protocol core: overlay, broadcast, failure detection, directory. Default:
    /// [`proto::Config::lan`] (graft timeouts for links of a few milliseconds); use
    /// `proto::Config::default()` for a WAN (10-100 ms links).
    pub protocol: proto::Config,
    /// Nodes with different labels refuse each other's connections, so two clusters on the
    /// same hosts stay apart even without encryption. Default: empty.
    pub cluster_label: String,
    /// Shared secrets for authenticated encryption of every frame; `None` (the default) sends
    /// plaintext. All members of a cluster need the same keys.
    pub keyring: Option<Keyring>,
    /// TCP connection settings: timeouts, queue sizes, frame limit.
    pub tcp: TcpConfig,
    /// Largest encoded user message `broadcast` accepts; larger ones are an error at once.
    /// Default: 512 KiB.
    pub max_message_size: usize,
    /// Largest frame accepted from a peer; a larger one closes that connection. Must exceed
    /// `max_message_size` plus protocol overhead. Default: 1 MiB.
    pub max_frame_size: usize,
    /// Largest metadata `set_metadata` accepts. Default: 4 KiB.
    pub max_metadata_size: usize,
    /// This node's initial metadata, spread through the directory.
    pub metadata: Bytes,
    /// Messages buffered for `recv` before the oldest are skipped (reported as
    /// [`Error::Lagged`](crate::Error::Lagged)). Default: 4096.
    pub recv_capacity: usize,
    /// Membership events buffered per `events()` subscriber. Default: 1024.
    pub event_capacity: usize,
    /// Commands (broadcasts, queries) queued for the node's task. Default: 1024.
    pub command_capacity: usize,
    /// How long `join` keeps retrying before it fails. Default: 10 s.
    pub join_timeout: Duration,
    /// How long `leave` keeps serving after announcing Left, so the news spreads. Default: 300 ms.
    pub leave_linger: Duration,
    /// Seed for the protocol's rng; `None` (the default) draws one from the OS.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            protocol: proto::Config::lan(),
            cluster_label: String::new(),
            keyring: None,
            tcp: TcpConfig::default(),
            max_message_size: 512 * 1024,
            max_frame_size: 1024 * 1024,
            max_metadata_size: 4096,
            metadata: Bytes::new(),
            recv_capacity: 4096,
            event_capacity: 1024,
            command_capacity: 1024,
            join_timeout: Duration::from_secs(10),
            leave_linger: Duration::from_millis(300),
            seed: None,
        }
    }
}

impl Config {
    /// The TCP transport's settings with the node-level label, keyring and frame limit applied.
    pub(crate) fn transport_config(&self) -> TcpConfig {
        let mut tcp = self.tcp.clone();
        tcp.cluster_label = self.cluster_label.clone();
        tcp.keyring = self.keyring.clone();
        tcp.max_frame_size = self.max_frame_size;
        tcp
    }
}
