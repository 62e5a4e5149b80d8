//! A peer's [`Mailbox`]: what other connections deliver into, and what its writer (`writer.rs`)
//! drains onto the WebSocket.
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
//!
//! A member's frame to a receiver whose writer is idle need not wake that writer: the sender
//! notes the receiver in its [`Kicks`] and, once it has read all it can, writes the receiver's
//! queue itself through the receiver's [`Outlet`] (the socket's writing end, which the writer
//! shares). That is done under the queue's lock, so nothing else is taken from the queue or
//! written meanwhile and each sender's frames keep their order; only what the socket does not
//! take at once is left to the writer, which is woken for it. A receiver's bytes count against
//! its budget until written, whoever writes them, so the slow-consumer bound is the same.

use std::collections::VecDeque;
use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::id::ConnId;
use crate::error::Close;
use crate::metrics::PeerStats;

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
    /// Told when `killed` is set, for the tasks that sleep until then.
    kill: Notify,
    /// Set once the peer's frames are no longer relayed ([`Mailbox::relay_stopped`]).
    relay_stopped: AtomicBool,
    /// Told when `relay_stopped` is set.
    relay_stop: Notify,
    reason: OnceLock<Close>,
    stats: PeerStats,
    /// Set while someone waits to hear from the peer ([`Mailbox::probe`]).
    probing: AtomicBool,
    /// Set while the peer's own frame waits for room in a receiver's queue
    /// ([`Mailbox::sending`]): its socket is not read meanwhile, but it has just been heard.
    sending: AtomicBool,
    /// Told when the peer is heard from while `probing`.
    heard: Notify,
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
    /// A ping to write before the next frames (a probe asks for it).
    ping: bool,
    /// Since when frames from other nodes have found the queue over its limits.
    over_since: Option<Instant>,
    /// A batch taken from the queue is being written (by the writer, or left to it).
    writing: bool,
    /// A sender's write that the socket did not take whole: the writer finishes it. Holds the
    /// number of data frames handed to the outlet.
    handed_over: Option<u64>,
    /// Where senders write when the queue is idle; removed when the writer ends.
    outlet: Option<Arc<dyn Outlet>>,
}

/// The writing end of a peer's connection, shared by its writer and by senders that write its
/// queue themselves ([`Kicks`]).
pub(crate) trait Outlet: Send + Sync {
    /// Writes `batch` without waiting. `Ready(Ok)`: all of it is on the socket. `Pending`: the
    /// socket took part; what was taken from `batch` waits inside the outlet, the rest is still
    /// in `batch`, and the writer finishes. `Ready(Err)`: the connection failed.
    fn write_now(&self, batch: &mut VecDeque<Message>) -> Poll<Result<(), WriteFailed>>;
}

/// A write to a peer's connection failed.
#[derive(Debug)]
pub(crate) struct WriteFailed;

/// What the writer takes from the queue: a batch of this many bytes (frames just taken, and any
/// a sender handed over), of which this many data frames were handed over already.
pub(super) struct Taken {
    pub(super) bytes: usize,
    pub(super) handed_over: u64,
}

/// The receivers a member's frames went to without waking their writers: the member writes
/// their queues itself ([`Kicks::write`]) once it has read all it can, before it waits for
/// anything, and after [`Kicks::FLUSH_BYTES`]; dropped unwritten, it wakes their writers.
#[derive(Default)]
pub(crate) struct Kicks {
    receivers: Vec<Mailbox>,
    bytes: usize,
}

impl Kicks {
    /// Bytes queued this way after which the member writes them before reading on, so that a
    /// sender that always has more to read does not hold its frames back.
    pub(crate) const FLUSH_BYTES: usize = 64 * 1024;

    /// Whether the bytes queued since the last write call for one now.
    pub(crate) fn due(&self) -> bool {
        self.bytes >= Self::FLUSH_BYTES
    }

    /// Writes the queue of every receiver noted, or wakes its writer when it cannot.
    pub(crate) fn write(&mut self) {
        self.bytes = 0;
        for receiver in self.receivers.drain(..) {
            receiver.write_queued();
        }
    }
}

