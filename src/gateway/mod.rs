//! The request path, in two readable functions: `admit` (route, guard, look up: everything that
//! needs no waiting, so a hit is answered by a plain call) and `onward` (the rest: a write, a
//! miss, a bypass, a lookup that asks Redis), each step below in order.
//!
//! ```text
//! client ─▶ check_head (414, 431)                          bounds
//!        ─▶ forward::strip_hop_by_hop
//!        ─▶ Callers::identify (401) ─▶ Limits::check_request (429 "requests")
//!        ─▶ routes::resolve (404, 405, 400)     nothing outside the route table goes upstream
//!        ─▶ Callers::apply_auth_mode            service-account: wikigate's credential
//!        ├─ write: csrf::check_write (403, 401) ─▶ read_body (413, 408)     bounds
//!        │         ─▶ upstream (in its own task) ─▶ Cache::invalidate ─▶ response
//!        ├─ read, cacheable: Cache::find (one lookup) — a fresh entry is the hit path; else
//!        │         Cache::read, given a ReadOrigin (fetch): stale while revalidating | join an
//!        │         identical fetch | ask the origin and store (the answer read whole, or
//!        │         streamed)
//!        └─ read, bypass (JWT, cookie, TTL 0): forward as is
//!   every trip upstream: Admission::send (admission) — every limit, the burst bucket's pace, a
//!   place upstream; then the answer teaches each limit at its scope
//!   every request, whichever way it went: record::finish — counted, logged, its span, its id
//! ```
//!
//! The parts: `admission` (permission to go upstream, the call, its cost), `fetch` (the
//! cache's origin: reading an answer for the cache), `record` (the per-request record and its
//! finish), `bounds` (request size and time limits).
//!
//! Invariants: every request gets exactly one response and one access-log line (`finish`, for
//! either path); nothing in `admit` waits, and what it decided (a limit spent, the credential
//! hashed) is carried onward, never done twice; errors wikigate
//! makes are answered in Confluence's error shape (`error`); a write's invalidation happens
//! after upstream answered and before the client sees the answer — in a task of its own, so a
//! client that hangs up mid-write cannot skip it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures_util::future::Either;
use http::{Request, Response, header, request};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument as _;

mod admission;
mod bounds;
mod fetch;
mod record;

use admission::Admission;
use bounds::RequestLimits;
use fetch::ReadOrigin;
use record::{LogFields, Received, request_span};

use crate::access_log::{self, UpstreamSeen};
use crate::body::Body;
use crate::cache::{self, BulkPlan, Bypass, Cache, Found, Lookup, Outcome, Served, SinglePlan};
use crate::caller::{Caller, Callers, Credential};
use crate::coding::Accepts;
use crate::config::Config;
use crate::cookies::IgnoredCookies;
use crate::csrf::CsrfGuard;
use crate::error::GatewayError;
use crate::forward::{self, ForwardedHost};
use crate::limit::{self, Limits};
use crate::links::Links;
use crate::metrics::Metrics;
use crate::parts::Parts;
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::routes::{self, Route, Tag};
use crate::server::{ConnInfo, Handler, RequestBody};
use crate::upstream::{Upstream, UpstreamSetupError};

/// The gateway: everything a request needs, built once from the config.
pub struct Gateway {
    upstream: Upstream,
    /// Replaced whole by a reload (`csrf.allowed_origins`).
    csrf: Arc<ArcSwap<CsrfGuard>>,
    limits: RequestLimits,
    callers: Arc<ArcSwap<Callers>>,
    rate_limits: Arc<Limits>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    /// `server.public_url`'s host: the `X-Forwarded-Host` of reads that may be stored.
    public_host: Option<http::HeaderValue>,
    /// Redirects to the site for what links lead to wikigate but it does not serve.
    links: Arc<Links>,
    /// Cookies that carry no identity: they never cross, in either direction.
    cookies: Arc<ArcSwap<IgnoredCookies>>,
    /// `cache.merge.window`: how long a points caller's merged lookup waits for others.
    merge_window: std::time::Duration,
    /// `cache.refresh.burst_share`.
    refresh_burst_share: f64,
}

