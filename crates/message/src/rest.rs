//! The REST tunnel's message bodies: `REST:REQUEST` and `REST:RESPONSE`.

use serde_json::{Map, Value};

use crate::content::{Content, take_string};
use crate::{Error, Result};

/// One entry of a `headers` or `queryStrings` list: `{"name": ..., "value": ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameValue {
    /// The header or parameter name.
    pub name: String,
    /// Its value.
    pub value: String,
}

impl NameValue {
    /// A pair from anything string-like.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        NameValue { name: name.into(), value: value.into() }
    }
}

/// A tunnelled HTTP request (`REST:REQUEST`).
#[derive(Clone, Debug, PartialEq)]
pub struct RestRequest {
    /// `method`: `GET`, `POST`, ...
    pub method: String,
    /// `path`: the request target; may carry a query string itself.
    pub path: String,
    /// `queryStrings`, appended to `path` when the request is performed.
    pub query_strings: Vec<NameValue>,
    /// `headers`, never including Content-Type, Content-Length or Content-Encoding.
    pub headers: Vec<NameValue>,
    /// `dataFormat` and `messageBody`.
    pub content: Content,
}

/// A tunnelled HTTP response (`REST:RESPONSE`).
#[derive(Clone, Debug, PartialEq)]
pub struct RestResponse {
    /// `statusCode`.
    pub status_code: u16,
    /// `reasonPhrase`; the original gateway sends `null`, which reads as `None`.
    pub reason_phrase: Option<String>,
    /// `headers`, never including Content-Type, Content-Length or Content-Encoding.
    pub headers: Vec<NameValue>,
    /// `dataFormat` and `messageBody`.
    pub content: Content,
}

impl RestRequest {
    pub(crate) fn take_from(fields: &mut Map<String, Value>) -> Result<Self> {
        Ok(RestRequest {
            method: take_required_string(fields, "method")?,
            path: take_required_string(fields, "path")?,
            query_strings: take_list(fields, "queryStrings")?,
            headers: take_list(fields, "headers")?,
            content: Content::take_from(fields)?,
        })
    }

    pub(crate) fn put_into(&self, fields: &mut Map<String, Value>) {
        fields.insert("method".to_owned(), Value::from(self.method.as_str()));
        fields.insert("path".to_owned(), Value::from(self.path.as_str()));
        put_list(fields, "queryStrings", &self.query_strings);
        put_list(fields, "headers", &self.headers);
        self.content.put_into(fields);
    }
}

impl RestResponse {
    pub(crate) fn take_from(fields: &mut Map<String, Value>) -> Result<Self> {
        Ok(RestResponse {
            status_code: take_status(fields, "statusCode")?,
            reason_phrase: take_string(fields, "reasonPhrase")?,
            headers: take_list(fields, "headers")?,
            content: Content::take_from(fields)?,
        })
    }

    pub(crate) fn put_into(&self, fields: &mut Map<String, Value>) {
        fields.insert("statusCode".to_owned(), Value::from(self.status_code));
        if let Some(reason) = &self.reason_phrase {
            fields.insert("reasonPhrase".to_owned(), Value::from(reason.as_str()));
        }
        put_list(fields, "headers", &self.headers);
        self.content.put_into(fields);
    }
}

pub(crate) fn take_required_string(fields: &mut Map<String, Value>, name: &str) -> Result<String> {
    take_string(fields, name)?.ok_or_else(|| Error::field(name, "is required"))
}

/// Removes a required HTTP status code (100-999).
pub(crate) fn take_status(fields: &mut Map<String, Value>, name: &str) -> Result<u16> {
    match fields.shift_remove(name) {
        None | Some(Value::Null) => Err(Error::field(name, "is required")),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|code| (100..=999).contains(code))
            .and_then(|code| u16::try_from(code).ok())
            .ok_or_else(|| Error::field(name, "must be an integer from 100 to 999")),
        Some(_) => Err(Error::field(name, "must be an integer from 100 to 999")),
    }
}

/// Removes an optional list of `{"name", "value"}` objects; extra keys in an entry are ignored.
fn take_list(fields: &mut Map<String, Value>, name: &str) -> Result<Vec<NameValue>> {
    let entries = match fields.shift_remove(name) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(Error::field(name, "must be a list of {\"name\", \"value\"} objects"));
        }
    };
    entries
        .into_iter()
        .map(|entry| {
            let pair = match &entry {
                Value::Object(obj) => match (obj.get("name"), obj.get("value")) {
                    (Some(Value::String(n)), Some(Value::String(v))) => Some(NameValue::new(n, v)),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| {
                Error::field(name, "entries must be objects with string \"name\" and \"value\"")
            })
        })
        .collect()
}

fn put_list(fields: &mut Map<String, Value>, name: &str, list: &[NameValue]) {
    if list.is_empty() {
        return;
    }
    let entries = list
        .iter()
        .map(|nv| {
            let mut obj = Map::new();
            obj.insert("name".to_owned(), Value::from(nv.name.as_str()));
            obj.insert("value".to_owned(), Value::from(nv.value.as_str()));
            Value::Object(obj)
        })
        .collect();
    fields.insert(name.to_owned(), Value::Array(entries));
}
