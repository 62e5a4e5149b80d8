//! The rooms of this node, and a member's way through them once the edge has let it in:
//!
//! - `member.rs`: the pending phase until `CONN:HELLO`, joining, announcing, leaving;
//! - `forward.rs`: the read loop, routing each frame, the proxy's replies;
//! - `fanout.rs`: queueing a frame to its receivers, and the slow-consumer policy;
//! - `mailbox.rs` and `writer.rs`: each member's bounded queue and the task that writes it;
//! - `websocket.rs`: RFC 6455 framing on the TLS stream;
//! - `registry.rs`, `room.rs`, `hold.rs`: rooms, their members, what is held for a member that
//!   is alone;
//! - `remote.rs` and `nodes.rs`: the members on other nodes, and what this node asks and tells
//!   the others; the cluster implements both;
//! - `hub.rs`: what every member shares; `replies.rs`: the proxy's own messages; `id.rs`: the
//!   ids of rooms, connections, nodes and peers.
//!
//! Nothing here knows about TLS, the ACL or Redis. The map of the whole crate is in
//! docs/architecture.md.

pub(crate) mod elsewhere;
pub(crate) mod fanout;
pub(crate) mod forward;
pub(crate) mod hold;
pub(crate) mod hub;
pub(crate) mod id;
pub(crate) mod mailbox;
pub(crate) mod member;
pub(crate) mod nodes;
pub(crate) mod registry;
pub(crate) mod remote;
pub(crate) mod replies;
pub(crate) mod room;
pub(crate) mod websocket;
pub(crate) mod writer;

#[cfg(test)]
mod tests;
