//! `ws-proxy`: the Micronets mutual-TLS WebSocket relay daemon. See `docs/operations.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use micronets_args::{FAILURE, USAGE};
use micronets_certgen::dev::CLIENTS;
use micronets_proxy::cli::args::{Cli, Command, LEGACY};
use micronets_proxy::{Error, Overrides, cli, daemon};

fn main() -> ExitCode {
    let cli: Cli = match micronets_args::parse(&LEGACY) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli.command {
        Some(Command::CheckConfig { config }) => check_config(&config),
        Some(Command::CheckAccess { config, cert, room }) => match cli::check_access(&config, &cert, &room) {
            Ok((allowed, report)) => {
                print!("{report}");
                if allowed { ExitCode::SUCCESS } else { ExitCode::from(FAILURE) }
            }
            Err(e) => fail(&e, USAGE),
        },
        Some(Command::Status { admin, config, expiring }) => {
            match cli::report(admin, config.as_deref(), expiring.as_deref()) {
                Ok(table) => {
                    print!("{table}");
                    ExitCode::SUCCESS
                }
                Err(e @ Error::Admin { .. }) => fail(&e, FAILURE),
                Err(e) => fail(&e, USAGE),
            }
        }
        None => serve(cli.config, cli.dev, &cli.overrides),
    }
}

fn fail(error: &Error, code: u8) -> ExitCode {
    eprintln!("ws-proxy: {error}");
    ExitCode::from(code)
}

/// `ws-proxy check-config`: the same loading and validation as a start, then "OK".
fn check_config(path: &Path) -> ExitCode {
    match daemon::load(Some(path), false, &Overrides::default(), false) {
        Ok(_) => {
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, USAGE),
    }
}

/// The daemon, until a signal (with `--dev`, it prints the clients to try first).
fn serve(config: Option<PathBuf>, dev: bool, overrides: &Overrides) -> ExitCode {
    let proxy = match daemon::load(config.as_deref(), dev, overrides, true) {
        Ok(proxy) => proxy,
        Err(e) => return fail(&e, USAGE),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ws-proxy: cannot start the runtime: {e}");
            return ExitCode::from(FAILURE);
        }
    };
    // The daemon runs as a task, on the runtime's workers: run by `block_on` itself, the
    // accept loop and the cluster's publisher and inbox would live on the main thread, and
    // every hand-off between them and the members' tasks would be a switch between threads.
    let daemon = runtime.spawn(daemon::run(proxy, move |addr, config| {
        if dev {
            let url = format!("wss://{addr}{}gw/gateway", config.path_prefix);
            let pki = daemon::DEV_PKI_DIR;
            for client in [&CLIENTS[0], &CLIENTS[1]] {
                eprintln!(
                    "try: ws-client --client-cert {pki}/{}.pkeycert.pem --ca-cert {pki}/micronets-ws-root.cert.pem {url}",
                    client.basename,
                );
            }
        }
    }));
    match runtime.block_on(daemon) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ws-proxy: the daemon's task failed: {e}");
            ExitCode::from(FAILURE)
        }
    }
}
