//! The request path, as one readable function: admit → route → guard → read → forward.
//!
//! ```text
//! client ─▶ check_head (414, 431)
//!        ─▶ routes::resolve (404, 405, 400)     nothing outside the route table goes upstream
//!        ─▶ forward::strip_hop_by_hop
//!        ─▶ csrf::check_write (403, 401)        writes only
//!        ─▶ read_body (413, 408, 400)           bounded in size and time
//!        ─▶ upstream::send (502, 504)            the upstream's own answers pass through
//!        ─▶ forward::downstream_response         streamed under the request deadline
//! ```
//!
//! Invariant: every request gets exactly one response and one access-log line; errors wikigate
//! makes are answered in Confluence's error shape (`error`).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::body::Body;
use crate::config::Config;
use crate::csrf::CsrfGuard;
use crate::error::{ErrorSource, GatewayError};
use crate::forward;
use crate::routes::{self, Operation};
use crate::server::{ConnInfo, Handler};
use crate::upstream::{Upstream, UpstreamSetupError};

/// The gateway: everything a request needs, built once from the config.
pub struct Gateway {
    upstream: Upstream,
    csrf: CsrfGuard,
    limits: Limits,
}

/// Request-size and time limits from `[server]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_uri_bytes: usize,
    max_header_bytes: usize,
    max_body_bytes: usize,
    body_read_timeout: Duration,
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Gateway, UpstreamSetupError> {
        Ok(Gateway {
            upstream: Upstream::new(&config.upstream)?,
            csrf: CsrfGuard::new(&config.csrf),
            limits: Limits {
                max_uri_bytes: config.server.max_uri_bytes,
                max_header_bytes: config.server.max_header_bytes,
                max_body_bytes: config.server.max_body_bytes,
                body_read_timeout: config.server.body_read_timeout,
            },
        })
    }

    async fn serve(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
        operation: &mut Option<Operation>,
    ) -> Result<Response<Body>, GatewayError> {
        self.limits.check_head(&request)?;
        let op = routes::resolve(request.method(), request.uri().path())?.operation;
        *operation = Some(op);
        let write = op.verb().is_write();

        let (mut parts, body) = request.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        if write {
            self.csrf.check_write(&parts.headers)?;
        }
        let body = self.limits.read_body(&parts.headers, body).await?;

        let deadline = self.upstream.deadline();
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .ok_or(GatewayError::Route(routes::RouteError::NotFound))?;
        let uri = self.upstream.target(&path_and_query)?;
        let upstream_request = forward::upstream_request(parts, body, uri, conn, write);
        let response = self.upstream.send(upstream_request, deadline).await?;
        Ok(forward::downstream_response(response, deadline))
    }
}

impl Handler for Gateway {
    async fn call(&self, request: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut operation = None;
        let response = match self.serve(request, &conn, &mut operation).await {
            Ok(response) => response,
            Err(error) => {
                match error.source() {
                    ErrorSource::Upstream => tracing::warn!(%error, "upstream failure"),
                    ErrorSource::Downstream => tracing::debug!(%error, "request refused"),
                }
                error.into_response()
            }
        };
        tracing::info!(
            target: "wikigate::access",
            peer = %conn.peer.ip(),
            %method,
            path,
            operation = operation.map_or("-", Operation::id),
            status = response.status().as_u16(),
            duration_us = started.elapsed().as_micros() as u64,
        );
        response
    }
}

impl Limits {
    /// The request line and header limits that hyper's own buffer limit does not express in
    /// Confluence's error shape.
    fn check_head(&self, request: &Request<Incoming>) -> Result<(), GatewayError> {
        let uri_len = request
            .uri()
            .path_and_query()
            .map_or(0, |p| p.as_str().len());
        if uri_len > self.max_uri_bytes {
            return Err(GatewayError::UriTooLong {
                limit: self.max_uri_bytes,
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
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        body: Incoming,
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
