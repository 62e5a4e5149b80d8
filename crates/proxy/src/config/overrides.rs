//! The command line's overrides of the file's settings.

use std::path::PathBuf;

use super::settings::LogFormat;

/// Values from the command line (and the original's environment variables) that override the
/// file; `None` leaves the file's value. The binary parses them with clap, so the flags are
/// declared once, here.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Listen address (overrides listen.bind), e.g. 127.0.0.1:0.
    #[arg(long)]
    pub bind: Option<String>,
    /// Admin endpoint address (overrides admin.bind); "" turns it off.
    #[arg(long)]
    pub admin_bind: Option<String>,
    /// Log format (overrides log.format).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Server certificate and key (original flag -sc).
    #[arg(long, env = "MICRONETS_WSPROXY_SERVER_CERT")]
    pub server_cert: Option<PathBuf>,
    /// CA bundle for client certificates (original flag -cac).
    #[arg(long = "ca-certs", env = "MICRONETS_WSPROXY_CA_CERT")]
    pub client_ca: Option<PathBuf>,
    /// Directory whose files are CA bundles (original flag -cap).
    #[arg(long = "ca-path", env = "MICRONETS_WSPROXY_CA_PATH")]
    pub ca_dir: Option<PathBuf>,
    /// Listen address without port (original flag -a).
    #[arg(short = 'a', long)]
    pub bind_address: Option<String>,
    /// Listen port (original flag -p).
    #[arg(short = 'p', long)]
    pub bind_port: Option<u16>,
    /// URL path prefix (original flag -sp).
    #[arg(long = "url-path-prefix")]
    pub path_prefix: Option<String>,
}
