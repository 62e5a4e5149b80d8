//! `ws-client`: a peer of the Micronets relay: console, HTTP bridge, gateway forwarder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use micronets_client::bridge::BridgeOptions;
use micronets_client::connect::{ConnectOptions, Target, proxy_from_env};
use micronets_client::forward::Forwarder;
use micronets_client::run::{Outcome, Retry, RunOptions, run};
use micronets_client::tls::TlsOptions;
use micronets_message::Hello;

mod legacy_args;

/// The original test client's flags that are not single letters.
const LEGACY: [(&str, &str); 2] = [("-cc", "--client-cert"), ("-ca", "--ca-cert")];

#[derive(Parser)]
#[command(
    version,
    about = "A peer of the Micronets WebSocket relay: console, HTTP bridge, gateway forwarder"
)]
struct Cli {
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
    http_proxy_address: std::net::IpAddr,
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
    /// Reconnect after failures, with capped exponential backoff and jitter.
    #[arg(long)]
    reconnect: bool,
    /// With --reconnect: stop when the relay refuses the upgrade (404, 409, ...).
    #[arg(long)]
    no_retry_bad_handshake: bool,
    /// Log the handshake and every frame (types, ids and sizes).
    #[arg(long)]
    trace: bool,
}

fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse::<u64>().ok().map(Duration::from_millis)
    } else {
        text.strip_suffix('s')
            .unwrap_or(text)
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
    };
    parsed.ok_or_else(|| format!("{text:?} is not a duration like 2s, 500ms or 30"))
}

fn main() -> ExitCode {
    let cli: Cli = match legacy_args::parse(&LEGACY) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let filter = if cli.trace { "micronets_client=trace,info" } else { "info" };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let options = match options(cli) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("ws-client: {e}");
            return ExitCode::from(64);
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::from(1);
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let outcome = runtime.block_on(run(options, stdin, tokio::io::stdout()));
    // The stdin reader may still block in a read: do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(e) => {
            eprintln!("ws-client: {e}");
            ExitCode::from(1)
        }
    }
}

fn options(cli: Cli) -> Result<RunOptions, String> {
    let target = Target::of_url(&cli.url).map_err(|e| e.to_string())?;
    if cli.insecure {
        tracing::warn!("--insecure: the relay's certificate is NOT verified; anyone can impersonate it");
    }
    let headers = cli
        .headers
        .iter()
        .map(|h| h.split_once(':').map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())))
        .collect::<Option<Vec<_>>>()
        .ok_or("--header takes 'Name: value'")?;
    let tls = TlsOptions {
        client_cert: cli.client_cert,
        client_key: cli.client_key,
        ca_cert: cli.ca_cert,
        skip_hostname_check: cli.skip_hostname_check,
        insecure: cli.insecure,
    };
    let max_frame_bytes = 1 << 20;
    let via = cli.via.or_else(|| proxy_from_env(&target.host));
    let connect =
        ConnectOptions { url: cli.url, tls, via, headers, timeout: Duration::from_secs(20), max_frame_bytes };
    let forward = match cli.forward_to {
        Some(base) => Some(Arc::new(
            Forwarder::new(&base, cli.forward_timeout, max_frame_bytes / 2).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let bridge_options =
        BridgeOptions { request_timeout: cli.request_timeout, max_body: max_frame_bytes / 2 };
    let bridge =
        cli.http_proxy_port.map(|port| (SocketAddr::new(cli.http_proxy_address, port), bridge_options));
    let peer_id = cli.peer_id.unwrap_or_else(micronets_client::session::random_peer_id);
    let hello = Hello { peer_class: Some(cli.peer_class), peer_id: Some(peer_id) };
    let retry = Retry {
        reconnect: cli.reconnect,
        stop_on_bad_handshake: cli.no_retry_bad_handshake,
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
    Ok(RunOptions { connect, hello, bridge, forward, retry })
}
