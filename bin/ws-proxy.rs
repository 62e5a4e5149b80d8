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
}

fn main() -> ExitCode {
    let cli: Cli = match legacy_args::parse(&LEGACY) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
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
    let (file, checking) = match (&cli.command, &cli.config, cli.dev) {
        (Some(Command::CheckConfig { config }), _, _) => (FileConfig::load(config)?, true),
        (None, Some(path), _) => (FileConfig::load(path)?, false),
        (None, None, true) => {
            let pki = DevPki::new("certs/dev");
            micronets_certgen::dev::ensure(&pki).context("cannot create the dev PKI in certs/dev")?;
            (FileConfig::dev(&pki), false)
        }
        (None, None, false) => (FileConfig::default(), false),
    };
    let config = file.into_config(&cli.overrides)?;
    if !checking {
        micronets_proxy::logging::init(config.log_format, &config.log_level)?;
    }
    Ok((Proxy::new(config.clone())?, config))
}

async fn serve(proxy: Proxy, config: micronets_proxy::Config, dev: bool) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.bind).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(bind = %config.bind, error = %e, "cannot listen");
            return ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().map_or_else(|_| config.bind.to_string(), |a| a.to_string());
    tracing::info!("listening on {addr}");
    if dev {
        let url = format!("wss://{addr}{}gw/gateway", config.path_prefix);
        for client in [&CLIENTS[0], &CLIENTS[1]] {
            eprintln!(
                "try: ws-client --client-cert certs/dev/{}.pkeycert.pem --ca-cert certs/dev/micronets-ws-root.cert.pem {url}",
                client.basename
            );
        }
    }
    match proxy.serve_until_signalled(listener).await {
        None => ExitCode::SUCCESS,
        Some(signal) => ExitCode::from(signal.exit_code()),
    }
}
