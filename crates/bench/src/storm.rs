//! `storm`: a fleet in rooms of two, then the relay restarted under it (SIGTERM, which drains,
//! or SIGKILL), and every device coming back with the client's backoff. ws-bench starts the
//! relay from a command and starts it again, as systemd would (readiness by `NOTIFY_SOCKET`,
//! and with `--socket-activation` the listening socket held across the restart), so it knows
//! when each process was ready and what each spent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::fleet::{Fleet, Layout};
use crate::peers::Identities;
use crate::report::{FleetFigures, Report, RestartFigures};
use crate::server;
use crate::stats::Percentiles;

/// How the relay is stopped.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum StopSignal {
    /// SIGTERM: the relay drains (closes its peers over `shutdown.drain_window`) and exits.
    Term,
    /// SIGKILL: the relay is gone at once, as in a crash.
    Kill,
}

/// What the storm needs from the command line.
pub(crate) struct StormOptions<'a> {
    pub(crate) layout: Layout,
    pub(crate) concurrency: usize,
    pub(crate) proxy_cmd: &'a str,
    pub(crate) signal: StopSignal,
    /// Hold the listening socket across restarts, as systemd's socket activation does, with
    /// this backlog (`None`: each relay binds its own).
    pub(crate) socket_activation: Option<u32>,
    /// Every phase (cold start, the return after the restart, a check round) ends by this long.
    pub(crate) phase_timeout: Duration,
}

/// A relay process ws-bench started, as systemd would: told where to say it is ready
/// (`NOTIFY_SOCKET`), and with socket activation given the listening socket (`LISTEN_FDS`).
struct RelayProcess {
    child: Child,
}

/// Where the relays say `READY=1`: the moment each one listens.
struct Readiness {
    socket: tokio::net::UnixDatagram,
    path: PathBuf,
}

impl Readiness {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("ws-bench-{}-notify.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = tokio::net::UnixDatagram::bind(&path).context("the notification socket")?;
        Ok(Readiness { socket, path })
    }

    /// Waits for a `READY=1` (until `deadline`, or until `child` exits).
    async fn ready(&self, child: &mut Child, deadline: Instant, log: &Path) -> Result<Instant> {
        let mut datagram = [0u8; 4096];
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("the relay exited ({status}) before it was ready; its log: {}", log.display());
            }
            let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
            if wait.is_zero() {
                bail!("the relay was not ready in time; its log: {}", log.display());
            }
            if let Ok(Ok(n)) = tokio::time::timeout(wait, self.socket.recv(&mut datagram)).await
                && String::from_utf8_lossy(&datagram[..n]).lines().any(|l| l == "READY=1")
            {
                return Ok(Instant::now());
            }
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl RelayProcess {
    /// Runs `command` with `sh -c` (its output to `log`), passing it `listener` as systemd's
    /// socket activation would; returns the process and when it said it was ready.
    async fn start(
        command: &str,
        listener: Option<&std::net::TcpListener>,
        readiness: &Readiness,
        log: &Path,
        timeout: Duration,
    ) -> Result<(Self, Instant)> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut sh = Command::new("sh");
        sh.env("NOTIFY_SOCKET", &readiness.path).stdout(out.try_clone()?).stderr(out);
        match listener {
            // The socket arrives as stdin and moves to descriptor 3, where LISTEN_FDS says.
            Some(listener) => sh
                .arg("-c")
                .arg(format!("exec 3<&0 </dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; exec {command}"))
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener.try_clone()?))),
            None => sh.arg("-c").arg(format!("exec {command}")).stdin(Stdio::null()),
        };
        let child = sh.spawn().with_context(|| format!("starting the relay: {command}"))?;
        let mut relay = RelayProcess { child };
        let ready = readiness.ready(&mut relay.child, Instant::now() + timeout, log).await?;
        Ok((relay, ready))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits (up to `timeout`) for the process to exit.
    async fn stop(mut self, signal: StopSignal, timeout: Duration) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.pid())?).context("no such process")?;
        let sig = match signal {
            StopSignal::Term => rustix::process::Signal::TERM,
            StopSignal::Kill => rustix::process::Signal::KILL,
        };
        rustix::process::kill_process(pid, sig)?;
        let deadline = Instant::now() + timeout;
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                bail!("the relay did not exit within {timeout:?} of the signal");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The listening socket ws-bench keeps across restarts, as systemd's socket unit does.
fn activation_socket(addr: SocketAddr, backlog: u32) -> Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// The address of the relay's URL.
async fn relay_addr(url: &str) -> Result<SocketAddr> {
    let target = micronets_client::connect::Target::of_url(url)?;
    tokio::net::lookup_host((target.host.as_str(), target.port))
        .await?
        .next()
        .with_context(|| format!("{} does not resolve", target.host))
}

