//! A peer's outbound side: its [`Mailbox`] (what other connections deliver into) and the writer
//! task that drains it onto the WebSocket.
//!
//! Each peer has one bounded queue, limited both in frames and in bytes (a frame's bytes count
//! until it is written), so a peer that stops reading costs a bounded amount of memory. A sender
//! waits at most `slow_consumer_timeout` for room in a receiver's queue; past that, the receiver
//! is closed with 1013 and the sender goes on. Frames are queued as the original `Bytes` (a
//! reference-counted clone), never copied or re-serialized.
//!
//! The queue is a `VecDeque` behind a short `std` mutex rather than a channel and a byte
//! semaphore: a delivery is one lock and at most one wake-up, the writer takes everything queued
//! under one lock, and an idle peer's queue holds no allocation at all (docs/performance.md).
//! The writer is generic over the sink so it can be tested with channels.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::{Sink, SinkExt};
use tokio::sync::Notify;
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

use crate::error::Close;
use crate::metrics::PeerStats;

/// How long the writer tries to write a close frame before it gives up and drops the TCP
/// connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// A drained queue keeps at most this many slots of capacity, so a burst does not leave an idle
/// peer holding a large buffer.
const KEEP_CAPACITY: usize = 16;

/// A connection's number, unique for the process lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnId(pub(crate) u64);

impl ConnId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

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
    queue: Mutex<Queue>,
    /// Frames the queue takes from deliveries; joins may add `reserve` more.
    max_frames: usize,
    /// Bytes queued or being written, at most (one larger frame is taken into an empty queue).
    max_bytes: usize,
    /// The writer, parked while the queue is empty.
    writer: AtomicWaker,
    /// Senders waiting for room.
    space: Notify,
    /// Set once, by [`Mailbox::kill`]; read on every delivery and every frame.
    killed: AtomicBool,
    /// Cancelled with `killed`, for the tasks that sleep until then.
    kill: CancellationToken,
    reason: OnceLock<Close>,
    stats: PeerStats,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Message>,
    /// Bytes of the queued frames and of the batch being written.
    bytes: usize,
    /// A sender found the queue full and waits on `space`.
    wanted: bool,
    /// The answer to the peer's latest ping, written before the next frames. Only the latest
    /// is kept (RFC 6455 section 5.5.3), so a ping flood costs no memory.
    pong: Option<Bytes>,
    /// Since when frames from other nodes have found the queue over its limits.
    over_since: Option<Instant>,
}

/// What [`Mailbox::offer`] did with a frame.
enum Offer {
    Queued,
    Gone,
    Full(Message),
}

impl Mailbox {
    /// A mailbox taking at most `frames` frames and `bytes` bytes from deliveries.
    pub(crate) fn new(conn: ConnId, frames: usize, bytes: usize) -> Self {
        let inner = Inner {
            conn,
            queue: Mutex::new(Queue::default()),
            max_frames: frames.max(1),
            max_bytes: bytes.max(1),
            writer: AtomicWaker::new(),
            space: Notify::new(),
            killed: AtomicBool::new(false),
            kill: CancellationToken::new(),
            reason: OnceLock::new(),
            stats: PeerStats::default(),
        };
        Mailbox { inner: Arc::new(inner) }
    }

    pub(crate) fn conn(&self) -> ConnId {
        self.inner.conn
    }

    /// The peer's frame and byte counters.
    pub(crate) fn stats(&self) -> &PeerStats {
        &self.inner.stats
    }

    /// The queue, even if a panic elsewhere poisoned the lock: every critical section leaves
    /// it consistent.
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the peer for `reason`; the first reason given wins.
    pub(crate) fn kill(&self, reason: Close) {
        let _ = self.inner.reason.set(reason);
        self.inner.killed.store(true, Ordering::Release);
        self.inner.kill.cancel();
        self.inner.writer.wake();
        self.inner.space.notify_waiters();
    }

