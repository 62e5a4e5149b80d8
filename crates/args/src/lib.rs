//! The command-line conventions that `ws-proxy`, `ws-client` and `certgen` share.
//!
//! The original Micronets tools took multi-letter short flags (`-sc`, `-cc`, ...), which
//! argument parsers read as bundles of one-letter flags: [`parse`] rewrites each to its long
//! form before clap sees it. A usage error exits [`USAGE`] (64, as sysexits.h's `EX_USAGE`),
//! and `--help` or `--version` exits 0.

use std::ffi::OsString;
use std::process::ExitCode;

/// The exit status for a usage or configuration error.
pub const USAGE: u8 = 64;

/// The exit status for a failure at run time.
pub const FAILURE: u8 = 1;

/// Parses the process's arguments after expanding `legacy` (pairs of an original short flag
/// and its long form).
///
/// # Errors
/// On `--help`, `--version` or a usage error, prints what clap says and returns the exit
/// status to end with (0 or [`USAGE`]).
pub fn parse<C: clap::Parser>(legacy: &[(&str, &str)]) -> Result<C, ExitCode> {
    C::try_parse_from(expand(std::env::args_os(), legacy)).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { ExitCode::from(USAGE) } else { ExitCode::SUCCESS }
    })
}

/// Replaces each argument equal to a short form in `legacy` with its long form.
fn expand(args: impl IntoIterator<Item = OsString>, legacy: &[(&str, &str)]) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| match legacy.iter().find(|(short, _)| arg.to_str() == Some(*short)) {
            Some((_, long)) => OsString::from(long),
            None => arg,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_legacy_flags_are_rewritten() {
        let args = ["ws-proxy", "-sc", "a.pem", "-scx", "--server-cert"].map(OsString::from);
        let expanded = expand(args, &[("-sc", "--server-cert")]);
        assert_eq!(
            expanded,
            ["ws-proxy", "--server-cert", "a.pem", "-scx", "--server-cert"].map(OsString::from)
        );
    }
}
