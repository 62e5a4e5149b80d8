//! The original tools' multi-letter short flags (`-sc`, `-cc`, ...), which argument parsers read
//! as bundles of one-letter flags, rewritten to their long forms before parsing.

use std::ffi::OsString;

/// Replaces each argument equal to a short form in `table` with its long form.
pub(crate) fn expand(args: impl IntoIterator<Item = OsString>, table: &[(&str, &str)]) -> Vec<OsString> {
    args.into_iter()
        .map(|arg| match table.iter().find(|(short, _)| arg.to_str() == Some(*short)) {
            Some((_, long)) => OsString::from(long),
            None => arg,
        })
        .collect()
}