impl Drop for Kicks {
    fn drop(&mut self) {
        for receiver in self.receivers.drain(..) {
            receiver.inner.writer.wake();
        }
    }
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
            kill: Notify::new(),
            relay_stopped: AtomicBool::new(false),
            relay_stop: Notify::new(),
            reason: OnceLock::new(),
            stats: PeerStats::default(),
            probing: AtomicBool::new(false),
            sending: AtomicBool::new(false),
            heard: Notify::new(),
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
        self.inner.kill.notify_waiters();
        self.inner.writer.wake();
        self.inner.space.notify_waiters();
    }

    /// Whether the peer is being closed: one atomic load, for the per-frame paths.
    pub(crate) fn is_killed(&self) -> bool {
        self.inner.killed.load(Ordering::Acquire)
    }

    /// Resolves once the peer is being closed, for the tasks that sleep until then.
    pub(crate) async fn until_killed(&self) {
        until(&self.inner.kill, &self.inner.killed).await;
    }

    /// The peer's frames are no longer relayed: a member replacing it may tell the others it
    /// left.
    pub(crate) fn relay_stopped(&self) {
        self.inner.relay_stopped.store(true, Ordering::Release);
        self.inner.relay_stop.notify_waiters();
    }

    /// Resolves once [`Mailbox::relay_stopped`] was called.
    pub(crate) async fn until_relay_stopped(&self) {
        until(&self.inner.relay_stop, &self.inner.relay_stopped).await;
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
        self.push(self.lock(), message, None);
        true
    }

    /// Lets senders write to the peer's connection through `outlet` when its queue is idle.
    pub(super) fn attach(&self, outlet: Arc<dyn Outlet>) {
        self.lock().outlet = Some(outlet);
    }

    /// Whether senders may write to the peer's connection (its writer runs).
    #[cfg(test)]
    pub(super) fn has_outlet(&self) -> bool {
        self.lock().outlet.is_some()
    }

    /// Ends the senders' writes: for the writer, before its last flush and the close frame
    /// (a write in progress, done under the lock, ends before this returns).
    pub(super) fn detach(&self) {
        self.lock().outlet = None;
    }

    /// Has the writer answer the peer's ping.
    pub(crate) fn pong(&self, payload: Bytes) {
        let mut queue = self.lock();
        let wake = !queue.has_work();
        queue.pong = Some(payload);
        drop(queue);
        if wake {
            self.inner.writer.wake();
        }
    }

    /// Whether the peer answers: pings it and waits at most `timeout` for any frame from it (a
    /// pong or anything else). A peer being closed does not answer.
    pub(crate) async fn probe(&self, timeout: Duration) -> bool {
        let heard = self.inner.heard.notified();
        tokio::pin!(heard);
        // Registered before the flag is raised, so an answer in between is not missed.
        heard.as_mut().enable();
        self.inner.probing.store(true, Ordering::Release);
        let wake = {
            let mut queue = self.lock();
            let idle = !queue.has_work();
            queue.ping = true;
            idle
        };
        if wake {
            self.inner.writer.wake();
        }
        // A peer whose frame waits for a full receiver sent it just now, and its pong waits
        // unread behind that frame: it counts as heard.
        if self.inner.sending.load(Ordering::Acquire) {
            return !self.is_killed();
        }
        let killed = self.until_killed();
        tokio::select! {
            biased;
            () = killed => false,
            answered = time::timeout(timeout, heard) => answered.is_ok(),
        }
    }

    /// Awaits `waiting`, the rest of the peer's own frame's delivery (a receiver was full),
    /// as the peer being heard from: a probe made meanwhile is answered, since the peer's
    /// socket, and so its pong, is not read until the frame is delivered.
    pub(crate) async fn sending(&self, waiting: impl Future<Output = ()>) {
        self.heard();
        let _sending = Raised::new(&self.inner.sending);
        waiting.await;
    }

    /// The peer was heard from: tells whoever probes it. One atomic load when nobody does; the
    /// reader calls it once per wake-up that read frames.
    pub(crate) fn heard(&self) {
        if self.inner.probing.load(Ordering::Acquire) && self.inner.probing.swap(false, Ordering::AcqRel) {
            self.inner.heard.notify_waiters();
        }
    }

    /// Queues a frame if the limits allow; a full queue records that a sender waits.
    fn offer(&self, message: Message, kicks: Option<&mut Kicks>) -> Offer {
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
        self.push(queue, message, kicks);
        Offer::Queued
    }

    /// Appends a frame to the locked queue, then wakes the writer if it was parked: it parks
    /// only on an empty queue, so only the first frame needs a wake-up. With `kicks`, a queue
    /// that nobody is writing is noted there instead, for the sender to write.
    fn push(&self, mut queue: MutexGuard<'_, Queue>, message: Message, kicks: Option<&mut Kicks>) {
        let first = queue.frames.is_empty();
        let len = message.len();
        queue.bytes += len;
        queue.frames.push_back(message);
        let idle = first && !queue.writing && queue.outlet.is_some();
        drop(queue);
        match kicks {
            Some(kicks) if idle => {
                kicks.receivers.push(self.clone());
                kicks.bytes += len;
            }
            Some(kicks) => kicks.bytes += len,
            None if first => self.inner.writer.wake(),
            None => {}
        }
    }

    /// Queues a frame if there is room now, without waiting; gives the frame back when the
    /// queue is full. The common case, a receiver that keeps up: one lock, no timer, no clock.
    /// With `kicks`, the receiver's writer is not woken if the sender can write for it.
    pub(crate) fn try_deliver(
        &self,
        message: Message,
        kicks: Option<&mut Kicks>,
    ) -> Result<Delivery, Message> {
        match self.offer(message, kicks) {
            Offer::Queued => Ok(Delivery::Queued),
            Offer::Gone => Ok(Delivery::Gone),
            Offer::Full(message) => Err(message),
        }
    }

    /// Queues a frame, waiting at most `timeout` for room in the queue.
    pub(crate) async fn deliver(&self, message: Message, timeout: Duration) -> Delivery {
        let mut message = match self.offer(message, None) {
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
            message = match self.offer(message, None) {
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
    /// a receiver that stays over them for `patience`, or reaches twice them, is slow. With
    /// `kicks`, a queue nobody is writing is noted there for the inbox to write.
    pub(crate) fn deliver_now(
        &self,
        message: Message,
        patience: Duration,
        kicks: Option<&mut Kicks>,
    ) -> Delivery {
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
        self.push(queue, message, kicks);
        Delivery::Queued
    }

    /// Moves everything queued into `batch` (which must be empty) for the writer, with what a
    /// sender handed over; parks the writer when there is nothing.
    pub(super) fn poll_batch(&self, cx: &mut Context<'_>, batch: &mut VecDeque<Message>) -> Poll<Taken> {
        let mut queue = self.lock();
        if !queue.has_work() && queue.handed_over.is_none() {
            // Under the lock: a sender that queues after this sees an empty queue and wakes us.
            self.inner.writer.register(cx.waker());
            return Poll::Pending;
        }
        let handed_over = queue.handed_over.take().unwrap_or(0);
        let bytes = queue.take_batch(batch);
        let wanted = mem::take(&mut queue.wanted);
        drop(queue);
        if wanted {
            self.inner.space.notify_waiters();
        }
        Poll::Ready(Taken { bytes, handed_over })
    }

    /// Has the writer ping the peer with its next batch.
    pub(super) fn ping(&self) {
        self.lock().ping = true;
    }

    /// Writes what is queued through the outlet, from the sender's task ([`Kicks`]): unless
    /// the writer has it, or the peer is being closed. What the socket does not take at once
    /// is handed over to the writer.
    fn write_queued(&self) {
        let mut queue = self.lock();
        if queue.writing || !queue.has_work() || self.is_killed() {
            return;
        }
        let Some(outlet) = queue.outlet.clone() else {
            drop(queue);
            self.inner.writer.wake();
            return;
        };
        let mut batch = VecDeque::new();
        let bytes = queue.take_batch(&mut batch);
        let frames = data_frames(&batch);
        match outlet.write_now(&mut batch) {
            Poll::Ready(Ok(())) => {
                queue.writing = false;
                queue.bytes = queue.bytes.saturating_sub(bytes);
                let wanted = mem::take(&mut queue.wanted);
                drop(queue);
                self.inner.stats.sent.add(frames, bytes as u64);
                if wanted {
                    self.inner.space.notify_waiters();
                }
            }
            Poll::Pending => {
                let handed = frames - data_frames(&batch);
                // What the outlet did not take goes back in front of anything queued since.
                batch.append(&mut queue.frames);
                queue.frames = batch;
                queue.handed_over = Some(handed);
                drop(queue);
                self.inner.writer.wake();
            }
            Poll::Ready(Err(WriteFailed)) => {
                drop(queue);
                self.kill(Close::Transport("write failed".to_owned()));
            }
        }
    }

    /// Appends whatever is still queued to `batch`, without waiting: for the writer's last
    /// flush before the close frame.
    pub(super) fn take_remaining(&self, batch: &mut VecDeque<Message>) {
        let mut queue = self.lock();
        batch.extend(queue.frames.drain(..));
    }

    /// Gives back the byte budget of a written batch.
    pub(super) fn written(&self, bytes: usize) {
        let mut queue = self.lock();
        queue.bytes = queue.bytes.saturating_sub(bytes);
        queue.writing = false;
        let wanted = mem::take(&mut queue.wanted);
        drop(queue);
        if wanted {
            self.inner.space.notify_waiters();
        }
    }
}

impl Queue {
    /// Whether there is something to write: frames, a pong, a ping.
    fn has_work(&self) -> bool {
        !self.frames.is_empty() || self.pong.is_some() || self.ping
    }

    /// Moves everything queued into `batch` (which must be empty), the ping and pong first, and
    /// marks it as being written; returns the bytes to give back once it is written.
    fn take_batch(&mut self, batch: &mut VecDeque<Message>) -> usize {
        mem::swap(&mut self.frames, batch);
        if let Some(pong) = self.pong.take() {
            batch.push_front(Message::Pong(pong));
        }
        if mem::take(&mut self.ping) {
            batch.push_front(Message::Ping(Bytes::new()));
        }
        self.writing = true;
        self.bytes
    }
}

/// The data frames (text and binary) of a batch.
pub(super) fn data_frames(batch: &VecDeque<Message>) -> u64 {
    batch.iter().filter(|m| m.is_text() || m.is_binary()).count() as u64
}

/// Resolves once `flag` is set, `told` being notified after each time it is.
async fn until(told: &Notify, flag: &AtomicBool) {
    // Made before the flag is read, the notification cannot be missed in between.
    let notified = told.notified();
    if !flag.load(Ordering::Acquire) {
        notified.await;
    }
}

/// A flag raised while it lives, lowered when it is dropped (whatever ends the wait).
struct Raised<'a>(&'a AtomicBool);

impl<'a> Raised<'a> {
    fn new(flag: &'a AtomicBool) -> Self {
        flag.store(true, Ordering::Release);
        Raised(flag)
    }
}

impl Drop for Raised<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
