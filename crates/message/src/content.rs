//! Message bodies: `dataFormat`, `messageBody` and the rules that tie them together.
//!
//! The reference spec carries a body as a JSON value when `dataFormat` is `application/json`,
//! as base64 when it is `application/octet-stream`, and as a string otherwise. We add two rules
//! (docs/protocol.md, "Relaying"): any `*+json` type travels as a JSON value too, and binary
//! bodies keep their real media type in an extra `contentType` field, which the original
//! clients ignore.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The media type that marks a base64 body.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// A decoded `messageBody`.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// A JSON value (JSON media types, or no `dataFormat` at all).
    Json(Value),
    /// Text, for textual media types.
    Text(String),
    /// Bytes, carried as base64 under `application/octet-stream`.
    Binary(Vec<u8>),
}

/// The body of a REST message or event, with its media type.
///
/// The fields are private so that the body's representation always matches `dataFormat`;
/// that is what makes an envelope round-trip exactly.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Content {
    data_format: Option<String>,
    content_type: Option<String>,
    body: Option<Body>,
}

/// Whether `media_type` (parameters allowed) is JSON: `application/json` or any `*/*+json`.
#[must_use]
pub fn is_json_media_type(media_type: &str) -> bool {
    let essence = essence(media_type);
    essence.eq_ignore_ascii_case("application/json")
        || essence.len() > 5
            && essence
                .as_bytes()
                .get(essence.len() - 5..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case(b"+json"))
}

fn essence(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or_default().trim()
}

fn is_octet_stream(media_type: &str) -> bool {
    essence(media_type).eq_ignore_ascii_case(OCTET_STREAM)
}

impl Content {
    /// No body and no media type.
    #[must_use]
    pub fn none() -> Self {
        Content::default()
    }

    /// A JSON body under `application/json`.
    #[must_use]
    pub fn json(value: Value) -> Self {
        Content {
            data_format: Some("application/json".to_owned()),
            content_type: None,
            body: Some(Body::Json(value)),
        }
    }

    /// The body of an HTTP message with the given `Content-Type`, by the tunnel's rules:
    /// a JSON type whose bytes parse travels as a JSON value; other valid UTF-8 as text; the
    /// rest as base64, with the real type in `contentType`. An empty body keeps only the media
    /// type. Without a `Content-Type`, a body is `application/octet-stream`, the type HTTP
    /// tells a recipient to assume.
    #[must_use]
    pub fn from_http(content_type: Option<&str>, bytes: &[u8]) -> Self {
        let media = content_type.map(str::to_owned);
        if bytes.is_empty() {
            return Content { data_format: media, content_type: None, body: None };
        }
        let Some(media) = media else {
            return Content::binary(None, bytes.to_vec());
        };
        let decoded = if is_json_media_type(&media) {
            serde_json::from_slice(bytes).ok().map(Body::Json)
        } else if is_octet_stream(&media) {
            None
        } else {
            std::str::from_utf8(bytes).ok().map(|text| Body::Text(text.to_owned()))
        };
        match decoded {
            Some(body) => Content { data_format: Some(media), content_type: None, body: Some(body) },
            None => Content::binary(Some(media), bytes.to_vec()),
        }
    }

    fn binary(media: Option<String>, bytes: Vec<u8>) -> Self {
        Content {
            data_format: Some(OCTET_STREAM.to_owned()),
            content_type: media.filter(|m| !is_octet_stream(m)),
            body: Some(Body::Binary(bytes)),
        }
    }

    /// `dataFormat` as it travels.
    #[must_use]
    pub fn data_format(&self) -> Option<&str> {
        self.data_format.as_deref()
    }

    /// The real media type: `contentType` for binary bodies that have one, else `dataFormat`.
    /// This is the `Content-Type` of the HTTP message.
    #[must_use]
    pub fn media_type(&self) -> Option<&str> {
        self.content_type.as_deref().or(self.data_format.as_deref())
    }

    /// The decoded body, if any.
    #[must_use]
    pub fn body(&self) -> Option<&Body> {
        self.body.as_ref()
    }

