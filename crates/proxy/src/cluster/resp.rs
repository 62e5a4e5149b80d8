//! The few parts of RESP2 (the Redis protocol) the node's own connections speak
//! (`direct.rs`): commands out, and replies and pub/sub messages in, read from one buffer.
//!
//! A reply is taken off the buffer only once it has arrived whole; until then the buffer keeps
//! growing, within [`MAX_BULK`] for a string, [`MAX_ITEMS`] for an array and [`MAX_VALUE`] for
//! the whole value, and nothing else is held. A payload is copied out of the buffer into a `Bytes` of its own size, so that a
//! note kept in a slow member's queue keeps its packet alive, not the connection's whole read
//! buffer; a payload of [`SPLIT_FROM`] or more is split off the buffer instead, which then holds
//! little else.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest bulk string accepted: above the largest packet the outbox can hold (64 MiB).
pub(crate) const MAX_BULK: usize = 128 << 20;
/// The longest value accepted in all (an array's items together): a pub/sub message of the
/// longest packet, with room to spare for its channel's name.
const MAX_VALUE: usize = MAX_BULK + (1 << 20);
/// The most items an array may have; the node's replies have three at most.
const MAX_ITEMS: usize = 64;
/// Arrays in arrays, at most.
const MAX_DEPTH: usize = 4;
/// The longest line (a status, an error, a length) accepted.
const MAX_LINE: usize = 4096;
/// Payloads at least this long are split off the read buffer rather than copied.
const SPLIT_FROM: usize = 32 << 10;

/// One value from Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK` and the like.
    Status(String),
    /// `-ERR ...`: Redis refused the command.
    Error(String),
    Integer(i64),
    /// A bulk string; `None` for the null bulk string.
    Bulk(Option<Bytes>),
    /// An array; `None` for the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bytes of a bulk or status reply.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            Reply::Status(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// Bytes that are not RESP, or a value past the limits.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RespError {
    #[error("RESP: unknown type byte {0:#04x}")]
    Type(u8),
    #[error("RESP: a length or integer that is not a number")]
    Number,
    #[error("RESP: a bulk string of {0} bytes, over the limit")]
    TooLong(i64),
    #[error("RESP: an array of {0} items, over the limit")]
    TooMany(i64),
    #[error("RESP: arrays nested too deep")]
    TooDeep,
    #[error("RESP: a value of more than {MAX_VALUE} bytes in all")]
    TooLarge,
    #[error("RESP: a line or bulk string not ended by CRLF")]
    Terminator,
    #[error("RESP: a line over {MAX_LINE} bytes")]
    LongLine,
}

/// Appends the command `args` (a RESP array of bulk strings) to `out`.
pub(crate) fn command(out: &mut BytesMut, args: &[&[u8]]) {
    let Some((last, first)) = args.split_last() else { return header(out, b'*', 0) };
    command_before(out, first, last.len());
    out.put_slice(last);
    out.put_slice(END);
}

