//! systemd's notify protocol (`Type=notify`) through `sd-notify`. Every call is a no-op when
//! `NOTIFY_SOCKET` is unset; a socket that cannot be reached is reported once and otherwise
//! ignored, as systemd itself would then have stopped listening.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tracing::warn;

/// The listeners are bound and serving.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP reload begins; [`ready`] follows when it is done. systemd (v253+) wants the
/// monotonic time with it.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the configuration"),
    ];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.insert(1, now);
    }
    send(&states);
}

/// The process is stopping (draining first, when `drain-timeout` is set).
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// A status line for `systemctl status` (drain progress).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The watchdog ping.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

fn send(states: &[NotifyState<'_>]) {
    static REPORTED: AtomicBool = AtomicBool::new(false);
    if let Err(error) = sd_notify::notify(states) {
        if !REPORTED.swap(true, Relaxed) {
            warn!(%error, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}