    /// Whether the peer is being closed: one atomic load, for the per-frame paths.
    pub(crate) fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::Acquire)
    }

    /// Cancelled once the peer is being closed, for the tasks that sleep until then.
    pub(crate) fn killed(&self) -> &CancellationToken {
        &self.inner.kill
    }

    /// Why the peer is being closed, once it is.
    pub(crate) fn kill_reason(&self) -> Option<Close> {
        self.inner.reason.get().cloned()
    }

    /// Queues a frame without waiting and beyond the limits: only for the frames a newcomer
    /// receives as it joins (HELLOs and held messages, bounded by `max_peers` and the hold
    /// buffer's limits).
    pub(crate) fn push_initial(&self, message: Message) -> bool {
        if self.is_killed() {
            return false;
        }
        self.push(self.lock(), message);
        true
    }

    /// Has the writer answer the peer's ping.
    pub(crate) fn pong(&self, payload: Bytes) {
        let mut queue = self.lock();
        let wake = queue.frames.is_empty() && queue.pong.is_none();
        queue.pong = Some(payload);
        drop(queue);
        if wake {
            self.inner.writer.wake();
        }
    }

    /// Queues a frame if the limits allow; a full queue records that a sender waits.
    fn offer(&self, message: Message) -> Offer {
        if self.is_killed() {
            return Offer::Gone;
        }
        let len = message.len();
        let mut queue = self.lock();
        let fits = queue.frames.len() < self.inner.max_frames
            && (queue.bytes == 0 || queue.bytes + len <= self.inner.max_bytes);
        if !fits {
            queue.wanted = true;
            return Offer::Full(message);
        }
        self.push(queue, message);
        Offer::Queued
    }

    /// Appends a frame to the locked queue, then wakes the writer if it was parked: it parks
    /// only on an empty queue, so only the first frame needs a wake-up.
    fn push(&self, mut queue: MutexGuard<'_, Queue>, message: Message) {
        let wake = queue.frames.is_empty();
        queue.bytes += message.len();
        queue.frames.push_back(message);
        drop(queue);
        if wake {
            self.inner.writer.wake();
        }
    }

    /// Queues a frame, waiting at most `timeout` for room in the queue.
    ///
    /// The common case, a receiver that keeps up, takes one lock and neither a timer nor a
    /// clock reading.
    pub(crate) async fn deliver(&self, message: Message, timeout: Duration) -> Delivery {
        let mut message = match self.offer(message) {
            Offer::Queued => return Delivery::Queued,
            Offer::Gone => return Delivery::Gone,
            Offer::Full(message) => message,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let space = self.inner.space.notified();
            tokio::pin!(space);
            // Registered before the retry, so room made in between is not missed.
            space.as_mut().enable();
            message = match self.offer(message) {
                Offer::Queued => return Delivery::Queued,
                Offer::Gone => return Delivery::Gone,
                Offer::Full(message) => message,
            };
            if time::timeout_at(deadline, space).await.is_err() {
                return Delivery::Slow;
            }
        }
    }

    /// Queues a frame from another node without waiting, so that one slow receiver never holds
    /// up the node's inbox. Past the queue's limits the frame is still taken, up to twice them;
    /// a receiver that stays over them for `patience`, or reaches twice them, is slow.
    pub(crate) fn deliver_now(&self, message: Message, patience: Duration) -> Delivery {
        if self.is_killed() {
            return Delivery::Gone;
        }
        let len = message.len();
        let mut queue = self.lock();
        let over = queue.frames.len() >= self.inner.max_frames
            || (queue.bytes > 0 && queue.bytes + len > self.inner.max_bytes);
        if over {
            let since = *queue.over_since.get_or_insert_with(Instant::now);
            let too_far = queue.frames.len() >= 2 * self.inner.max_frames
                || queue.bytes + len > 2 * self.inner.max_bytes;
            if too_far || since.elapsed() >= patience {
                return Delivery::Slow;
            }
        } else {
            queue.over_since = None;
        }
        self.push(queue, message);
        Delivery::Queued
    }

    /// Moves everything queued into `batch` (which must be empty) and returns its size in
    /// bytes; parks the writer when there is nothing.
    fn poll_batch(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Message>) -> Poll<usize> {
        let mut queue = self.lock();
        if queue.frames.is_empty() && queue.pong.is_none() {
            // Under the lock: a sender that queues after this sees an empty queue and wakes us.
            self.inner.writer.register(cx.waker());
            return Poll::Pending;
        }
        std::mem::swap(&mut queue.frames, batch);
        if let Some(pong) = queue.pong.take() {
            batch.push_front(Message::Pong(pong));
        }
        let bytes = queue.bytes;
        let wanted = std::mem::take(&mut queue.wanted);
        drop(queue);
        if wanted {
            self.inner.space.notify_waiters();
        }
        Poll::Ready(bytes)
    }

    /// Appends whatever is still queued to `batch`, without waiting: for the writer's last
    /// flush before the close frame.
    fn take_remaining(&self, batch: &mut VecDeque<Message>) {
        let mut queue = self.lock();
        batch.extend(queue.frames.drain(..));
    }

    /// Gives back the byte budget of a written batch.
    fn written(&self, bytes: usize) {
        let mut queue = self.lock();
        queue.bytes = queue.bytes.saturating_sub(bytes);
        let wanted = std::mem::take(&mut queue.wanted);
        drop(queue);
        if wanted {
            self.inner.space.notify_waiters();
        }
    }
}

