//! wikigate: a caching reverse-proxy gateway for the Confluence Cloud user API
//! (`/wiki/rest/api/user/*`).
//!
//! # Layout
//!
//! - [`cli`] — the command line (`serve`, `demo`, `check-config`, `hash-key`); `main.rs` only
//!   calls it.
//! - [`config`] — `file -> TOML table -> overrides -> RawConfig -> validate -> Config`.
//! - [`lifecycle`] — binds the listeners, runs them, drains on shutdown, reloads.
//! - [`parts`] — the state a gateway is made of, shared by both listeners.
//! - [`server`] — accept loops, TLS, HTTP/1.1 + HTTP/2, graceful connection shutdown.
//! - [`shutdown`] — SIGTERM/SIGINT drain and stop, SIGHUP reloads.
//! - [`gateway`] — the request path: `admit` and `onward` (see its module doc), with its parts
//!   (admission, fetch, record, bounds).
//! - [`routes`] — the route table: 12 templates, 21 operations, path-parameter validation.
//! - [`cache`] — per-caller GET caching in moka: keys, tag generations, coalescing, stale.
//! - [`caller`] — who is calling (client key, credential, address); service-account mode.
//! - [`limit`] — per-caller and global GCRA limits, points budgets, the reserve, and each
//!   upstream 429 held at its scope.
//! - [`hints`] — every rate-limit header of an upstream answer, read once and bounded.
//! - [`burst`] — Atlassian's per-second burst buckets, per route and method, and the pacing.
//! - [`cluster`] — multi-replica mode: Redis L2, generations, pub/sub, cluster-wide GCRA.
//! - [`csrf`] — the guard that makes sending `X-Atlassian-Token: no-check` safe.
//! - [`forward`] — header hygiene between client and upstream, XSRF header injection.
//! - [`coding`] — `Accept-Encoding`, and gzip both ways (bounded).
//! - [`cookies`] — cookies that carry no identity (Atlassian's XSRF token) never cross.
//! - [`upstream`] — the pooled rustls client with its timeouts.
//! - [`body`] — the response body type: held bytes or a deadline-bounded upstream stream.
//! - [`error`] — errors wikigate answers itself, in Confluence's error JSON.
//! - [`links`] — `_links` pointed at wikigate where it serves them; redirects to the site.
//! - [`metrics`] — every `wikigate_*` metric, and the status page's figures.
//! - [`query`] — the one query parser (`+` is a space, values are bytes).
//! - [`quota`] — Atlassian's points: what calls cost, the site's standing, who spends it.
//! - [`admin`] — health, readiness, metrics, the status page, cache administration.
//! - [`status_page`] — the admin listener's HTML status page.
//! - [`telemetry`] — logging and OpenTelemetry spans.
//! - [`access_log`] — the access log's line, formatted without allocating.
//! - [`log_sink`] — the buffered log writer that never blocks a request.
//! - [`rfc3339`] — UTC timestamps as text, both ways.
//! - [`request_id`] — `X-Request-Id`: the client's, or one made.
//! - [`fake`] — a fake Confluence site for the demo and the tests.
//! - [`demo`] — `wikigate demo`.
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

pub mod access_log;
pub mod admin;
pub mod body;
pub mod burst;
pub mod cache;
pub mod caller;
pub mod cli;
pub mod cluster;
pub mod coding;
pub mod config;
pub mod cookies;
pub mod csrf;
pub mod demo;
pub mod error;
pub mod fake;
pub mod forward;
pub mod gateway;
pub mod hints;
pub mod lifecycle;
pub mod limit;
pub mod links;
pub mod log_sink;
pub mod metrics;
pub mod parts;
pub mod query;
pub mod quota;
pub mod request_id;
pub mod rfc3339;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod status_page;
pub mod telemetry;
pub mod upstream;