impl Gateway {
    pub fn new(config: &Config, parts: Parts) -> Result<Gateway, UpstreamSetupError> {
        let Parts {
            cache,
            callers,
            limits: rate_limits,
            metrics,
            cluster: _,
            quota: _,
            links,
            gate,
            csrf,
            cookies,
        } = parts;
        let public_host = config
            .server
            .public_url
            .as_deref()
            .and_then(|url| url.parse::<http::Uri>().ok())
            .and_then(|uri| uri.authority().cloned())
            .and_then(|authority| http::HeaderValue::from_str(authority.as_str()).ok());
        Ok(Gateway {
            callers,
            rate_limits,
            metrics,
            public_host,
            links,
            cookies,
            merge_window: config.cache.merge.window,
            refresh_burst_share: config.cache.refresh.burst_share,
            upstream: Upstream::new(&config.upstream, gate)?,
            csrf,
            limits: RequestLimits {
                max_uri_bytes: config.server.max_uri_bytes,
                max_header_bytes: config.server.max_header_bytes,
                max_headers: config.server.max_headers,
                max_body_bytes: config.server.max_body_bytes,
                body_read_timeout: config.server.body_read_timeout,
            },
            cache,
        })
    }

    /// Everything of a request that needs no waiting: its head checked, its caller identified
    /// and limited, its route resolved and, for a read this replica can look up alone, its
    /// one lookup. A hit (and a refusal, a redirect) is answered here, and no future is made
    /// for it; anything else goes [`Gateway::onward`].
    fn admit<B: RequestBody>(
        &self,
        request: Request<B>,
        conn: &ConnInfo,
        log: &mut LogFields,
    ) -> Result<Admitted<B>, GatewayError> {
        self.limits.check_head(&request)?;
        let (mut parts, body) = request.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        self.cookies.load().strip_request(&mut parts.headers);
        // One snapshot of the callers for the whole request, whatever a reload does meanwhile.
        // (A guard: no shared reference count is touched unless the request goes onward.)
        let callers = self.callers.load();
        let caller = &*log
            .caller
            .insert(callers.identify(&parts.headers, conn.peer.ip())?);
        // Routed before the limit check so that a refusal is counted under its route, but
        // limited before a routing error is answered: every request counts against the limit.
        let resolved = routes::resolve(&parts.method, parts.uri.path());
        log.operation = resolved.as_ref().ok().map(|r| r.operation);
        let allowance = self.rate_limits.check_request(caller)?;
        let resolved = match resolved {
            Err(routes::RouteError::NotFound)
                if matches!(parts.method, http::Method::GET | http::Method::HEAD) =>
            {
                let path_and_query = parts.uri.path_and_query().map_or("", |p| p.as_str());
                return match self.links.redirect(parts.uri.path(), path_and_query) {
                    Some(location) => Ok(Admitted::Answered(redirect(location))),
                    None => Err(routes::RouteError::NotFound.into()),
                };
            }
            resolved => resolved?,
        };
        let credential = callers.apply_auth_mode(&mut parts.headers, caller);
        let next = if resolved.operation.verb().is_write() {
            Next::Write(resolved.invalidates())
        } else {
            let query = parts.uri.query();
            match self
                .cache
                .lookup_here(&resolved, &parts.headers, query, credential)
            {
                None => Next::Lookup,
                Some(lookup) => match self.find(lookup, &parts)? {
                    Finding::Hit(response, served) => {
                        log.served = Some(served);
                        return Ok(Admitted::Answered(with_allowance(response, allowance)));
                    }
                    finding => Next::Found(finding),
                },
            }
        };
        Ok(Admitted::Onward(Box::new(Onward {
            route: resolved.route(),
            parts,
            body,
            caller: caller.clone(),
            callers: arc_swap::Guard::into_inner(callers),
            credential,
            allowance,
            next,
        })))
    }

