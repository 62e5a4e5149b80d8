//! The benchmark's messages: valid envelopes of an exact size whose `messageId` is the sequence
//! number and whose body is derived from it, so a receiver can check every byte.

use micronets_message::{Header, MessageId};

const HEAD: &str = r#"{"message":{"messageId":"#;
const MIDDLE: &str = r#","messageType":"EVENT:bench","messageBody":""#;
const TAIL: &str = r#""}}"#;

/// The smallest frame size: the envelope around a 20-digit sequence number and an empty body.
pub(crate) const MIN_SIZE: usize = HEAD.len() + 20 + MIDDLE.len() + TAIL.len();

/// The frame for message `seq`, exactly `size` bytes long (`size >= MIN_SIZE`).
pub(crate) fn make(seq: u64, size: usize) -> String {
    let digits = seq.to_string();
    let pad = size.saturating_sub(HEAD.len() + digits.len() + MIDDLE.len() + TAIL.len());
    let fill = char::from(b'a' + (seq % 26) as u8);
    let mut frame = String::with_capacity(size);
    frame.push_str(HEAD);
    frame.push_str(&digits);
    frame.push_str(MIDDLE);
    frame.extend(std::iter::repeat_n(fill, pad));
    frame.push_str(TAIL);
    frame
}

/// Reads a received frame: its sequence number, and whether every byte is as sent.
pub(crate) fn check(frame: &[u8], size: usize) -> Option<(u64, bool)> {
    let header = Header::parse_bytes(frame).ok()?;
    let Some(MessageId::Int(seq)) = header.message_id else { return None };
    let seq = u64::try_from(seq).ok()?;
    Some((seq, frame == make(seq, size).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_exact_size_and_check_out() {
        for (seq, size) in [(0, 256), (12345, 4096), (u64::from(u32::MAX), MIN_SIZE)] {
            let frame = make(seq, size);
            assert!(frame.len() == size || size < MIN_SIZE);
            assert_eq!(check(frame.as_bytes(), size), Some((seq, true)));
        }
        let mut bad = make(7, 256).into_bytes();
        bad[200] = b'!';
        assert_eq!(check(&bad, 256), Some((7, false)));
    }
}
