//! Command-line parsing shared by the binaries: the original tools' multi-letter short flags
//! (`-sc`, `-cc`, ...), which argument parsers read as bundles of one-letter flags, are
//! rewritten to their long forms first; usage errors exit 64.

use std::ffi::OsString;
use std::process::ExitCode;

/// Parses the process's arguments after expanding `table`; on `--help`/`--version` or a usage
/// error, prints what clap says and returns the exit status to end with (0 or 64).
pub(crate) fn parse<C: clap::Parser>(table: &[(&str, &str)]) -> Result<C, ExitCode> {
    C::try_parse_from(expand(std::env::args_os(), table)).map_err(|e| {
        let _ = e.print();
        if e.use_stderr() { ExitCode::from(64) } else { ExitCode::SUCCESS }
    })
}

/// Replaces each argument equal to a short form in `table` with its long form.
fn expand(args: impl IntoIterator<Item = OsString>, table: &[(&str, &str)]) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| match table.iter().find(|(short, _)| arg.to_str() == Some(*short)) {
            Some((_, long)) => OsString::from(long),
            None => arg,
        })
        .collect()
}
