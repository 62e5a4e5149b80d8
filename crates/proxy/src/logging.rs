//! Log output: human lines or JSON on stderr, filtered by `log.level` (or `RUST_LOG`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::{Error, Result};

/// Installs the process's log subscriber. Colours are used only when stderr is a terminal:
/// journald and log files should not store escape codes.
///
/// # Errors
/// [`Error::Config`] for `log.level` when the filter is invalid (and `RUST_LOG` is unset).
pub fn init(format: LogFormat, level: &str) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(level)).map_err(|e| {
        Error::Config { key: "log.level".into(), reason: format!("invalid filter {level:?}: {e}") }
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}
