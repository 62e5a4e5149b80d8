//! The fleet's scenarios on the relay: idle peers in rooms of two (memory per peer as the
//! fleet grows), and `connect --resume` (the CPU of full and of resumed handshakes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use micronets_client::connect::Connector;

use crate::fleet::{Fleet, Layout};
use crate::peers::Identities;
use crate::report::{Checkpoint, FleetFigures, ProcessFigures, Report, ResumptionFigures, ResumptionRound};
use crate::server::{self, cpu_per};
use crate::stats::Delivery;

/// `idle` on the relay: the fleet connects in waves up to each checkpoint; at each, every room
/// is whole and the RSS per peer is read. Then, with `hold`, the peers stay (after a "ready"
/// line on stderr) and every room is checked whole again.
pub(crate) async fn idle_fleet(
    ids: &Identities,
    urls: &[String],
    layout: &Layout,
    concurrency: usize,
    checkpoints: &[usize],
    hold: Duration,
    pid: &[u32],
) -> Result<Report> {
    let count = layout.peers / 2 * 2;
    let mut marks: Vec<usize> = if checkpoints.is_empty() {
        (1..=10).map(|k| count * k / 10).collect()
    } else {
        checkpoints.to_vec()
    };
    marks.push(count);
    marks.iter_mut().for_each(|m| *m = (*m).min(count) / 2 * 2);
    marks.sort_unstable();
    marks.dedup();
    marks.retain(|&m| m > 0);
    let before = server::sample(pid)?;
    let started = Instant::now();
    let mut fleets: Vec<Arc<Fleet>> = Vec::new();
    let mut figures = FleetFigures { peers: count, rooms: count / 2, ..FleetFigures::default() };
    let mut connected = 0;
    for mark in marks {
        let wave =
            Layout { peers: mark - connected, offset: layout.offset + connected / 2, ..layout.clone() };
        let fleet = Fleet::start(&Fleet::devices(ids, urls, &wave)?, concurrency, false);
        let whole = fleet.wait_whole(started, Instant::now() + Duration::from_secs(300)).await;
        let rooms = fleet.peers() / 2;
        fleets.push(fleet);
        if whole < rooms {
            fleets.iter().for_each(|f| f.stop());
            bail!("only {whole} of {rooms} rooms whole after 300 s ({} peers connected before)", connected);
        }
        connected = mark;
        if let (Some(b), Some(now)) = (before, server::sample(pid)?) {
            let rss_bytes_per_peer = (now.rss_bytes as f64 - b.rss_bytes as f64) / connected as f64;
            figures.checkpoints.push(Checkpoint { peers: connected, rss_bytes_per_peer });
        }
    }
    figures.cold_start_s = started.elapsed().as_secs_f64();
    let after = server::sample(pid)?;
    figures.server_cpu_us_per_connection = cpu_per(before, after, count as u64);
    for &p in pid {
        let s = server::sample_process(p)?;
        figures.processes.push(ProcessFigures { pid: p, rss_bytes: s.rss_bytes, cpu_s: s.cpu_seconds });
    }
    if !hold.is_zero() {
        eprintln!("ws-bench: ready: {count} peers, {} rooms whole", count / 2);
        // Until the time is up, or until interrupted (a fleet's script measures, then ends
        // every generator's hold together).
        tokio::select! {
            () = tokio::time::sleep(hold) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    figures.rooms_whole = fleets.iter().map(|f| f.rooms_whole_since(started)).sum();
    for fleet in &fleets {
        fleet.stop();
        figures.refusals.extend(fleet.refusals());
        figures.endings.extend(fleet.endings());
    }
    let rooms = (count / 2) as u64;
    Ok(Report {
        scenario: "idle".into(),
        params: serde_json::json!({"count": count, "concurrency": concurrency, "offset": layout.offset, "hold_s": hold.as_secs()}),
        elapsed_s: figures.cold_start_s,
        server_rss_bytes_per_connection: figures.checkpoints.last().map(|c| c.rss_bytes_per_peer),
        delivery: Delivery {
            sent: rooms,
            received: figures.rooms_whole as u64,
            lost: rooms - figures.rooms_whole as u64,
            ..Delivery::default()
        },
        fleet: Some(figures),
        ..Report::default()
    })
}

/// `connect --resume`: devices in rooms of two connect (full handshakes) until every room is
/// whole, leave, then come back resuming their TLS sessions until every room is whole again.
/// The server's CPU per connection for each: handshake, upgrade, HELLO and join (the leaving in
/// between is not counted). Each of the `rounds` starts with fresh devices (no sessions), so
/// its full and resumed phases are minutes apart at most and their ratio is taken in the same
/// state of the machine.
pub(crate) async fn connect_resume(
    ids: &Identities,
    urls: &[String],
    count: usize,
    concurrency: usize,
    rounds: usize,
    pid: &[u32],
) -> Result<Report> {
    let layout = Layout { peers: count, offset: 0, source_ips: Vec::new(), tag: "resume" };
    let (mut figures, mut elapsed, mut resumed, mut first) = (Vec::new(), Duration::ZERO, 0, None);
    let mut devices = 0;
    for _ in 0..rounds.max(1) {
        let fleet = Fleet::devices(ids, urls, &layout)?;
        devices = fleet.len();
        let full = phase(&fleet, concurrency, pid).await?;
        let again = phase(&fleet, concurrency, pid).await?;
        first.get_or_insert(full.elapsed);
        elapsed += full.elapsed + again.elapsed;
        resumed += again.resumed;
        if let (Some((full_us, kernel_full_us)), Some((resumed_us, kernel_resumed_us))) =
            (full.cpu, again.cpu)
        {
            figures.push(ResumptionRound { full_us, resumed_us, kernel_full_us, kernel_resumed_us });
        }
    }
    let attempted = devices * rounds.max(1);
    let resumption = (!figures.is_empty()).then(|| ResumptionFigures::of(figures, resumed, attempted));
    let full_cpu = resumption.as_ref().map(|r| r.server_cpu_us_per_full);
    Ok(Report {
        scenario: "connect".into(),
        params: serde_json::json!({"count": devices, "concurrency": concurrency, "resume": true, "rounds": rounds}),
        elapsed_s: elapsed.as_secs_f64(),
        handshakes_per_sec: Some(2.0 * attempted as f64 / elapsed.as_secs_f64()),
        server_cpu_us_per_handshake: full_cpu,
        fleet: Some(FleetFigures {
            peers: devices,
            rooms: devices / 2,
            rooms_whole: devices / 2,
            cold_start_s: first.unwrap_or_default().as_secs_f64(),
            resumption,
            ..FleetFigures::default()
        }),
        ..Report::default()
    })
}

/// One phase of a `connect --resume` round: `devices` connect until every room is whole, and
/// leave.
async fn phase(devices: &[Arc<Connector>], concurrency: usize, pid: &[u32]) -> Result<Phase> {
    let count = devices.len();
    let before = server::sample(pid)?;
    let started = Instant::now();
    let fleet = Fleet::start(devices, concurrency, false);
    let whole = fleet.wait_whole(started, started + Duration::from_secs(300)).await;
    let after = server::sample(pid)?;
    let elapsed = started.elapsed();
    let handshakes = fleet.take_handshakes();
    fleet.stop();
    if whole < count / 2 {
        bail!("only {whole} of {} rooms whole", count / 2);
    }
    settle(pid).await?;
    let kernel = before.zip(after).map(|(b, a)| (a.kernel_seconds - b.kernel_seconds) * 1e6 / count as f64);
    let cpu = cpu_per(before, after, count as u64);
    Ok(Phase {
        elapsed,
        resumed: handshakes.get("resumed").copied().unwrap_or(0) as usize,
        cpu: cpu.zip(kernel),
    })
}

/// What one phase of a `connect --resume` round measured.
struct Phase {
    elapsed: Duration,
    /// Connections whose TLS session resumed.
    resumed: usize,
    /// The server's CPU per connection and the kernel's part of it, in microseconds.
    cpu: Option<(f64, f64)>,
}

/// Waits until the server's CPU time stops moving (what it does when connections close is not
/// part of the next measurement), at most 10 s.
async fn settle(pid: &[u32]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = server::sample(pid)?.map(|s| s.cpu_seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = server::sample(pid)?.map(|s| s.cpu_seconds);
        if now == last {
            break;
        }
        last = now;
    }
    Ok(())
}
