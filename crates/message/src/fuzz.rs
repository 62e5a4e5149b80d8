//! The entry point of the `envelope` fuzz target (`fuzz/`), and the test that replays its
//! corpus. Compiled for tests and under the `fuzzing` feature only; not part of the API.
//!
//! A fuzz target reports a broken invariant by panicking, so the checks here assert.

#![allow(clippy::expect_used)]

use crate::{Envelope, Header, Kind, MessageId};

/// Parses `data` every way this crate can and checks that the parsers agree:
/// - whatever the fast scanner accepts, the serde parse accepts with the same header;
/// - a valid [`Envelope`] has a valid [`Header`] with the same routing fields;
/// - a valid envelope survives its own JSON unchanged, and so does its HTTP form.
pub fn envelope(data: &[u8]) {
    let header = Header::parse_bytes(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(fast) = crate::scan::header(text)
    {
        let slow = Header::parse_with_serde(text);
        assert_eq!(slow.as_ref().ok(), Some(&fast), "the scanner and serde disagree: {slow:?}");
    }
    let Ok(envelope) = Envelope::from_slice(data) else { return };
    let header = header.expect("the header parse accepts every valid envelope");
    assert_eq!(header.message_type, envelope.message_type());
    assert_eq!(header.message_id.map(MessageId::into_owned), envelope.message_id);
    assert_eq!(header.requires_response, envelope.requires_response);
    assert_eq!(header.in_response_to.map(MessageId::into_owned), envelope.in_response_to);

    let json = envelope.to_json();
    let again = Envelope::parse(&json).expect("an envelope's own JSON parses");
    assert_eq!(again, envelope, "the envelope changed in a round trip through {json}");

    match &envelope.kind {
        Kind::RestRequest(request) => {
            if let Ok(http) = request.to_http() {
                let _ = crate::RestRequest::from_http(&http);
            }
        }
        Kind::RestResponse(response) => {
            if let Ok(http) = response.to_http() {
                let _ = crate::RestResponse::from_http(&http);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    /// Every input of the committed corpus, and so every past crash, still passes.
    #[test]
    fn replays_the_envelope_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/envelope");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            eprintln!("replaying {}", path.display());
            super::envelope(&std::fs::read(&path).unwrap());
            count += 1;
        }
        assert!(count > 0, "{dir} holds no inputs");
    }
}