/// Appends the command `args` and then a last argument of `tail` bytes, up to where the
/// tail's bytes go: the caller sends the tail and then [`END`] from where they are, so that a
/// large argument is never copied into `out`.
pub(crate) fn command_before(out: &mut BytesMut, args: &[&[u8]], tail: usize) {
    let size: usize = args.iter().map(|a| a.len() + 16).sum();
    out.reserve(size + 32);
    header(out, b'*', args.len() + 1);
    for arg in args {
        header(out, b'$', arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
    header(out, b'$', tail);
}

/// What ends a bulk string.
pub(crate) const END: &[u8] = b"\r\n";

/// Appends a type byte, the decimal `n` and CRLF.
fn header(out: &mut BytesMut, kind: u8, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_u8(kind);
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
}

/// Takes the first whole value off `buf`; `Ok(None)` while it has not all arrived.
///
/// # Errors
/// [`RespError`] when the bytes are not RESP or exceed the limits: the connection cannot be
/// read further.
pub(crate) fn take(buf: &mut BytesMut) -> Result<Option<Reply>, RespError> {
    let Measure::Whole(end) = first(buf)? else { return Ok(None) };
    let mut whole = buf.split_to(end);
    Ok(Some(read(&mut whole)))
}

/// How many bytes `buf` must hold, at least, for its first value to be whole: a bulk string's
/// announced length tells, so that its buffer is made that large once rather than grown step
/// by step (each step a copy of what came so far). 0 when it is whole or not RESP.
pub(crate) fn wanted(buf: &[u8]) -> usize {
    match first(buf) {
        Ok(Measure::Short(at_least)) => at_least,
        _ => 0,
    }
}

/// How far the value at the start of a buffer has arrived.
enum Measure {
    /// Whole: it ends here.
    Whole(usize),
    /// Not yet: the buffer must hold at least this much.
    Short(usize),
}

/// How far the first value of `buf` has arrived, within [`MAX_VALUE`] in all.
fn first(buf: &[u8]) -> Result<Measure, RespError> {
    let measured = measure(buf, 0, 0)?;
    match measured {
        Measure::Whole(len) | Measure::Short(len) if len > MAX_VALUE => Err(RespError::TooLarge),
        _ => Ok(measured),
    }
}

/// The length of the value starting at `at`, once it has all arrived.
fn measure(buf: &[u8], at: usize, depth: usize) -> Result<Measure, RespError> {
    let short = Measure::Short(buf.len() + 1);
    let Some(&kind) = buf.get(at) else { return Ok(short) };
    let Some(line_end) = line(buf, at + 1)? else { return Ok(short) };
    let after = line_end + 2;
    match kind {
        b'+' | b'-' => Ok(Measure::Whole(after)),
        b':' => number(&buf[at + 1..line_end]).map(|_| Measure::Whole(after)),
        b'$' => {
            let n = number(&buf[at + 1..line_end])?;
            if n < 0 {
                return Ok(Measure::Whole(after));
            }
            let len = usize::try_from(n).ok().filter(|&n| n <= MAX_BULK).ok_or(RespError::TooLong(n))?;
            let end = after + len + 2;
            match buf.get(after + len..end) {
                None => Ok(Measure::Short(end)),
                Some(b"\r\n") => Ok(Measure::Whole(end)),
                Some(_) => Err(RespError::Terminator),
            }
        }
        b'*' => {
            let n = number(&buf[at + 1..line_end])?;
            if n < 0 {
                return Ok(Measure::Whole(after));
            }
            let items = usize::try_from(n).ok().filter(|&n| n <= MAX_ITEMS).ok_or(RespError::TooMany(n))?;
            if depth >= MAX_DEPTH {
                return Err(RespError::TooDeep);
            }
            let mut next = after;
            for _ in 0..items {
                match measure(buf, next, depth + 1)? {
                    Measure::Whole(end) => next = end,
                    short => return Ok(short),
                }
            }
            Ok(Measure::Whole(next))
        }
        other => Err(RespError::Type(other)),
    }
}

/// Where the line starting at `from` ends (its CR), once its CRLF has arrived.
fn line(buf: &[u8], from: usize) -> Result<Option<usize>, RespError> {
    let rest = buf.get(from..).unwrap_or_default();
    let Some(cr) = rest.iter().take(MAX_LINE).position(|&b| b == b'\r') else {
        return if rest.len() >= MAX_LINE { Err(RespError::LongLine) } else { Ok(None) };
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(from + cr)),
        Some(_) => Err(RespError::Terminator),
    }
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or(RespError::Number)
}

/// Reads the one value `whole` holds ([`measure`] checked it).
fn read(whole: &mut BytesMut) -> Reply {
    let kind = whole.get_u8();
    let end = whole.iter().position(|&b| b == b'\r').unwrap_or(whole.len());
    let text = whole.split_to(end);
    whole.advance(2.min(whole.len()));
    let n = || number(&text).unwrap_or(-1);
    match kind {
        b'+' => Reply::Status(String::from_utf8_lossy(&text).into_owned()),
        b'-' => Reply::Error(String::from_utf8_lossy(&text).into_owned()),
        b':' => Reply::Integer(n()),
        b'$' => match usize::try_from(n()) {
            Ok(len) => {
                let payload = if len >= SPLIT_FROM {
                    whole.split_to(len).freeze()
                } else {
                    let copied = Bytes::copy_from_slice(&whole[..len]);
                    whole.advance(len);
                    copied
                };
                whole.advance(2);
                Reply::Bulk(Some(payload))
            }
            Err(_) => Reply::Bulk(None),
        },
        _ => match usize::try_from(n()) {
            Ok(items) => Reply::Array(Some((0..items).map(|_| read(whole)).collect())),
            Err(_) => Reply::Array(None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<Reply>, RespError> {
        let mut buf = BytesMut::from(bytes);
        let mut replies = Vec::new();
        while let Some(reply) = take(&mut buf)? {
            replies.push(reply);
        }
        assert!(buf.is_empty(), "everything read");
        Ok(replies)
    }

    fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(b)))
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        command(&mut out, &[b"PUBLISH", b"a:inbox:n", b""]);
        command(&mut out, &[&[b'x'; 12][..]]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$9\r\na:inbox:n\r\n$0\r\n\r\n*1\r\n$12\r\nxxxxxxxxxxxx\r\n"
        );
    }

    #[test]
    fn a_command_before_its_tail_is_the_command_with_it() {
        let (mut whole, mut before) = (BytesMut::new(), BytesMut::new());
        command(&mut whole, &[b"PUBLISH", b"inbox", b"payload"]);
        command_before(&mut before, &[b"PUBLISH", b"inbox"], 7);
        before.extend_from_slice(b"payload");
        before.extend_from_slice(END);
        assert_eq!(whole, before);
    }

    #[test]
    fn every_kind_of_reply_is_read() {
        let replies = all(b"+OK\r\n-ERR no\r\n:42\r\n:-1\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$0\r\n\r\n");
        assert_eq!(
            replies.unwrap(),
            vec![
                Reply::Status("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Integer(42),
                Reply::Integer(-1),
                bulk(b"a\r\n"),
                Reply::Bulk(None),
                Reply::Array(None),
                Reply::Array(Some(vec![bulk(b"message"), bulk(b"ch"), bulk(b"")])),
            ]
        );
    }

    #[test]
    fn a_value_cut_anywhere_waits_for_the_rest_and_reads_the_same() {
        let big = vec![7u8; SPLIT_FROM + 5];
        let mut stream = b"*3\r\n$7\r\nmessage\r\n$5\r\ninbox\r\n$".to_vec();
        stream.extend_from_slice(format!("{}\r\n", big.len()).as_bytes());
        stream.extend_from_slice(&big);
        stream.extend_from_slice(b"\r\n:7\r\n");
        let expected =
            vec![Reply::Array(Some(vec![bulk(b"message"), bulk(b"inbox"), bulk(&big)])), Reply::Integer(7)];
        for cut in [0, 1, 3, 4, 5, 17, 30, 40, stream.len() - 3, stream.len() - 1] {
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut replies = Vec::new();
            while let Some(reply) = take(&mut buf).unwrap() {
                replies.push(reply);
            }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(reply) = take(&mut buf).unwrap() {
                replies.push(reply);
            }
            assert_eq!(replies, expected, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_resp_or_too_large_is_an_error() {
        assert_eq!(all(b"?x\r\n"), Err(RespError::Type(b'?')));
        assert_eq!(all(b":4x\r\n"), Err(RespError::Number));
        assert_eq!(all(b"$abc\r\n"), Err(RespError::Number));
        assert_eq!(all(b"$3\r\nabcde\r\n"), Err(RespError::Terminator));
        let huge = format!("${}\r\n", MAX_BULK + 1);
        assert_eq!(all(huge.as_bytes()), Err(RespError::TooLong(MAX_BULK as i64 + 1)));
        assert_eq!(all(b"*100000\r\n"), Err(RespError::TooMany(100_000)));
        assert_eq!(all(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"), Err(RespError::TooDeep));
        // Strings each within the limit, too many bytes together: refused once announced,
        // before they arrive.
        let within = format!("${MAX_BULK}\r\n");
        let one = format!("*2\r\n{within}");
        assert_eq!(take(&mut BytesMut::from(one.as_bytes())), Ok(None), "one announced: it may come");
        let mut two = b"*2\r\n$2097152\r\n".to_vec();
        two.extend(std::iter::repeat_n(b'x', 2 << 20));
        two.extend_from_slice(format!("\r\n{within}").as_bytes());
        assert_eq!(take(&mut BytesMut::from(&two[..])), Err(RespError::TooLarge));
        assert_eq!(all(&[b'+'; MAX_LINE + 2]), Err(RespError::LongLine));
        assert_eq!(all(b"+OK\rX"), Err(RespError::Terminator));
        // Incomplete is not an error: it waits, and says how much it waits for when it knows.
        assert_eq!(take(&mut BytesMut::from(&b"$5\r\nab"[..])), Ok(None));
        assert_eq!(wanted(b"$5\r\nab"), 4 + 5 + 2);
        assert_eq!(wanted(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1000\r\nxy"), 32 + 1000 + 2);
        assert_eq!(wanted(b"*3\r\n$7\r\nmess"), 8 + 7 + 2);
        assert_eq!(wanted(b":1\r\n"), 0, "whole");
    }
}
