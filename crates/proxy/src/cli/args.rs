//! `ws-proxy`'s command line: the daemon's flags and the operator's subcommands.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;

/// The original proxy's flags that are not single letters, and their long forms.
pub const LEGACY: [(&str, &str); 4] =
    [("-sc", "--server-cert"), ("-cac", "--ca-certs"), ("-cap", "--ca-path"), ("-sp", "--url-path-prefix")];

/// `ws-proxy [--config FILE | --dev] [overrides]`, or one of its subcommands.
#[derive(Parser)]
#[command(
    name = "ws-proxy",
    version,
    about = "Micronets mutual-TLS WebSocket relay proxy",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (see docs/ws-proxy.example.toml).
    #[arg(long, conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Development mode: create certs/dev if needed and serve on 127.0.0.1:5050.
    #[arg(long)]
    pub dev: bool,
    /// Flags that override the file's settings.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Validate a configuration file (and its TLS files) and exit 0, or 64 with the reason.
    CheckConfig {
        /// The configuration file.
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
        admin: Option<SocketAddr>,
        /// The configuration file whose admin.bind to read.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Instead of the rooms, list the client certificates that expire within this long
        /// (`30d`, `12h`): connected now, or seen since the proxy started.
        #[arg(long, value_name = "DURATION")]
        expiring: Option<String>,
    },
}
