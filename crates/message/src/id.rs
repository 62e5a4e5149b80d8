//! `messageId` / `inResponseTo`: a string or an integer, kept exactly as the peer sent it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A message identifier. The reference clients use integers, others use strings; the protocol
/// allows both and a reply must echo the id in the form it came (`inResponseTo`).
///
/// Borrowed ids come from [`crate::Header::parse`] without allocating; owned ids
/// (`MessageId<'static>`) live in [`crate::Envelope`]. Integers are 64-bit signed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MessageId<'a> {
    /// A JSON integer.
    Int(i64),
    /// A JSON string.
    Str(Cow<'a, str>),
}

impl MessageId<'_> {
    /// The same id, owning its string.
    #[must_use]
    pub fn into_owned(self) -> MessageId<'static> {
        match self {
            MessageId::Int(n) => MessageId::Int(n),
            MessageId::Str(s) => MessageId::Str(Cow::Owned(s.into_owned())),
        }
    }

    /// A copy owning its string.
    #[must_use]
    pub fn to_owned_id(&self) -> MessageId<'static> {
        self.clone().into_owned()
    }

    /// Reads an id out of a JSON value, naming `field` in the error.
    pub(crate) fn from_value(field: &str, value: serde_json::Value) -> crate::Result<MessageId<'static>> {
        match value {
            serde_json::Value::String(s) => Ok(MessageId::Str(Cow::Owned(s))),
            serde_json::Value::Number(n) => n
                .as_i64()
                .map(MessageId::Int)
                .ok_or_else(|| crate::Error::field(field, "must be a string or a 64-bit integer")),
            _ => Err(crate::Error::field(field, "must be a string or an integer")),
        }
    }

    /// The id as a JSON value.
    #[must_use]
    pub fn to_value(&self) -> serde_json::Value {
        match self {
            MessageId::Int(n) => serde_json::Value::from(*n),
            MessageId::Str(s) => serde_json::Value::from(s.as_ref()),
        }
    }
}

impl From<i64> for MessageId<'static> {
    fn from(n: i64) -> Self {
        MessageId::Int(n)
    }
}

impl From<String> for MessageId<'static> {
    fn from(s: String) -> Self {
        MessageId::Str(Cow::Owned(s))
    }
}

impl From<&str> for MessageId<'static> {
    fn from(s: &str) -> Self {
        MessageId::Str(Cow::Owned(s.to_owned()))
    }
}

impl fmt::Display for MessageId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Int(n) => write!(f, "{n}"),
            MessageId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl Serialize for MessageId<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MessageId::Int(n) => serializer.serialize_i64(*n),
            MessageId::Str(s) => serializer.serialize_str(s),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for MessageId<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl<'de> Visitor<'de> for IdVisitor {
            type Value = MessageId<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Ok(MessageId::Int(n))
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                i64::try_from(n)
                    .map(MessageId::Int)
                    .map_err(|_| E::custom("integer id out of the 64-bit signed range"))
            }

            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(MessageId::Str(Cow::Borrowed(s)))
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MessageId::Str(Cow::Owned(s.to_owned())))
            }

            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(MessageId::Str(Cow::Owned(s)))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}
