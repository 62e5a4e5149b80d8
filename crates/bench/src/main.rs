//! `ws-bench`: load, verify and measure a relay of the Micronets wire protocol.
//!
//! Every scenario checks delivery (each message carries its sequence number and a body derived
//! from it) and fails loudly on any loss, duplicate, reordering or corruption. With
//! `--server-pid` it reads the server's CPU time and RSS from `/proc`, the figures that stay
//! meaningful when the load generator, not the server, is the bottleneck. See
//! `docs/performance.md` for how to run it pinned to its own core.

mod fleet;
mod fleet_runs;
mod frame;
mod peers;
mod reference;
mod report;
mod scenarios;
mod server;
mod stats;
mod storm;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Load generator and benchmark for the Micronets relay")]
struct Cli {
    /// The relay's URL up to the room id, e.g. wss://localhost:5050/micronets/v1/ws-proxy/.
    /// Given more than once (the nodes of a cluster), peer n connects to URL n modulo their
    /// number: the two peers of a pair land on different nodes.
    #[arg(long, default_value = "wss://localhost:5050/micronets/v1/ws-proxy/")]
    url: Vec<String>,
    /// A PKI directory made by `certgen dev` (its root key mints the peers' identities).
    #[arg(long, default_value = "certs/dev")]
    pki: PathBuf,
    /// The server's process id: report its CPU time and memory. Given more than once (the
    /// nodes of a cluster, and Redis), the figures are their sums.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// One JSON object per run on stdout.
    #[arg(long)]
    json: bool,
    /// Also run the scenario (pairs, fanout, connect, idle) on the reference relay, started by
    /// ws-bench and pinned to the first --server-pid's CPUs, and report ws-proxy's figures as
    /// ratios to it.
    #[arg(long)]
    reference: bool,
    /// With --reference: run both this many times, in turn, and report the median ratio and
    /// its range.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

/// How a fleet's peers connect.
#[derive(clap::Args, Clone, Debug)]
struct FleetArgs {
    /// First connections in progress at once (the cold start).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Number the rooms from here, so that several generators can share the relay.
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Connect from these local addresses in turn (127.0.0.2,127.0.0.3,...), so that
    /// ephemeral ports last.
    #[arg(long, value_delimiter = ',')]
    source_ip: Vec<std::net::IpAddr>,
}

#[derive(Subcommand, Clone, Debug)]
enum Scenario {
    /// R rooms of 2 peers; A streams M messages of S bytes to B (window W in flight), or
    /// bounces them back (--ping-pong) to time round trips.
    Pairs {
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        window: u64,
        #[arg(long)]
        ping_pong: bool,
    },
    /// One sender, K receivers in one room (the relay needs rooms.max_peers >= K + 1).
    Fanout {
        #[arg(long, default_value_t = 4)]
        receivers: usize,
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 64)]
        window: u64,
    },
    /// N full mTLS handshakes + upgrade + HELLO, C at a time; with --resume, then N more that
    /// resume the first ones' TLS sessions, and the server's CPU for each kind, in R rounds
    /// (each a full and a resumed phase: the ratio is taken round by round).
    Connect {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long)]
        resume: bool,
        #[arg(long, default_value_t = 1, requires = "resume")]
        rounds: usize,
    },
    /// N idle peers in rooms of two, connected C at a time, every room whole; reports the
    /// server's RSS per peer at checkpoints and its CPU per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[command(flatten)]
        fleet: FleetArgs,
        /// Report the RSS per peer at these peer counts [default: every tenth of N].
        #[arg(long, value_delimiter = ',')]
        checkpoints: Vec<usize>,
        /// Keep the peers connected this many seconds once every room is whole (after a
        /// "ready" line on stderr), for measurements from outside; SIGINT ends it sooner.
        #[arg(long, default_value_t = 0)]
        hold: u64,
    },
    /// N peers in rooms of two on a relay ws-bench starts with --proxy-cmd; then the relay is
    /// stopped with --signal and started again, and the peers come back with the client's
    /// backoff: the time until every room is whole again, the refusals on the way, what the
    /// new process spent, and whether every pair relays again.
    Storm {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[command(flatten)]
        fleet: FleetArgs,
        /// The relay's command line, run with `sh -c` (its output goes to a log file in the
        /// temp dir); its address is the --url's.
        #[arg(long)]
        proxy_cmd: String,
        #[arg(long, value_enum, default_value = "term")]
        signal: storm::StopSignal,
        /// Hold the listening socket across the restart and pass it to each relay process,
        /// as systemd's socket activation does (ws-proxy.socket), with this backlog.
        #[arg(long)]
        socket_activation: Option<u32>,
        /// Each phase (cold start, the return, a check round) must end within this many
        /// seconds.
        #[arg(long, default_value_t = 120)]
        phase_timeout: u64,
    },
    /// R streaming rooms, measured alone, next to a room whose receiver stops reading, and alone again.
    Slow {
        #[arg(long, default_value_t = 4)]
        rooms: usize,
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value_t = 4096)]
        size: usize,
    },
    /// Serve the reference relay (tokio-tungstenite over tokio-rustls with the PKI's proxy
    /// certificate, rooms by path, nothing parsed), as --reference starts it.
    ReferenceRelay {
        #[arg(long, default_value = "127.0.0.1:5051")]
        bind: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::from(1);
    };
    if let Scenario::ReferenceRelay { bind } = cli.scenario {
        // It ends with the ws-bench that started it, even one killed before it could clean up.
        let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
        return match runtime.block_on(reference::serve(bind, &cli.pki)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ws-bench: reference relay: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match runtime.block_on(scenarios::run(&cli)) {
        Ok(report) => {
            report.print(cli.json);
            if report.delivery_ok() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "ws-bench: DELIVERY FAILED: messages were lost, duplicated, reordered or corrupted"
                );
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("ws-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
