//! The console: what a typed line sends, and how a received frame is printed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use micronets_message::{Content, Envelope, Event, Kind};

use crate::session::Incoming;

/// What a console line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// Send this text frame.
    Send(String),
    /// Close and exit.
    Quit,
    /// Nothing (an empty line).
    Nothing,
}

/// Why a console line is not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line starting with `{` that is not an envelope.
    #[error("not sent: {0}")]
    Envelope(String),
    /// `event NAME BODY` whose body is not JSON.
    #[error("not sent: the event body is not JSON: {0}")]
    EventBody(String),
    /// Neither an envelope, an event nor `quit`.
    #[error("not sent: type a JSON envelope, `event NAME JSON`, or `quit`")]
    Unknown,
}

/// Reads a console line: `quit`; a JSON envelope, sent as it is (after checking that it is
/// one); or `event NAME JSON`, an `EVENT:NAME` with that JSON body and the id `next_id` gives.
///
/// # Errors
/// Why the line is refused; nothing is sent.
pub fn parse_line(line: &str, next_id: impl FnOnce() -> i64) -> Result<Line, LineError> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(Line::Nothing);
    }
    if line == "quit" {
        return Ok(Line::Quit);
    }
    if line.starts_with('{') {
        return match Envelope::parse(line) {
            Ok(_) => Ok(Line::Send(line.to_owned())),
            Err(e) => Err(LineError::Envelope(e.to_string())),
        };
    }
    if let Some(rest) = line.strip_prefix("event ") {
        let (name, body) = rest.trim().split_once(char::is_whitespace).unwrap_or((rest.trim(), "null"));
        let body: serde_json::Value =
            serde_json::from_str(body.trim()).map_err(|e| LineError::EventBody(e.to_string()))?;
        let event = Event { name: name.to_owned(), content: Content::json(body) };
        return Ok(Line::Send(Envelope::new(Kind::Event(event)).with_id(next_id()).to_json()));
    }
    Err(LineError::Unknown)
}

/// One line for a received frame: a text frame as the JSON it is (re-serialized only when it
/// spans several lines), a binary frame as `{"binary": "<base64>"}`.
#[must_use]
pub fn render(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Text(text, _) => {
            let trimmed = text.trim_end_matches(['\r', '\n']);
            if trimmed.contains('\n') {
                serde_json::from_str::<serde_json::Value>(trimmed)
                    .map_or_else(|_| trimmed.replace('\n', " "), |v| v.to_string())
            } else {
                trimmed.to_owned()
            }
        }
        Incoming::Binary(bytes) => serde_json::json!({ "binary": BASE64.encode(bytes) }).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        assert_eq!(parse_line("quit", || 1), Ok(Line::Quit));
        assert_eq!(parse_line("   ", || 1), Ok(Line::Nothing));
        let raw = r#"{"message": {"messageId": 5, "messageType": "EVENT:x"}}"#;
        assert_eq!(parse_line(raw, || 1), Ok(Line::Send(raw.to_owned())));
        let Ok(Line::Send(event)) = parse_line(r#"event leaseAcquired {"mac": "b8:27"}"#, || 9) else {
            panic!()
        };
        let envelope = Envelope::parse(&event).unwrap();
        assert_eq!(envelope.message_type(), "EVENT:leaseAcquired");
        assert_eq!(envelope.message_id, Some(9.into()));
        assert!(parse_line("hello there", || 1).unwrap_err().to_string().contains("not sent"));
        assert!(parse_line("{broken", || 1).unwrap_err().to_string().contains("invalid JSON"));
        assert!(parse_line("event x {bad", || 1).unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn rendering() {
        assert_eq!(render(&Incoming::Text("{\"a\":1}\n".into(), None)), "{\"a\":1}");
        assert_eq!(render(&Incoming::Text("{\n \"a\": 1\n}".into(), None)), "{\"a\":1}");
        assert_eq!(render(&Incoming::Binary(bytes::Bytes::from_static(&[0, 255]))), r#"{"binary":"AP8="}"#);
    }
}
