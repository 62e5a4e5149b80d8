//! The typed envelope: `{"message": {...}}` with a [`Kind`] for each message type.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::content::{Content, take_string};
use crate::id::MessageId;
use crate::rest::{RestRequest, RestResponse, take_status};
use crate::{Error, Result};

/// A whole message, as peers build and read it.
///
/// Fields this crate does not know for the message's type are kept in [`Envelope::extra`]
/// and written back after the known ones, so nothing a peer sent is lost in a round trip.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// `messageId`; proxy-originated messages always carry an integer.
    pub message_id: Option<MessageId<'static>>,
    /// `requiresResponse`; always written, `false` when absent on input.
    pub requires_response: bool,
    /// `inResponseTo`: the `messageId` this message answers.
    pub in_response_to: Option<MessageId<'static>>,
    /// The type and its fields.
    pub kind: Kind,
    /// Any other fields of the `message` object, in the order they came.
    pub extra: Map<String, Value>,
}

/// The message types of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// `CONN:HELLO`: the first message of every peer.
    Hello(Hello),
    /// `CONN:ERROR`: a message could not be handled.
    Error(ConnError),
    /// `CONN:PEER-LEFT`: the proxy tells the room that a member left.
    PeerLeft(PeerLeft),
    /// `REST:REQUEST`.
    RestRequest(RestRequest),
    /// `REST:RESPONSE`.
    RestResponse(RestResponse),
    /// `EVENT:<name>`.
    Event(Event),
    /// Any other `messageType`, kept as it came; its fields are in [`Envelope::extra`].
    Other(String),
}

/// `CONN:HELLO` fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// `peerClass`, e.g. `micronets-gateway-service`.
    pub peer_class: Option<String>,
    /// `peerId`, unique within the class.
    pub peer_id: Option<String>,
}

/// `CONN:ERROR` fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnError {
    /// An HTTP-style status: 400 bad envelope, 503 no peer, ...
    pub status_code: u16,
    /// What went wrong, for a human.
    pub reason_phrase: Option<String>,
}

/// `CONN:PEER-LEFT` fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerLeft {
    /// The `peerClass` of the member that left.
    pub peer_class: Option<String>,
    /// The `peerId` of the member that left.
    pub peer_id: Option<String>,
    /// Why it left: `closed`, `replaced`, ...
    pub reason: Option<String>,
}

/// `EVENT:<name>` fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The name after `EVENT:`, e.g. `GatewayService:leaseAcquired`.
    pub name: String,
    /// `dataFormat` and `messageBody`.
    pub content: Content,
}

impl Envelope {
    /// An envelope of `kind` with no id, not requiring a response.
    #[must_use]
    pub fn new(kind: Kind) -> Self {
        Envelope { message_id: None, requires_response: false, in_response_to: None, kind, extra: Map::new() }
    }

    /// Sets `messageId`.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<MessageId<'static>>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets `inResponseTo`.
    #[must_use]
    pub fn in_response_to(mut self, id: Option<MessageId<'static>>) -> Self {
        self.in_response_to = id;
        self
    }

    /// Sets `requiresResponse`.
    #[must_use]
    pub fn requiring_response(mut self, requires: bool) -> Self {
        self.requires_response = requires;
        self
    }

    /// The `messageType` string.
    #[must_use]
    pub fn message_type(&self) -> String {
        match &self.kind {
            Kind::Hello(_) => crate::HELLO.to_owned(),
            Kind::Error(_) => crate::CONN_ERROR.to_owned(),
            Kind::PeerLeft(_) => crate::PEER_LEFT.to_owned(),
            Kind::RestRequest(_) => crate::REST_REQUEST.to_owned(),
            Kind::RestResponse(_) => crate::REST_RESPONSE.to_owned(),
            Kind::Event(event) => format!("{}{}", crate::EVENT_PREFIX, event.name),
            Kind::Other(message_type) => message_type.clone(),
        }
    }

