//! The scenarios, and the report they produce.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;

use crate::peers::{Identities, expect, hello};
use crate::stats::{Delivery, Percentiles, SequenceCheck};
use crate::transport::{Conn, FrameSink, FrameStream, Target, node_url, ws_conn};
use crate::{Cli, Scenario, frame, server};

/// One run's figures.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    scenario: String,
    params: serde_json::Value,
    elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    msgs_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mb_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshakes_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_message: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_handshake: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_bytes_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    throughput_ratio_next_to_stalled_room: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_peak_bytes: Option<u64>,
    delivery: Delivery,
    /// The same scenario through the floor, in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    floor: Option<Box<Report>>,
    /// Server CPU per message or handshake, relay / floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ratio_to_floor: Option<f64>,
    /// p99 latency, relay / floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ratio_to_floor: Option<f64>,
    /// RSS per idle connection, relay / floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_ratio_to_floor: Option<f64>,
}

impl Report {
    fn with_floor(mut self, floor: Report) -> Self {
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        self.cpu_ratio_to_floor = ratio(self.server_cpu_us_per_message, floor.server_cpu_us_per_message)
            .or(ratio(self.server_cpu_us_per_handshake, floor.server_cpu_us_per_handshake));
        self.rss_ratio_to_floor =
            ratio(self.server_rss_bytes_per_connection, floor.server_rss_bytes_per_connection);
        self.p99_ratio_to_floor = ratio(self.latency_us.map(|l| l.p99), floor.latency_us.map(|l| l.p99));
        self.delivery.add(&floor.delivery);
        self.floor = Some(Box::new(floor));
        self
    }

    pub(crate) fn delivery_ok(&self) -> bool {
        self.delivery.is_perfect()
    }

    pub(crate) fn print(&self, json: bool) {
        if json {
            println!("{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        self.print_text();
        if let Some(floor) = &self.floor {
            println!("floor (bare mTLS forwarder, same scenario):");
            floor.print_text();
            if let Some(r) = self.cpu_ratio_to_floor {
                println!("  relay / floor      {r:.2}x server CPU");
            }
            if let Some(r) = self.p99_ratio_to_floor {
                println!("  relay / floor      {r:.2}x p99 latency");
            }
            if let Some(r) = self.rss_ratio_to_floor {
                println!("  relay / floor      {r:.2}x RSS per connection");
            }
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
        let d = self.delivery;
        println!(
            "  delivery           sent {} received {} lost {} duplicated {} reordered {} corrupted {}",
            d.sent, d.received, d.lost, d.duplicated, d.reordered, d.corrupted
        );
    }
}

/// Runs the scenario chosen on the command line against the relay and, when a floor is given
/// and the scenario applies to it, against the floor too.
pub(crate) async fn run(cli: &Cli) -> Result<Report> {
    let ids = Identities::new(&cli.pki)?;
    let relay = run_on(&ids, &Target::Relay(cli.url.clone()), &cli.scenario, &cli.server_pid).await?;
    let floor_applies =
        matches!(cli.scenario, Scenario::Pairs { .. } | Scenario::Connect { .. } | Scenario::Idle { .. });
    match cli.floor {
        Some(addr) if floor_applies => {
            let floor = run_on(&ids, &Target::Floor(addr), &cli.scenario, cli.floor_pid.as_slice()).await?;
            Ok(relay.with_floor(floor))
        }
        _ => Ok(relay),
    }
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
            let Target::Relay(urls) = target else { bail!("fanout needs the relay") };
            check_size(size)?;
            let params = serde_json::json!({"receivers": receivers, "messages": messages, "size": size, "window": window});
            let (sender, receivers_conns) = connect_fanout(ids, urls, receivers).await?;
            let before = server::sample(pid)?;
            let started = Instant::now();
            let result = fanout(sender, receivers_conns, messages, size, window).await?;
            let elapsed = started.elapsed();
            let after = server::sample(pid)?;
            Ok(throughput_report("fanout", params, elapsed, size, vec![result], before, after))
        }
        Scenario::Connect { count, concurrency } => {
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
        Scenario::Idle { count } => idle(ids, target, count, pid).await,
        Scenario::Slow { rooms, messages, size } => slow(ids, target, rooms, messages, size, pid).await,
        Scenario::FloorServer { .. } => bail!("floor-server is not a scenario"),
    }
}

fn check_size(size: usize) -> Result<()> {
    if size < frame::MIN_SIZE {
        bail!("--size must be at least {} bytes (the envelope around the sequence number)", frame::MIN_SIZE);
    }
    Ok(())
}

fn cpu_per(before: Option<server::Sample>, after: Option<server::Sample>, n: u64) -> Option<f64> {
    let (before, after) = (before?, after?);
    (n > 0).then(|| (after.cpu_seconds - before.cpu_seconds) * 1e6 / n as f64)
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

async fn connect_fanout(ids: &Identities, urls: &[String], receivers: usize) -> Result<(Conn, Vec<Conn>)> {
    let room = "bench/fanout";
    let mut sender = ids.connect(node_url(urls, 0), room, 0).await?;
    hello(&mut sender, "sender").await?;
    let mut list = Vec::with_capacity(receivers);
    for n in 1..=receivers {
        let mut ws = ids.connect(node_url(urls, n), room, n).await?;
        hello(&mut ws, &format!("r{n}")).await?;
        list.push(ws);
    }
    // Every member receives the HELLO of each of the others: K of them.
    for ws in std::iter::once(&mut sender).chain(list.iter_mut()) {
        for _ in 0..receivers {
            expect(ws, "CONN:HELLO").await?;
        }
    }
    Ok((ws_conn(sender), list.into_iter().map(ws_conn).collect()))
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

async fn idle(ids: &Identities, target: &Target, count: usize, pid: &[u32]) -> Result<Report> {
    let before = server::sample(pid)?;
    let started = Instant::now();
    let connections: Vec<Result<Conn>> = futures_util::stream::iter(0..count)
        .map(|i| async move {
            let mut conn = target.connect(ids, &format!("bench/idle/{i}"), 0).await?;
            if let Target::Relay(_) = target {
                // Alone in its room, a message that asks for a response is answered at once:
                // the answer proves the relay has set this member up completely. (The floor
                // acknowledges registration itself.)
                let probe =
                    r#"{"message":{"messageId":1,"messageType":"EVENT:bench-idle","requiresResponse":true}}"#;
                conn.sink.send(Bytes::from_static(probe.as_bytes())).await?;
                match conn.stream.next().await {
                    Some(Ok(answer)) if answer.windows(10).any(|w| w == b"CONN:ERROR") => {}
                    other => bail!("expected the relay's CONN:ERROR 503, got {other:?}"),
                }
            }
            Ok(conn)
        })
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
