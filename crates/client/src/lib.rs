//! A peer of the Micronets WebSocket relay, as a library and behind the `ws-client` binary.
//!
//! The point of the system is a REST tunnel: `curl` -> [`bridge`] -> relay -> [`forward`] ->
//! a device's local HTTP service, and back. The pieces:
//! - [`connect`]: TCP (directly or through an HTTP CONNECT proxy), mutual TLS ([`tls`]: a CA
//!   bundle or the system store, optional host-name skipping), the WebSocket upgrade with extra
//!   headers; a refused upgrade reports the relay's status and reason.
//! - [`session::Session`]: sends the HELLO, matches `REST:RESPONSE`s to requests by
//!   `inResponseTo`, serves incoming `REST:REQUEST`s with a [`session::Handler`] (501 without
//!   one), and hands every other frame to the caller.
//! - [`bridge`] serves HTTP through a session; [`forward::Forwarder`] is the handler that
//!   performs requests against a local service; [`console`] reads and prints lines.
//! - [`run`] puts them together as `ws-client` runs them, from the options its command line
//!   ([`cli`]) gives.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod bridge;
pub mod cli;
pub mod connect;
pub mod console;
mod error;
pub mod forward;
pub mod run;
pub mod session;
pub mod tls;

pub use error::{Error, Result};
