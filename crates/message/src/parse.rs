//! Reading a [`Header`] from a frame: the one-pass scan of `scan.rs` for the plain case, serde
//! for everything else and for the words of every error.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{Deserializer, Error as _};

use crate::header::Header;
use crate::id::MessageId;
use crate::{Error, Result};

impl<'a> Header<'a> {
    /// Reads the header of a text frame.
    ///
    /// # Errors
    /// [`Error::Json`] when the frame is not JSON; [`Error::Envelope`] when it is not an object
    /// with a `message` object, `messageType` is missing or not a string, `messageId` or
    /// `inResponseTo` is present but neither a string nor an integer, or `requiresResponse` is
    /// present but not a boolean.
    pub fn parse(frame: &'a str) -> Result<Self> {
        // The plain case in one pass; serde decides everything else, and words every error.
        match crate::scan::header(frame) {
            Some(header) => Ok(header),
            None => Self::parse_with_serde(frame),
        }
    }

    /// The authoritative parse, through serde.
    pub(crate) fn parse_with_serde(frame: &'a str) -> Result<Self> {
        serde_json::from_str::<Frame<'a>>(frame).map(|f| f.message.into()).map_err(Error::from_serde)
    }

    /// Like [`Header::parse`], for a frame that may not be UTF-8 (a binary frame, say).
    ///
    /// # Errors
    /// As [`Header::parse`]; input that is not UTF-8 is [`Error::Json`].
    pub fn parse_bytes(frame: &'a [u8]) -> Result<Self> {
        if let Ok(text) = std::str::from_utf8(frame) {
            return Self::parse(text);
        }
        serde_json::from_slice::<Frame<'a>>(frame).map(|f| f.message.into()).map_err(Error::from_serde)
    }
}

#[derive(Deserialize)]
#[serde(expecting = "an envelope: an object with a \"message\" object")]
struct Frame<'a> {
    #[serde(borrow)]
    message: Fields<'a>,
}

#[derive(Deserialize)]
#[serde(expecting = "a \"message\" object", rename_all = "camelCase")]
struct Fields<'a> {
    #[serde(borrow, deserialize_with = "message_type")]
    message_type: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "message_id")]
    message_id: Option<MessageId<'a>>,
    #[serde(default, deserialize_with = "requires_response")]
    requires_response: bool,
    #[serde(borrow, default, deserialize_with = "in_response_to")]
    in_response_to: Option<MessageId<'a>>,
}

impl<'a> From<Fields<'a>> for Header<'a> {
    fn from(f: Fields<'a>) -> Self {
        Header {
            message_type: f.message_type,
            message_id: f.message_id,
            requires_response: f.requires_response,
            in_response_to: f.in_response_to,
        }
    }
}

fn message_type<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Cow<'de, str>, D::Error> {
    /// A `Cow<str>` that borrows when it can; serde's own impl for `Cow` always owns.
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Text::deserialize(d).map(|t| t.0).map_err(|_| D::Error::custom("messageType must be a string"))
}

fn message_id<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<MessageId<'de>>, D::Error> {
    id_field(d, "messageId")
}

fn in_response_to<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<MessageId<'de>>, D::Error> {
    id_field(d, "inResponseTo")
}

fn id_field<'de, D: Deserializer<'de>>(
    d: D,
    name: &str,
) -> std::result::Result<Option<MessageId<'de>>, D::Error> {
    MessageId::deserialize(d)
        .map(Some)
        .map_err(|e| D::Error::custom(format_args!("{name} must be a string or an integer ({e})")))
}

fn requires_response<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    bool::deserialize(d).map_err(|_| D::Error::custom("requiresResponse must be a boolean"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope_error(frame: &str) -> String {
        match Header::parse(frame) {
            Err(Error::Envelope(reason)) => reason,
            other => panic!("expected an envelope error for {frame}, got {other:?}"),
        }
    }

    #[test]
    fn reads_routing_fields_and_borrows_strings() {
        let frame = r#"{"message": {"messageId": "m-1", "messageType": "REST:REQUEST",
            "requiresResponse": true, "inResponseTo": 7, "messageBody": {"a": [1, 2]}}}"#;
        let header = Header::parse(frame).unwrap();
        assert_eq!(header.message_type, "REST:REQUEST");
        assert!(matches!(header.message_type, Cow::Borrowed(_)));
        assert!(matches!(header.message_id, Some(MessageId::Str(Cow::Borrowed("m-1")))));
        assert!(header.requires_response);
        assert_eq!(header.in_response_to, Some(MessageId::Int(7)));
    }

    #[test]
    fn optional_fields_default() {
        let header = Header::parse(r#"{"message": {"messageType": "EVENT:x"}}"#).unwrap();
        assert_eq!(header.message_id, None);
        assert!(!header.requires_response);
        assert_eq!(header.in_response_to, None);
        assert!(!header.is_hello());
        assert!(Header::parse(r#"{"message":{"messageType":"CONN:HELLO"}}"#).unwrap().is_hello());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let header = Header::parse(r#"{"message": {"messageType": "EVENT:a\"b"}}"#).unwrap();
        assert_eq!(header.message_type, "EVENT:a\"b");
    }

    #[test]
    fn malformed_json_is_a_json_error() {
        for frame in [
            "",
            "{",
            "not json",
            r#"{"message": {"messageType": "x"}"#,
            r#"{"message": {"messageType": "x"}}x"#,
        ] {
            assert!(matches!(Header::parse(frame), Err(Error::Json(_))), "{frame:?}");
        }
        assert!(matches!(Header::parse_bytes(b"\xff\xfe"), Err(Error::Json(_))));
    }

    #[test]
    fn wrong_shapes_name_the_problem() {
        assert!(envelope_error("[]").contains("an envelope"));
        assert!(envelope_error("{}").contains("missing field `message`"));
        assert!(envelope_error(r#"{"message": 5}"#).contains("\"message\" object"));
        assert!(envelope_error(r#"{"message": {}}"#).contains("missing field `messageType`"));
        assert!(
            envelope_error(r#"{"message": {"messageType": 5}}"#).contains("messageType must be a string")
        );
        assert!(
            envelope_error(r#"{"message": {"messageType": "x", "messageId": 1.5}}"#)
                .contains("messageId must be a string or an integer")
        );
        assert!(
            envelope_error(r#"{"message": {"messageType": "x", "messageId": null}}"#)
                .contains("messageId must be")
        );
        assert!(
            envelope_error(r#"{"message": {"messageType": "x", "inResponseTo": [1]}}"#)
                .contains("inResponseTo must be a string or an integer")
        );
        assert!(
            envelope_error(r#"{"message": {"messageType": "x", "requiresResponse": "yes"}}"#)
                .contains("requiresResponse must be a boolean")
        );
        assert!(
            envelope_error(r#"{"message": {"messageType": "x", "messageType": "y"}}"#)
                .contains("duplicate field")
        );
    }

    #[test]
    fn integer_ids_keep_their_range() {
        let h =
            Header::parse(r#"{"message": {"messageType": "x", "messageId": -9223372036854775808}}"#).unwrap();
        assert_eq!(h.message_id, Some(MessageId::Int(i64::MIN)));
        assert!(
            envelope_error(r#"{"message": {"messageType": "x", "messageId": 18446744073709551615}}"#)
                .contains("out of the 64-bit signed range")
        );
    }
}