    /// Parses a text frame.
    ///
    /// # Errors
    /// [`Error::Json`] for text that is not JSON, [`Error::Envelope`] or [`Error::Base64`]
    /// for JSON that is not a valid envelope (a name repeated in the envelope or its `message`
    /// object included, as [`crate::Header::parse`] refuses it too); the message names the
    /// field.
    pub fn parse(text: &str) -> Result<Self> {
        Self::from_slice(text.as_bytes())
    }

    /// Parses a frame given as bytes (a binary frame holding JSON, say).
    ///
    /// # Errors
    /// As [`Envelope::parse`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let top = Names { envelope: true }.deserialize(&mut json).map_err(Error::from_serde)?;
        json.end().map_err(Error::from_serde)?;
        Self::from_value(Value::Object(top))
    }

    /// Reads an envelope from a JSON value.
    ///
    /// # Errors
    /// As [`Envelope::parse`], without the JSON syntax case.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(mut top) = value else {
            return Err(Error::Envelope("expected an object with a \"message\" object".to_owned()));
        };
        let Some(Value::Object(mut fields)) = top.shift_remove("message") else {
            return Err(Error::Envelope("expected an object with a \"message\" object".to_owned()));
        };
        let message_id = take_id(&mut fields, "messageId")?;
        let in_response_to = take_id(&mut fields, "inResponseTo")?;
        let requires_response = match fields.shift_remove("requiresResponse") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(_) => return Err(Error::field("requiresResponse", "must be a boolean")),
        };
        let message_type = match fields.shift_remove("messageType") {
            Some(Value::String(t)) => t,
            Some(_) => return Err(Error::field("messageType", "must be a string")),
            None => return Err(Error::field("messageType", "is required")),
        };
        let kind = Kind::take_from(message_type, &mut fields)?;
        Ok(Envelope { message_id, requires_response, in_response_to, kind, extra: fields })
    }

    /// The envelope as a JSON value: known fields first, in protocol order, then the extras.
    #[must_use]
    pub fn to_value(&self) -> Value {
        let mut fields = Map::new();
        if let Some(id) = &self.message_id {
            fields.insert("messageId".to_owned(), id.to_value());
        }
        fields.insert("messageType".to_owned(), Value::from(self.message_type()));
        fields.insert("requiresResponse".to_owned(), Value::from(self.requires_response));
        if let Some(id) = &self.in_response_to {
            fields.insert("inResponseTo".to_owned(), id.to_value());
        }
        self.kind.put_into(&mut fields);
        for (key, value) in &self.extra {
            fields.entry(key.clone()).or_insert_with(|| value.clone());
        }
        let mut top = Map::new();
        top.insert("message".to_owned(), Value::Object(fields));
        Value::Object(top)
    }

    /// The envelope as one line of JSON, ready to send as a text frame.
    #[must_use]
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }
}

/// Reads the envelope object, or (`envelope: false`) its `message` object, refusing a name
/// that repeats in either.
///
/// serde_json's `Value` keeps the last of repeated names, other parsers keep the first, and
/// [`crate::Header`] refuses them: an envelope that repeated `messageType` or `peerClass` would
/// say one thing to the proxy and another to a peer. What these objects hold (a `messageBody`)
/// is data, read by serde_json's rules.
#[derive(Clone, Copy)]
struct Names {
    envelope: bool,
}

