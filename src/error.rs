//! Errors that wikigate answers itself, and the one place they become HTTP responses.
//!
//! Invariant: every response wikigate makes on its own (as opposed to passing upstream's
//! through) has Confluence's error shape, `{"statusCode":N,"message":…,"reason":…,"data":{…}}`,
//! so clients parse wikigate's refusals exactly as they parse Confluence's.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::body::Body;
use crate::routes::RouteError;

/// Which of wikigate's limits refused a request.
pub(crate) static X_WIKIGATE_LIMIT: HeaderName = HeaderName::from_static("x-wikigate-limit");

/// A refusal by one of wikigate's limits, described by the limit that made it (`limit`), so
/// that rendering it needs nothing of the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit's name: `X-Wikigate-Limit` and the metric label (`requests`, `upstream`, …).
    pub limit: &'static str,
    /// The limit in words, for the message.
    pub description: &'static str,
    pub retry_after: Duration,
    /// What the limit says of its state (`RateLimit-Policy`, `RateLimit`), when it has one.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Where an error came from, so logs and metrics can tell client faults from upstream faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client sent something wikigate refuses.
    Downstream,
    /// The upstream site failed or was unreachable.
    Upstream,
    /// wikigate itself failed (a task of its own panicked).
    Internal,
}

impl ErrorSource {
    /// The label of the `source` in metrics.
    pub(crate) const ALL: [ErrorSource; 3] = [
        ErrorSource::Downstream,
        ErrorSource::Upstream,
        ErrorSource::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Downstream => "downstream",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Internal => "internal",
        }
    }
}

/// A request wikigate answers itself with an error. `Clone`, so that one failed upstream
/// fetch can answer every request that was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("the request URI is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    #[error("the request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body was not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("the upstream site could not be reached: {0}")]
    UpstreamConnect(String),
    #[error("the upstream site sent an invalid response: {0}")]
    UpstreamProtocol(String),
    #[error("the upstream site timed out: {0}")]
    UpstreamTimeout(String),
    /// A fault of wikigate's own; the detail goes to the log, never to the client.
    #[error("wikigate failed internally: {0}")]
    Internal(String),
    #[error("rate limited by {}; retry after {} s", .0.description, retry_after_secs(.0.retry_after))]
    RateLimited(Refusal),
    /// Refused to protect the upstream from more at once than it is given (503).
    #[error("refused by {}; retry after {} s", .0.description, retry_after_secs(.0.retry_after))]
    Overloaded(Refusal),
}

/// A task of wikigate's own that ended without an answer (it panicked, or was cancelled) is an
/// internal fault, never blamed on upstream.
impl From<tokio::task::JoinError> for GatewayError {
    fn from(error: tokio::task::JoinError) -> Self {
        GatewayError::Internal(error.to_string())
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Route(RouteError::NotFound) => StatusCode::NOT_FOUND,
            GatewayError::Route(RouteError::MethodNotAllowed { .. }) => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            GatewayError::Route(RouteError::InvalidParam { .. }) => StatusCode::BAD_REQUEST,
            GatewayError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            GatewayError::HeadersTooLarge { .. } | GatewayError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyRead(_) => StatusCode::BAD_REQUEST,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::UpstreamConnect(_) | GatewayError::UpstreamProtocol(_) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The limit's refusal, when one of wikigate's limits refused (429 or 503): nothing went
    /// upstream.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            GatewayError::RateLimited(refusal) | GatewayError::Overloaded(refusal) => Some(refusal),
            _ => None,
        }
    }

    pub fn source(&self) -> ErrorSource {
        match self {
            GatewayError::UpstreamConnect(_)
            | GatewayError::UpstreamProtocol(_)
            | GatewayError::UpstreamTimeout(_) => ErrorSource::Upstream,
            GatewayError::Internal(_) => ErrorSource::Internal,
            _ => ErrorSource::Downstream,
        }
    }

    /// Whether the connection should be closed after answering (the request's framing can no
    /// longer be trusted, e.g. a body that was not read to its end).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BodyTooLarge { .. }
                | GatewayError::BodyTimeout(_)
                | GatewayError::BodyRead(_)
        )
    }

    /// The response: Confluence's error JSON with the right status and headers.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let message = match &self {
            GatewayError::Internal(_) => "wikigate failed internally; its log says why".to_owned(),
            _ => self.to_string(),
        };
        let mut response = error_response(status, &message);
        let headers = response.headers_mut();
        if let GatewayError::Route(RouteError::MethodNotAllowed { allow }) = self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let GatewayError::Unauthorized(_) = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"wikigate\""),
            );
        }
        if let Some(refusal) = self.refusal() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(refusal.retry_after)),
            );
            headers.insert(
                X_WIKIGATE_LIMIT.clone(),
                HeaderValue::from_static(refusal.limit),
            );
            for (name, value) in &refusal.headers {
                headers.insert(name.clone(), value.clone());
            }
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Confluence's error body for a status and message.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Bytes {
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "message": message,
        "reason": status.canonical_reason().unwrap_or(""),
        "data": {
            "authorized": !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
            "valid": !status.is_client_error(),
            "errors": [],
            "successful": false,
        },
    });
    Bytes::from(body.to_string())
}

/// A full response carrying Confluence's error body.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body::full(error_body(status, message)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_task_is_an_internal_500_in_confluences_shape() {
        let failed = tokio::spawn(async { panic!("a bug") }).await.unwrap_err();
        let error = GatewayError::from(failed);
        assert_eq!(error.source(), ErrorSource::Internal);
        assert!(error.to_string().contains("panicked"), "{error}");
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        use http_body_util::BodyExt as _;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["statusCode"], 500);
        assert!(
            !json["message"].as_str().unwrap().contains("a bug"),
            "{json}"
        );
    }
}
