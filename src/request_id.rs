//! Request ids (`X-Request-Id`): one per request, to correlate the access line, the answer
//! and the upstream exchange.
//!
//! A client's own `X-Request-Id` is kept when it is usable (1 to 64 bytes of letters, digits
//! and `-_.:/+=`); otherwise wikigate makes one: this process's random prefix and a counter,
//! 24 hex digits, made without a system call or an allocation. The id is returned on the
//! answer, sent upstream with the request, and written in the access line.
//!
//! Invariant: an id is always a valid header value and needs no escaping in a log line.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest id taken from a client.
const MAX_LEN: usize = 64;

/// One request's id.
#[derive(Debug, Clone)]
pub(crate) struct RequestId {
    value: HeaderValue,
    /// Made by wikigate (the client sent none it could use).
    made: bool,
}

impl RequestId {
    /// The client's usable `X-Request-Id`, else a new one.
    pub(crate) fn of(headers: &HeaderMap) -> RequestId {
        match headers.get(&X_REQUEST_ID).filter(|v| usable(v.as_bytes())) {
            Some(value) => RequestId {
                value: value.clone(),
                made: false,
            },
            None => RequestId::new(),
        }
    }

    fn new() -> RequestId {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let prefix = *PREFIX.get_or_init(|| {
            use ring::rand::SecureRandom as _;
            let mut bytes = [0u8; 4];
            let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
            u32::from_le_bytes(bytes)
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 24];
        hex(&mut text[..8], u64::from(prefix));
        hex(&mut text[8..], n);
        RequestId {
            value: HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-")),
            made: true,
        }
    }

    /// Whether wikigate made the id (so the request does not carry it yet).
    pub(crate) fn made(&self) -> bool {
        self.made
    }

    pub(crate) fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    pub(crate) fn into_header_value(self) -> HeaderValue {
        self.value
    }

    /// The id as text (always ASCII without quotes or backslashes).
    pub(crate) fn as_str(&self) -> &str {
        self.value.to_str().unwrap_or("-")
    }
}

/// Whether a client's id is kept: short, and of characters that need no escaping anywhere.
fn usable(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(b))
}

/// Writes `n`'s low `out.len()` hex digits into `out`.
fn hex(out: &mut [u8], mut n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_usable_id_is_kept_and_any_other_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("req-42/abc=="));
        let kept = RequestId::of(&headers);
        assert_eq!((kept.as_str(), kept.made()), ("req-42/abc==", false));
        for bad in ["", "has space", "quote\"", "x".repeat(65).as_str()] {
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let made = RequestId::of(&headers);
            assert!(made.made(), "{bad:?}");
            assert_eq!(made.as_str().len(), 24);
        }
        let (a, b) = (RequestId::new(), RequestId::new());
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.as_str()[..8], b.as_str()[..8], "one process, one prefix");
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
