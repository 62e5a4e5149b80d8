//! The cheap, borrowed view of an envelope that the proxy checks on every frame (read by
//! `parse.rs`).

use std::borrow::Cow;

use crate::id::MessageId;

/// The routing fields of an envelope, borrowed from the frame.
///
/// Parsing validates that the frame is JSON and that the fields below have their protocol
/// types, but it never builds the body: the rest of the `message` object is skipped without
/// allocating. Strings borrow from the input unless they contain escapes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// `messageType`, required.
    pub message_type: Cow<'a, str>,
    /// `messageId`, when present.
    pub message_id: Option<MessageId<'a>>,
    /// `requiresResponse`, `false` when absent.
    pub requires_response: bool,
    /// `inResponseTo`, when present.
    pub in_response_to: Option<MessageId<'a>>,
}

impl Header<'_> {
    /// Whether this is a `CONN:HELLO`.
    #[must_use]
    pub fn is_hello(&self) -> bool {
        self.message_type == crate::HELLO
    }
}
