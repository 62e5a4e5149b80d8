//! The scenarios: streaming pairs, fan-out, connects, idle peers, a stalled receiver.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::Notify;

use crate::fleet::Layout;
use crate::fleet_runs::{connect_resume, idle_fleet};
use crate::peers::{Identities, expect, hello};
use crate::reference::ReferenceProcess;
use crate::report::{Comparison, Report};
use crate::server::cpu_per;
use crate::stats::{Delivery, Percentiles, SequenceCheck};
use crate::storm::StormOptions;
use crate::transport::{Conn, FrameSink, FrameStream, Target, node_url, ws_conn};
use crate::{Cli, Scenario, frame, server};

/// Runs the scenario chosen on the command line against the relay and, with `--reference`
/// and where the scenario applies to it, against the reference relay too, `--runs` times each.
pub(crate) async fn run(cli: &Cli) -> Result<Report> {
    let compared = cli.reference
        && matches!(
            cli.scenario,
            Scenario::Pairs { .. }
                | Scenario::Fanout { .. }
                | Scenario::Connect { resume: false, .. }
                | Scenario::Idle { .. }
        );
    if !compared && cli.runs > 1 {
        bail!(
            "--runs compares runs with the reference relay: give --reference with pairs, fanout, connect or idle"
        );
    }
    let ids = Identities::new(&cli.pki)?;
    let relay = Target::Relay(cli.url.clone());
    if !compared {
        return run_on(&ids, &relay, &cli.scenario, &cli.server_pid).await;
    }
    let process = ReferenceProcess::start(&cli.pki, cli.server_pid.first().copied())?;
    let reference = Target::Reference(process.url.clone());
    let mut comparison = Comparison::default();
    let mut last = None;
    for _ in 0..cli.runs.max(1) {
        let on_relay = run_on(&ids, &relay, &cli.scenario, &cli.server_pid).await?;
        let on_reference = run_on(&ids, &reference, &cli.scenario, &[process.pid()]).await?;
        comparison.add(&on_relay, &on_reference);
        last = Some((on_relay, on_reference));
    }
    let (on_relay, on_reference) = last.context("no run")?;
    Ok(on_relay.with_reference(on_reference, comparison))
}

async fn run_on(ids: &Identities, target: &Target, scenario: &Scenario, pid: &[u32]) -> Result<Report> {
    match scenario.clone() {
        Scenario::Pairs { rooms, messages, size, window, ping_pong } => {
            check_size(size)?;
            let params = serde_json::json!({"rooms": rooms, "messages": messages, "size": size, "window": window, "ping_pong": ping_pong});
            let peers = connect_pairs(ids, target, "pairs", rooms).await?;
            let before = server::sample(pid)?;
            let started = Instant::now();
            let results = futures_util::future::try_join_all(peers.into_iter().map(|(a, b)| async move {
                if ping_pong {
                    ping_pong_room(a, b, messages, size).await
                } else {
                    stream_room(a, b, messages, size, window).await
                }
            }))
            .await?;
            let elapsed = started.elapsed();
            let after = server::sample(pid)?;
            Ok(throughput_report("pairs", params, elapsed, size, results, before, after))
        }
        Scenario::Fanout { receivers, messages, size, window } => {
            check_size(size)?;
            let params = serde_json::json!({"receivers": receivers, "messages": messages, "size": size, "window": window});
            let (sender, receivers_conns) = connect_fanout(ids, target.urls(), receivers).await?;
            let before = server::sample(pid)?;
            let started = Instant::now();
            let result = fanout(sender, receivers_conns, messages, size, window).await?;
            let elapsed = started.elapsed();
            let after = server::sample(pid)?;
            Ok(throughput_report("fanout", params, elapsed, size, vec![result], before, after))
        }
        Scenario::Connect { count, concurrency, resume: true, rounds } => {
            let Target::Relay(urls) = target else { bail!("connect --resume needs the relay") };
            connect_resume(ids, urls, count, concurrency, rounds, pid).await
        }
        Scenario::Connect { count, concurrency, resume: false, .. } => {
            let params = serde_json::json!({"count": count, "concurrency": concurrency});
            let before = server::sample(pid)?;
            let started = Instant::now();
            let attempts = futures_util::stream::iter(0..count)
                .map(|i| async move {
                    let mut conn = target.connect(ids, &format!("bench/connect/{i}"), 0).await?;
                    conn.sink.close().await?;
                    anyhow::Ok(())
                })
                .buffer_unordered(concurrency.max(1));
            let outcomes: Vec<Result<()>> = attempts.collect().await;
            let elapsed = started.elapsed();
            let after = server::sample(pid)?;
            if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
                bail!("a connection failed: {e:#}");
            }
            Ok(Report {
                scenario: "connect".into(),
                params,
                elapsed_s: elapsed.as_secs_f64(),
                handshakes_per_sec: Some(count as f64 / elapsed.as_secs_f64()),
                server_cpu_us_per_handshake: cpu_per(before, after, count as u64),
                ..Report::default()
            })
        }
        Scenario::Idle { count, fleet, checkpoints, hold } => match target {
            Target::Relay(urls) => {
                let layout =
                    Layout { peers: count, offset: fleet.offset, source_ips: fleet.source_ip, tag: "idle" };
                idle_fleet(
                    ids,
                    urls,
                    &layout,
                    fleet.concurrency,
                    &checkpoints,
                    Duration::from_secs(hold),
                    pid,
                )
                .await
            }
            Target::Reference(_) => idle_reference(ids, target, count, pid).await,
        },
        Scenario::Storm { count, fleet, proxy_cmd, signal, socket_activation, phase_timeout } => {
            let Target::Relay(urls) = target else { bail!("storm needs the relay") };
            let [url] = urls.as_slice() else { bail!("storm runs against one relay: give one --url") };
            let options = StormOptions {
                layout: Layout {
                    peers: count,
                    offset: fleet.offset,
                    source_ips: fleet.source_ip,
                    tag: "storm",
                },
                concurrency: fleet.concurrency,
                proxy_cmd: &proxy_cmd,
                signal,
                socket_activation,
                phase_timeout: Duration::from_secs(phase_timeout),
            };
            crate::storm::storm(ids, url, options).await
        }
        Scenario::Slow { rooms, messages, size } => slow(ids, target, rooms, messages, size, pid).await,
        Scenario::ReferenceRelay { .. } => bail!("reference-relay is not a scenario"),
    }
}

