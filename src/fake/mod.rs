//! A fake Confluence Cloud site: the 21 user-API operations, stateful, in process.
//!
//! The demo puts the gateway in front of it, and the tests use it as the upstream. By default
//! it answers the way Atlassian's edge does (`edge`): gzip when asked, a fresh XSRF cookie,
//! per-request ids, `no-store`; [`Shape::Plain`] answers plain JSON for the few tests that need
//! it. Account ids look like Atlassian's (`712020:uuid`). It follows
//! `shared/confluence-user-api.json`: Basic (`email:token`) or Bearer authentication,
//! `/user/current` is the caller, watch status for another `accountId` needs an admin, watch
//! writes need `X-Atlassian-Token: no-check`, user properties can be listed, read, created
//! (409 if present), updated and deleted (404 if absent), and `_links` carry the site URL.
//!
//! It charges Atlassian's points quota and states it on every answer (`points`): in shadow
//! mode by default (`Beta-RateLimit*`), enforced — 429 once spent — when told
//! ([`FakeQuota`]), with windows a test can make last seconds.
//!
//! Tests steer it through [`FakeConfluence`]: it counts the requests it served per operation,
//! records what it received, and can be told to answer slowly or with an error status.
//!
//! The parts: `site` (the handler), `answers` (the 21 operations), `data` (users and what
//! writes change), `edge` (the edge's shape), `points` and `limits` (Atlassian's limits).

mod answers;
mod data;
mod edge;
mod limits;
mod points;
mod site;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::routes::Operation;
use crate::server::{self, Http};

pub use data::{DEMO_USERS, DIRECTORY_SIZE, DemoUser, directory_account};
pub use edge::{BulkObjects, Shape};
pub use limits::{FakeBursts, FakeWriteLimit};
pub use points::{FakeQuota, QuotaMode};

/// How a fake site answers.
#[derive(Debug, Clone, Copy)]
pub struct FakeOptions {
    pub shape: Shape,
    /// The points quota it charges and states (hourly, in shadow mode, unless told); `None`:
    /// it states none, as a site that charges no points (API-token traffic).
    pub quota: Option<FakeQuota>,
    /// Builds `_links` from `X-Forwarded-Host`/`-Proto` when a request has them, as
    /// proxy-aware applications do (Atlassian Cloud does not): for tests of what a client
    /// could make such an upstream store.
    pub honour_forwarded_host: bool,
    /// The per-second burst bucket of each endpoint and method, stated on every answer (350
    /// a second, as a captured answer says, unless told); `None`: none.
    pub bursts: Option<FakeBursts>,
    /// Writes allowed to one resource per period; `None` (the default): unlimited.
    pub write_limit: Option<FakeWriteLimit>,
    /// How its bulk lookups' objects compare with its single answers of the same accounts.
    pub bulk_objects: BulkObjects,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            shape: Shape::default(),
            quota: Some(FakeQuota::default()),
            honour_forwarded_host: false,
            bursts: Some(FakeBursts::default()),
            write_limit: None,
            bulk_objects: BulkObjects::default(),
        }
    }
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The request target exactly as received (path and query).
    pub target: String,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

/// Faults the fake injects, for tests of the gateway's error handling.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Wait this long before answering any request.
    pub delay: Duration,
    /// Answer every request with this status and Confluence's error body.
    pub fail_with: Option<StatusCode>,
    /// Headers added to every answer (hop-by-hop headers, for hygiene tests).
    pub response_headers: HeaderMap,
}

/// Shared by the fake's handler and its [`FakeConfluence`] handle.
struct Shared {
    site: data::Site,
    options: FakeOptions,
    points: Option<points::Points>,
    limits: limits::Limits,
    hits: [AtomicU64; 21],
    requests: AtomicU64,
    faults: parking_lot::Mutex<Faults>,
    /// `parking_lot::Mutex`: held only to push or clone, never across an await.
    recorded: parking_lot::Mutex<Vec<Recorded>>,
    /// Armed holds, each for the next request of its operation.
    holds: parking_lot::Mutex<Vec<(Operation, Armed)>>,
}

/// A hold armed on the fake side.
struct Armed {
    reached: watch::Sender<bool>,
    release: watch::Receiver<bool>,
}

/// Holds the next request for one operation after its answer was computed, until released:
/// for deterministic interleavings ("a read is in flight with pre-write data while a write goes
/// through"). Dropping the hold releases it.
pub struct Hold {
    reached: watch::Receiver<bool>,
    release: watch::Sender<bool>,
}

