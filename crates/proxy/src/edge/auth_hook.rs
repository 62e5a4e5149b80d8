//! The external authorization hook (`[auth_hook]`): before the upgrade, an HTTP service of
//! the operator's is asked whether this certificate may open this request. It gets a `GET` to
//! its URL carrying the client's request headers and the certificate identity; a 2xx allows,
//! a 4xx refuses, and anything else (another status, no answer within the timeout, no
//! connection) refuses too: the hook fails closed. Definite answers (2xx and 4xx) are cached
//! for a short time, keyed by everything the hook was shown.
//!
//! Each check opens its own connection (`Connection: close`), so a hook that goes away and
//! comes back needs no pool to heal, and `max_in_flight` bounds how many run at once.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderName, HeaderValue, USER_AGENT};
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::config::HookConfig;
use crate::error::{Error, Result};
use crate::identity::PeerIdentity;

/// The hook's answer for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// 2xx.
    Allow,
    /// A 4xx, with its status.
    Deny(u16),
    /// No usable answer; the request is refused (fail closed).
    Unavailable(String),
}

/// Why one request to the hook got no status.
#[derive(Debug, thiserror::Error)]
enum HookError {
    /// The limit on checks in flight was closed (cannot happen while the hook lives).
    #[error("no place among the checks in flight")]
    Closed,
    /// The request could not be made from the configured URL.
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    /// The URL's authority is not a valid `Host` header.
    #[error("cannot build the request: {0}")]
    Host(#[from] http::header::InvalidHeaderValue),
    /// No TCP connection.
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect { host: String, port: u16, source: std::io::Error },
    /// The TLS handshake with an `https://` hook failed.
    #[error("TLS with the hook failed: {0}")]
    Tls(std::io::Error),
    /// HTTP/1.1 with the hook failed.
    #[error("HTTP with the hook failed: {0}")]
    Http(#[from] hyper::Error),
}

/// A verdict and whether it came from the cache.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) verdict: Verdict,
    pub(crate) cached: bool,
}

impl Answer {
    /// The metrics label of this answer.
    pub(crate) fn label(&self) -> &'static str {
        match (&self.verdict, self.cached) {
            (Verdict::Allow, false) => "allowed",
            (Verdict::Allow, true) => "allowed_cached",
            (Verdict::Deny(_), false) => "denied",
            (Verdict::Deny(_), true) => "denied_cached",
            (Verdict::Unavailable(_), _) => "unavailable",
        }
    }
}

/// What the hook is shown about one upgrade request.
pub(crate) struct Subject<'a> {
    pub(crate) identity: &'a PeerIdentity,
    pub(crate) peer: IpAddr,
    /// The request target, path and query, as the client sent it.
    pub(crate) target: &'a str,
    pub(crate) room: &'a str,
    /// The client's request headers, in order.
    pub(crate) headers: &'a [(String, Vec<u8>)],
}

/// A configured hook.
pub(crate) struct AuthHook {
    url: Uri,
    host: String,
    port: u16,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
    in_flight: Semaphore,
    cache: Cache,
}

/// Client headers never passed on: hop-by-hop and framing headers, the WebSocket handshake's
/// own, and `Host` (sent as `X-Forwarded-Host`).
const DROPPED: [&str; 13] = [
    "connection",
    "upgrade",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "proxy-authorization",
    "proxy-connection",
    "host",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
];

/// Prefixes of the headers the proxy sets: a client sending one is not passed on, so no
/// client can claim another identity.
const RESERVED_PREFIXES: [&str; 4] = ["x-client-cert-", "x-micronets-", "x-original-", "x-forwarded-"];

