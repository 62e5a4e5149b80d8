//! `ws-client`'s command line, and the options it turns into.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use micronets_message::Hello;

use crate::bridge::BridgeOptions;
use crate::connect::{ConnectOptions, Target, proxy_from_env};
use crate::error::MAX_FRAME_BYTES;
use crate::forward::Forwarder;
use crate::run::{Retry, RunOptions};
use crate::tls::TlsOptions;
use crate::{Error, Result};

/// The original test client's flags that are not single letters, and their long forms.
pub const LEGACY: [(&str, &str); 2] = [("-cc", "--client-cert"), ("-ca", "--ca-cert")];

/// `ws-client URL [options]`.
#[derive(Parser)]
#[command(
    name = "ws-client",
    version,
    about = "A peer of the Micronets WebSocket relay: console, HTTP bridge, gateway forwarder"
)]
pub struct Cli {
    /// wss://host:port/micronets/v1/ws-proxy/<room>
    url: String,
    /// Client certificate: a pkeycert, or a certificate with --client-key (original flag -cc).
    #[arg(long)]
    client_cert: Option<PathBuf>,
    /// Client key, when not in --client-cert.
    #[arg(long)]
    client_key: Option<PathBuf>,
    /// CA bundle for the relay's certificate [default: the system trust store] (original flag -ca).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// Verify the relay's chain but not its host name (the original certificates have no SAN).
    #[arg(long)]
    skip_hostname_check: bool,
    /// Do not verify the relay's certificate at all. Dangerous.
    #[arg(long)]
    insecure: bool,
    /// Tunnel through this HTTP proxy with CONNECT [default: HTTPS_PROXY unless NO_PROXY matches].
    #[arg(long)]
    via: Option<String>,
    /// Extra upgrade request header, e.g. 'Authorization: Bearer ...' (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// peerClass of our HELLO.
    #[arg(long, default_value = "micronets-ws-test-client")]
    peer_class: String,
    /// peerId of our HELLO [default: random].
    #[arg(long)]
    peer_id: Option<String>,
    /// Address of the HTTP bridge.
    #[arg(short = 'a', long, default_value = "127.0.0.1")]
    http_proxy_address: IpAddr,
    /// Serve the HTTP bridge on this port (0: any free port).
    #[arg(short = 'p', long)]
    http_proxy_port: Option<u16>,
    /// Serve incoming REST:REQUESTs against this local HTTP service, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    forward_to: Option<String>,
    /// Bridge: answer 504 after this long without a response ("30s", "500ms" or seconds).
    #[arg(long, default_value = "30s", value_parser = duration)]
    request_timeout: Duration,
    /// Forwarder: answer 504 after this long without the local service's response.
    #[arg(long, default_value = "25s", value_parser = duration)]
    forward_timeout: Duration,
    /// Connect from this local address (a multi-homed gateway's uplink).
    #[arg(long)]
    local_address: Option<IpAddr>,
    /// Reconnect after failures, refusals and lost connections, with exponential backoff and
    /// full jitter, waiting at least what the relay's Retry-After asks [default: with
    /// --forward-to].
    #[arg(long, conflicts_with = "no_reconnect")]
    reconnect: bool,
    /// Do not reconnect, even with --forward-to.
    #[arg(long)]
    no_reconnect: bool,
    /// The longest wait between reconnection attempts ("60s", "2m"...).
    #[arg(long, default_value = "30s", value_parser = duration)]
    max_retry_delay: Duration,
    /// Ping the relay this often; a connection silent for three times this is dead, and is
    /// reconnected (with --reconnect) or ends the run.
    #[arg(long, default_value = "20s", value_parser = duration)]
    keepalive: Duration,
    /// Forwarder: leave `headers` out of responses, for bridges that cannot read them (the
    /// original test client's).
    #[arg(long, requires = "forward_to")]
    no_response_headers: bool,
    /// With --reconnect: stop when the relay refuses the upgrade (404, 409, ...).
    #[arg(long)]
    no_retry_bad_handshake: bool,
    /// Log the handshake and every frame (types, ids and sizes).
    #[arg(long)]
    trace: bool,
}

/// The longest duration an option takes: a year.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// A command-line duration that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a duration like 2s, 500ms, 2m or 30 (more than zero, at most a year)")]
struct BadDuration(String);

/// A duration on the command line: `2s`, `500ms`, `2m`, or plain seconds.
fn duration(text: &str) -> std::result::Result<Duration, BadDuration> {
    let text = text.trim();
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else if let Some(minutes) = text.strip_suffix('m') {
        minutes
            .parse::<u64>()
            .ok()
            .filter(|m| *m > 0)
            .and_then(|m| m.checked_mul(60))
            .map(Duration::from_secs)
    } else {
        text.strip_suffix('s')
            .unwrap_or(text)
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
    };
    // Far beyond any use, and small enough that no deadline that far ahead overflows.
    parsed.filter(|d| !d.is_zero() && *d <= MAX_DURATION).ok_or_else(|| BadDuration(text.to_owned()))
}

impl Cli {
    /// The log filter the command line asks for.
    #[must_use]
    pub fn log_filter(&self) -> &'static str {
        if self.trace { "micronets_client=trace,info" } else { "info" }
    }

    /// What the command line asks the client to do.
    ///
    /// # Errors
    /// [`Error::Invalid`] for a URL, header or forward target that cannot be used.
    pub fn into_options(self) -> Result<RunOptions> {
        let target = Target::of_url(&self.url)?;
        if self.insecure {
            tracing::warn!("--insecure: the relay's certificate is NOT verified; anyone can impersonate it");
        }
        let headers = self
            .headers
            .iter()
            .map(|h| h.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Error::Invalid("--header takes 'Name: value'".into()))?;
        let tls = TlsOptions {
            client_cert: self.client_cert,
            client_key: self.client_key,
            ca_cert: self.ca_cert,
            skip_hostname_check: self.skip_hostname_check,
            insecure: self.insecure,
        };
        let via = self.via.or_else(|| proxy_from_env(&target.host));
        let connect = ConnectOptions {
            url: self.url,
            tls,
            via,
            headers,
            timeout: Duration::from_secs(20),
            max_frame_bytes: MAX_FRAME_BYTES,
            local_address: self.local_address,
        };
        let gateway = self.forward_to.is_some();
        let forward = match self.forward_to {
            Some(base) => {
                let forwarder = Forwarder::new(&base, self.forward_timeout, MAX_FRAME_BYTES / 2)?;
                let forwarder =
                    if self.no_response_headers { forwarder.without_response_headers() } else { forwarder };
                Some(Arc::new(forwarder))
            }
            None => None,
        };
        let bridge_options =
            BridgeOptions { request_timeout: self.request_timeout, max_body: MAX_FRAME_BYTES / 2 };
        let bridge =
            self.http_proxy_port.map(|port| (SocketAddr::new(self.http_proxy_address, port), bridge_options));
        let peer_id = self.peer_id.unwrap_or_else(crate::session::random_peer_id);
        let hello = Hello { peer_class: Some(self.peer_class), peer_id: Some(peer_id) };
        let retry = Retry {
            // A gateway serves a room: it keeps coming back unless told not to.
            reconnect: self.reconnect || (gateway && !self.no_reconnect),
            stop_on_bad_handshake: self.no_retry_bad_handshake,
            initial: Duration::from_millis(500),
            max: self.max_retry_delay,
        };
        Ok(RunOptions { connect, hello, bridge, forward, retry, keepalive: self.keepalive })
    }
}
