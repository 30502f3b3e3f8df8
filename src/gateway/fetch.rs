//! Reading upstream's answers for the cache: whole and decoded when they fit
//! `max_entry_bytes`, streamed through when they do not.
//!
//! Invariants: never more than the limit is held in memory; a gzip answer is never inflated
//! for a client that does not take gzip (asked again without gzip, or refused); a corrupt gzip
//! answer is an error, never a shorter body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;

use super::admission::{Admission, copy_request};
use crate::body::{Body, Held};
use crate::cache::{self, Buffered, Call, Fetched};
use crate::coding::{self, Accepts, Coding};
use crate::error::GatewayError;
use crate::forward;
use crate::routes::Route;
use crate::upstream::Upstream;

/// A cached read's way upstream, the cache's [`cache::Origin`]: the prepared GET, copied,
/// admitted and sent for each fetch the cache asks for.
pub(super) struct ReadOrigin {
    pub(super) request: Request<Full<Bytes>>,
    pub(super) upstream: Upstream,
    pub(super) admission: Admission,
    /// `cache.max_entry_bytes`: the largest answer read whole.
    pub(super) limit: usize,
    /// What the requesting client accepts.
    pub(super) accepts: Accepts,
    /// How long a merged call waits for more lookups to share it (zero: not at all).
    pub(super) merge_window: Duration,
    /// `cache.refresh.burst_share`: a refresh takes a burst token only above it.
    pub(super) refresh_burst_share: f64,
}

impl cache::Origin for ReadOrigin {
    /// The answer read whole and decoded when it is at most `limit` bytes (encoded and
    /// decoded), streamed through otherwise without ever holding more than `limit` bytes of it.
    /// An answer too large to hold reaches the client only in a coding it accepts: for a client
    /// that does not take gzip, a gzip answer too large to decode is asked for once more,
    /// without gzip, and streamed as it comes.
    fn fetch(&self, query: Option<String>) -> BoxFuture<'_, Result<Fetched, GatewayError>> {
        Box::pin(async move {
            let mut request = copy_request(&self.request);
            if let Some(query) = query {
                *request.uri_mut() = with_query(self.request.uri(), &query)?;
            }
            let identity = (!self.accepts.gzip()).then(|| {
                let mut again = copy_request(&request);
                again.headers_mut().insert(
                    header::ACCEPT_ENCODING,
                    http::HeaderValue::from_static("identity"),
                );
                again
            });
            match (self.trip(request).await?, identity) {
                (Fetched::Undeliverable(_), Some(again)) => self.trip(again).await,
                (fetched, _) => Ok(fetched),
            }
        })
    }

    fn fetch_for<'a>(
        &'a self,
        route: Route,
        call: Call,
        query: Box<dyn FnOnce() -> String + Send + 'a>,
    ) -> BoxFuture<'a, Result<Option<Fetched>, GatewayError>> {
        Box::pin(async move {
            if call == Call::Merged && !self.merge_window.is_zero() {
                tokio::time::sleep(self.merge_window).await;
            }
            let admission = self.admission.for_route(route);
            let template = &self.request;
            // The same upstream base, the other route's path.
            let path = template.uri().path();
            let base = path
                .strip_suffix(self.admission.route.template())
                .ok_or_else(|| {
                    GatewayError::Internal(format!("{path} is not the path of its route"))
                })?;
            let target = format!("{base}{}", route.template());
            let make = || {
                let mut request = copy_request(template);
                *request.uri_mut() = with_target(template.uri(), &target, &query())?;
                Ok(request)
            };
            let deadline = self.upstream.deadline();
            let sent = match call {
                Call::Refresh => {
                    let share = self.refresh_burst_share;
                    admission
                        .send_background(&self.upstream, make, deadline, share)
                        .await?
                }
                Call::Merged | Call::Compare => Some(
                    admission
                        .send_made(&self.upstream, make, deadline, true)
                        .await?,
                ),
            };
            let Some(response) = sent else {
                return Ok(None);
            };
            let status = response.status();
            match read_answer(response, deadline, self.limit, self.accepts).await {
                Ok(Fetched::Buffered(answer)) => {
                    let points = admission.price(status, Some(answer.body()));
                    Ok(Some(Fetched::Buffered(answer.priced(points))))
                }
                other => {
                    admission.charge(admission.price(status, None)).await;
                    other.map(Some)
                }
            }
        })
    }

    fn charge(&self, points: u32) -> BoxFuture<'_, ()> {
        Box::pin(self.admission.charge(points))
    }

    fn refresh(&self) -> BoxFuture<'_, Result<Option<Fetched>, GatewayError>> {
        Box::pin(async move {
            let (upstream, admission) = (&self.upstream, &self.admission);
            let deadline = upstream.deadline();
            let request = copy_request(&self.request);
            let sent = admission
                .send_background(upstream, || Ok(request), deadline, self.refresh_burst_share)
                .await?;
            match sent {
                Some(response) => self.read_charged(response, deadline).await.map(Some),
                None => Ok(None),
            }
        })
    }
}

impl ReadOrigin {
    /// One trip upstream: admitted, sent, the answer read and priced (see
    /// [`ReadOrigin::read_charged`]).
    async fn trip(&self, request: Request<Full<Bytes>>) -> Result<Fetched, GatewayError> {
        let deadline = self.upstream.deadline();
        let response = self
            .admission
            .send(&self.upstream, request, deadline, true)
            .await?;
        self.read_charged(response, deadline).await
    }

    /// An answer read and priced — once, here: the same figure is charged and, if it is
    /// stored, saved by every answer made from it.
    async fn read_charged(
        &self,
        response: Response<Held>,
        deadline: Instant,
    ) -> Result<Fetched, GatewayError> {
        let admission = &self.admission;
        let status = response.status();
        let read = read_answer(response, deadline, self.limit, self.accepts).await;
        let (fetched, points) = match read {
            Ok(Fetched::Buffered(answer)) => {
                let points = admission.price(status, Some(answer.body()));
                (Ok(Fetched::Buffered(answer.priced(points))), points)
            }
            other => (other, admission.price(status, None)),
        };
        admission.charge(points).await;
        fetched
    }
}

/// Upstream's answer to a trip: read whole and decoded, or streamed through (see
/// [`ReadOrigin`]'s `fetch`).
async fn read_answer(
    response: Response<Held>,
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
    mut body: Held,
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

/// `uri` with its query replaced.
fn with_query(uri: &http::Uri, query: &str) -> Result<http::Uri, GatewayError> {
    with_target(uri, uri.path(), query)
}

/// `uri` with its path and query replaced.
fn with_target(uri: &http::Uri, path: &str, query: &str) -> Result<http::Uri, GatewayError> {
    let mut parts = uri.clone().into_parts();
    let path_and_query = format!("{path}?{query}");
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| GatewayError::UpstreamProtocol(format!("bad upstream target: {e}")))?,
    );
    http::Uri::from_parts(parts)
        .map_err(|e| GatewayError::UpstreamProtocol(format!("bad upstream target: {e}")))
}
