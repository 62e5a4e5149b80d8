//! A peer's writer: the task that drains its mailbox onto the WebSocket, one flush per batch,
//! pings when the peer is idle, and writes the close frame when the mailbox is killed.
//!
//! The sink is shared with the senders that write an idle peer's queue themselves (the
//! mailbox's `Kicks`): it is the mailbox's [`Outlet`] while the writer runs, and each use locks
//! it for one poll. The writer finishes whatever a sender's write left unfinished.
//!
//! It is generic over the sink, so it is tested with channels.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::mailbox::{Mailbox, Outlet, Taken, WriteFailed, data_frames};
use crate::error::Close;

/// How long the writer tries to write a close frame before it gives up and drops the TCP
/// connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the writer does next.
enum Work {
    /// Write the batch taken.
    Frames(Taken),
    Ping,
    Stop,
}

/// Drains the mailbox onto `sink`, one flush per batch, and pings every `ping_interval`,
/// until the mailbox is killed or the sink fails; then writes the close frame for the kill
/// reason (bounded in time) and closes the sink.
pub(crate) async fn write_loop<S>(sink: S, mailbox: Mailbox, ping_interval: Duration)
where
    S: Sink<Message> + Send + Unpin + 'static,
{
    let shared = Arc::new(Mutex::new(sink));
    mailbox.attach(Arc::clone(&shared) as Arc<dyn Outlet>);
    let mut sink = Shared(shared);
    // One kill future for the whole loop: making one per batch registers and unregisters a
    // waiter every time.
    let killed = mailbox.until_killed();
    tokio::pin!(killed);
    let mut ping = time::interval_at(Instant::now() + ping_interval, ping_interval);
    let mut batch = VecDeque::new();
    loop {
        let work = poll_fn(|cx| {
            if mailbox.is_killed() {
                return Poll::Ready(Work::Stop);
            }
            if let Poll::Ready(taken) = mailbox.poll_batch(cx, &mut batch) {
                return Poll::Ready(Work::Frames(taken));
            }
            ping.poll_tick(cx).map(|_| Work::Ping)
        })
        .await;
        // A write in progress is abandoned only when the peer is being closed anyway.
        let written = match work {
            Work::Stop => break,
            // Through the queue, so that a ping is never written beside a sender's write.
            Work::Ping => {
                mailbox.ping();
                continue;
            }
            Work::Frames(Taken { bytes, handed_over }) => {
                let frames = data_frames(&batch) + handed_over;
                let result = tokio::select! {
                    biased;
                    () = &mut killed => break,
                    result = write_batch(&mut sink, &mut batch) => result,
                };
                if result.is_ok() {
                    mailbox.stats().sent.add(frames, bytes as u64);
                }
                mailbox.written(bytes);
                // Written: an idle peer keeps no batch (nor, once the queue swaps it in, a
                // queue) allocated.
                batch = VecDeque::new();
                result
            }
        };
        if written.is_err() {
            mailbox.kill(Close::Transport("write failed".to_owned()));
            return;
        }
    }
    // From here on only the writer writes: the close frame comes last.
    mailbox.detach();
    let reason = mailbox.kill_reason();
    // What is still queued goes out before the close frame (the rest of a batch the close
    // interrupted, then the proxy's last replies, the messages a shutdown finds queued),
    // unless the peer is not reading, cannot be written to, or is no longer trusted.
    if matches!(reason, Some(Close::SlowConsumer | Close::Transport(_) | Close::Revoked)) {
        batch.clear();
    } else {
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

/// A peer's sink, shared by its writer and the mailbox's senders: locked for one poll at a time.
struct Shared<S>(Arc<Mutex<S>>);

fn lock<S>(sink: &Mutex<S>) -> MutexGuard<'_, S> {
    sink.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Sink<Message> + Unpin> Sink<Message> for Shared<S> {
    type Error = S::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        lock(&self.0).poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), S::Error> {
        lock(&self.0).start_send_unpin(message)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        lock(&self.0).poll_flush_unpin(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        lock(&self.0).poll_close_unpin(cx)
    }
}

impl<S: Sink<Message> + Send + Unpin> Outlet for Mutex<S> {
    /// Feeds and flushes with a waker that does nothing: nothing waits here, and when the
    /// socket is full the writer, woken for the rest, polls again with its own.
    fn write_now(&self, batch: &mut VecDeque<Message>) -> Poll<Result<(), WriteFailed>> {
        let mut sink = lock(self);
        let mut cx = Context::from_waker(Waker::noop());
        while !batch.is_empty() {
            if ready!(sink.poll_ready_unpin(&mut cx)).is_err() {
                return Poll::Ready(Err(WriteFailed));
            }
            if let Some(message) = batch.pop_front()
                && sink.start_send_unpin(message).is_err()
            {
                return Poll::Ready(Err(WriteFailed));
            }
        }
        sink.poll_flush_unpin(&mut cx).map_err(|_| WriteFailed)
    }
}

/// Feeds a batch to the sink and flushes it once. A frame leaves the batch only once the sink
/// has taken it: abandoned half-way (the peer is being closed), the batch keeps what was not
/// written, in order, for the close to write first.
async fn write_batch<S>(sink: &mut S, batch: &mut VecDeque<Message>) -> Result<(), S::Error>
where
    S: Sink<Message> + Unpin,
{
    while !batch.is_empty() {
        poll_fn(|cx| sink.poll_ready_unpin(cx)).await?;
        if let Some(message) = batch.pop_front() {
            sink.start_send_unpin(message)?;
        }
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::id::ConnId;
    use crate::rooms::mailbox::{Delivery, Kicks};
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
        let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
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
    async fn the_byte_budget_bounds_the_queue_until_frames_are_written() {
        let mailbox = Mailbox::new(ConnId::next(), 100, 4096);
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
    async fn a_waiting_sender_gets_in_as_soon_as_the_writer_drains() {
        let mailbox = Mailbox::new(ConnId::next(), 1, 1 << 20);
        assert_eq!(mailbox.deliver(text("a"), Duration::from_millis(50)).await, Delivery::Queued);
        let sender = mailbox.clone();
        let waiting = tokio::spawn(async move { sender.deliver(text("b"), Duration::from_secs(5)).await });
        let (_writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        assert_eq!(waiting.await.unwrap(), Delivery::Queued);
        assert_eq!(written.next().await, Some(text("a")));
        assert_eq!(written.next().await, Some(text("b")));
    }

    #[tokio::test]
    async fn pings_are_sent_when_idle() {
        let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
        let (writer, mut written) = writer(&mailbox, Duration::from_millis(20));
        assert!(matches!(written.next().await, Some(Message::Ping(_))));
        mailbox.kill(Close::Transport("reset".into()));
        writer.await.unwrap();
        assert_eq!(written.next().await, None, "no close frame on a broken transport");
    }

    /// Runs the writer until it has attached its sink to the mailbox and parked.
    async fn started(mailbox: &Mailbox) {
        while !mailbox.has_outlet() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_sender_writes_an_idle_receivers_queue_itself() {
        let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
        let (_writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        started(&mailbox).await;
        let mut kicks = Kicks::default();
        for i in 0..3 {
            assert_eq!(mailbox.try_deliver(text(&i.to_string()), Some(&mut kicks)), Ok(Delivery::Queued));
        }
        assert!(written.try_recv().is_err(), "nothing written before the sender writes");
        // No yield in between: the writer task does not run, so these were written here.
        kicks.write();
        for i in 0..3 {
            assert_eq!(written.try_recv().ok(), Some(text(&i.to_string())));
        }
        assert_eq!(mailbox.stats().sent.frames(), 3);
        assert_eq!(mailbox.deliver(text("budget"), Duration::from_millis(50)).await, Delivery::Queued);
    }

    #[tokio::test]
    async fn the_inbox_writes_an_idle_receivers_queue_itself() {
        let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
        let (_writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        started(&mailbox).await;
        let mut kicks = Kicks::default();
        let patience = Duration::from_secs(1);
        for i in 0..3 {
            assert_eq!(
                mailbox.deliver_now(text(&i.to_string()), patience, Some(&mut kicks)),
                Delivery::Queued
            );
        }
        assert!(written.try_recv().is_err(), "nothing written before the inbox writes");
        kicks.write();
        for i in 0..3 {
            assert_eq!(written.try_recv().ok(), Some(text(&i.to_string())));
        }
        assert_eq!(mailbox.stats().sent.frames(), 3);
    }

    #[tokio::test]
    async fn what_the_socket_does_not_take_the_writer_finishes_in_order() {
        let mailbox = Mailbox::new(ConnId::next(), 64, 1 << 20);
        // A sink that takes one frame, then is full until the test reads.
        let (sink, mut written) = fmpsc::channel::<Message>(0);
        let writer = tokio::spawn(write_loop(sink, mailbox.clone(), Duration::from_secs(60)));
        started(&mailbox).await;
        let mut kicks = Kicks::default();
        for i in 0..4 {
            assert_eq!(mailbox.try_deliver(text(&i.to_string()), Some(&mut kicks)), Ok(Delivery::Queued));
        }
        kicks.write();
        // Queued after the hand-over, before the writer ran: after the rest.
        assert_eq!(mailbox.try_deliver(text("4"), Some(&mut kicks)), Ok(Delivery::Queued));
        drop(kicks);
        for i in 0..5 {
            assert_eq!(written.next().await, Some(text(&i.to_string())));
        }
        // The writer takes the next frame only once it has finished the batch before.
        assert_eq!(mailbox.deliver(text("5"), Duration::from_secs(5)).await, Delivery::Queued);
        assert_eq!(written.next().await, Some(text("5")));
        mailbox.kill(Close::Shutdown);
        writer.await.unwrap();
        // 0-4 counted once each (the hand-over's first frame too); 5 unless the kill came first.
        let sent = mailbox.stats().sent.frames();
        assert!((5..=6).contains(&sent), "{sent}");
    }

    #[tokio::test]
    async fn a_close_in_the_middle_of_a_batch_writes_the_rest_of_it_first_in_order() {
        let mailbox = Mailbox::new(ConnId::next(), 64, 1 << 20);
        // A sink that takes one frame, then is full until the test reads.
        let (sink, mut written) = fmpsc::channel::<Message>(0);
        let writer = tokio::spawn(write_loop(sink, mailbox.clone(), Duration::from_secs(60)));
        started(&mailbox).await;
        for i in 0..10 {
            assert_eq!(mailbox.deliver(text(&i.to_string()), Duration::from_secs(1)).await, Delivery::Queued);
        }
        // The writer takes the ten as one batch, writes the first, and waits for the sink.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        for i in 10..12 {
            assert_eq!(mailbox.deliver(text(&i.to_string()), Duration::from_secs(1)).await, Delivery::Queued);
        }
        mailbox.kill(Close::Shutdown);
        for i in 0..12 {
            assert_eq!(written.next().await, Some(text(&i.to_string())), "frame {i}");
        }
        assert!(matches!(written.next().await, Some(Message::Close(Some(_)))));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn kicks_dropped_unwritten_wake_the_writers() {
        let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
        let (_writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        started(&mailbox).await;
        let mut kicks = Kicks::default();
        assert_eq!(mailbox.try_deliver(text("a"), Some(&mut kicks)), Ok(Delivery::Queued));
        drop(kicks);
        assert_eq!(written.next().await, Some(text("a")));
    }

    #[tokio::test]
    async fn a_killed_receiver_is_not_written_by_senders_and_its_close_frame_comes_last() {
        let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
        let (writer, mut written) = writer(&mailbox, Duration::from_secs(60));
        started(&mailbox).await;
        let mut kicks = Kicks::default();
        assert_eq!(mailbox.try_deliver(text("last"), Some(&mut kicks)), Ok(Delivery::Queued));
        mailbox.kill(Close::Shutdown);
        kicks.write();
        writer.await.unwrap();
        assert_eq!(written.next().await, Some(text("last")), "written by the writer before its close");
        assert!(matches!(written.next().await, Some(Message::Close(Some(_)))));
        assert!(!mailbox.has_outlet(), "the writer took its sink back");
    }
}