impl Hold {
    /// Waits until the held request has computed its answer and is waiting.
    pub async fn reached(&mut self) {
        let _ = self.reached.wait_for(|r| *r).await;
    }

    /// Lets the held request answer.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.release();
    }
}

/// The most requests kept for inspection; older ones are dropped first.
const RECORD_LIMIT: usize = 1024;

/// A running fake site.
pub struct FakeConfluence {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl FakeConfluence {
    /// Starts a plain-HTTP fake on `127.0.0.1` at a free port, answering like the edge.
    pub async fn start() -> std::io::Result<FakeConfluence> {
        FakeConfluence::start_with(FakeOptions::default()).await
    }

    /// Starts a plain-HTTP fake on `127.0.0.1` at a free port.
    pub async fn start_with(options: FakeOptions) -> std::io::Result<FakeConfluence> {
        let addr = "127.0.0.1:0".parse().expect("address");
        FakeConfluence::start_on_with(addr, None, options).await
    }

    /// Starts a fake on `addr` answering like the edge, serving HTTPS when `tls` is given.
    pub async fn start_on(
        addr: std::net::SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> std::io::Result<FakeConfluence> {
        FakeConfluence::start_on_with(addr, tls, FakeOptions::default()).await
    }

    /// Starts a fake on `addr`, serving HTTPS when `tls` is given.
    pub async fn start_on_with(
        addr: std::net::SocketAddr,
        tls: Option<TlsAcceptor>,
        options: FakeOptions,
    ) -> std::io::Result<FakeConfluence> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = if tls.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let base = format!("{scheme}://{host}:{}/wiki", addr.port());
        let shared = Arc::new(Shared {
            site: data::Site::new(base),
            options,
            points: options.quota.map(points::Points::new),
            limits: limits::Limits::new(options.bursts, options.write_limit),
            hits: Default::default(),
            requests: AtomicU64::new(0),
            faults: Default::default(),
            recorded: Default::default(),
            holds: Default::default(),
        });
        let http = match tls {
            Some(acceptor) => Http::plain().with_tls(acceptor),
            None => Http::plain(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let handler = Arc::new(site::FakeHandler(shared.clone()));
        tokio::spawn(server::serve(
            listener,
            http,
            handler,
            async move {
                let mut stop_rx = stop_rx;
                let _ = stop_rx.wait_for(|s| *s).await;
            },
            Duration::from_secs(1),
        ));
        Ok(FakeConfluence { addr, shared, stop })
    }

    /// The site's base URL, `http://127.0.0.1:PORT` (what `upstream.url` is set to).
    pub fn url(&self) -> String {
        self.shared.site.base().trim_end_matches("/wiki").to_owned()
    }

    /// How many requests for `operation` reached the fake.
    pub fn hits(&self, operation: Operation) -> u64 {
        self.shared.hits[operation.index()].load(Ordering::SeqCst)
    }

    /// How many user objects bulk lookups (`/user/bulk`) returned.
    pub fn bulk_objects(&self) -> u64 {
        self.shared.site.bulk_objects.load(Ordering::SeqCst)
    }

    /// Points the fake charged in every window so far, and the calls it refused (429) for
    /// its quota.
    pub fn quota_totals(&self) -> (u64, u64) {
        self.shared
            .points
            .as_ref()
            .map_or((0, 0), points::Points::totals)
    }

    /// Calls refused by a burst bucket or a per-resource write limit (429).
    pub fn limit_refusals(&self) -> u64 {
        self.shared.limits.refused()
    }

    /// How many requests reached the fake at all, routed or not.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The requests received, oldest first (at most the last 1024).
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recorded.lock().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Option<Recorded> {
        self.shared.recorded.lock().last().cloned()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults.lock() = faults;
    }

    /// Arms a hold on the next request for `operation`.
    pub fn hold(&self, operation: Operation) -> Hold {
        let (reached_tx, reached) = watch::channel(false);
        let (release, release_rx) = watch::channel(false);
        self.shared.holds.lock().push((
            operation,
            Armed {
                reached: reached_tx,
                release: release_rx,
            },
        ));
        Hold { reached, release }
    }

    /// Stops accepting connections.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for FakeConfluence {
    fn drop(&mut self) {
        self.stop();
    }
}
