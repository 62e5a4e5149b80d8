//! What a run reports: one JSON object (`--json`) or the same figures as text.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::stats::{Delivery, Percentiles};

/// One run's figures.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) params: serde_json::Value,
    pub(crate) elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) msgs_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mb_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) handshakes_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_us_per_message: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_us_per_handshake: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_bytes_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput_ratio_next_to_stalled_room: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_rss_peak_bytes: Option<u64>,
    pub(crate) delivery: Delivery,
    /// The same scenario on the reference relay, in the same invocation (its last run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reference: Option<Box<Report>>,
    /// ws-proxy next to the reference relay, run by run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) comparison: Option<Comparison>,
    /// The fleet scenarios' figures (`idle`, `storm`, `connect --resume`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fleet: Option<FleetFigures>,
}

/// What a fleet of devices saw, and what the relay spent on them.
#[derive(Debug, Default, Serialize)]
pub(crate) struct FleetFigures {
    pub(crate) peers: usize,
    pub(crate) rooms: usize,
    /// Rooms whole at the end (both peers heard each other's HELLO).
    pub(crate) rooms_whole: usize,
    /// From the first connection to every room whole.
    pub(crate) cold_start_s: f64,
    /// The relay's RSS per peer as the fleet grew.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) checkpoints: Vec<Checkpoint>,
    /// The relay's CPU per connection (TLS, upgrade, HELLO, join), all nodes together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_cpu_us_per_connection: Option<f64>,
    /// Each server process given with --server-pid.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) processes: Vec<ProcessFigures>,
    /// Failed connection attempts by kind, as the devices saw them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) refusals: BTreeMap<String, u64>,
    /// Connections that ended, by how (close codes, resets).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) endings: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) restart: Option<RestartFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) resumption: Option<ResumptionFigures>,
}

/// The relay's memory at one size of the fleet.
#[derive(Debug, Serialize)]
pub(crate) struct Checkpoint {
    pub(crate) peers: usize,
    pub(crate) rss_bytes_per_peer: f64,
}

/// One server process.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessFigures {
    pub(crate) pid: u32,
    pub(crate) rss_bytes: u64,
    pub(crate) cpu_s: f64,
}

/// A restart under the fleet (`storm`).
#[derive(Debug, Default, Serialize)]
pub(crate) struct RestartFigures {
    pub(crate) signal: String,
    /// From the signal to the new process ready (its `READY=1`).
    pub(crate) listening_after_signal_s: f64,
    /// Per peer: from the new process listening to the peer whole again, in milliseconds.
    pub(crate) whole_after_listening_ms: Percentiles,
    /// From the signal to the last room whole again.
    pub(crate) all_whole_after_signal_s: f64,
    /// Rooms whose check message got through after the restart.
    pub(crate) rooms_relaying: usize,
    /// The new process, until every room was whole: its CPU time and its peak RSS.
    pub(crate) server_cpu_s: f64,
    pub(crate) server_rss_peak_bytes: u64,
    /// RSS per peer before the restart (old process) and after it (new process, same peers).
    pub(crate) rss_bytes_per_peer_before: f64,
    pub(crate) rss_bytes_per_peer_after: f64,
    /// How the reconnections' TLS handshakes went (client side): full or resumed.
    pub(crate) handshakes: BTreeMap<String, u64>,
}

/// Full handshakes next to resumed ones (`connect --resume`): the medians of the rounds.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ResumptionFigures {
    pub(crate) server_cpu_us_per_full: f64,
    pub(crate) server_cpu_us_per_resumed: f64,
    /// The median of the rounds' ratios (each round's resumed over the same round's full).
    pub(crate) resumed_to_full: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<Spread>,
    /// The same without the kernel's part: the relay's own work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user_space_ratio: Option<Spread>,
    /// The kernel's part of each (TCP, the socket's reads and writes).
    pub(crate) server_kernel_us_per_full: f64,
    pub(crate) server_kernel_us_per_resumed: f64,
    /// Reconnections that did resume, of those attempted (all rounds).
    pub(crate) resumed: usize,
    pub(crate) attempted: usize,
    pub(crate) rounds: Vec<ResumptionRound>,
}

/// One round of `connect --resume`: fresh devices connect with full handshakes, leave, and
/// come back resuming; the server's CPU per connection of each phase, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub(crate) struct ResumptionRound {
    pub(crate) full_us: f64,
    pub(crate) resumed_us: f64,
    pub(crate) kernel_full_us: f64,
    pub(crate) kernel_resumed_us: f64,
}

