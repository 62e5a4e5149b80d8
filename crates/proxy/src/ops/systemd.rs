//! systemd integration (`Type=notify`): readiness, stopping and reloading notifications, and
//! watchdog pings when the unit sets `WatchdogSec`. Outside systemd (no `NOTIFY_SOCKET`) every
//! function here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// A state to tell the service manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Listening: start-up is complete (`READY=1`), also sent when a reload is done.
    Ready,
    /// A reload started (`RELOADING=1`).
    Reloading,
    /// The drain started (`STOPPING=1`).
    Stopping,
}

/// Tells systemd `state`; a failure is logged, never fatal (the proxy serves either way).
pub fn notify(state: State) {
    let states: &[NotifyState] = match state {
        State::Ready => &[NotifyState::Ready, NotifyState::Status("serving")],
        State::Reloading => &[NotifyState::Reloading],
        State::Stopping => &[NotifyState::Stopping, NotifyState::Status("draining")],
    };
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, ?state, "cannot notify systemd");
    }
}

/// Pings the watchdog at half its period, forever; when the watchdog is off, never completes
/// and does nothing.
pub async fn watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::debug!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
    loop {
        tick.tick().await;
        if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
            tracing::warn!(error = %e, "cannot ping the systemd watchdog");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
