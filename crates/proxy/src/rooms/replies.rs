//! The messages the proxy itself sends to members (docs/protocol.md): `CONN:ERROR`, the
//! `REST:RESPONSE` 503 to a request nobody can answer, and `CONN:PEER-LEFT`. Each carries an
//! integer `messageId` of the proxy's own sequence and a boolean `requiresResponse`, which the
//! original clients require.

use std::sync::atomic::{AtomicI64, Ordering};

use micronets_message::{ConnError, Content, Envelope, Kind, MessageId, PeerLeft, RestResponse};
use tokio_tungstenite::tungstenite::Message;

use super::id::PeerName;

/// The proxy's own messages, numbered.
#[derive(Debug)]
pub(crate) struct Replies {
    /// `messageId` of the next message.
    next_id: AtomicI64,
}

impl Default for Replies {
    fn default() -> Self {
        Replies { next_id: AtomicI64::new(1) }
    }
}

impl Replies {
    fn message(&self, kind: Kind, in_response_to: Option<MessageId<'static>>) -> Message {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope::new(kind).with_id(id).in_response_to(in_response_to);
        Message::text(envelope.to_json())
    }

    /// `CONN:ERROR` with `status` and `reason`, about the message `in_response_to`.
    pub(crate) fn error(
        &self,
        status: u16,
        reason: &str,
        in_response_to: Option<MessageId<'static>>,
    ) -> Message {
        let error = ConnError { status_code: status, reason_phrase: Some(reason.to_owned()) };
        self.message(Kind::Error(error), in_response_to)
    }

    /// `REST:RESPONSE` with `status` and `reason`, answering the request `in_response_to`.
    pub(crate) fn response(
        &self,
        status: u16,
        reason: &str,
        in_response_to: Option<MessageId<'static>>,
    ) -> Message {
        let response = RestResponse {
            status_code: status,
            reason_phrase: Some(reason.to_owned()),
            headers: Vec::new(),
            content: Content::none(),
        };
        self.message(Kind::RestResponse(response), in_response_to)
    }

    /// `CONN:PEER-LEFT` telling members that `name` left, and why.
    pub(crate) fn peer_left(&self, name: &PeerName, reason: &str) -> Message {
        let left = PeerLeft {
            peer_class: name.class.clone(),
            peer_id: name.id.clone(),
            reason: Some(reason.to_owned()),
        };
        self.message(Kind::PeerLeft(left), None)
    }
}
