//! Shutdown and reload by signal: SIGTERM and SIGINT drain and stop, a second one stops at
//! once, SIGHUP reloads (as mini-redis keeps its shutdown signal in a module of its own).
//!
//! Invariant: the handlers are installed before anything listens, so a signal that arrives
//! early is a graceful stop, never the default (abrupt) one.

use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::{Config, ConfigError};
use crate::lifecycle;

/// SIGTERM, SIGINT and SIGHUP handlers, installed before anything starts listening so that a signal
/// that arrives early is a graceful stop, never the default (abrupt) one.
pub(crate) struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    pub(crate) fn install() -> Signals {
        let install = |kind| signal(kind).expect("signal handlers install");
        Signals {
            terminate: install(SignalKind::terminate()),
            interrupt: install(SignalKind::interrupt()),
            hangup: install(SignalKind::hangup()),
        }
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }

    /// Serves until SIGTERM/SIGINT, then drains and returns; a second signal during the drain
    /// exits at once. SIGHUP reloads with `reload` (what [`lifecycle::Running::reload`]
    /// applies; every other changed key is named in a warning); a configuration that does
    /// not load is refused and the running one stays in force.
    pub(crate) async fn stop(
        mut self,
        running: lifecycle::Running,
        reload: Option<&dyn Fn() -> Result<Config, ConfigError>>,
    ) -> ExitCode {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => break,
                _ = self.interrupt.recv() => break,
                _ = self.hangup.recv() => match reload.map(|reload| reload()) {
                    None => tracing::info!("SIGHUP: nothing to reload"),
                    Some(Err(error)) => {
                        tracing::error!(%error, "SIGHUP: new configuration refused; the running one stays");
                    }
                    Some(Ok(config)) => match running.reload(&config) {
                        Ok(reloaded) => report(&reloaded),
                        Err(error) => {
                            tracing::error!(%error, "SIGHUP: new configuration refused; the running one stays");
                        }
                    },
                },
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        running.shutdown();
        tokio::select! {
            () = running.wait() => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            () = self.recv() => {
                tracing::warn!("second signal: exiting without finishing the drain");
                ExitCode::from(1)
            }
        }
    }
}

/// Says what a reload did: the keys it applied, and — as a warning naming each — the keys that
/// changed but take effect only after a restart (as nginx and Envoy do).
fn report(reloaded: &lifecycle::Reloaded) {
    let applied = reloaded.applied.join(", ");
    let reread = reloaded.reread.join(", ");
    match (reloaded.applied.is_empty(), reloaded.reread.is_empty()) {
        (true, true) => {
            tracing::info!("SIGHUP: configuration reloaded; nothing reloadable changed")
        }
        (true, false) => tracing::info!(
            read_again = %reread,
            "SIGHUP: configuration reloaded; no key changed; read again: {reread}"
        ),
        (false, _) => tracing::info!(
            applied = %applied,
            read_again = %reread,
            "SIGHUP: configuration reloaded"
        ),
    }
    for key in &reloaded.restart {
        tracing::warn!(key = %key, "SIGHUP: {key} changed; it takes effect only after a restart");
    }
    if reloaded.level_overridden {
        tracing::warn!("SIGHUP: log.level changed, but RUST_LOG is set and stands over it");
    }
}
