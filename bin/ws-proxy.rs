//! `ws-proxy`: the Micronets mutual-TLS WebSocket relay daemon. See `docs/operations.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use micronets_certgen::dev::{CLIENTS, DevPki};
use micronets_proxy::{FileConfig, Overrides, Proxy};

mod legacy_args;

/// The original proxy's flags that are not single letters.
const LEGACY: [(&str, &str); 4] =
    [("-sc", "--server-cert"), ("-cac", "--ca-certs"), ("-cap", "--ca-path"), ("-sp", "--url-path-prefix")];

#[derive(Parser)]
#[command(
    version,
    about = "Micronets mutual-TLS WebSocket relay proxy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file (see docs/ws-proxy.example.toml).
    #[arg(long, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Development mode: create certs/dev if needed and serve on 127.0.0.1:5050.
    #[arg(long)]
    dev: bool,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file (and its TLS files) and exit 0, or 64 with the reason.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
    },
    /// Explain which ACL rule decides whether a certificate may join a room; exit 0 when it may,
    /// 1 when it may not.
    CheckAccess {
        /// The configuration file with the [[acl.rules]].
        #[arg(long)]
        config: PathBuf,
        /// The client certificate (PEM; a pkeycert works).
        #[arg(long)]
        cert: PathBuf,
        /// The room id, e.g. gw/gateway.
        #[arg(long)]
        room: String,
    },
    /// Print the rooms and members of a running proxy, from its admin endpoint.
    Status {
        /// The admin endpoint (default: admin.bind of --config, else 127.0.0.1:9090).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The configuration file whose admin.bind to read.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli: Cli = match legacy_args::parse(&LEGACY) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Some(Command::CheckAccess { config, cert, room }) = &cli.command {
        return match micronets_proxy::acl::check_access(config, cert, room) {
            Ok((allowed, report)) => {
                print!("{report}");
                if allowed { ExitCode::SUCCESS } else { ExitCode::from(1) }
            }
            Err(e) => {
                eprintln!("ws-proxy: {e}");
                ExitCode::from(64)
            }
        };
    }
    if let Some(Command::Status { admin, config }) = &cli.command {
        return match micronets_proxy::status::report(*admin, config.as_deref()) {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ws-proxy: {e}");
                ExitCode::from(if matches!(e, micronets_proxy::Error::Admin { .. }) { 1 } else { 64 })
            }
        };
    }
    let (proxy, config) = match prepare(&cli) {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("ws-proxy: {e:#}");
            return ExitCode::from(64);
        }
    };
    if let Some(Command::CheckConfig { config: path }) = &cli.command {
        println!("{}: OK", path.display());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ws-proxy: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(proxy, config, cli.dev))
}

/// Loads, merges and validates the configuration and the TLS material; sets up logging.
fn prepare(cli: &Cli) -> anyhow::Result<(Proxy, micronets_proxy::Config)> {
    let checking = matches!(cli.command, Some(Command::CheckConfig { .. }));
    let path = match &cli.command {
        Some(Command::CheckConfig { config }) => Some(config),
        _ => cli.config.as_ref(),
    };
    let file = match path {
        Some(path) => FileConfig::load(path)?,
        None if cli.dev => {
            let pki = DevPki::new("certs/dev");
            micronets_certgen::dev::ensure(&pki).context("cannot create the dev PKI in certs/dev")?;
            FileConfig::dev(&pki)
        }
        None => FileConfig::default(),
    };
    let config = file.into_config(&cli.overrides)?;
    if !checking {
        micronets_proxy::logging::init(config.log_format, &config.log_level)?;
    }
    let proxy = match path {
        Some(path) => Proxy::from_file(config.clone(), path.clone(), cli.overrides.clone())?,
        None => Proxy::new(config.clone())?,
    };
    Ok((proxy, config))
}

async fn serve(proxy: Proxy, config: micronets_proxy::Config, dev: bool) -> ExitCode {
    let proxy = match proxy.connect().await {
        Ok(proxy) => proxy,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(1);
        }
    };
    let Some(listener) = bind(config.bind, "peers").await else { return ExitCode::from(1) };
    let admin = match config.admin_bind {
        Some(admin) => Some(match bind(admin, "the admin endpoint").await {
            Some(admin) => admin,
            None => return ExitCode::from(1),
        }),
        None => None,
    };
    let signals = match micronets_proxy::DaemonSignals::install() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the signal handlers");
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| config.bind.to_string(), |a| a.to_string());
    tracing::info!("listening on {addr}");
    if let Some(Ok(admin)) = admin.as_ref().map(tokio::net::TcpListener::local_addr) {
        tracing::info!("admin endpoint on http://{admin}");
    }
    if dev {
        let url = format!("wss://{addr}{}gw/gateway", config.path_prefix);
        for client in [&CLIENTS[0], &CLIENTS[1]] {
            eprintln!(
                "try: ws-client --client-cert certs/dev/{}.pkeycert.pem --ca-cert certs/dev/micronets-ws-root.cert.pem {url}",
                client.basename
            );
        }
    }
    match proxy.serve_until_signalled(listener, admin, signals).await {
        None => ExitCode::SUCCESS,
        Some(signal) => ExitCode::from(signal.exit_code()),
    }
}

async fn bind(addr: std::net::SocketAddr, what: &str) -> Option<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| tracing::error!(bind = %addr, error = %e, "cannot listen for {what}"))
        .ok()
}
