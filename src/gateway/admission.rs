//! Admission: permission for one call to go upstream, the call itself, and what its answer
//! teaches the limits and costs the caller.
//!
//! Invariants: every trip upstream is admitted by every limit (`Limits::admit_upstream`) and
//! holds a place upstream (`Upstream::enter`) before it is sent; whatever refuses or fails it
//! gives back what its pass held; only idempotent requests are retried, on connect errors only.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;

use crate::access_log::UpstreamSeen;
use crate::body::Held;
use crate::burst::BucketId;
use crate::caller::Caller;
use crate::cookies::IgnoredCookies;
use crate::error::GatewayError;
use crate::hints::Hints;
use crate::limit::{self, HoldKey, Limits, WriteKey};
use crate::metrics::Metrics;
use crate::quota;
use crate::routes::Route;
use crate::telemetry;
use crate::upstream::Upstream;

/// A copy of a prepared upstream request, for a fetch that may run more than once.
pub(super) fn copy_request(template: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut request = Request::new(template.body().clone());
    *request.method_mut() = template.method().clone();
    *request.uri_mut() = template.uri().clone();
    *request.version_mut() = template.version();
    *request.headers_mut() = template.headers().clone();
    request
}

/// Permission to go upstream for one request, what its answer teaches the limits, and what
/// it cost.
pub(super) struct Admission {
    /// Where the access line finds the exchange's status and time (while the log is on).
    pub(super) seen: Option<Arc<UpstreamSeen>>,
    pub(super) limits: Arc<Limits>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) route: Route,
    /// The client's method (a read the cache fills is sent as GET whatever it was).
    pub(super) method: http::Method,
    pub(super) caller: Caller,
    pub(super) hold: HoldKey,
    /// The resource a write changes (for Confluence's per-resource write limits).
    pub(super) write: Option<WriteKey>,
    /// Their `Set-Cookie`s leave every answer as it arrives.
    pub(super) cookies: Arc<IgnoredCookies>,
}

impl Admission {
    /// The same caller's permission for a call to `route` instead (another route of a read's
    /// family: a merged lookup's bulk call), with its own burst bucket and price.
    pub(super) fn for_route(&self, route: Route) -> Admission {
        Admission {
            seen: self.seen.clone(),
            limits: self.limits.clone(),
            metrics: self.metrics.clone(),
            route,
            method: self.method.clone(),
            caller: self.caller.clone(),
            hold: self.hold,
            write: self.write,
            cookies: self.cookies.clone(),
        }
    }
}

/// Retries of an idempotent request after a connect error.
const CONNECT_RETRIES: u32 = 2;

impl Admission {
    /// What an answer with `status` cost by Atlassian's table (its decoded `body`, when it was
    /// read; else what a call of its kind costs at the least).
    pub(super) fn price(&self, status: http::StatusCode, body: Option<&[u8]>) -> u32 {
        let write = self.method != http::Method::GET && self.method != http::Method::HEAD;
        quota::charge(self.route, write, status, body)
    }

    /// Charges `points` (see [`Admission::price`]) to the caller's budget and account and to
    /// the site's standing.
    pub(super) async fn charge(&self, points: u32) {
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
    /// hold's probe, the bucket's claim) and the place; an answer keeps the place until its
    /// body has been read or dropped.
    pub(super) async fn send(
        &self,
        upstream: &Upstream,
        request: Request<Full<Bytes>>,
        deadline: Instant,
        idempotent: bool,
    ) -> Result<Response<Held>, GatewayError> {
        self.send_made(upstream, || Ok(request), deadline, idempotent)
            .await
    }

    /// [`Admission::send`], the request made only once the call has been admitted and holds
    /// its place upstream (a merged lookup's batch closes then).
    pub(super) async fn send_made(
        &self,
        upstream: &Upstream,
        make: impl FnOnce() -> Result<Request<Full<Bytes>>, GatewayError>,
        deadline: Instant,
        idempotent: bool,
    ) -> Result<Response<Held>, GatewayError> {
        self.exchange(upstream, make, deadline, idempotent, None)
            .await?
            .ok_or_else(|| {
                GatewayError::Internal("a call a client waits for was put off".to_owned())
            })
    }

    /// A call nobody waits for (a refresh ahead of expiry), of the lowest priority: made only
    /// if it need not wait — its burst bucket holding at least `burst_share` of its size (so it
    /// never takes the tokens clients are about to need), every limit passed at once, a place
    /// upstream free now. `None` when it was not made.
    pub(super) async fn send_background(
        &self,
        upstream: &Upstream,
        make: impl FnOnce() -> Result<Request<Full<Bytes>>, GatewayError>,
        deadline: Instant,
        burst_share: f64,
    ) -> Result<Option<Response<Held>>, GatewayError> {
        self.exchange(upstream, make, deadline, true, Some(burst_share))
            .await
    }

    /// [`Admission::send_made`], or, with `background`'s burst share,
    /// [`Admission::send_background`].
    async fn exchange(
        &self,
        upstream: &Upstream,
        make: impl FnOnce() -> Result<Request<Full<Bytes>>, GatewayError>,
        deadline: Instant,
        idempotent: bool,
        background: Option<f64>,
    ) -> Result<Option<Response<Held>>, GatewayError> {
        let bucket = BucketId::of(self.route, &self.method);
        if let Some(share) = background
            && !self.limits.spare_burst(bucket, share)
        {
            return Ok(None);
        }
        let admitted = self
            .limits
            .admit_upstream(&self.caller, &self.hold, bucket, &self.method, self.write)
            .await;
        let pass = match admitted {
            Ok(pass) => pass,
            Err(error) if background.is_some() && error.refusal().is_some() => return Ok(None),
            Err(error) => return Err(error),
        };
        if let Some(bucket) = pass.bucket() {
            self.metrics.burst_waited(bucket, pass.waited());
        }
        let place = match background {
            None => {
                let entered = Instant::now();
                let place = upstream.enter().await?;
                self.metrics.queue_waited(entered.elapsed());
                place
            }
            Some(_) => match upstream.try_enter() {
                Some(place) => place,
                None => return Ok(None),
            },
        };
        let request = make()?;
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
                    if !hints.policies.is_empty() {
                        self.caller.account.stated_points();
                    }
                    if pass.answered(response.status(), &hints).await {
                        self.metrics.hold_started();
                    }
                    return Ok(Some(response.map(|body| Held::new(body, place))));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_the_request_whole() {
        let mut template = Request::post("https://site.example/wiki/rest/api/user/watch/space/A")
            .header("authorization", "Basic eA==")
            .header("x-atlassian-token", "no-check")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        *template.version_mut() = http::Version::HTTP_11;
        let copy = copy_request(&template);
        assert_eq!(copy.method(), template.method());
        assert_eq!(copy.uri(), template.uri());
        assert_eq!(copy.version(), template.version());
        assert_eq!(copy.headers(), template.headers());
        let body =
            |request: &Request<Full<Bytes>>| hyper::body::Body::size_hint(request.body()).exact();
        assert_eq!(body(&copy), Some(2));
        assert_eq!(body(&copy), body(&template));
    }
}