impl ResumptionFigures {
    /// The figures of `rounds`, `resumed` of `attempted` reconnections having resumed.
    pub(crate) fn of(rounds: Vec<ResumptionRound>, resumed: usize, attempted: usize) -> Self {
        let median = |f: fn(&ResumptionRound) -> f64| {
            Spread::of(&rounds.iter().map(f).collect::<Vec<_>>()).map_or(0.0, |s| s.median)
        };
        let ratio = Spread::of(
            &rounds.iter().filter(|r| r.full_us > 0.0).map(|r| r.resumed_us / r.full_us).collect::<Vec<_>>(),
        );
        let user_space_ratio = Spread::of(
            &rounds
                .iter()
                .filter(|r| r.full_us > r.kernel_full_us)
                .map(|r| (r.resumed_us - r.kernel_resumed_us) / (r.full_us - r.kernel_full_us))
                .collect::<Vec<_>>(),
        );
        ResumptionFigures {
            server_cpu_us_per_full: median(|r| r.full_us),
            server_cpu_us_per_resumed: median(|r| r.resumed_us),
            resumed_to_full: ratio.map_or(0.0, |s| s.median),
            ratio,
            user_space_ratio,
            server_kernel_us_per_full: median(|r| r.kernel_full_us),
            server_kernel_us_per_resumed: median(|r| r.kernel_resumed_us),
            resumed,
            attempted,
            rounds,
        }
    }
}

/// ws-proxy's figures next to the reference relay's, one pair per run, and their ratios.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Comparison {
    pub(crate) runs: usize,
    /// Server CPU per message (or per handshake for `connect`), in microseconds.
    pub(crate) server_cpu_us: Figure,
    /// p99 latency (the round trip with `--ping-pong`), in microseconds.
    pub(crate) p99_us: Figure,
    /// Server RSS per idle connection, in bytes.
    pub(crate) rss_bytes_per_connection: Figure,
    /// What every run of both delivered.
    pub(crate) delivery: Delivery,
}

/// One figure of both relays over the runs.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Figure {
    pub(crate) relay: Vec<f64>,
    pub(crate) reference: Vec<f64>,
    /// relay / reference, run by run.
    pub(crate) ratios: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<Spread>,
}

/// The median of some ratios and their range.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// The median and range of `values`; `None` when there are none.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (first, last) = (*sorted.first()?, *sorted.last()?);
        let middle = sorted.len() / 2;
        let median =
            if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 };
        Some(Spread { median, min: first, max: last })
    }
}

impl Comparison {
    /// Adds one run of each.
    pub(crate) fn add(&mut self, relay: &Report, reference: &Report) {
        self.runs += 1;
        self.delivery.add(&relay.delivery);
        self.delivery.add(&reference.delivery);
        let cpu = |r: &Report| r.server_cpu_us_per_message.or(r.server_cpu_us_per_handshake);
        self.server_cpu_us.add(cpu(relay), cpu(reference));
        let p99 = |r: &Report| r.latency_us.map(|l| l.p99);
        self.p99_us.add(p99(relay), p99(reference));
        self.rss_bytes_per_connection
            .add(relay.server_rss_bytes_per_connection, reference.server_rss_bytes_per_connection);
    }

    fn print_text(&self) {
        println!("ws-proxy / reference relay, {} run(s):", self.runs);
        self.server_cpu_us.print_text("server CPU", "us");
        self.p99_us.print_text("p99 latency", "us");
        self.rss_bytes_per_connection.print_text("RSS per conn", "bytes");
        let d = self.delivery;
        println!(
            "  delivery, all runs sent {} received {} lost {} duplicated {} reordered {} corrupted {}",
            d.sent, d.received, d.lost, d.duplicated, d.reordered, d.corrupted
        );
    }
}

impl Figure {
    fn add(&mut self, relay: Option<f64>, reference: Option<f64>) {
        let (Some(relay), Some(reference)) = (relay, reference) else { return };
        self.relay.push(relay);
        self.reference.push(reference);
        if reference > 0.0 {
            self.ratios.push(relay / reference);
            self.ratio = Spread::of(&self.ratios);
        }
    }

    fn print_text(&self, name: &str, unit: &str) {
        let Some(spread) = self.ratio else { return };
        let list = |values: &[f64]| values.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(" ");
        println!(
            "  {name:<18} {:.2}x median ({:.2}-{:.2}x); ws-proxy {} {unit}, reference {} {unit}",
            spread.median,
            spread.min,
            spread.max,
            list(&self.relay),
            list(&self.reference)
        );
    }
}

impl Report {
    /// This report (ws-proxy's last run) with the reference relay's last run and the
    /// comparison of every run.
    pub(crate) fn with_reference(mut self, reference: Report, comparison: Comparison) -> Self {
        self.reference = Some(Box::new(reference));
        self.comparison = Some(comparison);
        self
    }

    pub(crate) fn delivery_ok(&self) -> bool {
        self.delivery.is_perfect() && self.comparison.as_ref().is_none_or(|c| c.delivery.is_perfect())
    }