fn check_size(size: usize) -> Result<()> {
    if size < frame::MIN_SIZE {
        bail!("--size must be at least {} bytes (the envelope around the sequence number)", frame::MIN_SIZE);
    }
    Ok(())
}

struct RoomResult {
    delivery: Delivery,
    latencies_us: Vec<f64>,
}

fn throughput_report(
    scenario: &str,
    params: serde_json::Value,
    elapsed: Duration,
    size: usize,
    results: Vec<RoomResult>,
    before: Option<server::Sample>,
    after: Option<server::Sample>,
) -> Report {
    let mut delivery = Delivery::default();
    let mut latencies = Vec::new();
    for result in results {
        delivery.add(&result.delivery);
        latencies.extend(result.latencies_us);
    }
    let secs = elapsed.as_secs_f64();
    let messages = delivery.received;
    Report {
        scenario: scenario.into(),
        params,
        elapsed_s: secs,
        msgs_per_sec: Some(messages as f64 / secs),
        mb_per_sec: Some(messages as f64 * size as f64 / secs / 1e6),
        latency_us: Some(Percentiles::of(latencies)),
        server_cpu_us_per_message: cpu_per(before, after, messages),
        delivery,
        ..Report::default()
    }
}

async fn connect_pairs(
    ids: &Identities,
    target: &Target,
    tag: &str,
    rooms: usize,
) -> Result<Vec<(Conn, Conn)>> {
    let mut pairs = Vec::with_capacity(rooms);
    for room in 0..rooms {
        pairs.push(target.pair(ids, &format!("bench/{tag}/{room}")).await?);
    }
    Ok(pairs)
}

/// The sender and K receivers of one room, past the HELLOs. Every member connects before any
/// says HELLO, so that a relay that holds nothing (the reference relay) delivers them all.
async fn connect_fanout(ids: &Identities, urls: &[String], receivers: usize) -> Result<(Conn, Vec<Conn>)> {
    let room = "bench/fanout";
    let mut members = Vec::with_capacity(receivers + 1);
    for n in 0..=receivers {
        members.push(ids.connect(node_url(urls, n), room, n).await?);
    }
    for (n, ws) in members.iter_mut().enumerate() {
        hello(ws, &format!("member-{n}")).await?;
    }
    // Every member receives the HELLO of each of the others: K of them.
    for ws in &mut members {
        for _ in 0..receivers {
            expect(ws, "CONN:HELLO").await?;
        }
    }
    let mut conns = members.into_iter().map(ws_conn);
    let sender = conns.next().context("no sender")?;
    Ok((sender, conns.collect()))
}

