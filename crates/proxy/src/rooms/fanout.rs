//! Fan-out: queueing a frame to receivers, and the slow-consumer policy, for every frame the
//! proxy delivers (a member's frame, a frame from another node, the proxy's own replies and
//! notices).
//!
//! A receiver whose queue stays over its limits for `slow_consumer_timeout` is closed with
//! 1013, logged and counted, and the sender goes on (docs/protocol.md, "Delivery"). A member's
//! frame waits up to that long for room, which holds back a sender that outpaces its
//! receiver; a frame from another node never waits, so that one slow receiver cannot hold up
//! the node's inbox, and is taken past the limits (up to twice them) meanwhile.

use std::future::Future;
use std::pin::Pin;

use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::hub::Hub;
use super::mailbox::{Delivery, Kicks, Mailbox};
use crate::error::Close;
use crate::metrics::Metrics;

/// Who sends a frame, which decides whether its delivery may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sender {
    /// A member of this node, or the proxy answering it: may wait for room.
    Local,
    /// Another node, through this node's inbox: never waits.
    OtherNode,
}

/// A delivery that waits for a receiver's room, and the deliveries after it: made, on the heap,
/// only when a receiver is full, so that the common case neither allocates nor sizes the
/// sender's task with a waiting future.
pub(crate) type Waiting<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Queues `message` to every receiver, in order.
pub(crate) async fn deliver_all(hub: &Hub, receivers: &[Mailbox], message: Message, sender: Sender) {
    if let Some(waiting) = offer_all(hub, receivers, message, sender, None) {
        waiting.await;
    }
}

/// Queues `message` to every receiver, in order, as far as it can without waiting; what is left
/// when a receiver is full comes back as a future to await. With `kicks`, receivers whose
/// writers are idle are noted there for the sender to write (`mailbox.rs`), not woken.
pub(crate) fn offer_all<'a>(
    hub: &'a Hub,
    receivers: &'a [Mailbox],
    message: Message,
    sender: Sender,
    mut kicks: Option<&mut Kicks>,
) -> Option<Waiting<'a>> {
    let mut message = Some(message);
    for (i, receiver) in receivers.iter().enumerate() {
        // Every receiver but the last gets a clone (a reference count).
        let this = if i + 1 < receivers.len() { message.clone() } else { message.take() };
        let Some(this) = this else { break };
        if let Err(this) = offer_one(hub, receiver, this, sender, kicks.as_deref_mut()) {
            let rest = &receivers[i + 1..];
            return Some(Box::pin(async move {
                wait_for_room(hub, receiver, this).await;
                if let Some((message, (last, others))) = message.zip(rest.split_last()) {
                    for receiver in others {
                        deliver(hub, receiver, message.clone(), sender).await;
                    }
                    deliver(hub, last, message, sender).await;
                }
            }));
        }
    }
    None
}

/// Queues `message` to one receiver, as [`offer_all`] does.
pub(crate) fn offer<'a>(
    hub: &'a Hub,
    receiver: &'a Mailbox,
    message: Message,
    sender: Sender,
) -> Option<Waiting<'a>> {
    offer_all(hub, std::slice::from_ref(receiver), message, sender, None)
}

/// Queues a notice from the cluster to one receiver without waiting, as a frame from another
/// node is queued: for code that cannot wait (a task that must not be held up by one member).
pub(crate) fn notify(hub: &Hub, receiver: &Mailbox, message: Message) {
    let delivery = receiver.deliver_now(message, hub.config.slow_consumer_timeout, None);
    judge(hub, receiver, delivery, Sender::OtherNode);
}

/// Queues `message` to one receiver; a member's frame waits for room.
async fn deliver(hub: &Hub, receiver: &Mailbox, message: Message, sender: Sender) {
    if let Err(message) = offer_one(hub, receiver, message, sender, None) {
        wait_for_room(hub, receiver, message).await;
    }
}

/// Queues `message` to one receiver if it has room, or gives it back when a member's frame has
/// to wait; closes a receiver that is too slow with 1013.
fn offer_one(
    hub: &Hub,
    receiver: &Mailbox,
    message: Message,
    sender: Sender,
    kicks: Option<&mut Kicks>,
) -> Result<(), Message> {
    let delivery = match sender {
        Sender::Local => receiver.try_deliver(message, kicks)?,
        Sender::OtherNode => receiver.deliver_now(message, hub.config.slow_consumer_timeout, kicks),
    };
    judge(hub, receiver, delivery, sender);
    Ok(())
}

/// Waits up to `slow_consumer_timeout` for room at `receiver`.
async fn wait_for_room(hub: &Hub, receiver: &Mailbox, message: Message) {
    let delivery = receiver.deliver(message, hub.config.slow_consumer_timeout).await;
    judge(hub, receiver, delivery, Sender::Local);
}

/// Closes a receiver that did not read in time with 1013.
fn judge(hub: &Hub, receiver: &Mailbox, delivery: Delivery, sender: Sender) {
    if delivery == Delivery::Slow {
        Metrics::inc(&hub.metrics.slow_consumers);
        warn!(receiver = %receiver.conn(), ?sender, "slow consumer: closing it with 1013");
        receiver.kill(Close::SlowConsumer);
    }
}
