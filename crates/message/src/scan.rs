//! The fast path of [`crate::Header::parse`]: one pass over the frame that validates the JSON
//! and picks out the header fields, without serde's per-token machinery.
//!
//! It answers only for the plain case and gives up (`None`) on anything else: escaped keys or
//! header strings, a repeated header field, an id that is not a plain string or an in-range
//! integer, nesting deeper than 128 levels, or any error at all. The serde parse then runs and
//! has the last word, so this path needs to be right only about what it accepts: it accepts
//! nothing that the serde parse would refuse, and reads the same fields from what it accepts
//! (the property tests compare the two). Strings are scanned eight bytes at a time.

use std::borrow::Cow;

use crate::header::Header;
use crate::id::MessageId;

/// Containers nested deeper than this are left to the serde parse.
const MAX_DEPTH: u32 = 128;

/// The header of `frame` if it is a valid envelope of the plain kind, else `None`.
pub(crate) fn header(frame: &str) -> Option<Header<'_>> {
    let mut s = Scanner { text: frame, bytes: frame.as_bytes(), pos: 0 };
    s.ws();
    s.expect(b'{')?;
    let mut header = None;
    s.ws();
    if s.peek()? == b'}' {
        return None;
    }
    loop {
        let key = s.plain_string()?;
        s.colon()?;
        if key == "message" {
            if header.is_some() {
                return None;
            }
            header = Some(s.message()?);
        } else {
            s.skip_value()?;
        }
        if !s.next_member()? {
            break;
        }
    }
    s.ws();
    (s.pos == s.bytes.len()).then_some(header).flatten()
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.bump()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// `:` between a key and its value, with the whitespace around it.
    fn colon(&mut self) -> Option<()> {
        self.ws();
        self.expect(b':')?;
        self.ws();
        Some(())
    }

    /// After an object member: `true` at `,` (and the whitespace before the next key), `false`
    /// at the closing `}`.
    fn next_member(&mut self) -> Option<bool> {
        self.ws();
        match self.bump()? {
            b',' => {
                self.ws();
                Some(true)
            }
            b'}' => Some(false),
            _ => None,
        }
    }

    /// The `message` object: its header fields read, everything else validated and skipped.
    fn message(&mut self) -> Option<Header<'a>> {
        self.expect(b'{')?;
        let mut message_type = None;
        let mut message_id = None;
        let mut requires_response = None;
        let mut in_response_to = None;
        self.ws();
        if self.peek()? == b'}' {
            return None;
        }
        loop {
            let key = self.plain_string()?;
            self.colon()?;
            match key {
                "messageType" => once(&mut message_type, Cow::Borrowed(self.plain_string()?))?,
                "messageId" => once(&mut message_id, self.id()?)?,
                "inResponseTo" => once(&mut in_response_to, self.id()?)?,
                "requiresResponse" => once(&mut requires_response, self.boolean()?)?,
                _ => self.skip_value()?,
            }
            if !self.next_member()? {
                break;
            }
        }
        Some(Header {
            message_type: message_type?,
            message_id,
            requires_response: requires_response.unwrap_or(false),
            in_response_to,
        })
    }

    /// A string id, or an integer id within the signed 64-bit range (`-0` is a float to serde).
    fn id(&mut self) -> Option<MessageId<'a>> {
        if self.peek()? == b'"' {
            return self.plain_string().map(|s| MessageId::Str(Cow::Borrowed(s)));
        }
        let negative = self.peek()? == b'-';
        let (start, end, integer) = self.number()?;
        let digits = self.text.get(start + usize::from(negative)..end)?;
        if !integer || (negative && digits == "0") {
            return None;
        }
        let magnitude: u64 = digits.parse().ok()?;
        let value =
            if negative { 0i64.checked_sub_unsigned(magnitude)? } else { i64::try_from(magnitude).ok()? };
        Some(MessageId::Int(value))
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.literal(b"true").is_some() {
            return Some(true);
        }
        self.literal(b"false").map(|()| false)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// A string without escapes, borrowed from the frame.
    fn plain_string(&mut self) -> Option<&'a str> {
        let start = self.pos + 1;
        if self.string()? {
            return None;
        }
        self.text.get(start..self.pos - 1)
    }

    /// Validates a string; returns whether it had escapes.
    fn string(&mut self) -> Option<bool> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            self.pos += special_offset(self.bytes.get(self.pos..)?);
            match self.bump()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.bump()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.pos..self.pos + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 4;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// A number per RFC 8259; returns its span and whether it is an integer.
    fn number(&mut self) -> Option<(usize, usize, bool)> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.bump()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.some_digits()?;
            integer = false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.some_digits()?;
            integer = false;
        }
        Some((start, self.pos, integer))
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.pos;
        self.digits();
        (self.pos > start).then_some(())
    }

    /// Validates one value of any kind. Containers are tracked in a bit stack (1 = object)
    /// rather than by recursion, so no input can exhaust the call stack.
    fn skip_value(&mut self) -> Option<()> {
        let mut stack: u128 = 0;
        let mut depth = 0u32;
        loop {
            match self.peek()? {
                open @ (b'{' | b'[') => {
                    if depth + 1 > MAX_DEPTH - 2 {
                        return None;
                    }
                    self.pos += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek()? == close {
                        self.pos += 1;
                    } else {
                        depth += 1;
                        stack = stack << 1 | u128::from(open == b'{');
                        if open == b'{' {
                            self.string()?;
                            self.colon()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => {
                    self.number()?;
                }
            }
            // A value is complete: close what it completes, or move to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let in_object = stack & 1 == 1;
                match self.bump()? {
                    b',' => {
                        self.ws();
                        if in_object {
                            self.string()?;
                            self.colon()?;
                        }
                        break;
                    }
                    b'}' if in_object => {}
                    b']' if !in_object => {}
                    _ => return None,
                }
                depth -= 1;
                stack >>= 1;
            }
        }
    }
}

/// Records a header field, refusing a second occurrence (serde reports a duplicate field).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

/// The offset of the first byte of `bytes` that ends a plain run of string content: a quote, a
/// backslash or a control character (or the length, when there is none).
///
/// The first sixteen bytes go eight at a time (most strings end there). A longer run is two
/// passes that each go at memory speed: `memchr2` finds the next quote or backslash (with the
/// widest SIMD the CPU has, chosen at run time), then the run before it is checked for control
/// characters by its lowest byte, in a loop the compiler turns into SIMD minimums. Together
/// about 1.5x faster on a 64 KiB run than one pass testing all three per byte (SSE2 only), the
/// figures in docs/performance.md. A control character, which ends every well-formed string
/// early, is then found eight bytes at a time.
fn special_offset(bytes: &[u8]) -> usize {
    let head = bytes.get(..16).unwrap_or(bytes);
    let in_head = special_offset_by_word(head);
    if in_head < head.len() || head.len() == bytes.len() {
        return in_head;
    }
    let rest = bytes.get(16..).unwrap_or_default();
    let run = memchr::memchr2(b'"', b'\\', rest).map_or(rest, |end| rest.get(..end).unwrap_or(rest));
    if lowest_byte(run) < 0x20 {
        return 16 + special_offset_by_word(run);
    }
    16 + run.len()
}

/// The smallest byte of `bytes` (0xFF when empty): no early exit, so that it vectorizes.
fn lowest_byte(bytes: &[u8]) -> u8 {
    let (blocks, rest) = bytes.as_chunks::<32>();
    let mut lowest = [0xFF; 32];
    for block in blocks {
        for (low, &b) in lowest.iter_mut().zip(block) {
            *low = (*low).min(b);
        }
    }
    lowest.iter().chain(rest).fold(0xFF, |low, &b| low.min(b))
}

/// [`special_offset`] eight bytes at a time, with the "has a zero byte" bit trick: its lowest set
/// bit is always a true match, so the offset is exact. The fastest way through the short keys
/// and values that make up most JSON.
fn special_offset_by_word(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let (chunks, rest) = bytes.as_chunks::<8>();
    for (i, chunk) in chunks.iter().enumerate() {
        let v = u64::from_le_bytes(*chunk);
        let hits = zero_byte(v ^ (ONES * u64::from(b'"')))
            | zero_byte(v ^ (ONES * u64::from(b'\\')))
            | (v.wrapping_sub(ONES * 0x20) & !v & HIGHS);
        if hits != 0 {
            return i * 8 + (hits.trailing_zeros() / 8) as usize;
        }
    }
    let tail = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
    chunks.len() * 8 + tail.unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whatever the fast path accepts, serde accepts with the same header.
    fn agrees_with_serde(text: &str) -> Result<(), TestCaseError> {
        if let Some(fast) = header(text) {
            prop_assert_eq!(Header::parse_with_serde(text).ok(), Some(fast), "{}", text);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn json_like_noise_inside_an_envelope(noise in r#"[{}\[\]":,. 0-9eE+\-a-z\\\t]{0,40}"#) {
            agrees_with_serde(&noise)?;
            agrees_with_serde(&format!(r#"{{"message": {{"messageType": "t", "x": {noise}}}}}"#))?;
            agrees_with_serde(&format!(r#"{{"message": {{"messageType": "t", "messageId": {noise}}}}}"#))?;
            agrees_with_serde(&format!(r#"{{"message": {{{noise}"messageType": "t"}}}}"#))?;
        }

        #[test]
        fn envelopes_with_one_byte_changed(
            id in prop_oneof![any::<i64>().prop_map(|n| n.to_string()), "[a-z]{0,4}".prop_map(|s| format!("{s:?}"))],
            body in "[ -~]{0,24}",
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![Just(b'"'), Just(b'\\'), Just(b'{'), Just(b'}'), Just(b','), Just(b':'), Just(b'0'), Just(b'-'), Just(b' '), any::<u8>()],
        ) {
            let text = format!(
                r#"{{"message": {{"messageId": {id}, "messageType": "EVENT:x", "requiresResponse": false, "messageBody": {body:?}}}}}"#
            );
            agrees_with_serde(&text)?;
            prop_assert!(header(&text).is_some(), "{}", text);
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(mutated) = String::from_utf8(bytes) {
                agrees_with_serde(&mutated)?;
            }
        }
    }

    #[test]
    fn finds_the_first_special_byte_in_every_position() {
        // Short strings (word by word), and lengths around one, two and three 64-byte blocks.
        for len in (0..40).chain(56..72).chain(120..136).chain(184..200) {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x0a, 0x1f] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = special;
                    for later in at + 1..len {
                        bytes[later] = [b'"', 0x01, 0xC3, b'\\'][later % 4];
                    }
                    assert_eq!(special_offset(&bytes), at, "len {len}, at {at}, byte {special:#x}");
                }
            }
            assert_eq!(special_offset(&vec![b'a'; len]), len);
            assert_eq!(special_offset(&vec![0xC3; len]), len, "bytes above 0x7f are content");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Long string values (the 64-byte blocks) with a quote, backslash, escape or control
        /// character anywhere: the fast path and serde still agree.
        #[test]
        fn long_strings_with_a_special_byte_anywhere(
            len in 0usize..400,
            at in any::<prop::sample::Index>(),
            special in prop_oneof![Just("\""), Just("\\"), Just("\\n"), Just("\\u00e9"), Just("\u{1}"), Just("\n"), Just("\u{e9}"), Just("\\x")],
        ) {
            let mut body = "b".repeat(len);
            body.insert_str(at.index(len + 1), special);
            let text = format!(r#"{{"message": {{"messageType": "EVENT:x", "messageBody": "{body}"}}}}"#);
            agrees_with_serde(&text)?;
            let valid = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            prop_assert_eq!(header(&text).is_some(), valid, "{}", text);
        }
    }

    #[test]
    fn reads_a_plain_envelope() {
        let text = r#" {"x": [1, {"y": null}], "message": {"messageId": -12, "messageType": "EVENT:a",
            "messageBody": {"s": "a\"b\u00e9", "n": [1.5e3, -0, true, false, {}, []]},
            "requiresResponse": true, "inResponseTo": "r"}} "#;
        let header = header(text).unwrap();
        assert_eq!(header.message_type, "EVENT:a");
        assert_eq!(header.message_id, Some(MessageId::Int(-12)));
        assert!(header.requires_response);
        assert_eq!(header.in_response_to, Some(MessageId::Str(Cow::Borrowed("r"))));
    }

    #[test]
    fn leaves_everything_unusual_to_serde() {
        for text in [
            r#"{"message": {"messageType": "a\"b"}}"#,
            r#"{"message": {"messageType": "a", "messageType": "b"}}"#,
            r#"{"message": {"messageType": "a"}, "message": {"messageType": "a"}}"#,
            r#"{"message": {"messageType": "a", "messageId": -0}}"#,
            r#"{"message": {"messageType": "a", "messageId": 9223372036854775808}}"#,
            r#"{"message": {"messageType": "a", "messageId": 1.0}}"#,
            r#"{"message": {"messageType": "a", "messageId": null}}"#,
            r#"{"message": {"messageType": "a", "requiresResponse": 1}}"#,
            r#"{"message": {"messageType": "a", "x": 01}}"#,
            r#"{"message": {"messageType": "a", "x": "\q"}}"#,
            r#"{"message": {"messageType": "a", "x": "\u12g4"}}"#,
            "{\"message\": {\"messageType\": \"a\", \"x\": \"\t\"}}",
            r#"{"message": {"messageType": "a", "x": [1,]}}"#,
            r#"{"message": {"messageType": "a", "x": {"a" 1}}}"#,
            r#"{"message": {"messageType": "a"}} x"#,
            r#"{"message": {"messageId": 1}}"#,
            r#"{"message": {}}"#,
            r#"{"m\u0065ssage": {"messageType": "a"}}"#,
            r#"[{"messageType": "a"}]"#,
            "",
        ] {
            assert!(header(text).is_none(), "{text}");
        }
        let deep =
            format!(r#"{{"message": {{"messageType": "a", "x": {}{}}}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(header(&deep).is_none());
        let fine =
            format!(r#"{{"message": {{"messageType": "a", "x": {}{}}}}}"#, "[".repeat(126), "]".repeat(126));
        assert!(header(&fine).is_some());
    }
}
