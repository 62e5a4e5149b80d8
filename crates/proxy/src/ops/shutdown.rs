//! Stopping: the signals the daemon obeys, and closing members spread over the drain window so
//! that a fleet of peers does not reconnect (to another node, or to this one once it restarts)
//! all in the same instant.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal as unix_signal};

use crate::error::Close;
use crate::rooms::mailbox::Mailbox;

/// The finest step of the spread: members closed within one step go together.
const SPREAD_STEP: Duration = Duration::from_millis(10);

/// A stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (systemd stop, kill).
    Terminate,
}

impl Signal {
    /// The exit status for a drain cut short by this signal (128 + its number).
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// SIGINT and SIGTERM, listened to from creation on: a signal that arrives while the caller
/// is busy (say, between the first signal and waiting for a second) is not lost.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers.
    ///
    /// # Errors
    /// When the signal handlers cannot be installed.
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: unix_signal(SignalKind::interrupt())?,
            terminate: unix_signal(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM.
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Interrupt,
            _ = self.terminate.recv() => Signal::Terminate,
        }
    }
}

/// The signals the daemon obeys (SIGTERM and SIGINT stop it, SIGHUP reloads), listened to
/// from the moment they are installed: install them before saying "listening" (or READY to
/// systemd), so that a signal sent at once is not met by its default action, which ends the
/// process.
pub struct DaemonSignals {
    stop: Signals,
    hangup: tokio::signal::unix::Signal,
}

impl DaemonSignals {
    /// Installs the handlers; needs a running Tokio runtime.
    ///
    /// # Errors
    /// When a signal handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        Ok(DaemonSignals { stop: Signals::new()?, hangup: unix_signal(SignalKind::hangup())? })
    }

    /// The stop signals, and SIGHUP.
    pub(crate) fn into_parts(self) -> (Signals, tokio::signal::unix::Signal) {
        (self.stop, self.hangup)
    }
}

/// Closes `members` with 1001, in even batches from now until (about) `window` from now.
pub(crate) async fn close_spread(members: Vec<Mailbox>, window: Duration) {
    if members.is_empty() {
        return;
    }
    let steps = (window.as_millis() / SPREAD_STEP.as_millis()).clamp(1, members.len() as u128) as usize;
    let per_step = members.len().div_ceil(steps);
    let pause = window / u32::try_from(steps).unwrap_or(u32::MAX);
    let mut tick = tokio::time::interval(pause);
    for batch in members.chunks(per_step) {
        tick.tick().await;
        for member in batch {
            member.kill(Close::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::id::ConnId;

    #[tokio::test(start_paused = true)]
    async fn members_are_closed_in_batches_across_the_window() {
        let members: Vec<Mailbox> = (0..10).map(|_| Mailbox::new(ConnId::next(), 1, 1024)).collect();
        let window = Duration::from_secs(1);
        let start = tokio::time::Instant::now();
        let closing = tokio::spawn(close_spread(members.clone(), window));
        tokio::time::sleep(window / 2).await;
        let closed = members.iter().filter(|m| m.is_killed()).count();
        assert!((1..10).contains(&closed), "{closed} of 10 closed half-way through the window");
        closing.await.unwrap();
        assert!(members.iter().all(|m| m.kill_reason() == Some(Close::Shutdown)));
        assert!(tokio::time::Instant::now() - start <= window);
    }
}