    pub(crate) fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        self.print_text();
        if let Some(reference) = &self.reference {
            println!("reference relay (tokio-tungstenite, same TLS, same scenario):");
            reference.print_text();
        }
        if let Some(comparison) = &self.comparison {
            comparison.print_text();
        }
    }

    fn print_text(&self) {
        println!("{} {}", self.scenario, self.params);
        println!("  elapsed            {:.3} s", self.elapsed_s);
        let line = |name: &str, value: Option<f64>, unit: &str| {
            if let Some(v) = value {
                println!("  {name:<18} {v:.2} {unit}");
            }
        };
        line("throughput", self.msgs_per_sec, "msgs/s");
        line("throughput", self.mb_per_sec, "MB/s");
        line("handshakes", self.handshakes_per_sec, "/s");
        line("server CPU", self.server_cpu_us_per_message, "us/message");
        line("server CPU", self.server_cpu_us_per_handshake, "us/handshake");
        line("server RSS", self.server_rss_bytes_per_connection, "bytes/connection");
        line("next to stalled", self.throughput_ratio_next_to_stalled_room, "x alone");
        line("server RSS peak", self.server_rss_peak_bytes.map(|b| b as f64 / 1048576.0), "MiB");
        if let Some(l) = self.latency_us {
            println!(
                "  latency (us)       p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        if let Some(fleet) = &self.fleet {
            fleet.print_text();
        }
        let d = self.delivery;
        println!(
            "  delivery           sent {} received {} lost {} duplicated {} reordered {} corrupted {}",
            d.sent, d.received, d.lost, d.duplicated, d.reordered, d.corrupted
        );
    }
}

impl FleetFigures {
    fn print_text(&self) {
        println!("  peers              {} in {} rooms, {} whole", self.peers, self.rooms, self.rooms_whole);
        println!("  cold start         {:.2} s until every room was whole", self.cold_start_s);
        for c in &self.checkpoints {
            println!("  RSS at {:>7} peers {:.0} bytes/peer", c.peers, c.rss_bytes_per_peer);
        }
        if let Some(cpu) = self.server_cpu_us_per_connection {
            println!("  server CPU         {cpu:.0} us/connection");
        }
        for p in &self.processes {
            println!(
                "  process {:>8}     RSS {:.1} MiB, CPU {:.1} s",
                p.pid,
                p.rss_bytes as f64 / 1048576.0,
                p.cpu_s
            );
        }
        let counts = |map: &BTreeMap<String, u64>| {
            map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        if !self.refusals.is_empty() {
            println!("  refusals           {}", counts(&self.refusals));
        }
        if !self.endings.is_empty() {
            println!("  endings            {}", counts(&self.endings));
        }
        if let Some(r) = &self.restart {
            let w = r.whole_after_listening_ms;
            println!(
                "  restart ({})      listening {:.2} s after the signal",
                r.signal, r.listening_after_signal_s
            );
            println!(
                "  whole again (ms)   after listening: p50 {:.0}  p99 {:.0}  max {:.0}; all {:.2} s after the signal",
                w.p50, w.p99, w.max, r.all_whole_after_signal_s
            );
            println!("  relaying again     {} of {} rooms", r.rooms_relaying, self.rooms);
            println!(
                "  new process        CPU {:.1} s, peak RSS {:.1} MiB",
                r.server_cpu_s,
                r.server_rss_peak_bytes as f64 / 1048576.0
            );
            println!(
                "  RSS per peer       {:.0} before, {:.0} after the restart",
                r.rss_bytes_per_peer_before, r.rss_bytes_per_peer_after
            );
            println!("  handshakes         {}", counts(&r.handshakes));
        }
        if let Some(r) = &self.resumption {
            let spread = |s: Option<Spread>| {
                s.map_or("-".into(), |s| format!("{:.2}x ({:.2}-{:.2}x)", s.median, s.min, s.max))
            };
            for (n, round) in r.rounds.iter().enumerate() {
                println!(
                    "  round {:<3}          {:.0} us full, {:.0} us resumed; kernel {:.0} / {:.0} us",
                    n + 1,
                    round.full_us,
                    round.resumed_us,
                    round.kernel_full_us,
                    round.kernel_resumed_us
                );
            }
            println!(
                "  server CPU         {:.0} us full, {:.0} us resumed (medians); {} of {} resumed",
                r.server_cpu_us_per_full, r.server_cpu_us_per_resumed, r.resumed, r.attempted
            );
            println!(
                "  of which kernel    {:.0} us full, {:.0} us resumed",
                r.server_kernel_us_per_full, r.server_kernel_us_per_resumed
            );
            println!("  resumed / full     {} median of {} round(s)", spread(r.ratio), r.rounds.len());
            println!("  user space only    {}", spread(r.user_space_ratio));
        }
    }
}
