//! Integration tests: the real gateway on 127.0.0.1:0 in front of the in-process fake
//! Confluence site, driven by a real HTTP client. One binary, one module per concern.

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
mod layering;
mod limits;
mod observability;
mod properties;
mod reload;
mod shutdown;
mod soak;
mod spec;
mod support;
mod tls;
