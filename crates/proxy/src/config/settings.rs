//! The validated configuration every part of the proxy reads ([`Config`]), with the settings of
//! its optional sections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What happens when a connection presents the certificate of a member of the room it asks
/// for (`rooms.same_identity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SameIdentity {
    /// The member is pinged: if it answers within `rooms.replace_probe_timeout` it stays and
    /// the newcomer is refused (409); if it stays silent it is replaced.
    #[default]
    Probe,
    /// The newcomer replaces the member at once.
    Replace,
    /// The newcomer is refused (409) while the member is connected.
    Refuse,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (`listen.bind`).
    pub bind: SocketAddr,
    /// The URL path prefix before the room id (`listen.path_prefix`).
    pub path_prefix: String,
    /// Connections the kernel queues before they are accepted (`listen.backlog`; the kernel
    /// caps it at `net.core.somaxconn`).
    pub backlog: u32,
    /// Server certificate chain, and the key unless `server_key` is set (`tls.server_cert`).
    pub server_cert: PathBuf,
    /// A separate server key file (`tls.server_key`).
    pub server_key: Option<PathBuf>,
    /// CA bundles client certificates must chain to (`tls.client_ca`, plus a CA directory's
    /// files when given on the command line).
    pub client_ca: Vec<PathBuf>,
    /// Certificate revocation lists client certificates are checked against (`tls.crl_files`).
    pub crl_files: Vec<PathBuf>,
    /// Deadline for the TLS handshake and the HTTP upgrade request (`tls.handshake_timeout`).
    pub handshake_timeout: Duration,
    /// Whether reconnecting clients may resume their TLS session (`tls.resumption`).
    pub resumption: bool,
    /// The secret session tickets are sealed with, shared by restarts and cluster nodes
    /// (`tls.ticket_key_file`); random, and lost at a restart, when `None`.
    pub ticket_key_file: Option<PathBuf>,
    /// How often the ticket keys change (`tls.ticket_rotation`); a ticket is accepted for one
    /// to two of these.
    pub ticket_rotation: Duration,
    /// Members per room (`rooms.max_peers`), at least 2.
    pub max_peers: usize,
    /// Deadline for a connection's `CONN:HELLO` (`rooms.hello_timeout`).
    pub hello_timeout: Duration,
    /// A newcomer with a member's certificate (`rooms.same_identity`).
    pub same_identity: SameIdentity,
    /// How long a member has to answer the probe a newcomer with its certificate causes
    /// (`rooms.replace_probe_timeout`).
    pub replace_probe_timeout: Duration,
    /// A connecting certificate that expires within this is logged and counted
    /// (`tls.expiry_warning`).
    pub expiry_warning: Duration,
    /// Messages held for a member alone in its room (`rooms.hold_max_messages`).
    pub hold_max_messages: usize,
    /// Bytes held for a member alone in its room (`rooms.hold_max_bytes`).
    pub hold_max_bytes: usize,
    /// How long a held message waits for a member (`rooms.hold_max_age`).
    pub hold_max_age: Duration,
    /// Open connections at most (`limits.max_connections`).
    pub max_connections: usize,
    /// Open connections from one source address at most, 0 for no limit; more are dropped
    /// before any TLS work (`limits.max_connections_per_ip`).
    pub max_connections_per_ip: usize,
    /// Open connections with one certificate at most, 0 for no limit; more are refused with
    /// HTTP 429 (`limits.max_connections_per_identity`).
    pub max_connections_per_identity: usize,
    /// Rooms at most: a connection that would open one more is refused (`limits.max_rooms`).
    pub max_rooms: usize,
    /// Largest `CONN:HELLO` frame accepted; a member's HELLO is kept and given to every later
    /// member (`limits.max_hello_bytes`).
    pub max_hello_bytes: usize,
    /// Frames one member may send per second, 0 for no limit (`limits.max_frames_per_second`).
    pub max_frames_per_second: u64,
    /// Bytes one member may send per second, 0 for no limit (`limits.max_bytes_per_second`).
    pub max_bytes_per_second: u64,
    /// New connections accepted per second, 0 for no limit; past it they are dropped before
    /// any TLS work (`limits.max_handshakes_per_second`).
    pub max_handshakes_per_second: u64,
    /// TLS handshakes worked on at once (`limits.max_handshakes_in_flight`); more connections
    /// wait their turn, in order, up to `handshake_timeout`.
    pub max_handshakes_in_flight: usize,
    /// Largest frame accepted (`limits.max_frame_bytes`).
    pub max_frame_bytes: usize,
    /// Frames queued to one member at most (`limits.queue_frames`).
    pub queue_frames: usize,
    /// Bytes queued to one member at most (`limits.queue_bytes`).
    pub queue_bytes: usize,
    /// How long a member's full queue may block a sender before the member is closed
    /// (`limits.slow_consumer_timeout`).
    pub slow_consumer_timeout: Duration,
    /// Ping period (`keepalive.ping_interval`).
    pub ping_interval: Duration,
    /// How long past a ping a connection may stay silent (`keepalive.pong_timeout`).
    pub pong_timeout: Duration,
    /// How long a shutdown waits for connections to close (`shutdown.grace`), counted from the
    /// end of the drain window.
    pub shutdown_grace: Duration,
    /// The span over which a shutdown closes members, so they do not all reconnect at once
    /// (`shutdown.drain_window`).
    pub drain_window: Duration,
    /// Where the admin endpoint listens (`admin.bind`); `None` when it is off.
    pub admin_bind: Option<SocketAddr>,
    /// Who may use the admin endpoint (`admin.token_file`, `[[admin.allow]]`).
    pub admin_access: AdminAccess,
    /// Log format (`log.format`).
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `micronets_proxy=debug` (`log.level`).
    pub log_level: String,
    /// Largest upgrade request head, in bytes and in header lines; past either, HTTP 431.
    pub max_request_head_bytes: usize,
    /// See `max_request_head_bytes`.
    pub max_request_headers: usize,
    /// Who may join which room (`[[acl.rules]]`, in order); empty: everyone, everywhere. The
    /// edge compiles them (`edge/acl.rs`), and refuses to start on a rule it cannot use.
    pub acl: Vec<AclRule>,
    /// The external authorization hook (`[auth_hook]`); `None` when `url` is empty.
    pub auth_hook: Option<HookConfig>,
    /// Cluster mode (`[cluster]`); `None` when `redis_url` is empty: a single node.
    pub cluster: Option<ClusterConfig>,
}