/// Runs the storm.
pub(crate) async fn storm(ids: &Identities, url: &str, options: StormOptions<'_>) -> Result<Report> {
    let addr = relay_addr(url).await?;
    let log: PathBuf = std::env::temp_dir().join(format!("ws-bench-{}-relay.log", std::process::id()));
    let timeout = options.phase_timeout;
    let readiness = Readiness::new()?;
    let socket = options.socket_activation.map(|backlog| activation_socket(addr, backlog)).transpose()?;
    let start = || RelayProcess::start(options.proxy_cmd, socket.as_ref(), &readiness, &log, timeout);
    let (relay, _) = start().await?;
    let started = Instant::now();
    let before = server::sample(&[relay.pid()])?;
    let devices = Fleet::devices(ids, &[url.to_owned()], &options.layout)?;
    let fleet = Fleet::start(&devices, options.concurrency, true);
    let rooms = fleet.peers() / 2;
    let whole = fleet.wait_whole(started, Instant::now() + timeout).await;
    let cold_start = started.elapsed();
    if whole < rooms {
        fleet.stop();
        bail!(
            "only {whole} of {rooms} rooms whole after {timeout:?} from cold; the relay's log: {}",
            log.display()
        );
    }
    let relaying = fleet.check_every_room(Instant::now() + timeout).await;
    let loaded = server::sample(&[relay.pid()])?;
    let per_peer = |rss: u64, base: u64| (rss as f64 - base as f64) / fleet.peers() as f64;
    let base_rss = before.map_or(0, |s| s.rss_bytes);
    let rss_before = loaded.map_or(0.0, |s| per_peer(s.rss_bytes, base_rss));
    fleet.take_handshakes();

    // The restart.
    let signalled = Instant::now();
    relay.stop(options.signal, timeout).await?;
    let (relay, listening) = start().await?;
    let whole_again = fleet.wait_whole(signalled, listening + timeout).await;
    let all_whole = signalled.elapsed();
    let storm_sample = server::sample(&[relay.pid()])?;
    let relaying_again = fleet.check_every_room(Instant::now() + timeout).await;
    let after = server::sample(&[relay.pid()])?;
    let per_peer_ms: Vec<f64> =
        fleet.whole_after(signalled, listening).iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let handshakes = fleet.take_handshakes();
    fleet.stop();
    let restart = RestartFigures {
        signal: format!("{:?}", options.signal).to_lowercase(),
        listening_after_signal_s: listening.duration_since(signalled).as_secs_f64(),
        whole_after_listening_ms: Percentiles::of(per_peer_ms),
        all_whole_after_signal_s: all_whole.as_secs_f64(),
        rooms_relaying: relaying_again,
        server_cpu_s: storm_sample.map_or(0.0, |s| s.cpu_seconds),
        server_rss_peak_bytes: storm_sample.map_or(0, |s| s.rss_peak_bytes),
        rss_bytes_per_peer_before: rss_before,
        rss_bytes_per_peer_after: after.map_or(0.0, |s| per_peer(s.rss_bytes, base_rss)),
        handshakes,
    };
    let endings = fleet.endings();
    let refusals = fleet.refusals();
    drop(relay);
    if whole_again < rooms || relaying < rooms || relaying_again < rooms {
        eprintln!(
            "ws-bench: storm: {whole_again} of {rooms} rooms whole again, {relaying_again} relaying (before: {relaying}); the relay's log: {}",
            log.display()
        );
    }
    let mut report = Report {
        scenario: "storm".into(),
        params: serde_json::json!({
            "count": fleet.peers(),
            "signal": restart.signal,
            "concurrency": options.concurrency,
            "socket_activation": options.socket_activation.is_some(),
        }),
        elapsed_s: started.elapsed().as_secs_f64(),
        fleet: Some(FleetFigures {
            peers: fleet.peers(),
            rooms,
            rooms_whole: whole_again,
            cold_start_s: cold_start.as_secs_f64(),
            refusals,
            endings,
            restart: Some(restart),
            ..FleetFigures::default()
        }),
        ..Report::default()
    };
    // Every room must be whole and relaying again: a room left broken is a failed storm.
    report.delivery.sent = 2 * rooms as u64;
    report.delivery.received = (relaying + relaying_again) as u64;
    report.delivery.lost = report.delivery.sent - report.delivery.received;
    Ok(report)
}
