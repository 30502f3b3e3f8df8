//! Upstream's `Vary`: which request headers split a stored answer. `Accept-Encoding` never
//! does (an entry holds every representation its clients asked for); `*` makes an answer
//! unstorable; the others are kept as a fingerprint of the request that fetched it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::forward::list_tokens;

#[derive(Debug, Clone)]
pub(super) struct Vary {
    pub(super) names: Vec<HeaderName>,
    pub(super) fingerprint: [u8; 32],
}

/// Adds `Accept-Encoding` to a response's `Vary` unless it names it already.
pub(crate) fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let names_it = list_tokens(headers, &header::VARY)
        .any(|n| n.eq_ignore_ascii_case("accept-encoding") || n == "*");
    if !names_it {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// An entry's `Vary`: `Accept-Encoding` (wikigate chooses the representation by it), then the
/// other names upstream's `Vary` listed.
pub(super) fn vary_value(vary: Option<&Vary>) -> HeaderValue {
    let Some(vary) = vary else {
        return ACCEPT_ENCODING_ONLY.clone();
    };
    let mut value = String::from("Accept-Encoding");
    for name in &vary.names {
        value.push_str(", ");
        value.push_str(name.as_str());
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| ACCEPT_ENCODING_ONLY.clone())
}

pub(super) static ACCEPT_ENCODING_ONLY: HeaderValue = HeaderValue::from_static("Accept-Encoding");

/// The header names upstream's `Vary` lists besides `Accept-Encoding`, `None` without any.
/// `*` is handled by the caller (never stored).
pub(super) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = list_tokens(headers, &header::VARY)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .filter(|n| n != header::ACCEPT_ENCODING)
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Whether upstream's answer says `Vary: *` (never stored).
pub(crate) fn varies_on_everything(headers: &HeaderMap) -> bool {
    list_tokens(headers, &header::VARY).any(|n| n == "*")
}

pub(super) fn fingerprint(names: &[HeaderName], request_headers: &HeaderMap) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for name in names {
        hasher.update(name.as_str().as_bytes());
        for value in request_headers.get_all(name) {
            hasher.update(b"=");
            hasher.update(value.as_bytes());
        }
        hasher.update(b"\n");
    }
    *hasher.finalize().as_bytes()
}
