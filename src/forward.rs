//! Header hygiene between the client and the upstream, in both directions.
//!
//! Invariants:
//! - Hop-by-hop headers (`Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`,
//!   `Transfer-Encoding`, `Upgrade`, `Proxy-Authorization`, `Proxy-Connection`) never cross
//!   wikigate, in either direction.
//! - The request target and `Authorization` cross untouched; `Host` becomes the upstream's.
//! - `X-Forwarded-Proto` and `X-Forwarded-Host` are wikigate's own, never the client's;
//!   `X-Forwarded-For` and `Via` are appended to. For reads that may be stored,
//!   `X-Forwarded-Host` is canonical (`server.public_url`'s host, or absent), never the client's
//!   `Host`: an upstream that builds links from it cannot be made to store a poisoned answer.
//! - Headers that ask an upstream to reinterpret the request (`Forwarded`, `X-Original-URL`,
//!   `X-Rewrite-URL`, `X-HTTP-Method-Override`, …) never cross: what wikigate routed, cached
//!   and guarded is what upstream executes.
//! - A write carries `X-Atlassian-Token: no-check` and no client-sent value of it. The CSRF
//!   guard (`csrf`) has already admitted the write, which is what makes this safe.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Version, request, response};
use http_body_util::Full;
use tokio::time::Instant;

use crate::body::{Body, Held};
use crate::server::ConnInfo;

/// The header Confluence checks for XSRF.
pub(crate) static X_ATLASSIAN_TOKEN: HeaderName = HeaderName::from_static("x-atlassian-token");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The trimmed, non-empty elements of a comma-separated list header, over all its fields.
pub(crate) fn list_tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a request has, instead of a lookup per hop-by-hop name.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name)) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = list_tokens(headers, &header::CONNECTION)
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &PROXY_CONNECTION,
];

/// Client headers that could make upstream execute something other than what wikigate routed.
static REINTERPRETING: [HeaderName; 10] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-host"),
];

/// Which `X-Forwarded-Host` upstream gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ForwardedHost<'a> {
    /// The `Host` the client addressed (writes and uncached reads).
    Client,
    /// A fixed value, or none (reads whose answers may be stored and shared).
    Canonical(Option<&'a HeaderValue>),
}

/// Builds the upstream request from the client's request head and its (already read) body.
/// The head has been through [`strip_hop_by_hop`] already: the gateway does that first, so the
/// CSRF guard judges the same headers that are forwarded.
pub(crate) fn upstream_request(
    mut parts: request::Parts,
    body: Bytes,
    uri: http::Uri,
    conn: &ConnInfo,
    write: bool,
    forwarded_host: ForwardedHost<'_>,
) -> Request<Full<Bytes>> {
    let headers = &mut parts.headers;
    for name in &REINTERPRETING {
        headers.remove(name);
    }

    let client_host = headers.remove(header::HOST).or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let host = match forwarded_host {
        ForwardedHost::Client => client_host,
        ForwardedHost::Canonical(host) => host.cloned(),
    };
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    } else {
        headers.remove(&X_FORWARDED_HOST);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    append(headers, &X_FORWARDED_FOR, &conn.peer.ip().to_string());
    append(headers, &header::VIA, via(parts.version));

    if write {
        headers.remove(&X_ATLASSIAN_TOKEN);
        headers.insert(
            X_ATLASSIAN_TOKEN.clone(),
            HeaderValue::from_static("no-check"),
        );
    }
    if body.is_empty() {
        headers.remove(header::CONTENT_LENGTH);
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }

    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = parts.headers;
    request
}

/// Turns the upstream response into the client's: hop-by-hop headers removed, `Via` added,
/// the body streamed until `deadline`.
pub(crate) fn downstream_response(response: Response<Held>, deadline: Instant) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    clean_response_head(&mut parts);
    Response::from_parts(parts, Body::upstream(body, deadline))
}

/// The response-direction hygiene: hop-by-hop headers removed, `Via` added.
pub(crate) fn clean_response_head(parts: &mut response::Parts) {
    strip_hop_by_hop(&mut parts.headers);
    append(&mut parts.headers, &header::VIA, via(parts.version));
    parts.version = Version::HTTP_11;
}

/// Conditional request headers are answered by wikigate from its own validators; upstream is
/// always asked for the full answer, so that what comes back can be stored.
pub(crate) fn strip_conditionals(headers: &mut HeaderMap) {
    headers.remove(header::IF_NONE_MATCH);
    headers.remove(header::IF_MODIFIED_SINCE);
}

/// The `Via` entries wikigate adds, by the protocol version of the hop.
pub(crate) const VIA: [&str; 3] = ["1.0 wikigate", "1.1 wikigate", "2 wikigate"];

fn via(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => VIA[0],
        Version::HTTP_2 => VIA[2],
        _ => VIA[1],
    }
}

/// Appends `value` to a comma-separated list header, folding repeated fields into one.
fn append(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    let mut joined = String::new();
    for existing in headers.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
        joined.push_str(existing);
        joined.push_str(", ");
    }
    joined.push_str(value);
    if let Ok(value) = HeaderValue::from_str(&joined) {
        headers.insert(name.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_stripped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic x"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn append_folds_repeated_fields() {
        let mut headers = HeaderMap::new();
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.2"));
        append(&mut headers, &X_FORWARDED_FOR, "127.0.0.1");
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, 10.0.0.2, 127.0.0.1");
    }
}
