//! The per-request record: what the access line, the metrics and the span say of a request
//! once it is answered (`finish`), and what is gathered for them on the way (`LogFields`,
//! `Received`).
//!
//! Invariant: every request is finished exactly once — counted, logged (one access line while
//! the access log is on, if `log.access` names it) and recorded on its span — whichever path
//! answered it, and its answer carries its `X-Request-Id`.

use std::sync::Arc;

use http::Response;
use tokio::time::Instant;

use crate::access_log::{self, UpstreamSeen};
use crate::body::Body;
use crate::cache::Served;
use crate::caller::Caller;
use crate::error::{ErrorSource, GatewayError};
use crate::metrics::{CacheLabel, Metrics, RequestRecord};
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::routes::Operation;
use crate::server::ConnInfo;
use crate::telemetry;

/// What the access log and the metrics say about a request besides its status and timing.
#[derive(Default)]
pub(super) struct LogFields {
    /// The caller; labels are made only where they are written.
    pub(super) caller: Option<Caller>,
    pub(super) operation: Option<Operation>,
    /// What the cache did (reads the cache took).
    pub(super) served: Option<Served>,
    /// The request's own upstream exchange, recorded by its admission (only for requests
    /// that may go upstream, and only while the access log is on).
    pub(super) upstream: Option<Arc<UpstreamSeen>>,
}

/// What the access log, the metrics and the span need of a request once it is answered.
pub(super) struct Received {
    pub(super) started: Instant,
    pub(super) method: http::Method,
    /// Only when the access log is on.
    pub(super) uri: Option<Option<http::uri::PathAndQuery>>,
    /// The client's `User-Agent`, only when the access log is on.
    pub(super) user_agent: Option<http::HeaderValue>,
    pub(super) span: tracing::Span,
    pub(super) log: LogFields,
    /// `X-Request-Id`: returned on the answer, sent upstream, in the access line.
    pub(super) id: RequestId,
}

/// The response to a request, counted, logged and recorded on its span.
pub(super) fn finish(
    metrics: &Metrics,
    answered: Result<Response<Body>, GatewayError>,
    received: Received,
    conn: &ConnInfo,
) -> Response<Body> {
    let Received {
        started,
        method,
        uri,
        user_agent,
        span,
        log,
        id,
    } = received;
    let mut response = match answered {
        Ok(response) => response,
        Err(error) => refusal(metrics, error, &log, &id),
    };
    let duration = started.elapsed();
    metrics.request(&RequestRecord {
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
            user_agent: user_agent.as_ref().map(http::HeaderValue::as_bytes),
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
    // Last, so that the id moves into the answer instead of being copied.
    response
        .headers_mut()
        .insert(&X_REQUEST_ID, id.into_header_value());
    response
}

/// The answer to a request wikigate refused or could not serve, logged and counted.
/// Its log line carries the request id, as the access line and the answer do.
fn refusal(
    metrics: &Metrics,
    error: GatewayError,
    log: &LogFields,
    id: &RequestId,
) -> Response<Body> {
    let request_id = id.as_str();
    match error.source() {
        ErrorSource::Upstream => tracing::warn!(%error, request_id, "upstream failure"),
        ErrorSource::Downstream => tracing::debug!(%error, request_id, "request refused"),
        ErrorSource::Internal => tracing::error!(%error, request_id, "internal fault"),
    }
    let route = log.operation.map(Operation::route);
    metrics.error(route, error.source());
    if let Some(refusal) = error.refusal() {
        let caller = log.caller.as_ref().map_or("unknown", Caller::metric_label);
        metrics.rate_limited(caller, refusal.limit);
    }
    error.into_response()
}

/// The request's span: only while spans are exported (`telemetry`), else none — the access-log
/// line carries every field it would.
pub(super) fn request_span(method: &http::Method, headers: &http::HeaderMap) -> tracing::Span {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn received(id: RequestId) -> Received {
        Received {
            started: Instant::now(),
            method: http::Method::GET,
            uri: None,
            user_agent: None,
            span: tracing::Span::none(),
            log: LogFields::default(),
            id,
        }
    }

    #[test]
    fn every_answer_carries_its_request_id_and_refusals_are_counted_by_source() {
        let metrics = Metrics::default();
        let conn = ConnInfo {
            peer: "127.0.0.1:9".parse().unwrap(),
            tls: false,
        };
        let id = RequestId::of(&http::HeaderMap::new());
        let answered = finish(
            &metrics,
            Ok(Response::new(Body::empty())),
            received(id.clone()),
            &conn,
        );
        assert_eq!(answered.headers()[&X_REQUEST_ID], id.header_value());
        let internal = GatewayError::Internal("a bug".to_owned());
        for _ in 0..crate::metrics::NOT_READY_AFTER {
            let refused = finish(&metrics, Err(internal.clone()), received(id.clone()), &conn);
            assert_eq!(refused.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
            assert!(refused.headers().contains_key(&X_REQUEST_ID));
        }
        assert!(
            metrics.failing_inside().is_some(),
            "counted as internal faults"
        );
    }
}
