//! The HTTP side of a connection: reading the upgrade request, refusing it with the right
//! status before any frame flows, or answering 101.
//!
//! We parse the request ourselves (httparse) rather than let the WebSocket library do it, so
//! that a wrong path is a 404, a request that is not an upgrade a 400, and a full room a 409,
//! each with a body saying why, and so the request head has a size limit.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::rooms::id::RoomId;

/// How large a request head may be (`limits.max_request_head_bytes`,
/// `limits.max_request_headers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeadLimits {
    pub(crate) bytes: usize,
    pub(crate) headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits { bytes: 16 * 1024, headers: 64 }
    }
}

/// A valid upgrade request.
#[derive(Debug)]
pub(crate) struct UpgradeRequest {
    pub(crate) room: RoomId,
    pub(crate) path: String,
    /// The request target as sent, path and query.
    pub(crate) target: String,
    /// The request's headers, in order (for the authorization hook).
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    accept: String,
    /// Bytes read past the request head (the start of the first frame, if the client sent it
    /// early).
    pub(crate) leftover: Vec<u8>,
}

/// Why an upgrade request was not accepted.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The client went away or the transport failed before a whole request arrived.
    Closed(String),
    /// Answer with this status and reason, and a `Retry-After` (seconds) when trying again
    /// later may succeed.
    Status { status: u16, reason: String, path: Option<String>, retry_after: Option<u32> },
}

impl Refusal {
    pub(crate) fn status(status: u16, reason: impl Into<String>, path: Option<&str>) -> Self {
        Refusal::Status { status, reason: reason.into(), path: path.map(str::to_owned), retry_after: None }
    }

    /// The same refusal, saying when to try again.
    #[must_use]
    pub(crate) fn retry_after(self, seconds: u32) -> Self {
        match self {
            Refusal::Status { status, reason, path, .. } => {
                Refusal::Status { status, reason, path, retry_after: Some(seconds) }
            }
            closed => closed,
        }
    }
}

/// Reads the request head and checks path and upgrade headers.
pub(crate) async fn read_request<S>(
    stream: &mut S,
    prefix: &str,
    limits: HeadLimits,
) -> Result<UpgradeRequest, Refusal>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    // How much of the head the last parse saw.
    let mut seen = 0;
    loop {
        // Parsed from the start when a read completes a line (heads are short, and mostly
        // arrive in one read), not after every read: a head sent a byte at a time is parsed
        // once per line, not once per byte, and a malformed line is still refused at once.
        // Before giving up (too long, or closed), whatever came since is parsed too, so the
        // outcome does not depend on how the bytes arrived.
        if buf[seen..].contains(&b'\n') {
            seen = buf.len();
            if let Some(done) = parse_head(&buf, prefix, limits) {
                return done;
            }
        }
        let last_parse =
            |buf: &[u8], seen: usize| (seen < buf.len()).then(|| parse_head(buf, prefix, limits)).flatten();
        if buf.len() >= limits.bytes {
            if let Some(done) = last_parse(&buf, seen) {
                return done;
            }
            let why = format!("request head larger than {} bytes", limits.bytes);
            return Err(Refusal::status(431, why, None));
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(limits.bytes - buf.len());
        match stream.read(&mut chunk[..want]).await {
            Ok(0) => {
                if let Some(done) = last_parse(&buf, seen) {
                    return done;
                }
                return Err(Refusal::Closed("closed before sending a whole request".into()));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(Refusal::Closed(e.to_string())),
        }
    }
}

/// Parses the head at the start of `buf`: `None` while it is not whole and nothing is wrong
/// with it yet.
fn parse_head(buf: &[u8], prefix: &str, limits: HeadLimits) -> Option<Result<UpgradeRequest, Refusal>> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.headers];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => Some(
            check(&request, prefix)
                .map(|parsed| UpgradeRequest { leftover: buf[head_len..].to_vec(), ..parsed }),
        ),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => {
            Some(Err(Refusal::status(431, "too many request headers", None)))
        }
        Err(e) => Some(Err(Refusal::status(400, format!("malformed HTTP request: {e}"), None))),
    }
}

fn header<'a>(request: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(str::trim)
}