/// The cluster settings, validated (`[cluster]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://`, `rediss://` or `redis+unix://` URL; for a Redis Cluster, the URLs of one or
    /// more of its nodes, separated by commas.
    pub redis_url: String,
    /// Whether `redis_url` names a Redis Cluster (sharded pub/sub, RESP3).
    pub redis_cluster: bool,
    /// The CA bundle a `rediss://` server's certificate must chain to; `None` uses the system
    /// trust store.
    pub ca_file: Option<PathBuf>,
    /// This node's name; a random suffix per start is added, so a restarted node never
    /// meets the entries of its previous life.
    pub node_id: String,
    /// Prefix of every key and channel.
    pub key_prefix: String,
    /// How long a member's presence lasts without a refresh.
    pub presence_ttl: Duration,
    /// How long one Redis command, or a connection attempt, may take.
    pub command_timeout: Duration,
    /// The most bytes of notes waiting to be published to other nodes (payloads, and 64 per
    /// note); beyond it a frame is refused and its sender told.
    pub outbox_bytes: usize,
}

/// The most `cluster.presence_ttl` may be: other nodes remember a departure this long, so a
/// reading of presence older than it cannot bring a departed member back.
pub const MAX_PRESENCE_TTL: Duration = Duration::from_secs(60);

/// The most `rooms.replace_probe_timeout` may be; a node probes for another node at most this
/// long, whatever the other node asks.
pub const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The external authorization hook's settings, validated (`[auth_hook]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookConfig {
    /// Where to ask: `http://` or `https://`.
    pub url: http::Uri,
    /// How long a check may take, connection included.
    pub timeout: Duration,
    /// How long a 2xx or 4xx answer is reused.
    pub cache_ttl: Duration,
    /// How many answers the cache keeps; zero turns the cache off.
    pub cache_entries: usize,
    /// How many checks may be in flight at once; more wait (within `timeout`).
    pub max_in_flight: usize,
    /// CA bundle for an `https://` hook; `None` uses the system trust store.
    pub ca_file: Option<PathBuf>,
}

/// Who may use the admin endpoint beyond `/healthz` and `/readyz`. Off loopback it is never
/// open: validation refuses an `admin.bind` that is not a loopback address unless a token or
/// client-certificate rules are set, and the endpoint then speaks TLS.
#[derive(Clone, Debug, Default)]
pub struct AdminAccess {
    /// The file holding the bearer token requests must carry (`admin.token_file`).
    pub token_file: Option<PathBuf>,
    /// Client certificates let in (`[[admin.allow]]`), as allowing ACL rules for the room
    /// [`ADMIN_ROOM`].
    pub allow: Vec<AclRule>,
    /// Whether the endpoint speaks TLS (with the server certificate of `tls.server_cert`):
    /// off loopback, or when `allow` rules need client certificates.
    pub tls: bool,
}

/// The room name `[[admin.allow]]` rules are compiled for.
pub const ADMIN_ROOM: &str = "admin";

/// One ACL rule as written in the configuration file (`[[acl.rules]]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub(crate) room: String,
    pub(crate) allow: bool,
    pub(crate) cn: Option<String>,
    pub(crate) o: Option<String>,
    pub(crate) ou: Option<String>,
    pub(crate) san_dns: Option<String>,
    pub(crate) san_uri: Option<String>,
    pub(crate) fingerprint: Option<String>,
    pub(crate) peer_class: Option<String>,
}