/// What the writer does next.
enum Work {
    /// Write the batch (of this many bytes).
    Frames(usize),
    Ping,
    Stop,
}

/// Drains the mailbox onto `sink`, one flush per batch, and pings every `ping_interval`,
/// until the mailbox is killed or the sink fails; then writes the close frame for the kill
/// reason (bounded in time) and closes the sink.
pub(crate) async fn write_loop<S>(mut sink: S, mailbox: Mailbox, ping_interval: Duration)
where
    S: Sink<Message> + Unpin,
{
    let kill = mailbox.killed().clone();
    // One cancellation future for the whole loop: making one per batch registers and
    // unregisters a waiter every time.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let mut ping = time::interval_at(Instant::now() + ping_interval, ping_interval);
    let mut batch = VecDeque::new();
    loop {
        let work = poll_fn(|cx| {
            if mailbox.is_killed() {
                return Poll::Ready(Work::Stop);
            }
            if let Poll::Ready(bytes) = mailbox.poll_batch(cx, &mut batch) {
                return Poll::Ready(Work::Frames(bytes));
            }
            ping.poll_tick(cx).map(|_| Work::Ping)
        })
        .await;
        // A write in progress is abandoned only when the peer is being closed anyway.
        let written = match work {
            Work::Stop => break,
            Work::Ping => tokio::select! {
                biased;
                () = &mut killed => break,
                result = sink.send(Message::Ping(Default::default())) => result,
            },
            Work::Frames(bytes) => {
                let frames = batch.iter().filter(|m| m.is_text() || m.is_binary()).count() as u64;
                let result = tokio::select! {
                    biased;
                    () = &mut killed => break,
                    result = write_batch(&mut sink, &mut batch) => result,
                };
                if result.is_ok() {
                    mailbox.stats().sent.add(frames, bytes as u64);
                }
                mailbox.written(bytes);
                batch.clear();
                batch.shrink_to(KEEP_CAPACITY);
                result
            }
        };
        if written.is_err() {
            mailbox.kill(Close::Transport("write failed".to_owned()));
            return;
        }
    }
    let reason = mailbox.kill_reason();
    // What is still queued goes out before the close frame (the proxy's last replies, the
    // messages a shutdown finds queued), unless the peer is not reading, cannot be written to,
    // or is no longer trusted.
    if !matches!(reason, Some(Close::SlowConsumer | Close::Transport(_) | Close::Revoked)) {
        mailbox.take_remaining(&mut batch);
    }
    let close = match reason {
        // The answer to the peer's close (or to its end of the stream, harmlessly).
        Some(Close::PeerClosed) => Some(CloseFrame { code: CloseCode::Normal, reason: Default::default() }),
        Some(Close::Transport(_)) | None => None,
        Some(reason) => Some(CloseFrame { code: reason.close_code(), reason: reason.reason().into() }),
    };
    let _ = time::timeout(CLOSE_WRITE_TIMEOUT, async {
        if !batch.is_empty() {
            write_batch(&mut sink, &mut batch).await?;
        }
        if let Some(frame) = close {
            sink.send(Message::Close(Some(frame))).await?;
        }
        sink.close().await
    })
    .await;
}

