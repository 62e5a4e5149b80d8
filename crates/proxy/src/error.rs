//! Errors of the proxy: start-up failures ([`Error`]) and the reasons a connection ends
//! ([`Close`]), each with the close code it sends.

use std::path::PathBuf;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A failure to start (or keep) serving: configuration, TLS material, the listener.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; names the key.
    #[error("config key {key}: {reason}")]
    Config {
        /// The TOML key, e.g. `limits.max_frame_bytes`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration file cannot be read or parsed.
    #[error("config file {}: {reason}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The read or TOML error.
        reason: String,
    },
    /// TLS material cannot be loaded; names the file.
    #[error("{}: {reason}", path.display())]
    Tls {
        /// The certificate, key or CA file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Creating the development PKI failed.
    #[error("dev PKI: {0}")]
    DevPki(#[from] micronets_certgen::Error),
    /// The admin endpoint cannot be read (`ws-proxy status`).
    #[error("admin endpoint {addr}: {reason}")]
    Admin {
        /// The endpoint's address.
        addr: std::net::SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Cluster mode: Redis cannot be used.
    #[error("cluster: redis at {url}: {reason}")]
    Cluster {
        /// The Redis URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Why a WebSocket connection is closed by the proxy, or how it ended.
///
/// Every variant maps to a close code in [`Close::close_code`]; adding one forces that
/// decision (docs/protocol.md, "Close codes").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The peer closed the connection (close frame or EOF).
    PeerClosed,
    /// The transport failed (reset, TLS error).
    Transport(String),
    /// The proxy is shutting down.
    Shutdown,
    /// No frame arrived within ping_interval + pong_timeout.
    KeepaliveTimeout,
    /// No `CONN:HELLO` within `hello_timeout`.
    NoHello,
    /// The first frame was not a valid `CONN:HELLO`.
    BadHello(String),
    /// The room was full when the HELLO arrived.
    RoomFull,
    /// A newer connection with the same certificate joined the room.
    Replaced,
    /// A frame over `max_frame_bytes`.
    TooBig(usize),
    /// More than `max_hello_bytes` in all before its `CONN:HELLO`.
    TooMuchBeforeHello(usize),
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// The peer broke the WebSocket protocol.
    Protocol(String),
    /// The peer did not read its frames for `slow_consumer_timeout`.
    SlowConsumer,
    /// Its certificate was revoked (a reload brought a CRL that lists it).
    Revoked,
    /// Its certificate's notAfter passed while it was connected.
    CertificateExpired,
    /// A reload made its certificate unacceptable: its CA is no longer trusted, or the ACL no
    /// longer lets it into its room.
    NoLongerAdmitted,
    /// It said HELLO with the certificate of a member that it was not cleared to replace.
    IdentityConflict,
    /// It kept sending over its rate limit.
    RateLimited,
    /// Its HELLO would have opened a room past `max_rooms`.
    TooManyRooms,
    /// Cluster mode: presence in Redis could not be reached to join the room.
    ClusterUnavailable(String),
}

impl Close {
    /// The WebSocket close code for this reason.
    #[must_use]
    pub fn close_code(&self) -> CloseCode {
        match self {
            Close::PeerClosed | Close::Transport(_) => CloseCode::Normal,
            Close::Shutdown | Close::KeepaliveTimeout => CloseCode::Away,
            Close::NoHello
            | Close::BadHello(_)
            | Close::RoomFull
            | Close::Replaced
            | Close::Revoked
            | Close::CertificateExpired
            | Close::NoLongerAdmitted
            | Close::IdentityConflict
            | Close::TooMuchBeforeHello(_)
            | Close::RateLimited => CloseCode::Policy,
            Close::TooBig(_) => CloseCode::Size,
            Close::InvalidUtf8 => CloseCode::Invalid,
            Close::Protocol(_) => CloseCode::Protocol,
            Close::SlowConsumer | Close::TooManyRooms | Close::ClusterUnavailable(_) => CloseCode::Again,
        }
    }

    /// The close frame's reason text (at most 123 bytes, the frame's limit).
    #[must_use]
    pub fn reason(&self) -> String {
        let text = match self {
            Close::PeerClosed => "closed by peer".to_owned(),
            Close::Transport(e) => format!("transport error: {e}"),
            Close::Shutdown => "server shutting down".to_owned(),
            Close::KeepaliveTimeout => "keepalive timeout".to_owned(),
            Close::NoHello => "no CONN:HELLO received in time".to_owned(),
            Close::BadHello(why) => format!("invalid CONN:HELLO: {why}"),
            Close::RoomFull => "room full".to_owned(),
            Close::Replaced => "replaced by a newer connection".to_owned(),
            Close::Revoked => "certificate revoked".to_owned(),
            Close::CertificateExpired => "certificate expired".to_owned(),
            Close::NoLongerAdmitted => "certificate no longer admitted".to_owned(),
            Close::IdentityConflict => "identity already connected".to_owned(),
            Close::RateLimited => "rate limit exceeded".to_owned(),
            Close::TooManyRooms => "too many rooms: try again later".to_owned(),
            Close::ClusterUnavailable(_) => "cluster unavailable: try again later".to_owned(),
            Close::TooBig(limit) => format!("frame exceeds {limit} bytes"),
            Close::TooMuchBeforeHello(limit) => format!("more than the {limit} allowed before CONN:HELLO"),
            Close::InvalidUtf8 => "text frame is not valid UTF-8".to_owned(),
            Close::Protocol(e) => format!("protocol error: {e}"),
            Close::SlowConsumer => "slow consumer: frames not read in time".to_owned(),
        };
        truncate_utf8(text, 123)
    }

    /// A short stable label for metrics (`ws_proxy_connections_total{outcome=...}`).
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Close::PeerClosed => "peer_closed",
            Close::Transport(_) => "transport_error",
            Close::Shutdown => "shutdown",
            Close::KeepaliveTimeout => "keepalive_timeout",
            Close::NoHello => "no_hello",
            Close::BadHello(_) => "bad_hello",
            Close::RoomFull => "room_full",
            Close::Replaced => "replaced",
            Close::Revoked => "revoked",
            Close::CertificateExpired => "certificate_expired",
            Close::NoLongerAdmitted => "no_longer_admitted",
            Close::IdentityConflict => "identity_conflict",
            Close::RateLimited => "send_rate_limited",
            Close::TooManyRooms => "too_many_rooms",
            Close::ClusterUnavailable(_) => "cluster_unavailable",
            Close::TooBig(_) => "too_big",
            Close::TooMuchBeforeHello(_) => "too_much_before_hello",
            Close::InvalidUtf8 => "invalid_utf8",
            Close::Protocol(_) => "protocol_error",
            Close::SlowConsumer => "slow_consumer",
        }
    }

    /// Whether the peer caused this, as opposed to the proxy or the network.
    #[must_use]
    pub fn is_peer_fault(&self) -> bool {
        matches!(
            self,
            Close::NoHello
                | Close::BadHello(_)
                | Close::TooBig(_)
                | Close::TooMuchBeforeHello(_)
                | Close::InvalidUtf8
                | Close::Protocol(_)
                | Close::SlowConsumer
                | Close::KeepaliveTimeout
                | Close::RateLimited
        )
    }
}

fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_the_design() {
        assert_eq!(u16::from(Close::Shutdown.close_code()), 1001);
        assert_eq!(u16::from(Close::KeepaliveTimeout.close_code()), 1001);
        assert_eq!(u16::from(Close::InvalidUtf8.close_code()), 1007);
        assert_eq!(u16::from(Close::NoHello.close_code()), 1008);
        assert_eq!(u16::from(Close::RoomFull.close_code()), 1008);
        assert_eq!(u16::from(Close::Replaced.close_code()), 1008);
        assert_eq!(u16::from(Close::TooBig(1).close_code()), 1009);
        assert_eq!(u16::from(Close::SlowConsumer.close_code()), 1013);
    }

    #[test]
    fn every_close_label_is_a_known_outcome() {
        use crate::metrics::labels::{LabelSet, Outcomes};
        let every = [
            Close::PeerClosed,
            Close::Transport(String::new()),
            Close::Shutdown,
            Close::KeepaliveTimeout,
            Close::NoHello,
            Close::BadHello(String::new()),
            Close::RoomFull,
            Close::Replaced,
            Close::TooBig(0),
            Close::TooMuchBeforeHello(0),
            Close::InvalidUtf8,
            Close::Protocol(String::new()),
            Close::SlowConsumer,
            Close::Revoked,
            Close::CertificateExpired,
            Close::NoLongerAdmitted,
            Close::IdentityConflict,
            Close::RateLimited,
            Close::TooManyRooms,
            Close::ClusterUnavailable(String::new()),
        ];
        for close in &every {
            // Exhaustive: a new reason fails to compile here until it is in the list above.
            match close {
                Close::PeerClosed
                | Close::Transport(_)
                | Close::Shutdown
                | Close::KeepaliveTimeout
                | Close::NoHello
                | Close::BadHello(_)
                | Close::RoomFull
                | Close::Replaced
                | Close::TooBig(_)
                | Close::TooMuchBeforeHello(_)
                | Close::InvalidUtf8
                | Close::Protocol(_)
                | Close::SlowConsumer
                | Close::Revoked
                | Close::CertificateExpired
                | Close::NoLongerAdmitted
                | Close::IdentityConflict
                | Close::RateLimited
                | Close::TooManyRooms
                | Close::ClusterUnavailable(_) => {}
            }
            assert!(
                Outcomes::KNOWN.contains(&close.label()),
                "{} is not shown from the first scrape",
                close.label()
            );
        }
    }

    #[test]
    fn reasons_fit_in_a_close_frame() {
        let long = Close::BadHello("é".repeat(200));
        assert!(long.reason().len() <= 123);
        assert_eq!(Close::Replaced.reason(), "replaced by a newer connection");
    }
}
