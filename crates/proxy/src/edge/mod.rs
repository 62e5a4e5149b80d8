//! The edge: a connection's way in, up to the moment it is an upgraded WebSocket in a room.
//!
//! - `listener.rs`: the accept loop and the limits counted at accept;
//! - `connection.rs`: TCP -> TLS -> identity -> upgrade -> admission, within
//!   `handshake_timeout`, then the member's life (`rooms/member.rs`);
//! - `tls.rs`: the mutual-TLS server configuration and why a handshake failed; `tickets.rs`:
//!   the session tickets that let a device resume its TLS session; `tls_stream.rs`: TLS over
//!   the socket, holding no buffer an idle connection does not use (`outgoing.rs`: its
//!   encrypted bytes waiting for the socket);
//! - `upgrade.rs`: reading the HTTP upgrade request and answering it;
//! - `admission.rs`: whether an upgrade may go ahead, using `acl.rs` (the rules),
//!   `auth_hook.rs` (the operator's HTTP service), `slots.rs` (per-key connection counts) and
//!   `same_identity.rs` (a newcomer with a member's certificate, its conflicts logged once per
//!   window by `conflict_log.rs`);
//! - `expiry.rs`: certificates about to expire, told once each;
//! - `gate.rs`: what every connection shares at the edge, and what a reload swaps.
//!
//! The map of the whole crate is in docs/architecture.md.

pub mod acl;
pub(crate) mod admission;
pub(crate) mod auth_hook;
pub(crate) mod conflict_log;
pub(crate) mod connection;
pub(crate) mod expiry;
pub(crate) mod gate;
pub(crate) mod listener;
pub(crate) mod outgoing;
pub(crate) mod same_identity;
pub(crate) mod slots;
pub(crate) mod tickets;
pub mod tls;
pub(crate) mod tls_stream;
pub(crate) mod upgrade;
