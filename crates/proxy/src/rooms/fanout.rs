//! Fan-out: queueing a frame to receivers, and the slow-consumer policy, for every frame the
//! proxy delivers (a member's frame, a frame from another node, the proxy's own replies and
//! notices).
//!
//! A receiver whose queue stays over its limits for `slow_consumer_timeout` is closed with
//! 1013, logged and counted, and the sender goes on (docs/protocol.md, "Delivery"). A member's
//! frame waits up to that long for room, which holds back a sender that outpaces its
//! receiver; a frame from another node never waits, so that one slow receiver cannot hold up
//! the node's inbox, and is taken past the limits (up to twice them) meanwhile.

use tokio_tungstenite::tungstenite::Message;
use tracing::warn;

use super::hub::Hub;
use super::mailbox::{Delivery, Mailbox};
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

/// Queues `message` to every receiver, in order.
pub(crate) async fn deliver_all(hub: &Hub, receivers: &[Mailbox], message: Message, sender: Sender) {
    if let Some((last, rest)) = receivers.split_last() {
        for receiver in rest {
            deliver(hub, receiver, message.clone(), sender).await;
        }
        deliver(hub, last, message, sender).await;
    }
}

/// Queues `message` to one receiver; closes it with 1013 when it does not read in time.
pub(crate) async fn deliver(hub: &Hub, receiver: &Mailbox, message: Message, sender: Sender) {
    let patience = hub.config.slow_consumer_timeout;
    let delivery = match sender {
        // Most deliveries find room at once; the waiting future is made only when they do not.
        Sender::Local => match receiver.try_deliver(message) {
            Ok(delivery) => delivery,
            Err(message) => receiver.deliver(message, patience).await,
        },
        Sender::OtherNode => receiver.deliver_now(message, patience),
    };
    if delivery == Delivery::Slow {
        Metrics::inc(&hub.metrics.slow_consumers);
        warn!(receiver = %receiver.conn(), ?sender, "slow consumer: closing it with 1013");
        receiver.kill(Close::SlowConsumer);
    }
}
