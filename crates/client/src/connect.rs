//! Opening the WebSocket: TCP (directly or through an HTTP CONNECT proxy), TLS, the upgrade
//! with extra headers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::tls::{TlsOptions, client_config};
use crate::{Error, Result};

/// The WebSocket this crate speaks over.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Everything needed to reach the relay.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `wss://host:port/micronets/v1/ws-proxy/<room>`.
    pub url: String,
    /// Certificates and verification.
    pub tls: TlsOptions,
    /// An HTTP proxy to tunnel through with CONNECT (`http://host:port`); see
    /// [`proxy_from_env`].
    pub via: Option<String>,
    /// Extra headers for the upgrade request (`Authorization: Bearer ...`).
    pub headers: Vec<(String, String)>,
    /// Deadline for TCP, CONNECT, TLS and the upgrade together.
    pub timeout: Duration,
    /// Largest frame accepted from the relay.
    pub max_frame_bytes: usize,
    /// The local address to connect from (a multi-homed gateway's uplink); any when `None`.
    pub local_address: Option<IpAddr>,
}

/// The target of a `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (443 when the URL has none).
    pub port: u16,
}

impl Target {
    /// Reads the host and port of a `wss://` URL.
    ///
    /// # Errors
    /// [`Error::Invalid`] for anything but a `wss://host[:port]/path` URL.
    pub fn of_url(url: &str) -> Result<Self> {
        let uri: http::Uri = url.parse().map_err(|e| Error::Invalid(format!("invalid URL {url:?}: {e}")))?;
        if uri.scheme_str() != Some("wss") {
            return Err(Error::Invalid(format!(
                "invalid URL {url:?}: only wss:// is supported (the relay requires TLS)"
            )));
        }
        let host = uri.host().ok_or_else(|| Error::Invalid(format!("invalid URL {url:?}: no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Target { host, port: uri.port_u16().unwrap_or(443) })
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The CONNECT proxy for `host` from `HTTPS_PROXY` (or `https_proxy`), unless `NO_PROXY`
/// (or `no_proxy`) lists the host, one of its parent domains, or `*`.
#[must_use]
pub fn proxy_from_env(host: &str) -> Option<String> {
    proxy_for(host, |name| std::env::var(name).ok())
}

/// [`proxy_from_env`] over any variable lookup.
fn proxy_for(host: &str, var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let first = |names: [&str; 2]| names.iter().find_map(|n| var(n)).filter(|v| !v.is_empty());
    let proxy = first(["HTTPS_PROXY", "https_proxy"])?;
    let no_proxy = first(["NO_PROXY", "no_proxy"]).unwrap_or_default();
    let host = host.to_ascii_lowercase();
    let bypass =
        no_proxy.split(',').map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase()).any(|entry| {
            !entry.is_empty() && (entry == "*" || host == entry || host.ends_with(&format!(".{entry}")))
        });
    (!bypass).then_some(proxy)
}

/// Connects to the relay and completes the WebSocket upgrade, once: [`Connector`] for a client
/// that reconnects.
///
/// # Errors
/// As [`Connector::new`] and [`Connector::connect`].
pub async fn connect(options: &ConnectOptions) -> Result<Ws> {
    Connector::new(options.clone())?.connect().await
}

/// Opens WebSockets to the relay, again and again: its TLS configuration is built once, so a
/// reconnect resumes the TLS session of an earlier connection (a ticket the relay gave it)
/// instead of paying for a full handshake.
pub struct Connector {
    options: ConnectOptions,
    target: Target,
    tls: Arc<ClientConfig>,
}

impl Connector {
    /// Reads the certificates and checks the URL and headers.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad URL or header, [`Error::Tls`] naming an unusable file,
    /// [`Error::NoTrustAnchors`].
    pub fn new(options: ConnectOptions) -> Result<Self> {
        let tls = client_config(&options.tls)?;
        Connector::with_tls(options, tls)
    }

    /// A connector with a TLS configuration of the caller's (made by
    /// [`client_config`](crate::tls::client_config), with its own session store, say); the TLS
    /// part of `options` is not read.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad URL or header.
    pub fn with_tls(options: ConnectOptions, tls: Arc<ClientConfig>) -> Result<Self> {
        let target = Target::of_url(&options.url)?;
        upgrade_request(&options)?;
        Ok(Connector { options, target, tls })
    }

    /// What this connector connects with.
    #[must_use]
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Connects and completes the WebSocket upgrade.
    ///
    /// # Errors
    /// [`Error::Connect`] for TCP, proxy and TLS failures, [`Error::BadHandshake`] when the
    /// relay answers the upgrade with another status (404 wrong path, 409 room full, ...),
    /// [`Error::Timeout`] past `options.timeout`.
    pub async fn connect(&self) -> Result<Ws> {
        let options = &self.options;
        let target = &self.target;
        let request = upgrade_request(options)?;
        let tls_config = Arc::clone(&self.tls);
        let attempt = async {
            let tcp = match &options.via {
                Some(proxy) => tunnel(proxy, target).await?,
                None => tcp_connect(target, options.local_address)
                    .await
                    .map_err(|e| Error::Connect { target: target.authority(), reason: e.to_string() })?,
            };
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| Error::Invalid(format!("invalid host name {:?}", target.host)))?;
            let tls = TlsConnector::from(tls_config)
                .connect(name, tcp)
                .await
                .map_err(|e| Error::Connect { target: target.authority(), reason: format!("TLS: {e}") })?;
            tracing::trace!(
                url = %options.url,
                headers = ?request.headers().keys().map(|k| k.as_str()).collect::<Vec<_>>(),
                tls = ?tls.get_ref().1.protocol_version(),
                resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                "sending the upgrade request"
            );
            let config = WebSocketConfig::default()
                .max_message_size(Some(options.max_frame_bytes))
                .max_frame_size(Some(options.max_frame_bytes));
            match tokio_tungstenite::client_async_with_config(request, tls, Some(config)).await {
                Ok((ws, response)) => {
                    tracing::trace!(status = response.status().as_u16(), "upgrade accepted");
                    Ok(ws)
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                    let retry_after = response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    Err(Error::BadHandshake {
                        status: response.status().as_u16(),
                        body: body.trim().chars().take(200).collect(),
                        retry_after,
                    })
                }
                Err(e) => Err(Error::Connect { target: target.authority(), reason: e.to_string() }),
            }
        };
        tokio::time::timeout(options.timeout, attempt).await.map_err(|_| Error::Timeout(options.timeout))?
    }
}

/// A TCP connection to `target`, from `local` when given.
async fn tcp_connect(target: &Target, local: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(local) = local else { return TcpStream::connect((target.host.as_str(), target.port)).await };
    let mut last = None;
    for addr in tokio::net::lookup_host((target.host.as_str(), target.port)).await? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(local, 0))?;
        match socket.connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of the family of {local}"),
        )
    }))
}

