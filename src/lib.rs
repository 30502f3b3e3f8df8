//! wikigate: a caching reverse-proxy gateway for the Confluence Cloud user API
//! (`/wiki/rest/api/user/*`).
//!
//! # Layout
//!
//! The library's public API is five modules — [`cli`], [`config`], [`routes`], [`server`],
//! [`fake`] — and the few types re-exported at the root (a [`Gateway`] and its [`Parts`],
//! [`start`] and [`Running`], the pieces the benches measure). Every other module is private
//! to the crate and its items `pub(crate)` at most (`#![warn(unreachable_pub)]`), so the
//! compiler reports what is dead.
//!
//! - [`cli`] — the command line (`serve`, `demo`, `check-config`, `hash-key`); `main.rs` only
//!   calls it.
//! - [`config`] — `file -> TOML table -> overrides -> RawConfig -> validate -> Config`.
//! - `lifecycle` — binds the listeners, runs them, drains on shutdown, reloads.
//! - `parts` — the state a gateway is made of, shared by both listeners.
//! - [`server`] — accept loops, TLS, HTTP/1.1 + HTTP/2, graceful connection shutdown.
//! - `shutdown` — SIGTERM/SIGINT drain and stop, SIGHUP reloads.
//! - `gateway` — the request path: `admit` and `onward` (see its module doc), with its parts
//!   (admission, fetch, record, bounds).
//! - [`routes`] — the route table: 12 templates, 21 operations, path-parameter validation.
//! - `cache` — per-caller GET caching in moka: keys, tag generations, coalescing, stale.
//! - `caller` — who is calling (client key, credential, address); service-account mode.
//! - `limit` — per-caller and global GCRA limits, points budgets, the reserve, and each
//!   upstream 429 held at its scope.
//! - `hints` — every rate-limit header of an upstream answer, read once and bounded.
//! - `burst` — Atlassian's per-second burst buckets, per route and method, and the pacing.
//! - `cluster` — multi-replica mode: Redis L2, generations, pub/sub, cluster-wide GCRA.
//! - `csrf` — the guard that makes sending `X-Atlassian-Token: no-check` safe.
//! - `forward` — header hygiene between client and upstream, XSRF header injection.
//! - `coding` — `Accept-Encoding`, and gzip both ways (bounded).
//! - `cookies` — cookies that carry no identity (Atlassian's XSRF token) never cross.
//! - `upstream` — the pooled rustls client with its timeouts.
//! - `body` — the response body type: held bytes or a deadline-bounded upstream stream.
//! - `error` — errors wikigate answers itself, in Confluence's error JSON.
//! - `links` — `_links` pointed at wikigate where it serves them; redirects to the site.
//! - `metrics` — every `wikigate_*` metric, and the status page's figures.
//! - `query` — the one query parser (`+` is a space, values are bytes).
//! - `quota` — Atlassian's points: what calls cost, the site's standing, who spends it.
//! - `admin` — health, readiness, metrics, the status page, cache administration.
//! - `status_page` — the admin listener's HTML status page.
//! - `telemetry` — logging and OpenTelemetry spans.
//! - `access_log` — the access log's line, formatted without allocating.
//! - `log_sink` — the buffered log writer that never blocks a request.
//! - `rfc3339` — UTC timestamps as text, both ways.
//! - `request_id` — `X-Request-Id`: the client's, or one made.
//! - [`fake`] — a fake Confluence site for the demo and the tests.
//! - `demo` — `wikigate demo`.
//!
//! # Request path
//!
//! `server` accepts → `gateway` checks the head and the caller's limit, resolves the route →
//! a read: `cache` answers a fresh entry at once (the hit path), else joins or leads one fetch
//! → a write: `csrf` guards it and its body is read → every trip upstream: `limit` admits it
//! (holds, quota, budgets, the burst bucket's pace), `upstream` gives it a place and sends it,
//! `forward` cleans both heads, `hints` reads what the answer says of the limits → the answer
//! streams back through `body`, and a write's tags are invalidated before it does.
//! `docs/ARCHITECTURE.md` has the long form.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod access_log;
mod admin;
mod body;
mod burst;
mod cache;
mod caller;
pub mod cli;
mod cluster;
mod coding;
pub mod config;
mod cookies;
mod csrf;
mod demo;
mod error;
pub mod fake;
mod forward;
mod gateway;
mod hints;
mod lifecycle;
mod limit;
mod links;
mod log_sink;
mod metrics;
mod parts;
mod query;
mod quota;
mod request_id;
mod rfc3339;
pub mod routes;
pub mod server;
mod shutdown;
mod status_page;
mod telemetry;
mod upstream;

// The library's public API: the modules above that are `pub` (the command line, the
// configuration, the route table, the HTTP server, the fake site), and these, for embedding a
// gateway and measuring its parts (tests, benches). Everything else is private to the crate.
pub use body::Body;
pub use cache::{CacheKey, KeySecret, Partition};
pub use caller::{Caller, CallerId, Callers};
pub use coding::{gunzip, gzip};
pub use gateway::Gateway;
pub use lifecycle::{Running, start};
pub use limit::{Limits, Policy};
pub use parts::Parts;
pub use quota::Accounts;