impl<'de> DeserializeSeed<'de> for Names {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Names {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.envelope {
            "an envelope: an object with a \"message\" object"
        } else {
            "a \"message\" object"
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut fields = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if fields.contains_key(&name) {
                return Err(A::Error::custom(format_args!("duplicate field `{name}`")));
            }
            let value = if self.envelope && name == "message" {
                Value::Object(map.next_value_seed(Names { envelope: false })?)
            } else {
                map.next_value()?
            };
            fields.insert(name, value);
        }
        Ok(fields)
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl Kind {
    fn take_from(message_type: String, fields: &mut Map<String, Value>) -> Result<Self> {
        Ok(match message_type.as_str() {
            crate::HELLO => Kind::Hello(Hello {
                peer_class: take_string(fields, "peerClass")?,
                peer_id: take_string(fields, "peerId")?,
            }),
            crate::CONN_ERROR => Kind::Error(ConnError {
                status_code: take_status(fields, "statusCode")?,
                reason_phrase: take_string(fields, "reasonPhrase")?,
            }),
            crate::PEER_LEFT => Kind::PeerLeft(PeerLeft {
                peer_class: take_string(fields, "peerClass")?,
                peer_id: take_string(fields, "peerId")?,
                reason: take_string(fields, "reason")?,
            }),
            crate::REST_REQUEST => Kind::RestRequest(RestRequest::take_from(fields)?),
            crate::REST_RESPONSE => Kind::RestResponse(RestResponse::take_from(fields)?),
            other => match other.strip_prefix(crate::EVENT_PREFIX) {
                Some(name) => {
                    Kind::Event(Event { name: name.to_owned(), content: Content::take_from(fields)? })
                }
                None => Kind::Other(message_type),
            },
        })
    }

    fn put_into(&self, fields: &mut Map<String, Value>) {
        match self {
            Kind::Hello(hello) => {
                put_opt(fields, "peerClass", hello.peer_class.as_deref());
                put_opt(fields, "peerId", hello.peer_id.as_deref());
            }
            Kind::Error(error) => {
                fields.insert("statusCode".to_owned(), Value::from(error.status_code));
                put_opt(fields, "reasonPhrase", error.reason_phrase.as_deref());
            }
            Kind::PeerLeft(left) => {
                put_opt(fields, "peerClass", left.peer_class.as_deref());
                put_opt(fields, "peerId", left.peer_id.as_deref());
                put_opt(fields, "reason", left.reason.as_deref());
            }
            Kind::RestRequest(request) => request.put_into(fields),
            Kind::RestResponse(response) => response.put_into(fields),
            Kind::Event(event) => event.content.put_into(fields),
            Kind::Other(_) => {}
        }
    }
}

fn take_id(fields: &mut Map<String, Value>, name: &str) -> Result<Option<MessageId<'static>>> {
    fields.shift_remove(name).map(|value| MessageId::from_value(name, value)).transpose()
}

fn put_opt(fields: &mut Map<String, Value>, name: &str, value: Option<&str>) {
    if let Some(value) = value {
        fields.insert(name.to_owned(), Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> String {
        match Envelope::parse(text) {
            Err(Error::Envelope(reason)) => reason,
            other => panic!("expected an envelope error for {text}, got {other:?}"),
        }
    }

    /// A repeated name would mean one thing to a parser that keeps the last (serde_json's
    /// `Value`) and another to one that keeps the first; `Header` refuses it, and so must this.
    #[test]
    fn names_repeated_in_the_envelope_or_its_message_are_refused() {
        let reason = refused(r#"{"message": {"messageType": "EVENT:x", "messageType": "CONN:HELLO"}}"#);
        assert!(reason.contains("duplicate field `messageType`"), "{reason}");
        let reason =
            refused(r#"{"message": {"messageType": "CONN:HELLO", "peerClass": "a", "peerClass": "b"}}"#);
        assert!(reason.contains("duplicate field `peerClass`"), "{reason}");
        let reason = refused(r#"{"message": {"messageType": "a"}, "message": {"messageType": "b"}}"#);
        assert!(reason.contains("duplicate field `message`"), "{reason}");
        let reason = refused(r#"{"x": 1, "message": {"messageType": "a"}, "x": 2}"#);
        assert!(reason.contains("duplicate field `x`"), "{reason}");
    }

    #[test]
    fn the_body_is_data_and_keeps_serde_json_rules() {
        let envelope =
            Envelope::parse(r#"{"message": {"messageType": "x", "messageBody": {"a": 1, "a": 2}}}"#);
        assert_eq!(envelope.unwrap().extra["messageBody"], serde_json::json!({"a": 2}));
    }

    #[test]
    fn what_is_not_an_envelope_object_is_an_envelope_error() {
        for text in ["5", "[]", r#"{"message": 5}"#, r#"{"message": []}"#, "{}"] {
            assert!(matches!(Envelope::parse(text), Err(Error::Envelope(_))), "{text}");
        }
        assert!(matches!(Envelope::parse(r#"{"message": {"#), Err(Error::Json(_))));
    }
}
