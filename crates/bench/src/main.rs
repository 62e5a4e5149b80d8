//! `ws-bench`: load, verify and measure a relay of the Micronets wire protocol.
//!
//! Every scenario checks delivery (each message carries its sequence number and a body derived
//! from it) and fails loudly on any loss, duplicate, reordering or corruption. With
//! `--server-pid` it reads the server's CPU time and RSS from `/proc`, the figures that stay
//! meaningful when the load generator, not the server, is the bottleneck. See
//! `docs/performance.md` for how to run it pinned to its own core.

mod frame;
mod peers;
mod scenarios;
mod server;
mod stats;
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
    /// Also run the scenario through the floor forwarder at this address (see `floor-server`),
    /// and report the relay's cost as a ratio to it.
    #[arg(long)]
    floor: Option<std::net::SocketAddr>,
    /// The floor's process id, for its CPU time.
    #[arg(long)]
    floor_pid: Option<u32>,
    #[command(subcommand)]
    scenario: Scenario,
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
    /// N full mTLS handshakes + upgrade + HELLO, C at a time, no TLS resumption.
    Connect {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// N idle connections after HELLO; reports the server's RSS growth per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        count: usize,
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
    /// Serve the floor: a bare mutual-TLS forwarder with the PKI's proxy certificate (no
    /// WebSocket, no envelope), to compare the relay with.
    FloorServer {
        #[arg(long, default_value = "127.0.0.1:5051")]
        bind: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::from(1);
    };
    if let Scenario::FloorServer { bind } = cli.scenario {
        return match runtime.block_on(transport::floor_server(bind, &cli.pki)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ws-bench: floor: {e:#}");
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