/// What a sender and its receivers share: the stream's shape, each receiver's progress, and
/// when each message was sent.
struct Flow {
    messages: u64,
    size: usize,
    window: u64,
    received: Vec<AtomicU64>,
    progress: Notify,
    sent_at: Vec<AtomicU64>,
    clock: Instant,
}

impl Flow {
    fn new(messages: u64, size: usize, window: u64, receivers: usize) -> Self {
        Flow {
            messages,
            size,
            window,
            received: (0..receivers).map(|_| AtomicU64::new(0)).collect(),
            progress: Notify::new(),
            sent_at: (0..messages).map(|_| AtomicU64::new(0)).collect(),
            clock: Instant::now(),
        }
    }

    fn slowest(&self) -> u64 {
        self.received.iter().map(|r| r.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    /// Sends every message, with at most `window` not yet received by every receiver.
    async fn send(&self, mut sink: FrameSink) -> Result<()> {
        for seq in 0..self.messages {
            if seq - self.slowest().min(seq) >= self.window {
                sink.flush().await?;
                while seq - self.slowest().min(seq) >= self.window {
                    self.progress.notified().await;
                }
            }
            self.sent_at[seq as usize].store(self.clock.elapsed().as_nanos() as u64, Ordering::Relaxed);
            sink.feed(Bytes::from(frame::make(seq, self.size))).await?;
        }
        sink.flush().await?;
        Ok(())
    }

    /// Receiver `index` takes every message, checking each and timing it.
    async fn receive(&self, mut stream: FrameStream, index: usize) -> Result<RoomResult> {
        let mut check = SequenceCheck::default();
        let mut latencies = Vec::with_capacity(self.messages as usize);
        let mut count = 0;
        while count < self.messages {
            let bytes = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                Ok(Some(Ok(bytes))) => bytes,
                Ok(Some(Err(e))) => bail!("after {count} messages: {e:#}"),
                Ok(None) => bail!("connection ended after {count} messages"),
                Err(_) => bail!("nothing received for 30 s after {count} messages"),
            };
            match frame::check(&bytes, self.size) {
                Some((seq, intact)) => {
                    check.record(seq, intact);
                    if let Some(sent) = self.sent_at.get(seq as usize) {
                        let now = self.clock.elapsed().as_nanos() as u64;
                        latencies.push(now.saturating_sub(sent.load(Ordering::Relaxed)) as f64 / 1000.0);
                    }
                }
                None => check.record_unreadable(),
            }
            count += 1;
            self.received[index].store(count, Ordering::Release);
            self.progress.notify_one();
        }
        Ok(RoomResult { delivery: check.finish(self.messages), latencies_us: latencies })
    }
}

async fn stream_room(a: Conn, b: Conn, messages: u64, size: usize, window: u64) -> Result<RoomResult> {
    let flow = Flow::new(messages, size, window, 1);
    let ((), result) = tokio::try_join!(flow.send(a.sink), flow.receive(b.stream, 0))?;
    Ok(result)
}

async fn fanout(
    sender: Conn,
    receivers: Vec<Conn>,
    messages: u64,
    size: usize,
    window: u64,
) -> Result<RoomResult> {
    let flow = Flow::new(messages, size, window, receivers.len());
    let receive = futures_util::future::try_join_all(
        receivers.into_iter().enumerate().map(|(i, conn)| flow.receive(conn.stream, i)),
    );
    let ((), results) = tokio::try_join!(flow.send(sender.sink), receive)?;
    let mut merged = RoomResult { delivery: Delivery::default(), latencies_us: Vec::new() };
    for result in results {
        merged.delivery.add(&result.delivery);
        merged.latencies_us.extend(result.latencies_us);
    }
    Ok(merged)
}

/// A sends, B echoes, A times each round trip; one message in flight.
async fn ping_pong_room(a: Conn, b: Conn, messages: u64, size: usize) -> Result<RoomResult> {
    let Conn { sink: mut b_sink, stream: mut b_stream } = b;
    let echo = async move {
        for _ in 0..messages {
            match b_stream.next().await {
                Some(Ok(bytes)) => b_sink.send(bytes).await?,
                Some(Err(e)) => bail!("echo side: {e:#}"),
                None => bail!("echo side: connection ended"),
            }
        }
        anyhow::Ok(())
    };
    let Conn { sink: mut a_sink, stream: mut a_stream } = a;
    let time = async move {
        let mut check = SequenceCheck::default();
        let mut rtts = Vec::with_capacity(messages as usize);
        for seq in 0..messages {
            let started = Instant::now();
            a_sink.send(Bytes::from(frame::make(seq, size))).await?;
            let bytes = match a_stream.next().await {
                Some(Ok(bytes)) => bytes,
                Some(Err(e)) => bail!("ping side: {e:#}"),
                None => bail!("ping side: connection ended"),
            };
            rtts.push(started.elapsed().as_secs_f64() * 1e6);
            match frame::check(&bytes, size) {
                Some((got, intact)) => check.record(got, intact),
                None => check.record_unreadable(),
            }
        }
        anyhow::Ok(RoomResult { delivery: check.finish(messages), latencies_us: rtts })
    };
    let ((), result) = tokio::try_join!(echo, time)?;
    Ok(result)
}

/// `idle` on the reference relay: connections in pairs, each past its upgrade and HELLO, held,
/// then the RSS per connection (the fleet's HELLO exchange needs a relay that holds frames).
async fn idle_reference(ids: &Identities, target: &Target, count: usize, pid: &[u32]) -> Result<Report> {
    let before = server::sample(pid)?;
    let started = Instant::now();
    let connections: Vec<Result<Conn>> = futures_util::stream::iter(0..count)
        .map(|i| async move { target.connect(ids, &format!("bench/idle/{}", i / 2), i % 2).await })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let after = server::sample(pid)?;
    let connections = connections.into_iter().collect::<Result<Vec<_>>>()?;
    let per_connection =
        before.zip(after).map(|(b, a)| (a.rss_bytes as f64 - b.rss_bytes as f64) / count as f64);
    drop(connections);
    Ok(Report {
        scenario: "idle".into(),
        params: serde_json::json!({"count": count}),
        elapsed_s: elapsed.as_secs_f64(),
        server_rss_bytes_per_connection: per_connection,
        ..Report::default()
    })
}

async fn slow(
    ids: &Identities,
    target: &Target,
    rooms: usize,
    messages: u64,
    size: usize,
    pid: &[u32],
) -> Result<Report> {
    check_size(size)?;
    let window = 64;
    let run_rooms = |tag: &'static str| async move {
        let peers = connect_pairs(ids, target, tag, rooms).await?;
        let started = Instant::now();
        let results = futures_util::future::try_join_all(
            peers.into_iter().map(|(a, b)| stream_room(a, b, messages, size, window)),
        )
        .await?;
        anyhow::Ok((started.elapsed(), results))
    };
    let (alone_before, alone_results) = run_rooms("slow-baseline").await?;