    /// The rest of a request that needs upstream, Redis or its body.
    async fn onward<B: RequestBody>(
        &self,
        onward: Onward<B>,
        conn: &ConnInfo,
        log: &mut LogFields,
    ) -> Result<Response<Body>, GatewayError> {
        let Onward {
            parts,
            body,
            callers,
            caller,
            credential,
            allowance,
            route,
            next,
        } = onward;
        // Everything a trip upstream needs; made only once the cache cannot answer.
        let seen = access_log::enabled().then(|| Arc::new(UpstreamSeen::default()));
        log.upstream.clone_from(&seen);
        let admission = |parts: &request::Parts| Admission {
            seen: seen.clone(),
            limits: self.rate_limits.clone(),
            metrics: self.metrics.clone(),
            route,
            method: parts.method.clone(),
            hold: callers.hold_key(&parts.headers, conn.peer.ip(), credential),
            write: limit::write_key(&parts.method, parts.uri.path()),
            caller,
            cookies: self.cookies.load_full(),
        };
        let finding = match next {
            Next::Write(tags) => {
                let admission = admission(&parts);
                let write = Box::pin(self.write(parts, body, conn, tags, admission));
                return Ok(with_allowance(write.await?, allowance));
            }
            Next::Lookup => {
                // Resolved again: what was resolved borrowed the request, which moved since.
                let resolved = routes::resolve(&parts.method, parts.uri.path())?;
                let query = parts.uri.query();
                let lookup = self
                    .cache
                    .lookup(&resolved, &parts.headers, query, credential)
                    .await;
                self.find(lookup, &parts)?
            }
            Next::Found(finding) => finding,
        };
        let (response, served) = match finding {
            Finding::Hit(response, served) => (response, served),
            Finding::Bypass(why) => {
                let admission = admission(&parts);
                let bypass = Box::pin(self.bypass(parts, body, conn, why, admission));
                bypass.await?
            }
            Finding::Read(read) => {
                let admission = admission(&parts);
                let read = Box::pin(self.cached_read(parts, body, conn, read, admission));
                read.await?
            }
        };
        log.served = Some(served);
        Ok(with_allowance(response, allowance))
    }

    /// A read's one find in memory: a fresh entry answered at once (the hit path: nothing is prepared
    /// for upstream, nothing of the request is taken), else what the rest of the read needs.
    fn find(
        &self,
        lookup: Result<Lookup, Bypass>,
        parts: &request::Parts,
    ) -> Result<Finding, GatewayError> {
        let lookup = match lookup {
            Ok(lookup) => lookup,
            Err(bypass) => return Ok(Finding::Bypass(bypass)),
        };
        let read = match self.cache.bulk_plan(&lookup, parts.uri.query()) {
            Some(plan) => Read::Bulk(plan),
            None => match self.cache.find(&lookup, &parts.headers) {
                Found::Fresh(entry) => {
                    let (response, served) = self.cache.hit(&lookup, entry, &parts.headers)?;
                    return Ok(Finding::Hit(response, served));
                }
                found => match self.cache.single_plan(&lookup, parts.uri.query()) {
                    Some(plan) => Read::Single(lookup, found, plan),
                    None => Read::Entry(lookup, found),
                },
            },
        };
        Ok(Finding::Read(read))
    }

    /// A read the cache may not answer (JWT, cookie, caching off): forwarded and streamed back.
    async fn bypass<B: RequestBody>(
        &self,
        parts: request::Parts,
        body: B,
        conn: &ConnInfo,
        why: Bypass,
        admission: Admission,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let mut response = self.forward(parts, body, conn, admission).await?;
        let served = Served {
            outcome: Outcome::Bypass(why),
            saved_points: None,
        };
        cache::mark(&mut response, &served.outcome);
        Ok((response, served))
    }

    /// A write: guarded, forwarded, and its tags invalidated unless upstream refused it (4xx)
    /// or it never reached upstream.
    async fn write<B: RequestBody>(
        &self,
        parts: request::Parts,
        body: B,
        conn: &ConnInfo,
        tags: Vec<Tag>,
        admission: Admission,
    ) -> Result<Response<Body>, GatewayError> {
        self.csrf.load().check_write(&parts.headers)?;
        let request = self
            .upstream_request(parts, body, conn, Exchange::Write)
            .await?;
        let deadline = self.upstream.deadline();
        let upstream = self.upstream.clone();
        let cache = self.cache.clone();
        let route = admission.route;
        let exchange = tokio::spawn(
            async move {
                let result = admission.send(&upstream, request, deadline, false).await;
                if let Ok(response) = &result {
                    admission
                        .charge(admission.price(response.status(), None))
                        .await;
                }
                let may_have_changed = match &result {
                    Ok(response) => !response.status().is_client_error(),
                    Err(error) if error.refusal().is_some() => false,
                    Err(GatewayError::UpstreamConnect(_)) => false,
                    Err(_) => true,
                };
                if may_have_changed {
                    cache.invalidate(route, &tags).await;
                }
                result
            }
            .in_current_span(),
        );
        let response = exchange.await??;
        Ok(forward::downstream_response(response, deadline))
    }

