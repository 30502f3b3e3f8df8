//! The request path, in two readable functions: `admit` (route, guard, look up: everything that
//! needs no waiting, so a hit is answered by a plain call) and `onward` (the rest: a write, a
//! miss, a bypass, a lookup that asks Redis), each step below in order.
//!
//! ```text
//! client ─▶ check_head (414, 431)
//!        ─▶ forward::strip_hop_by_hop
//!        ─▶ Callers::identify (401) ─▶ Limits::check_request (429 "requests")
//!        ─▶ routes::resolve (404, 405, 400)     nothing outside the route table goes upstream
//!        ─▶ Callers::apply_auth_mode            service-account: wikigate's credential
//!        ├─ write: csrf::check_write (403, 401) ─▶ read_body (413, 408)
//!        │         ─▶ upstream (in its own task) ─▶ Cache::invalidate ─▶ response
//!        ├─ read, cacheable: Cache::find (one lookup) — a fresh entry is the hit path; else
//!        │         Cache::read: stale while revalidating | join an identical fetch | fetch and store
//!        └─ read, bypass (JWT, cookie, TTL 0): forward as is
//!   every trip upstream: Admission::send — hold, upstream allowance, global budget (429),
//!   then the answer teaches the holds (upstream 429 / Retry-After)
//! ```
//!
//! Invariants: every request gets exactly one response and one access-log line (`finish`, for
//! either path); nothing in `admit` waits, and what it decided (a limit spent, the credential
//! hashed) is carried onward, never done twice; errors wikigate
//! makes are answered in Confluence's error shape (`error`); a write's invalidation happens
//! after upstream answered and before the client sees the answer — in a task of its own, so a
//! client that hangs up mid-write cannot skip it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use futures_util::future::Either;
use http::{Request, Response, header, request};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::access_log::{self, UpstreamSeen};
use crate::body::Body;
use crate::burst::BucketId;
use crate::cache::{
    self, Buffered, BulkPlan, Bypass, Cache, Fetched, Found, Lookup, Outcome, Served,
};
use crate::caller::{Caller, Callers, Credential};
use crate::coding::{self, Accepts, Coding};
use crate::config::Config;
use crate::cookies::IgnoredCookies;
use crate::csrf::CsrfGuard;
use crate::error::{ErrorSource, GatewayError};
use crate::forward::{self, ForwardedHost};
use crate::hints::Hints;
use crate::limit::{self, HoldKey, Limits, WriteKey};
use crate::links::Links;
use crate::metrics::{CacheLabel, Metrics, RequestRecord};
use crate::parts::Parts;
use crate::quota;
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::routes::{self, Operation, Route, Tag};
use crate::server::{ConnInfo, Handler, RequestBody};
use crate::telemetry;
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
}

