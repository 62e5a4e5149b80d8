//! Rooms across nodes (docs/cluster.md). The cluster implements what the rooms ask of the
//! other nodes (`rooms/nodes.rs`) and how a room keeps its members elsewhere
//! (`rooms/remote.rs`):
//!
//! - `local.rs`, the default, is a single node: there is no one elsewhere, and every room is
//!   whole in this process.
//! - `redis.rs` keeps presence in Redis (`presence.rs`: TTL-refreshed entries, joins checked
//!   and inserted by one Lua script) and gives each node one inbox channel: a member's frame is
//!   queued (`outbox.rs`) and published once to each node that hosts another member of its
//!   room (`wire.rs` encodes the notes and packs them, numbered; `link.rs` holds the
//!   connections; `loss.rs` tells members of what was lost on the way, `recent.rs` bounds
//!   what is kept per node; `heartbeat.rs` watches the inbox; `direct.rs` and `resp.rs` are the node's own connections for publishing and
//!   its inbox on a single Redis server).
//! - `inbox.rs` turns the notes other nodes send into deliveries to local members, and
//!   `view.rs` reconciles each room's view of its members elsewhere.
//!
//! Each room on this node keeps the members on other nodes next to its own, so routing a
//! frame, the hold buffer and the 409 check see the whole room without asking Redis per frame.

pub(crate) mod backplane;
mod direct;
mod error;
mod heartbeat;
mod inbox;
mod link;
pub(crate) mod local;
mod loss;
mod outbox;
mod presence;
mod recent;
pub(crate) mod redis;
pub(crate) mod resp;
mod view;
pub(crate) mod wire;
