//! A peer's writer: the task that drains its mailbox onto the WebSocket, one flush per batch,
//! pings when the peer is idle, and writes the close frame when the mailbox is killed.
//!
//! It is generic over the sink, so it is tested with channels.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::time::{self, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::mailbox::Mailbox;
use crate::error::Close;

/// How long the writer tries to write a close frame before it gives up and drops the TCP
/// connection.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

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
    use crate::rooms::id::ConnId;
    use crate::rooms::mailbox::Delivery;
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
}
