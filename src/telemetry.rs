//! Logging: one `tracing` subscriber, human-readable or JSON.
//!
//! Invariant: nothing wikigate logs carries a credential. Request headers are never logged;
//! the access log (target `wikigate::access`) names the operation, never a header value.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
/// A second call (tests, the demo) leaves the first subscriber in place.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr, so stdout carries only what a command prints for its user.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
