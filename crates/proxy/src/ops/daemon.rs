//! The daemon's start and life, for `ws-proxy`: load the configuration (a file, or the dev
//! PKI), set up logging, connect the cluster, bind the listeners, install the signals, say
//! "listening on", serve until signalled, and turn the end into an exit status.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing::{error, info};

use super::proxy::Proxy;
use super::shutdown::DaemonSignals;
use super::{file_limit, logging};
use crate::config::{Config, FileConfig, Overrides};
use crate::error::Result;

/// Where the development mode keeps its PKI.
pub const DEV_PKI_DIR: &str = "certs/dev";

/// Loads and validates the configuration (`path`; without one, the dev PKI's with `dev`,
/// else the built-in defaults) and the TLS material. `serving` (not for `check-config`) sets up
/// logging first, so what loading warns about is logged, and fits `max_connections` to the
/// open-file limit.
///
/// # Errors
/// The configuration, TLS or dev-PKI error, naming the file or key.
pub fn load(path: Option<&Path>, dev: bool, overrides: &Overrides, serving: bool) -> Result<Proxy> {
    let file = match path {
        Some(path) => FileConfig::load(path)?,
        None if dev => {
            let pki = micronets_certgen::dev::DevPki::new(DEV_PKI_DIR);
            micronets_certgen::dev::ensure(&pki)?;
            FileConfig::dev(&pki)
        }
        None => FileConfig::default(),
    };
    let mut config = file.into_config(overrides)?;
    if serving {
        logging::init(config.log_format, &config.log_level)?;
        file_limit::fit(&mut config);
    }
    match path {
        Some(path) => Proxy::from_file(config, path.to_owned(), overrides.clone()),
        None => Proxy::new(config),
    }
}

/// Runs the daemon to its end: connects the cluster, binds, installs the signals, logs
/// "listening on" (and calls `on_listening` with the address and the configuration),
/// serves, drains. Exit status: 0
/// after a complete drain, 128 + the signal's number when a second signal cut it short, 1 when
/// it could not start (the reason is logged).
pub async fn run(proxy: Proxy, on_listening: impl FnOnce(SocketAddr, &Config)) -> ExitCode {
    let proxy = match proxy.connect().await {
        Ok(proxy) => proxy,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    let config = &proxy.shared.config;
    let (listener, passed) = match peers_listener(config) {
        Ok(listener) => listener,
        Err(e) => {
            error!(bind = %config.bind, error = %e, "cannot listen for peers");
            return ExitCode::from(1);
        }
    };
    let admin = match config.admin_bind {
        Some(addr) => match bind(addr, "the admin endpoint").await {
            Some(admin) => Some(admin),
            None => return ExitCode::from(1),
        },
        None => None,
    };
    let signals = match DaemonSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            error!(error = %e, "cannot install the signal handlers");
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().unwrap_or(config.bind);
    if passed {
        info!("listening on {addr} (the socket the service manager passed: listen.bind is not used)");
    } else {
        info!("listening on {addr}");
    }
    if let Some(Ok(admin)) = admin.as_ref().map(TcpListener::local_addr) {
        let scheme = if config.admin_access.tls { "https" } else { "http" };
        info!("admin endpoint on {scheme}://{admin}");
    }
    on_listening(addr, config);
    match proxy.serve_until_signalled(listener, admin, signals).await {
        None => ExitCode::SUCCESS,
        Some(signal) => ExitCode::from(signal.exit_code()),
    }
}

/// The peers' listener, and whether the service manager passed it: the socket of systemd's
/// socket activation (`ws-proxy.socket`, `LISTEN_FDS`), which stays open across restarts so
/// that devices coming back meanwhile wait in its queue instead of being refused; otherwise a
/// new one on `listen.bind`.
fn peers_listener(config: &Config) -> std::io::Result<(TcpListener, bool)> {
    if let Some(passed) = listenfd::ListenFd::from_env().take_tcp_listener(0)? {
        passed.set_nonblocking(true)?;
        return Ok((TcpListener::from_std(passed)?, true));
    }
    Ok((listen(config.bind, config.backlog)?, false))
}

/// Listens for peers on `addr`, the kernel queueing up to `backlog` connections (tokio's own
/// `bind` queues 1024: a restart storm would overflow it).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(socket.into())
}

async fn bind(addr: SocketAddr, what: &str) -> Option<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| error!(bind = %addr, error = %e, "cannot listen for {what}"))
        .ok()
}