/// Request-size and time limits from `[server]`.
#[derive(Debug, Clone, Copy)]
struct RequestLimits {
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_headers: usize,
    max_body_bytes: usize,
    body_read_timeout: Duration,
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
        let callers = self.callers.load_full();
        let caller = callers.identify(&parts.headers, conn.peer.ip())?;
        log.caller = Some(caller.clone());
        // Routed before the limit check so that a refusal is counted under its route, but
        // limited before a routing error is answered: every request counts against the limit.
        let resolved = routes::resolve(&parts.method, parts.uri.path());
        log.operation = resolved.as_ref().ok().map(|r| r.operation);
        let allowance = self.rate_limits.check_request(&caller)?;
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
        let credential = callers.apply_auth_mode(&mut parts.headers, &caller);
        let next = if resolved.operation.verb().is_write() {
            Next::Write(resolved.invalidates())
        } else {
            let query = parts.uri.query();
            match self
                .cache
                .lookup_here(&resolved, &parts.headers, query, credential)
            {
                None => Next::Lookup,
                Some(lookup) => match self.look(lookup, &parts)? {
                    Looked::Hit(response, served) => {
                        log.served = Some(served);
                        return Ok(Admitted::Answered(with_allowance(response, allowance)));
                    }
                    looked => Next::Looked(looked),
                },
            }
        };
        Ok(Admitted::Onward(Box::new(Onward {
            route: resolved.route(),
            parts,
            body,
            callers,
            caller,
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
        let looked = match next {
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
                self.look(lookup, &parts)?
            }
            Next::Looked(looked) => looked,
        };
        let (response, served) = match looked {
            Looked::Hit(response, served) => (response, served),
            Looked::Bypass(why) => {
                let admission = admission(&parts);
                let bypass = Box::pin(self.bypass(parts, body, conn, why, admission));
                bypass.await?
            }
            Looked::Read(read) => {
                let admission = admission(&parts);
                let read = Box::pin(self.cached_read(parts, body, conn, read, admission));
                read.await?
            }
        };
        log.served = Some(served);
        Ok(with_allowance(response, allowance))
    }

    /// A read's one lookup: a fresh entry answered at once (the hit path: nothing is prepared
    /// for upstream, nothing of the request is taken), else what the rest of the read needs.
    fn look(
        &self,
        lookup: Result<Lookup, Bypass>,
        parts: &request::Parts,
    ) -> Result<Looked, GatewayError> {
        let lookup = match lookup {
            Ok(lookup) => lookup,
            Err(bypass) => return Ok(Looked::Bypass(bypass)),
        };
        let read = match self.cache.bulk_plan(&lookup, parts.uri.query()) {
            Some(plan) => Read::Bulk(plan),
            None => match self.cache.find(&lookup, &parts.headers) {
                Found::Fresh(entry) => {
                    let (response, served) = self.cache.hit(&lookup, entry, &parts.headers)?;
                    return Ok(Looked::Hit(response, served));
                }
                found => Read::Entry(lookup, found),
            },
        };
        Ok(Looked::Read(read))
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
        let (metrics, route) = (self.metrics.clone(), admission.route);
        let exchange = tokio::spawn(
            async move {
                let result = admission.send(&upstream, request, deadline, false).await;
                if let Ok(response) = &result {
                    admission.charge(response.status(), None).await;
                }
                let may_have_changed = match &result {
                    Ok(response) => !response.status().is_client_error(),
                    Err(error) if error.refusal().is_some() => false,
                    Err(GatewayError::UpstreamConnect(_)) => false,
                    Err(_) => true,
                };
                if may_have_changed {
                    cache.invalidate(&tags).await;
                    metrics.invalidation(route);
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
        let template = Arc::new(
            self.upstream_request(parts, body, conn, Exchange::StoredRead)
                .await?,
        );
        let upstream = self.upstream.clone();
        let limit = self.cache.max_entry_bytes();
        let (lookup, found) = match read {
            Read::Entry(lookup, found) => (lookup, found),
            Read::Bulk(plan) => {
                // Only the accounts not cached are asked for: the same path, another query.
                let fetch = |query: String| async move {
                    let mut request = copy_request(&template);
                    *request.uri_mut() = with_query(template.uri(), &query)?;
                    fetch(&self.upstream, &admission, request, limit, accepts).await
                };
                return self.cache.bulk_read(plan, &request_headers, fetch).await;
            }
        };
        let admission = Arc::new(admission);
        let fetch = move || {
            let request = copy_request(&template);
            let (upstream, admission) = (upstream.clone(), admission.clone());
            async move { fetch(&upstream, &admission, request, limit, accepts).await }
        };
        self.cache
            .read(lookup, found, &request_headers, fetch)
            .await
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
        admission.charge(response.status(), None).await;
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

/// `uri` with its query replaced.
fn with_query(uri: &http::Uri, query: &str) -> Result<http::Uri, GatewayError> {
    let mut parts = uri.clone().into_parts();
    let path_and_query = format!("{}?{query}", uri.path());
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| GatewayError::UpstreamProtocol(format!("bad upstream target: {e}")))?,
    );
    http::Uri::from_parts(parts)
        .map_err(|e| GatewayError::UpstreamProtocol(format!("bad upstream target: {e}")))
}

/// A copy of a prepared upstream request, for a fetch that may run more than once.
fn copy_request(template: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut request = Request::new(template.body().clone());
    *request.method_mut() = template.method().clone();
    *request.uri_mut() = template.uri().clone();
    *request.version_mut() = template.version();
    *request.headers_mut() = template.headers().clone();
    request
}

/// Fetches for the cache: the answer read whole and decoded when it is at most `limit` bytes
/// (encoded and decoded), streamed through otherwise without ever holding more than `limit`
/// bytes of it. `accepts` is what the requesting client accepts: an answer too large to hold
/// reaches it only in a coding it accepts — for a client that does not take gzip, a gzip
/// answer too large to decode is asked for once more, without gzip, and streamed as it comes.
async fn fetch(
    upstream: &Upstream,
    admission: &Admission,
    request: Request<Full<Bytes>>,
    limit: usize,
    accepts: Accepts,
) -> Result<Fetched, GatewayError> {
    let identity = (!accepts.gzip()).then(|| {
        let mut again = copy_request(&request);
        again.headers_mut().insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        again
    });
    let fetched = fetch_once(upstream, admission, request, limit, accepts).await?;
    match (fetched, identity) {
        (Fetched::Undeliverable(_), Some(again)) => {
            fetch_once(upstream, admission, again, limit, accepts).await
        }
        (fetched, _) => Ok(fetched),
    }
}

/// One trip of [`fetch`].
async fn fetch_once(
    upstream: &Upstream,
    admission: &Admission,
    request: Request<Full<Bytes>>,
    limit: usize,
    accepts: Accepts,
) -> Result<Fetched, GatewayError> {
    let deadline = upstream.deadline();
    let response = admission.send(upstream, request, deadline, true).await?;
    let status = response.status();
    let fetched = read_answer(response, deadline, limit, accepts).await;
    let body = match &fetched {
        Ok(Fetched::Buffered(answer)) => Some(answer.body().as_ref()),
        _ => None,
    };
    admission.charge(status, body).await;
    fetched
}

/// Upstream's answer to a fetch: read whole and decoded, or streamed through (see [`fetch`]).
async fn read_answer(
    response: Response<Incoming>,
    deadline: Instant,
    limit: usize,
    accepts: Accepts,
) -> Result<Fetched, GatewayError> {
    let (mut parts, body) = response.into_parts();
    forward::clean_response_head(&mut parts);
    let coding = Coding::of_response(&parts.headers).map_err(|coding| {
        GatewayError::UpstreamProtocol(format!(
            "the answer came in a content coding wikigate did not ask for: {coding}"
        ))
    })?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return streamed(
            parts,
            Body::upstream(body, deadline),
            coding,
            accepts,
            limit,
        );
    }
    let received = match read_bounded(body, deadline, limit).await? {
        Bounded::Whole(received) => received,
        Bounded::TooLarge(body) => return streamed(parts, body, coding, accepts, limit),
    };
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    let answer = match coding {
        Coding::Identity => Buffered::plain(parts.status, parts.headers, received),
        Coding::Gzip => match coding::gunzip(&received, limit) {
            Ok(plain) => Buffered::gzipped(parts.status, parts.headers, plain, received),
            Err(coding::DecodeError::TooLarge { .. }) => {
                // What arrived fits, what it inflates to does not: the client gets the gzip
                // as it came, if it takes gzip, and nothing is stored.
                parts.headers.insert(
                    header::CONTENT_ENCODING,
                    http::HeaderValue::from_static("gzip"),
                );
                return streamed(parts, Body::full(received), coding, accepts, limit);
            }
            Err(error @ coding::DecodeError::Corrupt) => {
                return Err(GatewayError::UpstreamProtocol(format!(
                    "the gzip answer cannot be decoded: {error}"
                )));
            }
        },
    };
    Ok(Fetched::Buffered(answer))
}

/// An upstream body read as far as `limit`.
enum Bounded {
    /// All of it, at most `limit` bytes.
    Whole(Bytes),
    /// More than `limit`: what was read, followed by the rest as it comes.
    TooLarge(Body),
}

/// Reads `body` whole if it ends within `limit` bytes, by `deadline`.
async fn read_bounded(
    mut body: Incoming,
    deadline: Instant,
    limit: usize,
) -> Result<Bounded, GatewayError> {
    let mut buffer = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(GatewayError::UpstreamTimeout(
                    "the response body did not arrive in time".to_owned(),
                ));
            }
            Ok(None) => return Ok(Bounded::Whole(buffer.freeze())),
            Ok(Some(Err(e))) => {
                return Err(GatewayError::UpstreamProtocol(format!(
                    "response body broke off: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing wikigate keeps
        };
        buffer.extend_from_slice(&data);
        if buffer.len() > limit {
            let prefix = buffer.freeze();
            return Ok(Bounded::TooLarge(Body::upstream_after(
                prefix, body, deadline,
            )));
        }
    }
}

/// An answer too large to hold, passed through to the client as it came — when the client
/// accepts its coding; a gzip answer is never inflated for a client that does not take gzip.
fn streamed(
    parts: http::response::Parts,
    body: Body,
    coding: Coding,
    accepts: Accepts,
    limit: usize,
) -> Result<Fetched, GatewayError> {
    if coding == Coding::Gzip && !accepts.gzip() {
        return Ok(Fetched::Undeliverable(GatewayError::UpstreamProtocol(
            format!(
                "a gzip answer larger than cache.max_entry_bytes ({limit}) decoded, for a client \
             that does not accept gzip"
            ),
        )));
    }
    let mut response = Response::from_parts(parts, body);
    cache::add_vary_accept_encoding(response.headers_mut());
    Ok(Fetched::Streamed(response))
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
    /// A read looked up already, which the cache did not answer from memory.
    Looked(Looked),
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

/// What a read's lookup came to.
enum Looked {
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

/// Permission to go upstream for one request, what its answer teaches the limits, and what
/// it cost.
struct Admission {
    /// Where the access line finds the exchange's status and time (while the log is on).
    seen: Option<Arc<UpstreamSeen>>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    route: Route,
    /// The client's method (a read the cache fills is sent as GET whatever it was).
    method: http::Method,
    caller: Caller,
    hold: HoldKey,
    /// The resource a write changes (for Confluence's per-resource write limits).
    write: Option<WriteKey>,
    /// Their `Set-Cookie`s leave every answer as it arrives.
    cookies: Arc<IgnoredCookies>,
}

/// Retries of an idempotent request after a connect error.
const CONNECT_RETRIES: u32 = 2;

impl Admission {
    /// Charges what an answer with `status` cost (its decoded `body`, when it was read) to the
    /// caller's budget and account and to the site's standing.
    async fn charge(&self, status: http::StatusCode, body: Option<&[u8]>) {
        let write = self.method != http::Method::GET && self.method != http::Method::HEAD;
        let points = quota::charge(self.route, write, status, body);
        self.limits.charge(&self.caller, points).await;
        self.caller
            .account
            .spend(self.route, points, Instant::now());
    }

    /// Admits (hold, quota, budgets, upstream allowances, the burst bucket's pace), takes a
    /// place upstream, sends, and records what the answer says of the limits; the answer comes
    /// back without the `Set-Cookie`s of ignored cookies. `idempotent` requests are retried on
    /// connect errors only — the request never reached upstream — with jittered backoff, within
    /// the deadline. Whatever refuses or fails the call gives back what the pass held (the
    /// hold's probe, the bucket's claim) and the place.
    async fn send(
        &self,
        upstream: &Upstream,
        request: Request<Full<Bytes>>,
        deadline: Instant,
        idempotent: bool,
    ) -> Result<Response<Incoming>, GatewayError> {
        let bucket = BucketId::of(self.route, &self.method);
        let pass = self
            .limits
            .admit_upstream(&self.caller, &self.hold, bucket, &self.method, self.write)
            .await?;
        if let Some(bucket) = pass.bucket() {
            self.metrics.burst_waited(bucket, pass.waited());
        }
        let entered = Instant::now();
        let place = upstream.enter().await?;
        self.metrics.queue_waited(entered.elapsed());
        let mut attempt = 0;
        let mut request = Some(request);
        loop {
            // Every try but the last sends a copy; the last sends the request itself.
            let retry_left = idempotent && attempt < CONNECT_RETRIES;
            let mut this_try = match &request {
                Some(template) if retry_left => copy_request(template),
                _ => request.take().expect("the last try returns"),
            };
            telemetry::inject(this_try.headers_mut());
            let sent = Instant::now();
            let result = upstream.send(&place, this_try, deadline).await;
            let upstream_ms = sent.elapsed().as_secs_f64() * 1e3;
            tracing::Span::current().record("wikigate.upstream_duration_ms", upstream_ms);
            let outcome = match &result {
                Ok(response) => Ok(response.status()),
                Err(GatewayError::UpstreamConnect(_)) => Err("connect_error"),
                Err(GatewayError::UpstreamTimeout(_)) => Err("timeout"),
                Err(_) => Err("protocol_error"),
            };
            self.metrics.upstream(self.route, outcome, sent.elapsed());
            if let (Some(seen), Ok(status)) = (&self.seen, outcome) {
                seen.record(status, sent.elapsed());
            }
            match result {
                Ok(mut response) => {
                    self.cookies.strip_response(response.headers_mut());
                    let hints = Hints::read(response.headers());
                    if pass.answered(response.status(), &hints).await {
                        self.metrics.hold_started();
                    }
                    return Ok(response);
                }
                Err(GatewayError::UpstreamConnect(_)) if retry_left => {
                    let pause = Duration::from_millis(25 << attempt).mul_f64(1.0 + limit::jitter());
                    if Instant::now() + pause >= deadline {
                        return Err(GatewayError::UpstreamConnect(
                            "no time left to retry".to_owned(),
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// What the access log and the metrics say about a request besides its status and timing.
#[derive(Default)]
struct LogFields {
    /// The caller; labels are made only where they are written.
    caller: Option<Caller>,
    operation: Option<Operation>,
    /// What the cache did (reads the cache took).
    served: Option<Served>,
    /// The request's own upstream exchange, recorded by its admission (only for requests
    /// that may go upstream, and only while the access log is on).
    upstream: Option<Arc<UpstreamSeen>>,
}

impl Handler for Gateway {
    fn call(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send {
        self.handle(request, conn)
    }
}

/// What the access log, the metrics and the span need of a request once it is answered.
struct Received {
    started: Instant,
    method: http::Method,
    /// Only when the access log is on.
    uri: Option<Option<http::uri::PathAndQuery>>,
    span: tracing::Span,
    log: LogFields,
    /// `X-Request-Id`: returned on the answer, sent upstream, in the access line.
    id: RequestId,
}

impl Gateway {
    /// Answers one request: what the listener calls for each request off the wire, and what
    /// tests and benchmarks call in-process with a body of their own. A request answered
    /// without waiting (a hit, a refusal) is answered when this returns: the future is ready,
    /// and holds nothing of the request; only the others make (and box) one.
    pub fn handle<B: RequestBody>(
        &self,
        request: Request<B>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + '_ {
        let in_flight = self.metrics.in_flight();
        let method = request.method().clone();
        let id = RequestId::of(request.headers());
        let mut received = Received {
            id,
            started: Instant::now(),
            // Only what the access log needs from the request outlives it, and only when on.
            uri: access_log::enabled().then(|| request.uri().path_and_query().cloned()),
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
                return Either::Right(Box::pin(async move {
                    let _in_flight = in_flight;
                    let span = received.span.clone();
                    let answered = self
                        .onward(*onward, &conn, &mut received.log)
                        .instrument(span)
                        .await;
                    self.finish(answered, received, &conn)
                }));
            }
            Ok(Admitted::Answered(response)) => Ok(response),
            Err(error) => Err(error),
        };
        Either::Left(std::future::ready(self.finish(answered, received, &conn)))
    }

    /// The response to a request, counted, logged and recorded on its span.
    fn finish(
        &self,
        answered: Result<Response<Body>, GatewayError>,
        received: Received,
        conn: &ConnInfo,
    ) -> Response<Body> {
        let Received {
            started,
            method,
            uri,
            span,
            log,
            id,
        } = received;
        let mut response = match answered {
            Ok(response) => response,
            Err(error) => self.refusal(error, &log),
        };
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, id.header_value().clone());
        let duration = started.elapsed();
        self.metrics.request(&RequestRecord {
            route: log.operation.map(Operation::route),
            method: method.clone(),
            status: response.status(),
            cache: log.served.map_or(CacheLabel::None, |s| s.outcome.label()),
            saved: log.served.is_some_and(|s| s.saved_points.is_some()),
            duration,
        });
        if let (Some(caller), Some(operation), Some(points)) = (
            &log.caller,
            log.operation,
            log.served.and_then(|s| s.saved_points),
        ) {
            caller.account.save(operation.route(), points, started);
        }
        if !span.is_disabled() {
            record_span(&span, &method, &log, response.status());
        }
        if let Some(uri) = uri {
            let trace_id = telemetry::trace_id(&span);
            access_log::write(&access_log::Entry {
                peer: conn.peer.ip(),
                method: &method,
                path: uri.as_ref().map_or("/", http::uri::PathAndQuery::path),
                request_id: id.as_str(),
                trace_id: trace_id.as_ref(),
                caller: log.caller.as_ref().map(|caller| &caller.id),
                operation: log.operation,
                status: response.status(),
                cache: log.served.map(|s| s.outcome),
                upstream: log.upstream.as_ref().and_then(|seen| seen.seen()),
                bytes: hyper::body::Body::size_hint(response.body()).exact(),
                duration,
            });
        }
        response
    }
}

impl Gateway {
    /// The answer to a request wikigate refused or could not serve, logged and counted.
    fn refusal(&self, error: GatewayError, log: &LogFields) -> Response<Body> {
        match error.source() {
            ErrorSource::Upstream => tracing::warn!(%error, "upstream failure"),
            ErrorSource::Downstream => tracing::debug!(%error, "request refused"),
            ErrorSource::Internal => tracing::error!(%error, "internal fault"),
        }
        let route = log.operation.map(Operation::route);
        self.metrics.error(route, error.source());
        if let Some(refusal) = error.refusal() {
            let caller = log.caller.as_ref().map_or("unknown", Caller::metric_label);
            self.metrics.rate_limited(caller, refusal.limit);
        }
        error.into_response()
    }
}

/// The request's span: only while spans are exported (`telemetry`), else none — the access-log
/// line carries every field it would.
fn request_span(method: &http::Method, headers: &http::HeaderMap) -> tracing::Span {
    if !telemetry::exporting() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        wikigate.operation = tracing::field::Empty,
        wikigate.cache = tracing::field::Empty,
        wikigate.caller = tracing::field::Empty,
        wikigate.upstream_duration_ms = tracing::field::Empty,
    );
    telemetry::extract(&span, headers);
    span
}

/// The span's fields of a finished request.
fn record_span(
    span: &tracing::Span,
    method: &http::Method,
    log: &LogFields,
    status: http::StatusCode,
) {
    if let Some(operation) = log.operation {
        let template = operation.route().template();
        telemetry::rename(span, format!("{method} {template}"));
        span.record("http.route", template);
        span.record("wikigate.operation", operation.id());
    }
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if let Some(served) = log.served {
        span.record("wikigate.cache", served.outcome.to_string());
    }
    if let Some(caller) = &log.caller {
        span.record("wikigate.caller", caller.id.to_string());
    }
}

impl RequestLimits {
    /// The request line and header limits that hyper's own buffer limit does not express in
    /// Confluence's error shape.
    fn check_head<B>(&self, request: &Request<B>) -> Result<(), GatewayError> {
        let uri_len = request
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len());
        if uri_len > self.max_uri_bytes {
            return Err(GatewayError::UriTooLong {
                limit: self.max_uri_bytes,
            });
        }
        if request.headers().len() > self.max_headers {
            return Err(GatewayError::TooManyHeaders {
                limit: self.max_headers,
            });
        }
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        if header_bytes > self.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge {
                limit: self.max_header_bytes,
            });
        }
        Ok(())
    }

    /// Reads the body into memory: refused early when `Content-Length` is over the limit,
    /// and cut off (never buffered past the limit) when a chunked body grows over it.
    async fn read_body<B: RequestBody>(
        &self,
        headers: &http::HeaderMap,
        body: B,
    ) -> Result<Bytes, GatewayError> {
        let too_large = GatewayError::BodyTooLarge {
            limit: self.max_body_bytes,
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return Err(too_large);
        }
        if declared == Some(0) {
            return Ok(Bytes::new());
        }
        let limited = Limited::new(body, self.max_body_bytes);
        match tokio::time::timeout(self.body_read_timeout, limited.collect()).await {
            Err(_) => Err(GatewayError::BodyTimeout(self.body_read_timeout)),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large),
            Ok(Err(e)) => Err(GatewayError::BodyRead(e.to_string())),
        }
    }
}