impl AuthHook {
    /// Prepares the hook; the TLS trust for an `https://` URL is loaded here.
    ///
    /// # Errors
    /// [`Error::Config`] for an unusable URL, [`Error::Tls`] for an unusable CA bundle.
    pub(crate) fn new(config: &HookConfig) -> Result<Self> {
        let invalid = |reason: &str| Error::Config { key: "auth_hook.url".into(), reason: reason.into() };
        let https = match config.url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("must be an http:// or https:// URL")),
        };
        let host = config.url.host().ok_or_else(|| invalid("has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = config.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|_| invalid("host is not a valid TLS name"))?;
            Some((
                TlsConnector::from(super::tls::client_config(
                    config.ca_file.as_deref(),
                    "auth_hook.ca_file",
                )?),
                name,
            ))
        } else {
            None
        };
        Ok(AuthHook {
            url: config.url.clone(),
            host,
            port,
            tls,
            timeout: config.timeout,
            in_flight: Semaphore::new(config.max_in_flight),
            cache: Cache::new(config.cache_ttl, config.cache_entries),
        })
    }

    /// Asks the hook (or its cache) about one request.
    pub(crate) async fn check(&self, subject: &Subject<'_>) -> Answer {
        let headers = forwarded_headers(subject);
        let key = cache_key(subject, &headers);
        if let Some(verdict) = self.cache.get(&key, Instant::now()) {
            return Answer { verdict, cached: true };
        }
        let verdict = match tokio::time::timeout(self.timeout, self.ask(headers)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Verdict::Allow,
            Ok(Ok(status)) if (400..500).contains(&status) => Verdict::Deny(status),
            Ok(Ok(status)) => Verdict::Unavailable(format!("the hook answered {status}")),
            Ok(Err(why)) => Verdict::Unavailable(why.to_string()),
            Err(_) => Verdict::Unavailable(format!("no answer within {:?}", self.timeout)),
        };
        if !matches!(verdict, Verdict::Unavailable(_)) {
            self.cache.put(key, verdict.clone(), Instant::now());
        }
        Answer { verdict, cached: false }
    }

    /// One request to the hook; its status.
    async fn ask(&self, headers: Vec<(HeaderName, HeaderValue)>) -> std::result::Result<u16, HookError> {
        let _permit = self.in_flight.acquire().await.map_err(|_| HookError::Closed)?;
        let mut request = Request::get(self.url.clone()).body(Empty::<Bytes>::new())?;
        let fields = request.headers_mut();
        if let Some(authority) = self.url.authority() {
            fields.insert(HOST, HeaderValue::from_str(authority.as_str())?);
        }
        fields.insert(CONNECTION, HeaderValue::from_static("close"));
        fields.insert(USER_AGENT, HeaderValue::from_static(concat!("ws-proxy/", env!("CARGO_PKG_VERSION"))));
        for (name, value) in headers {
            fields.append(name, value);
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| HookError::Connect { host: self.host.clone(), port: self.port, source })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(HookError::Tls)?;
                exchange(tls, request).await
            }
            None => exchange(tcp, request).await,
        }
    }
}

/// Sends the request on a fresh HTTP/1.1 connection and returns the response's status; the
/// connection is dropped with the body unread.
async fn exchange<IO>(io: IO, request: Request<Empty<Bytes>>) -> std::result::Result<u16, HookError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    // The connection may finish (the hook answered and closed) before the response is picked
    // up; the response is then waiting to be read.
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        result = &mut connection => {
            result?;
            response.await
        }
    };
    Ok(response?.status().as_u16())
}

/// The headers the hook gets: the client's own, less [`DROPPED`] and [`RESERVED_PREFIXES`],
/// then what the proxy knows about the request.
fn forwarded_headers(subject: &Subject<'_>) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::with_capacity(subject.headers.len() + 10);
    let mut host = None;
    for (name, value) in subject.headers {
        let lower = name.to_ascii_lowercase();
        if lower == "host" {
            host = Some(value.as_slice());
        }
        if DROPPED.contains(&lower.as_str()) || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p)) {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(value))
        {
            out.push((name, value));
        }
    }
    let identity = subject.identity;
    let mut set = |name: &'static str, value: &str| {
        out.push((HeaderName::from_static(name), escaped(value)));
    };
    if let Some(host) = host.and_then(|h| std::str::from_utf8(h).ok()) {
        set("x-forwarded-host", host);
    }
    set("x-forwarded-for", &subject.peer.to_string());
    set("x-forwarded-proto", "wss");
    set("x-original-uri", subject.target);
    set("x-original-method", "GET");
    set("x-micronets-room", subject.room);
    set("x-client-cert-subject", &identity.subject);
    if let Some(cn) = &identity.common_name {
        set("x-client-cert-cn", cn);
    }
    if !identity.sans.is_empty() {
        set("x-client-cert-san", &identity.sans.join(", "));
    }
    set("x-client-cert-serial", &identity.serial);
    set("x-client-cert-fingerprint", &identity.fingerprint.to_string());
    set("x-client-cert-not-after", &identity.not_after.to_string());
    out
}