    // A room whose receiver never reads, fed as fast as the relay takes it.
    let (stalled_sender, stalled_receiver) = target.pair(ids, "bench/slow/stalled").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let flood_stop = Arc::clone(&stop);
    let flood = tokio::spawn(async move {
        let Conn { mut sink, mut stream } = stalled_sender;
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
        let mut seq = 0;
        while !flood_stop.load(Ordering::Relaxed) {
            if sink.send(Bytes::from(frame::make(seq, size))).await.is_err() {
                break;
            }
            seq += 1;
        }
        drain.abort();
    });
    let peak = Arc::new(AtomicU64::new(0));
    let sampling_peak = Arc::clone(&peak);
    let sampling_stop = Arc::clone(&stop);
    let sampled = pid.to_vec();
    let sampler = tokio::spawn(async move {
        while !sampling_stop.load(Ordering::Relaxed) {
            if let Ok(Some(sample)) = server::sample(&sampled) {
                sampling_peak.fetch_max(sample.rss_bytes, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let (beside, beside_results) = run_rooms("slow-beside").await?;
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
    let _ = sampler.await;
    drop(stalled_receiver);
    // The baseline again, after the stalled room: the machine's speed drifts from one second to
    // the next, and the mean of a run before and one after is what the run beside compares to.
    let (alone_after, after_results) = run_rooms("slow-after").await?;
    let alone = (alone_before + alone_after) / 2;

    let mut delivery = Delivery::default();
    for result in alone_results.iter().chain(&beside_results).chain(&after_results) {
        delivery.add(&result.delivery);
    }
    let total = (rooms as u64 * messages) as f64;
    let ratio = (total / beside.as_secs_f64()) / (total / alone.as_secs_f64());
    Ok(Report {
        scenario: "slow".into(),
        params: serde_json::json!({"rooms": rooms, "messages": messages, "size": size}),
        elapsed_s: (alone_before + beside + alone_after).as_secs_f64(),
        msgs_per_sec: Some(total / beside.as_secs_f64()),
        throughput_ratio_next_to_stalled_room: Some(ratio),
        server_rss_peak_bytes: (!pid.is_empty()).then(|| peak.load(Ordering::Relaxed)),
        delivery,
        ..Report::default()
    })
}
