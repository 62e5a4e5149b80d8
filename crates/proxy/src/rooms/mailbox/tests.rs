//! The mailbox's tests: full queues, frames from other nodes, oversized frames, kills and probes.

use super::*;
use crate::rooms::id::ConnId;

fn text(s: &str) -> Message {
    Message::text(s)
}

#[tokio::test]
async fn a_full_queue_makes_delivery_slow_not_blocking() {
    let mailbox = Mailbox::new(ConnId::next(), 2, 1 << 20);
    let wait = Duration::from_millis(50);
    assert_eq!(mailbox.deliver(text("a"), wait).await, Delivery::Queued);
    assert_eq!(mailbox.deliver(text("b"), wait).await, Delivery::Queued);
    assert_eq!(mailbox.deliver(text("c"), wait).await, Delivery::Slow);
}

#[tokio::test(start_paused = true)]
async fn frames_from_other_nodes_never_wait_and_a_receiver_over_its_limits_turns_slow() {
    let mailbox = Mailbox::new(ConnId::next(), 2, 1 << 20);
    let patience = Duration::from_secs(5);
    for frame in ["a", "b", "c"] {
        assert_eq!(mailbox.deliver_now(text(frame), patience, None), Delivery::Queued);
    }
    // Over the limit for less than the patience: still taken, up to twice the limit.
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(mailbox.deliver_now(text("d"), patience, None), Delivery::Queued);
    assert_eq!(mailbox.deliver_now(text("e"), patience, None), Delivery::Slow, "twice the limit");
    let mailbox = Mailbox::new(ConnId::next(), 4, 1 << 20);
    for frame in ["a", "b", "c", "d", "e"] {
        assert_eq!(mailbox.deliver_now(text(frame), patience, None), Delivery::Queued);
    }
    tokio::time::advance(patience).await;
    assert_eq!(mailbox.deliver_now(text("f"), patience, None), Delivery::Slow, "over the limit too long");
    mailbox.kill(Close::SlowConsumer);
    assert_eq!(mailbox.deliver_now(text("g"), patience, None), Delivery::Gone);
}

#[tokio::test]
async fn a_frame_larger_than_the_budget_goes_into_an_empty_queue() {
    let mailbox = Mailbox::new(ConnId::next(), 100, 1024);
    let wait = Duration::from_millis(50);
    assert_eq!(mailbox.deliver(Message::binary(vec![0u8; 4000]), wait).await, Delivery::Queued);
    assert_eq!(mailbox.deliver(text("small"), wait).await, Delivery::Slow);
}

#[tokio::test]
async fn killing_a_receiver_releases_a_waiting_sender_at_once() {
    let mailbox = Mailbox::new(ConnId::next(), 1, 1 << 20);
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
async fn a_probe_is_answered_by_any_frame_and_not_by_silence() {
    let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
    let probing = mailbox.clone();
    let probe = tokio::spawn(async move { probing.probe(Duration::from_secs(5)).await });
    while !mailbox.inner.probing.load(Ordering::Acquire) {
        tokio::task::yield_now().await;
    }
    assert!(mailbox.lock().ping, "a ping is queued for the writer");
    mailbox.heard();
    assert!(probe.await.unwrap(), "heard from");
    assert!(!mailbox.probe(Duration::from_millis(30)).await, "silence");
    let probing = mailbox.clone();
    let probe = tokio::spawn(async move { probing.probe(Duration::from_secs(30)).await });
    tokio::task::yield_now().await;
    mailbox.kill(Close::Shutdown);
    assert!(!probe.await.unwrap(), "a peer being closed does not answer");
}

#[tokio::test(start_paused = true)]
async fn a_peer_whose_frame_waits_for_a_full_receiver_answers_a_probe() {
    let mailbox = Mailbox::new(ConnId::next(), 8, 1 << 20);
    // A probe made before the wait is answered when it starts.
    let probing = mailbox.clone();
    let probe = tokio::spawn(async move { probing.probe(Duration::from_secs(3)).await });
    while !mailbox.inner.probing.load(Ordering::Acquire) {
        tokio::task::yield_now().await;
    }
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let sender = mailbox.clone();
    let waiting = tokio::spawn(async move {
        sender
            .sending(async {
                let _ = released.await;
            })
            .await;
    });
    assert!(probe.await.unwrap(), "heard when its frame started waiting");
    // One made during the wait, longer than the probe's timeout, is answered too.
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(mailbox.probe(Duration::from_secs(3)).await, "its pong waits unread behind the frame");
    let _ = release.send(());
    waiting.await.unwrap();
    assert!(!mailbox.probe(Duration::from_millis(30)).await, "silence once the wait is over");
}
