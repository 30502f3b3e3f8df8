//! What Atlassian's edge adds to every answer of the site (`Server: AtlassianEdge`), as a
//! captured answer of Confluence Cloud's user API shows it: gzip whenever the request allows
//! it (with `Vary: Accept-Encoding`), a fresh `atlassian.xsrf.token` cookie, per-request trace
//! and request ids, `Server-Timing`, `Cache-Control: no-cache, no-store, no-transform`, and the
//! security headers. The fake answers this way unless it is started with [`Shape::Plain`].

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue, Response, header};
use http_body_util::BodyExt as _;

use crate::body::Body;
use crate::coding::{self, Accepts};

/// How the fake site's answers are dressed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Shape {
    /// As Atlassian's edge answers (the default).
    #[default]
    Edge,
    /// Plain JSON with only the headers the OpenAPI document names (and `X-AAccountId`).
    Plain,
}

/// How a bulk lookup's objects compare with the single answers of the same accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BulkObjects {
    /// The spec's `BulkUserLookup`: a single answer is the bulk object with the envelope's
    /// `_links.base` and `_links.context` added (the default).
    #[default]
    Agree,
    /// Single answers also carry the deprecated `externalCollaborator` and an `isGuest` that
    /// bulk objects do not: the two cannot stand in for each other.
    Differ,
}

/// Numbers the per-request ids; with the process's start time it makes them unique.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// `n` hex digits that differ on every call.
fn fresh_hex(n: usize) -> String {
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut hasher = blake3::Hasher::new();
    hasher.update(&sequence.to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    hasher.update(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    hasher.finalize().to_hex()[..n].to_owned()
}

fn uuid_like() -> String {
    let hex = fresh_hex(32);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Dresses an answer as the edge does, gzip-encoding its body when `request` allows gzip.
pub(super) async fn dress(response: Response<Body>, request: &HeaderMap) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let headers = &mut parts.headers;
    let set = |headers: &mut HeaderMap, name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    headers.insert(header::SERVER, HeaderValue::from_static("AtlassianEdge"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, no-transform"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    headers.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=63072000; includeSubDomains; preload"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("timing-allow-origin", HeaderValue::from_static("*"));
    set(headers, "atl-traceid", fresh_hex(32));
    set(headers, "atl-request-id", uuid_like());
    set(headers, "x-arequestid", fresh_hex(24));
    headers.insert(
        "server-timing",
        HeaderValue::from_static(
            "atl-edge;dur=37,atl-edge-internal;dur=4,atl-edge-upstream;dur=33,atl-edge-pop;desc=\"aws-eu-central-1\"",
        ),
    );
    set(
        headers,
        "set-cookie",
        format!(
            "atlassian.xsrf.token={}_{}_lin; Path=/; SameSite=None; Secure",
            uuid_like(),
            fresh_hex(40)
        ),
    );
    let body = if !body.is_empty() && Accepts::of(request).gzip() {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        coding::gzip(&body)
    } else {
        body
    };
    if headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Response::from_parts(parts, Body::full(body))
}