fn check(request: &httparse::Request<'_, '_>, prefix: &str) -> Result<UpgradeRequest, Refusal> {
    let target = request.path.unwrap_or_default();
    let path = target.split('?').next().unwrap_or_default();
    let Some(rest) = path.strip_prefix(prefix) else {
        return Err(Refusal::status(404, format!("path must start with {prefix}"), Some(path)));
    };
    let room = RoomId::parse(rest).map_err(|why| Refusal::status(404, why.to_string(), Some(path)))?;
    let not_upgrade = |why: &str| Refusal::status(400, format!("not a WebSocket upgrade: {why}"), Some(path));
    if request.method != Some("GET") {
        return Err(not_upgrade("method is not GET"));
    }
    let connection_upgrade = header(request, "connection")
        .is_some_and(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")));
    if !connection_upgrade {
        return Err(not_upgrade("no Connection: upgrade header"));
    }
    if !header(request, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(not_upgrade("no Upgrade: websocket header"));
    }
    if header(request, "sec-websocket-version") != Some("13") {
        return Err(Refusal::status(426, "only WebSocket version 13 is supported", Some(path)));
    }
    let key = header(request, "sec-websocket-key").filter(|k| !k.is_empty() && k.len() <= 64);
    let Some(key) = key else {
        return Err(not_upgrade("missing or invalid Sec-WebSocket-Key"));
    };
    Ok(UpgradeRequest {
        room,
        path: path.to_owned(),
        target: target.to_owned(),
        headers: request.headers.iter().map(|h| (h.name.to_owned(), h.value.to_vec())).collect(),
        accept: derive_accept_key(key.as_bytes()),
        leftover: Vec::new(),
    })
}

/// Writes the 101 that completes the upgrade.
pub(crate) async fn accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &UpgradeRequest,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        request.accept
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// Writes a refusal: the status, a plain-text body with the reason, `Retry-After` when given,
/// and `Connection: close`.
pub(crate) async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    reason: &str,
    retry_after: Option<u32>,
) -> std::io::Result<()> {
    let phrase = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let body = format!("{reason}\n");
    let mut extra = String::new();
    if status == 426 {
        extra.push_str("Sec-WebSocket-Version: 13\r\n");
    }
    if let Some(seconds) = retry_after {
        extra.push_str(&format!("Retry-After: {seconds}\r\n"));
    }
    let response = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/micronets/v1/ws-proxy/";

    async fn parse(request: &str) -> Result<UpgradeRequest, Refusal> {
        let mut bytes = request.as_bytes();
        read_request(&mut bytes, PREFIX, HeadLimits::default()).await
    }

    fn upgrade(path: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    }

    /// Reads `request` as if it came a byte at a time.
    async fn parse_bytewise(request: &str) -> Result<UpgradeRequest, Refusal> {
        let (mut client, mut server) = tokio::io::duplex(1);
        let bytes = request.as_bytes().to_vec();
        let writer = tokio::spawn(async move {
            for byte in bytes {
                if tokio::io::AsyncWriteExt::write_all(&mut client, &[byte]).await.is_err() {
                    break;
                }
            }
        });
        let result = read_request(&mut server, PREFIX, HeadLimits::default()).await;
        drop(server);
        let _ = writer.await;
        result
    }

    #[tokio::test]
    async fn a_head_sent_a_byte_at_a_time_reads_as_one_sent_at_once() {
        let request = upgrade("/micronets/v1/ws-proxy/gw/1");
        assert_eq!(parse_bytewise(&request).await.unwrap().room, parse(&request).await.unwrap().room);
        // A bad byte after the last line's end is found when the peer gives up, not missed.
        let cut = "GET /micronets/v1/ws-proxy/gw/1 HTTP/1.1\r\nHo\x01st";
        assert_eq!(status(parse_bytewise(cut).await), 400);
        assert_eq!(status(parse(cut).await), 400);
    }

    fn status(result: Result<UpgradeRequest, Refusal>) -> u16 {
        match result {
            Err(Refusal::Status { status, .. }) => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn accepts_a_valid_upgrade_and_keeps_leftover_bytes() {
        let mut text = upgrade("/micronets/v1/ws-proxy/gw/mock-gw?x=1");
        text.push_str("early");
        let request = parse(&text).await.unwrap();
        assert_eq!(request.room.as_str(), "gw/mock-gw");
        assert_eq!(request.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(request.leftover, b"early");
    }

    #[tokio::test]
    async fn paths_are_checked_before_headers() {
        assert_eq!(status(parse(&upgrade("/other/x")).await), 404);
        assert_eq!(status(parse(&upgrade("/micronets/v1/ws-proxy")).await), 404);
        assert_eq!(status(parse(&upgrade("/micronets/v1/ws-proxy/")).await), 404);
        assert_eq!(status(parse(&upgrade("/micronets/v1/ws-proxy/a/../b")).await), 404);
        assert_eq!(status(parse(&upgrade("/micronets/v1/ws-proxy/a%20b")).await), 404);
        assert_eq!(status(parse("GET /nope HTTP/1.1\r\n\r\n").await), 404);
    }

    #[tokio::test]
    async fn the_head_limits_are_the_configured_ones() {
        let limits = HeadLimits { bytes: 1024, headers: 8 };
        let with = |extra: &str| {
            upgrade("/micronets/v1/ws-proxy/r").replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1)
        };
        let read = |text: String| async move { read_request(&mut text.as_bytes(), PREFIX, limits).await };
        assert!(read(with("X-A: 1")).await.is_ok());
        assert_eq!(status(read(with("X-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4")).await), 431, "9 headers");
        let Err(Refusal::Status { status, reason, .. }) =
            read(with(&format!("X-A: {}", "a".repeat(1100)))).await
        else {
            panic!("a long head is refused")
        };
        assert_eq!((status, reason.as_str()), (431, "request head larger than 1024 bytes"));
    }

    #[tokio::test]
    async fn non_upgrades_are_bad_requests() {
        assert_eq!(status(parse("GET /micronets/v1/ws-proxy/r HTTP/1.1\r\nHost: x\r\n\r\n").await), 400);
        let post = upgrade("/micronets/v1/ws-proxy/r").replacen("GET", "POST", 1);
        assert_eq!(status(parse(&post).await), 400);
        let v8 = upgrade("/micronets/v1/ws-proxy/r").replace("Version: 13", "Version: 8");
        assert_eq!(status(parse(&v8).await), 426);
        assert_eq!(status(parse("\x16\x03\x01garbage\r\n\r\n").await), 400);
        let many: String = (0..70).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(parse(&format!("GET / HTTP/1.1\r\n{many}\r\n")).await), 431);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(20_000));
        assert_eq!(status(parse(&huge).await), 431);
        assert!(matches!(parse("GET / HTTP/1.1\r\n").await, Err(Refusal::Closed(_))));
    }
}
