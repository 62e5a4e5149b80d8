//! The TOML file's shape ([`FileConfig`]): every section and key as written, each optional with
//! its default, unknown keys refused. `validate.rs` turns it into a [`super::Config`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::settings::{AclRule, LogFormat, SameIdentity};
use crate::error::{Error, Result};

/// TOML text that is not a configuration: its syntax, an unknown key, a value of the wrong type.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.to_string().trim_end())]
pub struct ParseError(toml::de::Error);

/// The TOML file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub(super) listen: ListenSection,
    pub(super) tls: TlsSection,
    pub(super) rooms: RoomsSection,
    pub(super) limits: LimitsSection,
    pub(super) keepalive: KeepaliveSection,
    pub(super) shutdown: ShutdownSection,
    pub(super) admin: AdminSection,
    pub(super) log: LogSection,
    pub(super) acl: AclSection,
    pub(super) auth_hook: AuthHookSection,
    pub(super) cluster: ClusterSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ClusterSection {
    pub(super) redis_url: String,
    pub(super) redis_cluster: bool,
    pub(super) ca_file: PathBuf,
    pub(super) node_id: String,
    pub(super) key_prefix: String,
    pub(super) presence_ttl: String,
    pub(super) command_timeout: String,
    pub(super) outbox_bytes: usize,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis_url: String::new(),
            redis_cluster: false,
            ca_file: PathBuf::new(),
            node_id: String::new(),
            key_prefix: "ws-proxy".into(),
            presence_ttl: "6s".into(),
            command_timeout: "1s".into(),
            outbox_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AuthHookSection {
    pub(super) url: String,
    pub(super) timeout: String,
    pub(super) cache_ttl: String,
    pub(super) cache_entries: usize,
    pub(super) max_in_flight: usize,
    pub(super) ca_file: PathBuf,
}

impl Default for AuthHookSection {
    fn default() -> Self {
        AuthHookSection {
            url: String::new(),
            timeout: "2s".into(),
            cache_ttl: "10s".into(),
            cache_entries: 4096,
            max_in_flight: 64,
            ca_file: PathBuf::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AclSection {
    pub(super) rules: Vec<AclRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ListenSection {
    pub(super) bind: String,
    pub(super) path_prefix: String,
    pub(super) backlog: u32,
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection {
            bind: "0.0.0.0:5050".into(),
            path_prefix: "/micronets/v1/ws-proxy/".into(),
            backlog: 4096,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct TlsSection {
    pub(super) server_cert: PathBuf,
    pub(super) server_key: PathBuf,
    pub(super) client_ca: PathBuf,
    pub(super) crl_files: Vec<PathBuf>,
    pub(super) handshake_timeout: String,
    pub(super) expiry_warning: String,
    pub(super) resumption: bool,
    pub(super) ticket_key_file: PathBuf,
    pub(super) ticket_rotation: String,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            server_cert: "/etc/micronets/certs/micronets-ws-proxy.pkeycert.pem".into(),
            server_key: PathBuf::new(),
            client_ca: "/etc/micronets/certs/micronets-ws-root.cert.pem".into(),
            crl_files: Vec::new(),
            handshake_timeout: "10s".into(),
            expiry_warning: "30d".into(),
            resumption: true,
            ticket_key_file: PathBuf::new(),
            ticket_rotation: "6h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RoomsSection {
    pub(super) max_peers: usize,
    pub(super) hello_timeout: String,
    pub(super) hold_max_messages: usize,
    pub(super) hold_max_bytes: usize,
    pub(super) hold_max_age: String,
    pub(super) same_identity: SameIdentity,
    pub(super) replace_probe_timeout: String,
}

impl Default for RoomsSection {
    fn default() -> Self {
        RoomsSection {
            max_peers: 2,
            hello_timeout: "10s".into(),
            hold_max_messages: 256,
            hold_max_bytes: 1 << 20,
            hold_max_age: "60s".into(),
            same_identity: SameIdentity::Probe,
            replace_probe_timeout: "3s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LimitsSection {
    pub(super) max_connections: usize,
    pub(super) max_connections_per_ip: usize,
    pub(super) max_connections_per_identity: usize,
    pub(super) max_rooms: usize,
    pub(super) max_hello_bytes: usize,
    pub(super) max_frames_per_second: u64,
    pub(super) max_bytes_per_second: u64,
    pub(super) max_handshakes_per_second: u64,
    pub(super) max_handshakes_in_flight: usize,
    pub(super) max_request_head_bytes: usize,
    pub(super) max_request_headers: usize,
    pub(super) max_frame_bytes: usize,
    pub(super) queue_frames: usize,
    pub(super) queue_bytes: usize,
    pub(super) slow_consumer_timeout: String,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_connections_per_identity: 0,
            max_rooms: 10_000,
            max_hello_bytes: 4096,
            max_frames_per_second: 0,
            max_bytes_per_second: 0,
            max_handshakes_per_second: 0,
            max_handshakes_in_flight: 256,
            max_request_head_bytes: 16 * 1024,
            max_request_headers: 64,
            max_frame_bytes: 1 << 20,
            queue_frames: 1024,
            queue_bytes: 8 << 20,
            slow_consumer_timeout: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct KeepaliveSection {
    pub(super) ping_interval: String,
    pub(super) pong_timeout: String,
}

impl Default for KeepaliveSection {
    fn default() -> Self {
        KeepaliveSection { ping_interval: "20s".into(), pong_timeout: "20s".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct ShutdownSection {
    pub(super) grace: String,
    pub(super) drain_window: String,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        ShutdownSection { grace: "10s".into(), drain_window: "5s".into() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct AdminSection {
    pub(super) bind: String,
    pub(super) token_file: String,
    pub(super) allow: Vec<AdminAllow>,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection { bind: "127.0.0.1:9090".into(), token_file: String::new(), allow: Vec::new() }
    }
}

/// A client certificate allowed into the admin endpoint (`[[admin.allow]]`): the matchers of
/// an ACL rule, every one given having to match.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminAllow {
    pub(super) cn: Option<String>,
    pub(super) o: Option<String>,
    pub(super) ou: Option<String>,
    pub(super) san_dns: Option<String>,
    pub(super) san_uri: Option<String>,
    pub(super) fingerprint: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct LogSection {
    pub(super) format: LogFormat,
    pub(super) level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { format: LogFormat::Text, level: "info".into() }
    }
}

impl FileConfig {
    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`Error::ConfigFile`] naming the file, with the TOML error (which names the key).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::ConfigFile { path: path.to_owned(), reason: e.to_string() })?;
        Self::parse(&text).map_err(|e| Error::ConfigFile { path: path.to_owned(), reason: e.to_string() })
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// [`ParseError`], which names the offending key.
    pub fn parse(text: &str) -> std::result::Result<Self, ParseError> {
        toml::from_str(text).map_err(ParseError)
    }

    /// The configuration `ws-proxy --dev` serves: localhost only, the dev PKI in `dir`.
    #[must_use]
    pub fn dev(pki: &micronets_certgen::dev::DevPki) -> Self {
        let mut file = FileConfig::default();
        file.listen.bind = "127.0.0.1:5050".into();
        file.tls.server_cert = pki.pkeycert(&micronets_certgen::dev::PROXY);
        file.tls.client_ca = pki.root_cert();
        file
    }
}
