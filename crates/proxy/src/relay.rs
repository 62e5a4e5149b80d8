//! A peer's outbound side: its [`Mailbox`] (what other connections deliver into) and the writer
//! task that drains it onto the WebSocket.
//!
//! Each peer has one bounded queue, limited both in frames and in bytes, so a peer that stops
//! reading costs a bounded amount of memory. A sender waits at most `slow_consumer_timeout` for
//! room in a receiver's queue; past that, the receiver is closed with 1013 and the sender goes
//! on. Frames are queued as the original `Bytes` (a reference-counted clone), never copied or
//! re-serialized. The writer is generic over the sink so it can be tested with channels.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_util::sync::CancellationToken;

use crate::error::Close;
use crate::metrics::PeerStats;

/// How long the writer tries to write a close frame before it gives up and drops the TCP
/// connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames written before one flush, at most.
const MAX_BATCH: usize = 64;

/// A connection's number, unique for the process lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(pub(crate) u64);

impl ConnId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One queued frame, holding its share of the receiver's byte budget until it is written.
pub(crate) struct Outbound {
    message: Message,
    _budget: Option<OwnedSemaphorePermit>,
}

/// The receiving end of a mailbox, owned by the writer.
pub(crate) type Inbox = mpsc::Receiver<Outbound>;

/// The outcome of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued for writing.
    Queued,
    /// The receiver is closed or closing.
    Gone,
    /// The receiver's queue stayed full for the whole timeout.
    Slow,
}

/// Where frames for one peer go, and the switch that closes it. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Mailbox {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnId,
    queue: mpsc::Sender<Outbound>,
    budget: Arc<Semaphore>,
    budget_max: u32,
    kill: CancellationToken,
    reason: OnceLock<Close>,
    stats: PeerStats,
}

impl Mailbox {
    /// A mailbox holding at most `frames` frames and `bytes` bytes, plus `reserve` frames for
    /// what a newcomer is given when it joins (HELLOs and held messages, see
    /// [`Mailbox::push_initial`]).
    pub(crate) fn new(conn: ConnId, frames: usize, reserve: usize, bytes: usize) -> (Self, Inbox) {
        let (queue, inbox) = mpsc::channel(frames.saturating_add(reserve).max(1));
        let budget_max = u32::try_from(bytes).unwrap_or(u32::MAX).min(Semaphore::MAX_PERMITS as u32);
        let inner = Inner {
            conn,
            queue,
            budget: Arc::new(Semaphore::new(budget_max as usize)),
            budget_max,
            kill: CancellationToken::new(),
            reason: OnceLock::new(),
            stats: PeerStats::default(),
        };
        (Mailbox { inner: Arc::new(inner) }, inbox)
    }

    pub(crate) fn conn(&self) -> ConnId {
        self.inner.conn
    }

    /// The peer's frame and byte counters.
    pub(crate) fn stats(&self) -> &PeerStats {
        &self.inner.stats
    }

    /// Closes the peer for `reason`; the first reason given wins.
    pub(crate) fn kill(&self, reason: Close) {
        let _ = self.inner.reason.set(reason);
        self.inner.kill.cancel();
    }

    /// Cancelled once the peer is being closed.
    pub(crate) fn killed(&self) -> &CancellationToken {
        &self.inner.kill
    }

    /// Why the peer is being closed, once it is.
    pub(crate) fn kill_reason(&self) -> Option<Close> {
        self.inner.reason.get().cloned()
    }

    /// Queues a frame without waiting and outside the byte budget: only for the frames a
    /// newcomer receives as it joins, which the reserve was sized for.
    pub(crate) fn push_initial(&self, message: Message) -> bool {
        let len = message.len() as u64;
        let queued = self.inner.queue.try_send(Outbound { message, _budget: None }).is_ok();
        if queued {
            self.inner.stats.sent.add(1, len);
        }
        queued
    }

    /// Queues a frame, waiting at most `timeout` for room in the queue.
    ///
    /// The common case, a receiver that keeps up, takes neither a timer nor a clock reading:
    /// the deadline is computed only when the byte budget or the queue is full.
    pub(crate) async fn deliver(&self, message: Message, timeout: Duration) -> Delivery {
        if self.inner.kill.is_cancelled() {
            return Delivery::Gone;
        }
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX).clamp(1, self.inner.budget_max);
        let mut deadline = None;
        let budget = match self.inner.budget.clone().try_acquire_many_owned(len) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Delivery::Gone,
            Err(TryAcquireError::NoPermits) => {
                let until = *deadline.insert(Instant::now() + timeout);
                match time::timeout_at(until, self.inner.budget.clone().acquire_many_owned(len)).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Delivery::Gone,
                    Err(_) => return Delivery::Slow,
                }
            }
        };
        let item = Outbound { message, _budget: Some(budget) };
        let item = match self.inner.queue.try_send(item) {
            Ok(()) => return Delivery::Queued,
            Err(mpsc::error::TrySendError::Closed(_)) => return Delivery::Gone,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        let until = deadline.unwrap_or_else(|| Instant::now() + timeout);
        match self.inner.queue.send_timeout(item, until.saturating_duration_since(Instant::now())).await {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Delivery::Slow,
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Delivery::Gone,
        }
    }
}

