//! `certgen`: issue and inspect the Micronets private PKI. See `docs/certificates.md`.

use std::process::ExitCode;

use micronets_args::{FAILURE, USAGE};
use micronets_certgen::Error;
use micronets_certgen::cli::{self, Cli};

fn main() -> ExitCode {
    let cli: Cli = match micronets_args::parse(&[]) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli::run(cli.command) {
        Ok(printed) => {
            if let Some(warning) = printed.warning {
                eprintln!("certgen: {warning}");
            }
            if !printed.out.is_empty() {
                println!("{}", printed.out);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("certgen: {e}");
            ExitCode::from(if matches!(e, Error::Invalid(_)) { USAGE } else { FAILURE })
        }
    }
}
