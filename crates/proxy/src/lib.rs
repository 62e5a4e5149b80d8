//! The Micronets WebSocket relay proxy.
//!
//! Peers connect with mutual TLS to `wss://host:5050/micronets/v1/ws-proxy/<room-id>`, send a
//! `CONN:HELLO`, and from then on every frame they send is relayed, byte for byte, to the other
//! members of their room (docs/protocol.md). This crate is the whole daemon but the binary's
//! argument parsing: [`ops::daemon::run`] connects the cluster, binds the listeners, installs
//! the signal handlers and serves until a signal; tests hand a listener of their own and any
//! shutdown future to [`Proxy::serve`] (the mini-redis shape).
//!
//! The folders follow a connection's way (docs/architecture.md draws it):
//!
//! - `edge/`: accept -> TLS -> identity -> upgrade -> admission (ACL, authorization hook,
//!   limits);
//! - `rooms/`: the member's life (HELLO, join, leave), forwarding its frames, fan-out to the
//!   other members' mailboxes, and the writers that put them on the wire;
//! - `cluster/`: the other nodes, through Redis (or nobody, on a single node);
//! - [`ops`]: the assembled [`Proxy`], the daemon's start, admin endpoint, reload, shutdown,
//!   systemd and logs;
//! - [`cli`]: the operator's commands that read a configuration or a running proxy.
//!
//! Every folder may use the files at the top ([`config`], [`error`], [`identity`],
//! [`metrics`], `rate.rs`); the edge uses the rooms, the cluster serves the rooms, and the
//! operations use them all. No import runs the other way.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cli;
mod cluster;
pub mod config;
mod edge;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
pub mod identity;
pub mod metrics;
pub mod ops;
mod rate;
mod rooms;

pub use config::{Config, FileConfig, LogFormat, Overrides};
pub use edge::{acl, tls};
pub use error::{Close, Error, Result};
pub use metrics::Metrics;
pub use ops::shutdown::DaemonSignals;
pub use ops::{Proxy, daemon, logging, shutdown, status, systemd};
pub use rooms::id::{InvalidRoomId, RoomId};
