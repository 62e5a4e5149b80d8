//! `ws-client`: a peer of the Micronets relay: console, HTTP bridge, gateway forwarder.

use std::process::ExitCode;

use micronets_args::{FAILURE, USAGE};
use micronets_client::cli::{Cli, LEGACY};
use micronets_client::run::{Outcome, run};

fn main() -> ExitCode {
    let cli: Cli = match micronets_args::parse(&LEGACY) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(cli.log_filter())
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    let options = match cli.into_options() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("ws-client: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::from(FAILURE);
    };
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let outcome = runtime.block_on(run(options, stdin, tokio::io::stdout()));
    // The stdin reader may still block in a read: do not wait for it.
    runtime.shutdown_background();
    match outcome {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(FAILURE),
        Err(e) => {
            eprintln!("ws-client: {e}");
            ExitCode::from(FAILURE)
        }
    }
}
