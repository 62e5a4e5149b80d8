//! `ws-proxy`: the Micronets mutual-TLS WebSocket relay daemon. See `docs/operations.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use micronets_certgen::dev::{CLIENTS, DevPki};
use micronets_proxy::{FileConfig, LogFormat, Overrides, Proxy, config, shutdown};

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
    /// Listen address (overrides listen.bind), e.g. 127.0.0.1:0.
    #[arg(long)]
    bind: Option<String>,
    /// Log format (overrides log.format): text or json.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Server certificate and key (original flag -sc).
    #[arg(long, env = "MICRONETS_WSPROXY_SERVER_CERT")]
    server_cert: Option<PathBuf>,
    /// CA bundle for client certificates (original flag -cac).
    #[arg(long, env = "MICRONETS_WSPROXY_CA_CERT")]
    ca_certs: Option<PathBuf>,
    /// Directory of CA bundles (original flag -cap).
    #[arg(long, env = "MICRONETS_WSPROXY_CA_PATH")]
    ca_path: Option<PathBuf>,
    /// Listen address without port (original flag -a).
    #[arg(short = 'a', long)]
    bind_address: Option<String>,
    /// Listen port (original flag -p).
    #[arg(short = 'p', long)]
    bind_port: Option<u16>,
    /// URL path prefix (original flag -sp).
    #[arg(long)]
    url_path_prefix: Option<String>,
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
    let cli = match Cli::try_parse_from(config::expand_legacy_flags(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS };
        }
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
    let overrides = Overrides {
        bind: cli.bind.clone(),
        bind_address: cli.bind_address.clone(),
        bind_port: cli.bind_port,
        path_prefix: cli.url_path_prefix.clone(),
        server_cert: cli.server_cert.clone(),
        client_ca: cli.ca_certs.clone(),
        ca_dir: cli.ca_path.clone(),
        log_format: cli
            .log_format
            .as_deref()
            .map(|f| if f == "json" { LogFormat::Json } else { LogFormat::Text }),
    };
    let config = file.into_config(&overrides)?;
    if !checking {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log_level))
            .with_context(|| format!("config key log.level: invalid filter {:?}", config.log_level))?;
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let builder =
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
        match config.log_format {
            LogFormat::Json => builder.json().init(),
            LogFormat::Text => builder.init(),
        }
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
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let signal = shutdown::signal().await;
        tracing::info!(?signal, "stop signal received: draining (a second signal exits at once)");
        let _ = first_tx.send(());
    };
    let second = async move {
        let _ = first_rx.await;
        shutdown::signal().await.map_or(1, shutdown::Signal::exit_code)
    };
    tokio::select! {
        () = proxy.serve(listener, stop) => ExitCode::SUCCESS,
        code = second => ExitCode::from(code),
    }
}