    /// The body as HTTP bytes (empty when there is none).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.body {
            None => Vec::new(),
            Some(Body::Json(value)) => value.to_string().into_bytes(),
            Some(Body::Text(text)) => text.clone().into_bytes(),
            Some(Body::Binary(bytes)) => bytes.clone(),
        }
    }

    /// Takes `dataFormat`, `contentType` and `messageBody` out of a message object.
    pub(crate) fn take_from(fields: &mut Map<String, Value>) -> Result<Self> {
        let data_format = take_string(fields, "dataFormat")?;
        let content_type = match data_format.as_deref() {
            Some(format) if is_octet_stream(format) => take_string(fields, "contentType")?,
            _ => None,
        };
        let body = match fields.shift_remove("messageBody") {
            None => None,
            Some(value) => Some(match data_format.as_deref() {
                None => Body::Json(value),
                Some(format) if is_json_media_type(format) => Body::Json(value),
                Some(format) => {
                    let Value::String(text) = value else {
                        return Err(Error::Envelope(format!(
                            "messageBody must be a string for dataFormat {format:?}"
                        )));
                    };
                    if is_octet_stream(format) {
                        Body::Binary(BASE64.decode(text).map_err(|_| Error::Base64)?)
                    } else {
                        Body::Text(text)
                    }
                }
            }),
        };
        Ok(Content { data_format, content_type, body })
    }

    /// Writes `dataFormat`, `contentType` and `messageBody` into a message object.
    pub(crate) fn put_into(&self, fields: &mut Map<String, Value>) {
        if let Some(format) = &self.data_format {
            fields.insert("dataFormat".to_owned(), Value::from(format.as_str()));
        }
        if let Some(media) = &self.content_type {
            fields.insert("contentType".to_owned(), Value::from(media.as_str()));
        }
        if let Some(body) = &self.body {
            let value = match body {
                Body::Json(value) => value.clone(),
                Body::Text(text) => Value::from(text.as_str()),
                Body::Binary(bytes) => Value::from(BASE64.encode(bytes)),
            };
            fields.insert("messageBody".to_owned(), value);
        }
    }
}

/// Removes an optional string field; `null` counts as absent.
pub(crate) fn take_string(fields: &mut Map<String, Value>, name: &str) -> Result<Option<String>> {
    match fields.shift_remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::field(name, "must be a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json"));
        assert!(is_json_media_type("Application/JSON; charset=utf-8"));
        assert!(is_json_media_type("application/problem+json"));
        assert!(!is_json_media_type("+json"));
        assert!(!is_json_media_type("text/plain"));
        assert!(!is_json_media_type("application/jsonx"));
        assert!(!is_json_media_type("text/aé"));
    }

    #[test]
    fn http_bodies_are_classified() {
        let json = Content::from_http(Some("application/json"), br#"{"a":1}"#);
        assert_eq!(json.body(), Some(&Body::Json(json!({"a": 1}))));
        assert_eq!(json.data_format(), Some("application/json"));

        let text = Content::from_http(Some("text/plain; charset=utf-8"), "héllo".as_bytes());
        assert_eq!(text.body(), Some(&Body::Text("héllo".into())));

        let bad_json = Content::from_http(Some("application/json"), b"{oops");
        assert_eq!(bad_json.data_format(), Some(OCTET_STREAM));
        assert_eq!(bad_json.media_type(), Some("application/json"));
        assert_eq!(bad_json.to_bytes(), b"{oops");

        let png = Content::from_http(Some("image/png"), &[0x89, b'P', 0xff]);
        assert_eq!(png.body(), Some(&Body::Binary(vec![0x89, b'P', 0xff])));
        assert_eq!(png.media_type(), Some("image/png"));

        let untyped = Content::from_http(None, b"abc");
        assert_eq!(untyped.data_format(), Some(OCTET_STREAM));
        assert_eq!(untyped.media_type(), Some(OCTET_STREAM));

        let head = Content::from_http(Some("text/html"), b"");
        assert_eq!(head.data_format(), Some("text/html"));
        assert_eq!(head.body(), None);
        assert!(head.to_bytes().is_empty());
    }

    #[test]
    fn envelope_fields_round_trip() {
        for content in [
            Content::none(),
            Content::json(json!([1, "two"])),
            Content::from_http(Some("text/csv"), b"a,b"),
            Content::from_http(Some("image/png"), &[0, 159, 146, 150]),
            Content::from_http(Some(OCTET_STREAM), &[1, 2, 3]),
        ] {
            let mut fields = Map::new();
            content.put_into(&mut fields);
            assert_eq!(Content::take_from(&mut fields).unwrap(), content);
            assert!(fields.is_empty());
        }
    }

    #[test]
    fn bad_bodies_are_refused() {
        let mut fields = json!({"dataFormat": OCTET_STREAM, "messageBody": "***"});
        let err = Content::take_from(fields.as_object_mut().unwrap()).unwrap_err();
        assert!(matches!(err, Error::Base64));

        let mut fields = json!({"dataFormat": "text/plain", "messageBody": {"a": 1}});
        let err = Content::take_from(fields.as_object_mut().unwrap()).unwrap_err();
        assert!(err.to_string().contains("messageBody must be a string"), "{err}");

        let mut fields = json!({"dataFormat": 3});
        let err = Content::take_from(fields.as_object_mut().unwrap()).unwrap_err();
        assert!(err.to_string().contains("dataFormat must be a string"), "{err}");
    }
}
