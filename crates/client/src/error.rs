//! The error type of the client crate.

use std::path::PathBuf;

/// What can go wrong connecting to the relay or talking through it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A URL, header or option that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// A certificate, key or CA file cannot be used; names the file.
    #[error("{}: {reason}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No trust anchors: `--ca-cert` was not given and the system store is empty.
    #[error("no CA certificates: give --ca-cert, or install the system's CA bundle")]
    NoTrustAnchors,
    /// The TCP connection, the HTTP CONNECT tunnel or the TLS handshake failed.
    #[error("cannot connect to {target}: {reason}")]
    Connect {
        /// host:port (or the CONNECT proxy).
        target: String,
        /// Why.
        reason: String,
    },
    /// The server answered the WebSocket upgrade with something other than 101.
    #[error("WebSocket upgrade refused: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    BadHandshake {
        /// The HTTP status.
        status: u16,
        /// The start of the response body (the proxy says why in it).
        body: String,
        /// How long the relay asks to wait before trying again (`Retry-After`, in seconds).
        retry_after: Option<std::time::Duration>,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The connection to the relay is closed.
    #[error("connection to the relay closed")]
    Closed,
    /// No answer in time.
    #[error("no response within {0:?}")]
    Timeout(std::time::Duration),
    /// The relay or the peer answered a request with `CONN:ERROR`.
    #[error("CONN:ERROR {status}: {reason}")]
    Refused {
        /// The error's statusCode.
        status: u16,
        /// Its reasonPhrase.
        reason: String,
    },
    /// An envelope larger, once encoded, than a frame may be: sent, it would make the relay
    /// close the connection (1009), and every request in flight on it would be lost.
    #[error("the message is {0} bytes once encoded, more than a frame may carry ({MAX_FRAME_BYTES})")]
    TooLarge(usize),
    /// An envelope could not be built or read.
    #[error(transparent)]
    Message(#[from] micronets_message::Error),
}

/// The largest frame the client sends or takes (the relay's default `limits.max_frame_bytes`);
/// bodies are at most half of it.
pub(crate) const MAX_FRAME_BYTES: usize = 1 << 20;

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
