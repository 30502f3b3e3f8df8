//! Request bounds from `[server]`: the request line and headers (414, 431 in Confluence's
//! shape, below hyper's own buffer limit) and the body (413 early from `Content-Length`, cut off
//! past the limit when chunked, 408 past `body_read_timeout`).
//!
//! Invariant: a body is never buffered past `max_body_bytes`.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};

use crate::error::GatewayError;
use crate::server::RequestBody;

/// Request-size and time limits from `[server]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RequestLimits {
    pub(super) max_uri_bytes: usize,
    pub(super) max_header_bytes: usize,
    pub(super) max_headers: usize,
    pub(super) max_body_bytes: usize,
    pub(super) body_read_timeout: Duration,
}

impl RequestLimits {
    /// The request line and header limits that hyper's own buffer limit does not express in
    /// Confluence's error shape.
    pub(super) fn check_head<B>(&self, request: &Request<B>) -> Result<(), GatewayError> {
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
    pub(super) async fn read_body<B: RequestBody>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    const LIMITS: RequestLimits = RequestLimits {
        max_uri_bytes: 32,
        max_header_bytes: 64,
        max_headers: 3,
        max_body_bytes: 10,
        body_read_timeout: Duration::from_secs(1),
    };

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut request = Request::builder().uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn a_head_over_a_limit_is_refused_naming_it() {
        assert!(LIMITS.check_head(&request("/a", &[("a", "1")])).is_ok());
        let long = format!("/{}", "x".repeat(32));
        assert!(matches!(
            LIMITS.check_head(&request(&long, &[])),
            Err(GatewayError::UriTooLong { limit: 32 })
        ));
        let many = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")];
        assert!(matches!(
            LIMITS.check_head(&request("/a", &many)),
            Err(GatewayError::TooManyHeaders { limit: 3 })
        ));
        let large = "v".repeat(64);
        assert!(matches!(
            LIMITS.check_head(&request("/a", &[("a", &large)])),
            Err(GatewayError::HeadersTooLarge { limit: 64 })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_is_read_within_its_bounds_or_refused() {
        let headers = |length: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::CONTENT_LENGTH, length.parse().unwrap());
            headers
        };
        let body = LIMITS
            .read_body(
                &http::HeaderMap::new(),
                Full::new(Bytes::from_static(b"0123456789")),
            )
            .await
            .unwrap();
        assert_eq!(body.len(), 10);
        // Declared too large: refused before anything is read.
        let declared = LIMITS
            .read_body(&headers("11"), Full::new(Bytes::new()))
            .await;
        assert!(matches!(
            declared,
            Err(GatewayError::BodyTooLarge { limit: 10 })
        ));
        // Chunked, growing past the limit: cut off.
        let chunks = futures_util::stream::iter((0..4).map(|_| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from_static(b"abcd")))
        }));
        let grown = LIMITS
            .read_body(&http::HeaderMap::new(), StreamBody::new(chunks))
            .await;
        assert!(matches!(
            grown,
            Err(GatewayError::BodyTooLarge { limit: 10 })
        ));
        // A body that never ends: 408 after body_read_timeout.
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<hyper::body::Frame<Bytes>, std::io::Error>,
        >());
        let timed_out = LIMITS.read_body(&http::HeaderMap::new(), stalled).await;
        assert!(matches!(timed_out, Err(GatewayError::BodyTimeout(_))));
    }
}
