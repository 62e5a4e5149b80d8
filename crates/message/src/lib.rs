//! The Micronets WebSocket envelope: types, codec and HTTP mapping, with no I/O.
//!
//! Every peer of the relay speaks JSON envelopes of the form `{"message": {...}}` (see
//! `docs/protocol.md`). This crate is the one place that knows their shape, so the proxy, the
//! client and the tests agree on it. It is deliberately free of sockets and runtimes (like
//! quinn-proto): everything here is deterministic and unit-testable.
//!
//! Two views of a frame, for two kinds of caller:
//! - [`Header::parse`] reads only `messageType`, `messageId`, `requiresResponse` and
//!   `inResponseTo`, borrowing from the frame and skipping the body. It is what the proxy runs
//!   on every relayed frame, which it then forwards as the original bytes.
//! - [`Envelope`] is the full typed model ([`Kind`]: HELLO, REST request and response, events,
//!   the proxy's own `CONN:ERROR` and `CONN:PEER-LEFT`, and [`Kind::Other`] for anything
//!   unknown), for peers that build and consume messages.
//!
//! [`RestRequest`] and [`RestResponse`] convert to and from the `http` crate's types, applying
//! the body rules of [`Content`] (JSON value, text, or base64 for binary).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod content;
mod envelope;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
mod header;
mod http_map;
mod id;
mod parse;
mod rest;
mod scan;

pub use content::{Body, Content, OCTET_STREAM, is_json_media_type};
pub use envelope::{ConnError, Envelope, Event, Hello, Kind, PeerLeft};
pub use error::{Error, Result};
pub use header::Header;
pub use id::MessageId;
pub use rest::{NameValue, RestRequest, RestResponse};

/// `messageType` of the HELLO every peer sends first.
pub const HELLO: &str = "CONN:HELLO";
/// `messageType` of an error reported by the proxy (or a peer) about a message.
pub const CONN_ERROR: &str = "CONN:ERROR";
/// `messageType` the proxy sends to the members of a room when a member leaves.
pub const PEER_LEFT: &str = "CONN:PEER-LEFT";
/// `messageType` of a tunnelled HTTP request.
pub const REST_REQUEST: &str = "REST:REQUEST";
/// `messageType` of the answer to a [`REST_REQUEST`].
pub const REST_RESPONSE: &str = "REST:RESPONSE";
/// Prefix of event message types: `EVENT:<name>`.
pub const EVENT_PREFIX: &str = "EVENT:";
