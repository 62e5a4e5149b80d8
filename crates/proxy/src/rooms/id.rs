//! What names rooms, connections, nodes and peers: [`RoomId`] (the path after the prefix),
//! [`ConnId`] (one connection of this process), [`NodeId`] (one proxy process of a cluster) and
//! [`PeerName`] (what a peer says of itself in its HELLO).
//!
//! Each is a type of its own, so a room id cannot be passed where a node's name is meant, and a
//! connection number cannot be mistaken for a count.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A room id: the raw path after the prefix (docs/protocol.md, "Rooms").
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RoomId(Arc<str>);

/// Why a path is not a room id; the text goes into the 404 response and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRoomId {
    /// Nothing after the prefix.
    #[error("empty room id")]
    Empty,
    /// More than 256 bytes.
    #[error("room id longer than 256 bytes")]
    TooLong,
    /// Two slashes in a row, or one at either end.
    #[error("room id has an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("room id has a '.' or '..' segment")]
    DotSegment,
    /// A byte outside the allowed set (percent-encoding included).
    #[error("room id may only hold letters, digits and . _ ~ : @ - /")]
    Character,
}

impl RoomId {
    /// Validates a room id: 1-256 bytes of `[A-Za-z0-9._~:@-]` in one or more `/`-separated
    /// segments, none empty, `.` or `..`. Percent-encoding is refused, not decoded, so one room
    /// has exactly one spelling.
    ///
    /// # Errors
    /// What is wrong, for the 404 response and the log.
    pub fn parse(raw: &str) -> Result<Self, InvalidRoomId> {
        if raw.is_empty() {
            return Err(InvalidRoomId::Empty);
        }
        if raw.len() > 256 {
            return Err(InvalidRoomId::TooLong);
        }
        for segment in raw.split('/') {
            if segment.is_empty() {
                return Err(InvalidRoomId::EmptySegment);
            }
            if segment == "." || segment == ".." {
                return Err(InvalidRoomId::DotSegment);
            }
            let allowed =
                |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'@' | b'-');
            if !segment.bytes().all(allowed) {
                return Err(InvalidRoomId::Character);
            }
        }
        Ok(RoomId(Arc::from(raw)))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for RoomId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A connection's number, unique for the process lifetime.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(u64);

impl ConnId {
    /// The next number.
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The number as another node sent it.
    pub(crate) fn from_wire(n: u64) -> Self {
        ConnId(n)
    }

    /// The number, for the wire and for presence.
    pub(crate) fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// A node's name in a cluster (`cluster.node_id` and a random suffix per start); a single node
/// is `local`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct NodeId(Arc<str>);

impl NodeId {
    pub(crate) fn new(name: &str) -> Self {
        NodeId(Arc::from(name))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What a peer said about itself in its HELLO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerName {
    pub(crate) class: Option<String>,
    pub(crate) id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_rules() {
        for ok in ["gw", "gw/mock-gw", "micronets-dhcp-0001", "a.b_c~d:e@f-g", "a/b/c", &"x".repeat(256)] {
            assert!(RoomId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/",
            "a//b",
            "a/",
            "/a",
            ".",
            "a/../b",
            "a/./b",
            "a%2Fb",
            "a b",
            "é",
            "a?b",
            &"x".repeat(257),
        ] {
            assert!(RoomId::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(RoomId::parse("gw/1").unwrap().to_string(), "gw/1");
    }
}