/// Feeds a batch to the sink and flushes it once.
async fn write_batch<S>(sink: &mut S, batch: &mut VecDeque<Message>) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    for message in batch.drain(..) {
        sink.feed(message).await?;
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

    fn writer(
        mailbox: &Mailbox,
        ping: Duration,
    ) -> (tokio::task::JoinHandle<()>, fmpsc::UnboundedReceiver<Message>) {
        let (sink, written) = fmpsc::unbounded::<Message>();
        (tokio::spawn(write_loop(sink, mailbox.clone(), ping)), written)
    }

    #[tokio::test]
    async fn frames_are_written_in_order_then_the_close_frame() {
        let mailbox = Mailbox::new(ConnId(1), 8, 1 << 20);
        let (writer, mut written) = writer(&mailbox, Duration::from_secs(60));
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
        let mailbox = Mailbox::new(ConnId(2), 2, 1 << 20);
        let wait = Duration::from_millis(50);
        assert_eq!(mailbox.deliver(text("a"), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(text("b"), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(text("c"), wait).await, Delivery::Slow);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_from_other_nodes_never_wait_and_a_receiver_over_its_limits_turns_slow() {
        let mailbox = Mailbox::new(ConnId(4), 2, 1 << 20);
        let patience = Duration::from_secs(5);
        for frame in ["a", "b", "c"] {
            assert_eq!(mailbox.deliver_now(text(frame), patience), Delivery::Queued);
        }
        // Over the limit for less than the patience: still taken, up to twice the limit.
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(mailbox.deliver_now(text("d"), patience), Delivery::Queued);
        assert_eq!(mailbox.deliver_now(text("e"), patience), Delivery::Slow, "twice the limit");
        let mailbox = Mailbox::new(ConnId(5), 4, 1 << 20);
        for frame in ["a", "b", "c", "d", "e"] {
            assert_eq!(mailbox.deliver_now(text(frame), patience), Delivery::Queued);
        }
        tokio::time::advance(patience).await;
        assert_eq!(mailbox.deliver_now(text("f"), patience), Delivery::Slow, "over the limit too long");
        mailbox.kill(Close::SlowConsumer);
        assert_eq!(mailbox.deliver_now(text("g"), patience), Delivery::Gone);
    }

    #[tokio::test]
    async fn the_byte_budget_bounds_the_queue_until_frames_are_written() {
        let mailbox = Mailbox::new(ConnId(3), 100, 4096);
        let big = Message::binary(vec![0u8; 3000]);
        let wait = Duration::from_millis(50);
        assert_eq!(mailbox.deliver(big.clone(), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(big.clone(), wait).await, Delivery::Slow);
        let (_writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        assert_eq!(written.next().await.map(|m| m.len()), Some(3000));
        assert_eq!(
            mailbox.deliver(big, Duration::from_secs(5)).await,
            Delivery::Queued,
            "budget returns when a frame is written"
        );
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_goes_into_an_empty_queue() {
        let mailbox = Mailbox::new(ConnId(4), 100, 1024);
        let wait = Duration::from_millis(50);
        assert_eq!(mailbox.deliver(Message::binary(vec![0u8; 4000]), wait).await, Delivery::Queued);
        assert_eq!(mailbox.deliver(text("small"), wait).await, Delivery::Slow);
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_in_as_soon_as_the_writer_drains() {
        let mailbox = Mailbox::new(ConnId(5), 1, 1 << 20);
        assert_eq!(mailbox.deliver(text("a"), Duration::from_millis(50)).await, Delivery::Queued);
        let sender = mailbox.clone();
        let waiting = tokio::spawn(async move { sender.deliver(text("b"), Duration::from_secs(5)).await });
        let (_writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        assert_eq!(waiting.await.unwrap(), Delivery::Queued);
        assert_eq!(written.next().await, Some(text("a")));
        assert_eq!(written.next().await, Some(text("b")));
    }

    #[tokio::test]
    async fn killing_a_receiver_releases_a_waiting_sender_at_once() {
        let mailbox = Mailbox::new(ConnId(6), 1, 1 << 20);
        assert_eq!(mailbox.deliver(text("a"), Duration::from_millis(50)).await, Delivery::Queued);
        let sender = mailbox.clone();
        let waiting = tokio::spawn(async move { sender.deliver(text("b"), Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        mailbox.kill(Close::SlowConsumer);
        let outcome = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert_eq!(outcome, Delivery::Gone);
        assert!(!mailbox.push_initial(text("c")), "a killed mailbox takes nothing");
    }

    #[tokio::test]
    async fn pings_are_sent_when_idle() {
        let mailbox = Mailbox::new(ConnId(7), 8, 1 << 20);
        let (writer, mut written) = writer(&mailbox, Duration::from_millis(20));
        assert!(matches!(written.next().await, Some(Message::Ping(_))));
        mailbox.kill(Close::Transport("reset".into()));
        writer.await.unwrap();
        assert_eq!(written.next().await, None, "no close frame on a broken transport");
    }
}