/// A header value from certificate text: bytes a header cannot carry (controls, non-ASCII)
/// and `%` itself are percent-encoded, so the hook can decode the exact text.
fn escaped(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    // Every byte left is visible ASCII or a space: always a valid value.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The cache key: a digest of the certificate and of everything sent to the hook, so a
/// request that differs in any header the hook could decide on is asked about afresh.
fn cache_key(subject: &Subject<'_>, headers: &[(HeaderName, HeaderValue)]) -> [u8; 32] {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    digest.update(&subject.identity.fingerprint.0);
    for (name, value) in headers {
        for part in [name.as_str().as_bytes(), value.as_bytes()] {
            digest.update(&(part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.finish().as_ref());
    key
}

/// Recent definite answers, oldest evicted first.
struct Cache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<[u8; 32], (Instant, Verdict)>,
    /// Keys in insertion order with their expiry; a key put again has a newer entry later on.
    order: VecDeque<([u8; 32], Instant)>,
}

impl Cache {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Cache { ttl, capacity, entries: Mutex::new(Entries::default()) }
    }

    fn get(&self, key: &[u8; 32], now: Instant) -> Option<Verdict> {
        let entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.map.get(key).filter(|(expiry, _)| *expiry > now).map(|(_, verdict)| verdict.clone())
    }

    fn put(&self, key: [u8; 32], verdict: Verdict, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let expiry = now + self.ttl;
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.map.insert(key, (expiry, verdict));
        entries.order.push_back((key, expiry));
        // Every expiry is `ttl` after its insertion, so the order is also expiry order: what
        // has expired is at the front.
        while let Some(&(oldest, oldest_expiry)) = entries.order.front() {
            let over = entries.map.len() > self.capacity || entries.order.len() > 2 * self.capacity;
            if !over && oldest_expiry > now {
                break;
            }
            entries.order.pop_front();
            if entries.map.get(&oldest).is_some_and(|(expiry, _)| *expiry == oldest_expiry) {
                entries.map.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Fingerprint;

    #[test]
    fn every_answer_label_is_shown_from_the_first_scrape() {
        use crate::metrics::labels::{AuthHookResults, LabelSet};
        for verdict in [Verdict::Allow, Verdict::Deny(403), Verdict::Unavailable(String::new())] {
            for cached in [false, true] {
                let label = Answer { verdict: verdict.clone(), cached }.label();
                assert!(AuthHookResults::KNOWN.contains(&label), "{label}");
            }
        }
    }

    fn identity() -> PeerIdentity {
        PeerIdentity {
            subject: "CN=gw-1,O=Ünicode %".into(),
            common_name: Some("gw-1".into()),
            organization: None,
            org_unit: None,
            sans: vec!["DNS:gw-1.example".into(), "URI:urn:gw:1".into()],
            serial: "0A1B".into(),
            fingerprint: Fingerprint([7; 32]),
            not_after: 1_900_000_000,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())).collect()
    }

    fn subject<'a>(identity: &'a PeerIdentity, headers: &'a [(String, Vec<u8>)]) -> Subject<'a> {
        Subject {
            identity,
            peer: "127.0.0.1".parse().unwrap(),
            target: "/micronets/v1/ws-proxy/gw/gw-1?x=1",
            room: "gw/gw-1",
            headers,
        }
    }

    fn value<'a>(out: &'a [(HeaderName, HeaderValue)], name: &str) -> Vec<&'a str> {
        out.iter().filter(|(n, _)| n == name).map(|(_, v)| v.to_str().unwrap()).collect()
    }

    #[test]
    fn the_hook_sees_the_client_headers_and_the_identity_but_no_forged_identity() {
        let identity = identity();
        let client = headers(&[
            ("Host", "proxy:5050"),
            ("Authorization", "Bearer t0ken"),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Key", "abc"),
            ("X-Client-Cert-CN", "manager"),
            ("x-forwarded-for", "10.9.9.9"),
            ("X-Trace", "a"),
            ("X-Trace", "b"),
        ]);
        let out = forwarded_headers(&subject(&identity, &client));
        assert_eq!(value(&out, "authorization"), ["Bearer t0ken"]);
        assert_eq!(value(&out, "x-trace"), ["a", "b"]);
        assert_eq!(value(&out, "x-client-cert-cn"), ["gw-1"], "the client's own is dropped");
        assert_eq!(value(&out, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(value(&out, "x-forwarded-host"), ["proxy:5050"]);
        assert_eq!(value(&out, "x-original-uri"), ["/micronets/v1/ws-proxy/gw/gw-1?x=1"]);
        assert_eq!(value(&out, "x-micronets-room"), ["gw/gw-1"]);
        assert_eq!(value(&out, "x-client-cert-subject"), ["CN=gw-1,O=%C3%9Cnicode %25"]);
        assert_eq!(value(&out, "x-client-cert-san"), ["DNS:gw-1.example, URI:urn:gw:1"]);
        assert_eq!(value(&out, "x-client-cert-fingerprint"), [Fingerprint([7; 32]).to_string()]);
        for gone in ["connection", "upgrade", "sec-websocket-key", "host"] {
            assert!(value(&out, gone).is_empty(), "{gone} is not passed on");
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever headers (as httparse hands them over: any token name, any bytes but CR
        /// and LF) and whatever certificate text: no panic, nothing the client sent under a
        /// reserved name, and the proxy's own headers always there, once each.
        #[test]
        fn forwarding_stands_up_to_any_headers_and_certificate_text(
            pairs in proptest::collection::vec(
                ("[!#$%&'*+.^_`|~0-9A-Za-z-]{1,24}", proptest::collection::vec(any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'), 0..40)),
                0..20,
            ),
            dn in ".{0,60}",
            cn in proptest::option::of(".{0,20}"),
        ) {
            let mut identity = identity();
            identity.subject = dn;
            identity.common_name = cn;
            let headers: Vec<(String, Vec<u8>)> = pairs;
            let out = forwarded_headers(&subject(&identity, &headers));
            const OURS: [&str; 12] = [
                "x-forwarded-host", "x-forwarded-for", "x-forwarded-proto", "x-original-uri",
                "x-original-method", "x-micronets-room", "x-client-cert-subject", "x-client-cert-cn",
                "x-client-cert-san", "x-client-cert-serial", "x-client-cert-fingerprint",
                "x-client-cert-not-after",
            ];
            for (name, _) in &out {
                prop_assert!(!DROPPED.contains(&name.as_str()), "{name} is passed on");
                if RESERVED_PREFIXES.iter().any(|p| name.as_str().starts_with(p)) {
                    prop_assert!(OURS.contains(&name.as_str()), "the client's {name} is passed on");
                    let count = out.iter().filter(|(n, _)| n == name).count();
                    prop_assert!(count == 1, "{name} {count} times");
                }
            }
            for required in ["x-forwarded-for", "x-original-uri", "x-micronets-room", "x-client-cert-subject", "x-client-cert-fingerprint"] {
                prop_assert_eq!(value(&out, required).len(), 1, "{}", required);
            }
            let _ = cache_key(&subject(&identity, &headers), &out);
        }
    }

    #[test]
    fn the_cache_key_changes_with_any_header_the_hook_sees() {
        let identity = identity();
        let a = headers(&[("Authorization", "Bearer a")]);
        let b = headers(&[("Authorization", "Bearer b")]);
        let key = |h: &[(String, Vec<u8>)]| {
            let s = subject(&identity, h);
            cache_key(&s, &forwarded_headers(&s))
        };
        assert_eq!(key(&a), key(&a));
        assert_ne!(key(&a), key(&b));
        let mut other = identity.clone();
        other.fingerprint = Fingerprint([8; 32]);
        let s = subject(&other, &a);
        assert_ne!(key(&a), cache_key(&s, &forwarded_headers(&s)));
    }

    #[test]
    fn cached_answers_expire_and_the_oldest_make_room() {
        let cache = Cache::new(Duration::from_secs(10), 2);
        let now = Instant::now();
        cache.put([1; 32], Verdict::Allow, now);
        cache.put([2; 32], Verdict::Deny(403), now);
        assert_eq!(cache.get(&[1; 32], now), Some(Verdict::Allow));
        assert_eq!(cache.get(&[2; 32], now + Duration::from_secs(9)), Some(Verdict::Deny(403)));
        assert_eq!(cache.get(&[2; 32], now + Duration::from_secs(10)), None, "expired");
        cache.put([3; 32], Verdict::Allow, now + Duration::from_secs(1));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&[1; 32], now), None, "the oldest made room");
        assert_eq!(cache.get(&[3; 32], now), Some(Verdict::Allow));
        cache.put([4; 32], Verdict::Allow, now + Duration::from_secs(30));
        assert_eq!(cache.len(), 1, "expired entries are dropped");
        let off = Cache::new(Duration::from_secs(10), 0);
        off.put([1; 32], Verdict::Allow, now);
        assert_eq!(off.get(&[1; 32], now), None);
    }

    #[test]
    fn a_key_put_again_keeps_its_newer_entry() {
        let cache = Cache::new(Duration::from_secs(10), 4);
        let now = Instant::now();
        cache.put([1; 32], Verdict::Deny(403), now);
        cache.put([1; 32], Verdict::Allow, now + Duration::from_secs(11));
        assert_eq!(cache.get(&[1; 32], now + Duration::from_secs(12)), Some(Verdict::Allow));
    }
}