    /// A read the cache answers from upstream (once for every identical request), or from
    /// an expired entry, or account by account.
    async fn cached_read<B: RequestBody>(
        &self,
        mut parts: request::Parts,
        body: B,
        conn: &ConnInfo,
        read: Read,
        admission: Admission,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let request_headers = parts.headers.clone();
        let accepts = Accepts::of(&request_headers);
        // The entry is always filled from a full GET, also for HEAD and conditional requests,
        // in gzip whatever the client accepts: wikigate decodes what it must read, and gives
        // each client a coding it accepts.
        parts.method = http::Method::GET;
        forward::strip_conditionals(&mut parts.headers);
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        let request = self
            .upstream_request(parts, body, conn, Exchange::StoredRead)
            .await?;
        // Only callers whose answers carry a points policy wait for others to merge with.
        let merge_window = match admission.caller.account.states_points() {
            true => self.merge_window,
            false => std::time::Duration::ZERO,
        };
        let origin = Arc::new(ReadOrigin {
            request,
            upstream: self.upstream.clone(),
            admission,
            limit: self.cache.max_entry_bytes(),
            accepts,
            merge_window,
            refresh_burst_share: self.refresh_burst_share,
        });
        match read {
            Read::Entry(lookup, found) => {
                self.cache
                    .read(lookup, found, &request_headers, origin)
                    .await
            }
            // Only the accounts not cached are asked for: the same path, another query.
            Read::Bulk(plan) => self.cache.bulk_read(plan, &request_headers, &*origin).await,
            Read::Single(lookup, found, plan) => {
                self.cache
                    .single_read(lookup, found, plan, &request_headers, origin)
                    .await
            }
        }
    }

    /// Forwards a read and streams the answer back, untouched by the cache.
    async fn forward<B: RequestBody>(
        &self,
        parts: request::Parts,
        body: B,
        conn: &ConnInfo,
        admission: Admission,
    ) -> Result<Response<Body>, GatewayError> {
        let request = self
            .upstream_request(parts, body, conn, Exchange::PassedRead)
            .await?;
        let deadline = self.upstream.deadline();
        let response = admission
            .send(&self.upstream, request, deadline, true)
            .await?;
        admission
            .charge(admission.price(response.status(), None))
            .await;
        Ok(forward::downstream_response(response, deadline))
    }

    /// The request to send upstream: the body read (bounded), the head cleaned.
    async fn upstream_request<B: RequestBody>(
        &self,
        parts: request::Parts,
        body: B,
        conn: &ConnInfo,
        exchange: Exchange,
    ) -> Result<Request<Full<Bytes>>, GatewayError> {
        let body = self.limits.read_body(&parts.headers, body).await?;
        let (write, forwarded_host) = match exchange {
            Exchange::Write => (true, ForwardedHost::Client),
            Exchange::PassedRead => (false, ForwardedHost::Client),
            Exchange::StoredRead => (false, ForwardedHost::Canonical(self.public_host.as_ref())),
        };
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .ok_or(GatewayError::Route(routes::RouteError::NotFound))?;
        let uri = self.upstream.target(&path_and_query)?;
        Ok(forward::upstream_request(
            parts,
            body,
            uri,
            conn,
            write,
            forwarded_host,
        ))
    }
}

/// A redirect to where a link that wikigate does not serve really leads (`links`).
fn redirect(location: http::HeaderValue) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::FOUND;
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// A request after [`Gateway::admit`].
enum Admitted<B> {
    /// Answered without waiting: a hit, a redirect.
    Answered(Response<Body>),
    /// Boxed: only requests that wait carry it.
    Onward(Box<Onward<B>>),
}

/// What the rest of a request needs of what was found out without waiting.
struct Onward<B> {
    parts: request::Parts,
    body: B,
    callers: Arc<Callers>,
    caller: Caller,
    /// The hash of the credential the request carries, when it was made already.
    credential: Option<Credential>,
    allowance: Option<limit::Allowance>,
    route: Route,
    next: Next,
}

#[expect(
    clippy::large_enum_variant,
    reason = "it lives in a boxed Onward, which is moved as a pointer"
)]
enum Next {
    /// A write, and the tags it invalidates.
    Write(Vec<Tag>),
    /// A read whose key needs a generation from Redis (in a cluster).
    Lookup,
    /// A read found in memory already, which the cache did not answer from there.
    Found(Finding),
}

/// The `RateLimit` headers of the caller's request limit, when it has one.
fn with_allowance(
    mut response: Response<Body>,
    allowance: Option<limit::Allowance>,
) -> Response<Body> {
    if let Some(allowance) = allowance {
        allowance.apply(response.headers_mut());
    }
    response
}

