//! `ws-proxy`: the Micronets mutual-TLS WebSocket relay daemon. See `docs/operations.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use micronets_certgen::dev::CLIENTS;
use micronets_proxy::{Overrides, daemon};

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
    let checked = match &cli.command {
        Some(Command::CheckConfig { config }) => Some(config),
        _ => None,
    };
    let path = checked.or(cli.config.as_ref());
    let proxy = match daemon::load(path.map(PathBuf::as_path), cli.dev, &cli.overrides, checked.is_none()) {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("ws-proxy: {e}");
            return ExitCode::from(64);
        }
    };
    if let Some(path) = checked {
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
    let dev = cli.dev;
    runtime.block_on(daemon::run(proxy, |addr, config| {
        if dev {
            let url = format!("wss://{addr}{}gw/gateway", config.path_prefix);
            for client in [&CLIENTS[0], &CLIENTS[1]] {
                eprintln!(
                    "try: ws-client --client-cert {}/{}.pkeycert.pem --ca-cert {}/micronets-ws-root.cert.pem {url}",
                    daemon::DEV_PKI_DIR,
                    client.basename,
                    daemon::DEV_PKI_DIR,
                );
            }
        }
    }))
}