/// Drains `inbox` onto `sink`, batching frames before each flush and pinging every
/// `ping_interval`, until the mailbox is killed or the sink fails; then writes the close frame
/// for the kill reason (bounded in time) and closes the sink.
pub(crate) async fn write_loop<S>(mut sink: S, mut inbox: Inbox, mailbox: Mailbox, ping_interval: Duration)
where
    S: Sink<Message> + Unpin,
{
    let kill = mailbox.killed().clone();
    // One cancellation future for the whole loop: making one per iteration registers and
    // unregisters a waiter on every frame.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let mut ping = time::interval_at(Instant::now() + ping_interval, ping_interval);
    loop {
        let first = tokio::select! {
            biased;
            () = &mut killed => break,
            item = inbox.recv() => match item {
                Some(item) => item.message,
                None => break,
            },
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        // A write in progress is abandoned only when the peer is being closed anyway.
        let written = tokio::select! {
            biased;
            () = &mut killed => break,
            result = write_batch(&mut sink, first, &mut inbox) => result,
        };
        if written.is_err() {
            mailbox.kill(Close::Transport("write failed".to_owned()));
            return;
        }
    }
    let close = match mailbox.kill_reason() {
        Some(Close::PeerClosed | Close::Transport(_)) | None => None,
        Some(reason) => Some(CloseFrame { code: reason.close_code(), reason: reason.reason().into() }),
    };
    let _ = time::timeout(CLOSE_WRITE_TIMEOUT, async {
        if let Some(frame) = close {
            sink.send(Message::Close(Some(frame))).await?;
        }
        sink.close().await
    })
    .await;
}

async fn write_batch<S>(sink: &mut S, first: Message, inbox: &mut Inbox) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    sink.feed(first).await?;
    for _ in 1..MAX_BATCH {
        match inbox.try_recv() {
            Ok(item) => sink.feed(item.message).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_channel::mpsc as fmpsc;
    use futures_util::StreamExt;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    #[tokio::test]
    async fn frames_are_written_in_order_then_the_close_frame() {
        let (mailbox, inbox) = Mailbox::new(ConnId(1), 8, 0, 1 << 20);
        let (sink, mut written) = fmpsc::unbounded::<Message>();
        let writer = tokio::spawn(write_loop(sink, inbox, mailbox.clone(), Duration::from_secs(60)));
        for i in 0..5 {
            assert_eq!(mailbox.deliver(text(&i.to_string()), Duration::from_secs(1)).await, Delivery::Queued);
        }
        for i in 0..5 {
            assert_eq!(written.next().await, Some(text(&i.to_string())));
        }
        mailbox.kill(Close::Replaced);
        writer.await.unwrap();
        match written.next().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1008);
                assert_eq!(frame.reason.as_str(), "replaced by a newer connection");
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
        assert_eq!(mailbox.deliver(text("late"), Duration::from_secs(1)).await, Delivery::Gone);
    }

    #[tokio::test]
    async fn a_full_queue_makes_delivery_slow_not_blocking() {
        let (mailbox, _inbox) = Mailbox::new(ConnId(2), 2, 0, 1 << 20);
        let wait = Duration::from_millis(50);
        assert_eq!(mailbox.deliver(text("a"), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(text("b"), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(text("c"), wait).await, Delivery::Slow);
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_queue() {
        let (mailbox, mut inbox) = Mailbox::new(ConnId(3), 100, 0, 4096);
        let big = Message::binary(vec![0u8; 3000]);
        let wait = Duration::from_millis(50);
        assert_eq!(mailbox.deliver(big.clone(), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(big.clone(), wait).await, Delivery::Slow);
        drop(inbox.recv().await);
        assert_eq!(
            mailbox.deliver(big, wait).await,
            Delivery::Queued,
            "budget returns when a frame is written"
        );
    }

    #[tokio::test]
    async fn pings_are_sent_when_idle() {
        let (mailbox, inbox) = Mailbox::new(ConnId(4), 8, 0, 1 << 20);
        let (sink, mut written) = fmpsc::unbounded::<Message>();
        let writer = tokio::spawn(write_loop(sink, inbox, mailbox.clone(), Duration::from_millis(20)));
        assert!(matches!(written.next().await, Some(Message::Ping(_))));
        mailbox.kill(Close::PeerClosed);
        writer.await.unwrap();
        assert_eq!(written.next().await, None, "no close frame after the peer closed");
    }
}