/// What a read's find in memory came to.
enum Finding {
    /// Answered from this replica's memory.
    Hit(Response<Body>, Served),
    /// Not for the cache: forwarded as it is.
    Bypass(Bypass),
    /// For the cache, which needs upstream (or an expired entry) to answer.
    Read(Read),
}

/// How the cache answers a read it may store.
enum Read {
    /// From the entry of its key: what the one lookup found.
    Entry(Lookup, Found),
    /// A bulk lookup, account by account.
    Bulk(BulkPlan),
    /// A single account lookup, from its own entry or its account's object, or merged.
    Single(Lookup, Found, SinglePlan),
}

/// What an upstream request is for, which decides how its head is prepared.
#[derive(Debug, Clone, Copy)]
enum Exchange {
    Write,
    /// A read whose answer is streamed back and never stored.
    PassedRead,
    /// A read whose answer may be stored and shared: nothing client-chosen may shape it.
    StoredRead,
}

impl Handler for Gateway {
    fn call(
        gateway: &Arc<Gateway>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        match gateway.begin(request, conn) {
            Begun::Answered(response) => Either::Left(std::future::ready(response)),
            Begun::Waiting(waiting) => {
                let gateway = gateway.clone();
                Either::Right(Box::pin(async move { gateway.wait(waiting, conn).await }))
            }
        }
    }
}

/// A request [`Gateway::begin`] did not answer: what the rest of it needs.
struct Waiting<B> {
    onward: Box<Onward<B>>,
    received: Received,
}

/// What [`Gateway::begin`] made of a request.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once and matched at once; what waits moves into its boxed future"
)]
enum Begun<B> {
    /// Answered (a hit, a refusal), counted and logged; nothing of the request is left.
    Answered(Response<Body>),
    Waiting(Waiting<B>),
}

impl Gateway {
    /// Answers one request: what tests and benchmarks call in-process with a body of their
    /// own ([`Handler::call`] is the same for requests off the wire). A request answered
    /// without waiting (a hit, a refusal) is answered when this returns: the future is ready,
    /// and holds nothing of the request; only the others make (and box) one.
    pub fn handle<B: RequestBody>(
        &self,
        request: Request<B>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        match self.begin(request, conn) {
            Begun::Answered(response) => Either::Left(std::future::ready(response)),
            Begun::Waiting(waiting) => Either::Right(Box::pin(self.wait(waiting, conn))),
        }
    }

    /// Everything of a request that needs no waiting ([`Gateway::admit`]), finished when
    /// that answered it.
    fn begin<B: RequestBody>(&self, request: Request<B>, conn: ConnInfo) -> Begun<B> {
        let _in_flight = self.metrics.in_flight();
        let method = request.method().clone();
        let id = RequestId::of(request.headers());
        let mut received = Received {
            id,
            started: Instant::now(),
            // Only what the access log needs from the request outlives it, and only when on.
            uri: access_log::enabled().then(|| request.uri().path_and_query().cloned()),
            user_agent: access_log::enabled()
                .then(|| request.headers().get(header::USER_AGENT).cloned())
                .flatten(),
            span: request_span(&method, request.headers()),
            method,
            log: LogFields::default(),
        };
        let admitted = received
            .span
            .in_scope(|| self.admit(request, &conn, &mut received.log));
        let answered = match admitted {
            Ok(Admitted::Onward(mut onward)) => {
                if received.id.made() {
                    // Upstream gets it with the request, as the answer and the log line do
                    // (a hit, answered above, never needs it in the request).
                    let id = received.id.header_value().clone();
                    onward.parts.headers.insert(&X_REQUEST_ID, id);
                }
                return Begun::Waiting(Waiting { onward, received });
            }
            Ok(Admitted::Answered(response)) => Ok(response),
            Err(error) => Err(error),
        };
        Begun::Answered(record::finish(&self.metrics, answered, received, &conn))
    }

    /// The rest of a request [`Gateway::begin`] did not answer, finished.
    async fn wait<B: RequestBody>(&self, waiting: Waiting<B>, conn: ConnInfo) -> Response<Body> {
        let _in_flight = self.metrics.in_flight();
        let Waiting {
            onward,
            mut received,
        } = waiting;
        let span = received.span.clone();
        let answered = self
            .onward(*onward, &conn, &mut received.log)
            .instrument(span)
            .await;
        record::finish(&self.metrics, answered, received, &conn)
    }
}