/// The upgrade request of `options`: its URL and extra headers.
fn upgrade_request(options: &ConnectOptions) -> Result<Request> {
    let mut request = options.url.as_str().into_client_request()?;
    for (name, value) in &options.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Error::Invalid(format!("invalid header name {name:?}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| Error::Invalid(format!("invalid value for header {name}")))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

/// Opens a TCP connection to `target` through an HTTP proxy with CONNECT; the proxy URL's
/// user and password, if any, go as `Proxy-Authorization: Basic`, and never into a message.
async fn tunnel(proxy: &str, target: &Target) -> Result<TcpStream> {
    let shown = redacted_proxy(proxy);
    let uri: http::Uri =
        proxy.parse().map_err(|e| Error::Invalid(format!("invalid proxy URL {shown:?}: {e}")))?;
    if uri.scheme_str().is_some_and(|s| s != "http") {
        return Err(Error::Invalid(format!(
            "invalid proxy URL {shown:?}: only http:// proxies are supported"
        )));
    }
    let host = uri.host().ok_or_else(|| Error::Invalid(format!("invalid proxy URL {shown:?}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let credentials = uri.authority().and_then(|a| a.as_str().rsplit_once('@')).map(|(user, _)| user);
    let failed = |reason: String| Error::Connect { target: format!("proxy {shown}"), reason };
    let mut tcp = TcpStream::connect((host, port)).await.map_err(|e| failed(e.to_string()))?;
    let authority = target.authority();
    let authorization = credentials.map_or_else(String::new, |user| {
        use base64::Engine as _;
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(user).collect();
        format!(
            "Proxy-Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(decoded)
        )
    });
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{authorization}\r\n");
    tcp.write_all(request.as_bytes()).await.map_err(|e| failed(e.to_string()))?;
    // Read the response head byte by byte: nothing past it may be consumed, since the TLS
    // handshake follows on the same connection.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            return Err(failed("CONNECT response head too long".into()));
        }
        let byte = tcp.read_u8().await.map_err(|e| failed(format!("CONNECT: {e}")))?;
        head.push(byte);
    }
    let status_line = String::from_utf8_lossy(&head);
    let status_line = status_line.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(failed(format!("CONNECT refused: {status_line}")));
    }
    Ok(tcp)
}

/// A proxy URL fit for a message: its user and password, if any, replaced by `***`.
fn redacted_proxy(proxy: &str) -> String {
    let Some((scheme, rest)) = proxy.split_once("://") else {
        return proxy.rsplit_once('@').map_or_else(|| proxy.to_owned(), |(_, host)| format!("***@{host}"));
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => proxy.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Target::of_url("wss://proxy:5050/micronets/v1/ws-proxy/gw").unwrap(),
            Target { host: "proxy".into(), port: 5050 }
        );
        assert_eq!(Target::of_url("wss://[::1]/x").unwrap(), Target { host: "::1".into(), port: 443 });
        assert_eq!(Target { host: "::1".into(), port: 5 }.authority(), "[::1]:5");
        assert!(Target::of_url("ws://proxy/x").is_err());
        assert!(Target::of_url("not a url").is_err());
    }

    #[test]
    fn proxy_credentials_are_never_shown() {
        assert_eq!(redacted_proxy("http://user:s3cret@squid:3128"), "http://***@squid:3128");
        assert_eq!(redacted_proxy("http://squid:3128/"), "http://squid:3128/");
        assert_eq!(redacted_proxy("user:s3cret@squid:3128"), "***@squid:3128");
    }

    #[test]
    fn proxies_from_the_environment() {
        let env = |proxy: &'static str, no_proxy: &'static str| {
            move |name: &str| match name {
                "HTTPS_PROXY" => Some(proxy.to_owned()),
                "NO_PROXY" => Some(no_proxy.to_owned()),
                _ => None,
            }
        };
        let via = Some("http://squid:3128".to_owned());
        assert_eq!(proxy_for("relay.example.net", env("http://squid:3128", "")), via);
        assert_eq!(proxy_for("relay.example.net", env("http://squid:3128", "localhost, .example.net")), None);
        assert_eq!(proxy_for("RELAY.EXAMPLE.NET", env("http://squid:3128", "example.net")), None);
        assert_eq!(proxy_for("notexample.net", env("http://squid:3128", "example.net")), via);
        assert_eq!(proxy_for("anything", env("http://squid:3128", "*")), None);
        assert_eq!(proxy_for("anything", env("", "")), None);
        assert_eq!(proxy_for("anything", |_| None), None);
    }
}
