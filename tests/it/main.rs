//! Integration tests: the real gateway on 127.0.0.1:0 in front of the in-process fake
//! Confluence site, driven by a real HTTP client (and, in `in_process`, by `Gateway::handle`
//! with bodies of its own). One binary, one module per concern. Tests of time (TTLs, stale
//! windows, holds, limiter refills, drains) run on tokio's paused clock; real sleeps remain
//! only where another process (the binary, Redis) must be waited for.

mod accounts;
mod bulk;
mod cache;
mod cli;
mod cluster;
mod csrf;
mod edge;
mod errors;
mod faults;
mod forwarding;
mod hostile;
mod in_process;
mod layering;
mod limits;
mod observability;
mod properties;
mod quota;
mod refresh;
mod reload;
mod shutdown;
mod soak;
mod spec;
mod support;
mod three_limits;
mod tls;
