//! A stored answer, and how a stored answer is served.
//!
//! Invariants:
//! - Only what may be shared with every request of the same key is stored: status, body and
//!   end-to-end headers, never `Set-Cookie`, never hop-by-hop headers, never upstream's own
//!   caching headers (wikigate writes its own).
//! - Every served answer says what the cache did (`Cache-Status`, RFC 9211) and forbids shared
//!   downstream caches from keeping it (`Cache-Control: private`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use crate::body::Body;
use crate::forward::{self, list_tokens};

/// A response head and body held in memory.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Buffered {
    /// The answer as a response (for answers shared but not stored: 4xx/5xx to followers).
    pub fn to_response(&self, head: bool) -> Response<Body> {
        let mut response = Response::new(if head {
            Body::empty()
        } else {
            Body::full(self.body.clone())
        });
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        response
    }
}

/// A cached answer.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// End-to-end headers of upstream's answer, minus what wikigate writes itself. A boxed
    /// slice rather than a `HeaderMap`, whose spare capacity would cost more than the fields.
    headers: Box<[(HeaderName, HeaderValue)]>,
    pub body: Bytes,
    /// A strong validator over the body.
    etag: HeaderValue,
    stored_at: Instant,
    pub ttl: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    /// The request headers upstream's `Vary` named, and a hash of their values.
    vary: Option<Vary>,
    /// Atlassian quota points an answer from this entry saves.
    pub points: u32,
    /// `Age` and `Cache-Control` for the latest second of age an answer was made in: every
    /// hit within the same second shares them instead of formatting its own.
    age_headers: ArcSwapOption<AgeHeaders>,
}

#[derive(Debug)]
struct AgeHeaders {
    age: u64,
    age_value: HeaderValue,
    cache_control: HeaderValue,
}

#[derive(Debug)]
struct Vary {
    names: Vec<HeaderName>,
    fingerprint: [u8; 32],
}

/// Headers never stored: wikigate sets its own caching headers, and the rest are per-exchange.
const NOT_STORED: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
    header::AGE,
    header::DATE,
    header::ETAG,
    header::SET_COOKIE,
];

/// The only headers a shared entry keeps.
const SHARED_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_ENCODING,
    header::VARY,
];

/// Freshness windows of one stored answer.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    pub ttl: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
}

impl Entry {
    /// Stores `answer`; the caller has checked that it may be stored. An entry `shared` by
    /// every caller keeps only headers that describe the body, never ones that may describe
    /// the caller who happened to fetch it (Atlassian's `X-AAccountId`, trace ids).
    pub fn new(
        answer: Buffered,
        request_headers: &HeaderMap,
        lifetime: Lifetime,
        shared: bool,
        points: u32,
    ) -> Entry {
        let Buffered {
            status,
            mut headers,
            body,
        } = answer;
        if shared {
            let mut kept = HeaderMap::new();
            for name in &SHARED_HEADERS {
                for value in headers.get_all(name) {
                    kept.append(name.clone(), value.clone());
                }
            }
            headers = kept;
        }
        let vary = vary_names(&headers).map(|names| Vary {
            fingerprint: fingerprint(&names, request_headers),
            names,
        });
        for name in &NOT_STORED {
            headers.remove(name);
        }
        // The answer's body, header values and non-standard header names are slices of the
        // buffers hyper read them into, and would keep those (KBs each) alive for as long as
        // the entry lives. Stored ones get allocations of their own size: one copy per store,
        // none per hit.
        let body = Bytes::copy_from_slice(&body);
        let headers: Box<[_]> = headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_str().as_bytes())
                    .unwrap_or_else(|_| name.clone());
                (name, stored_value(value))
            })
            .collect();
        let digest = blake3::hash(&body);
        let etag = format!("\"{}\"", &digest.to_hex()[..32]);
        Entry {
            status,
            headers,
            body,
            etag: HeaderValue::from_str(&etag).expect("hex is a valid header value"),
            stored_at: Instant::now(),
            ttl: lifetime.ttl,
            stale_if_error: lifetime.stale_if_error,
            stale_while_revalidate: lifetime.stale_while_revalidate,
            vary,
            points,
            age_headers: ArcSwapOption::empty(),
        }
    }

    /// Bytes this entry costs: body, headers, key and bookkeeping.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let total = self.body.len() + headers + self.etag.len() + 32 + 256;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// How long moka keeps the entry: fresh, then as long as it may still be served stale.
    pub fn retention(&self) -> Duration {
        self.ttl + self.stale_if_error.max(self.stale_while_revalidate)
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.ttl
    }

    /// Expired, but within the stale-while-revalidate window.
    pub fn may_revalidate_in_background(&self, now: Instant) -> bool {
        !self.is_fresh(now) && self.age(now) < self.ttl + self.stale_while_revalidate
    }

    /// Expired, but within the stale-if-error window.
    pub fn may_serve_on_error(&self, now: Instant) -> bool {
        !self.is_fresh(now) && self.age(now) < self.ttl + self.stale_if_error
    }

    /// Whether this entry answers a request with these headers (upstream's `Vary`).
    pub fn matches_vary(&self, request_headers: &HeaderMap) -> bool {
        self.vary
            .as_ref()
            .is_none_or(|v| fingerprint(&v.names, request_headers) == v.fingerprint)
    }

    /// Whether the request's `If-None-Match` names this entry's body.
    pub fn not_modified(&self, request_headers: &HeaderMap) -> bool {
        self.etag
            .to_str()
            .is_ok_and(|etag| list_tokens_match(request_headers, etag))
    }

    /// The entry as bytes for the cluster's L2 (`None` for entries that vary on request
    /// headers: they stay in L1). The age travels as a wall-clock timestamp.
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.vary.is_some() {
            return None;
        }
        let stored_unix_ms = unix_ms().saturating_sub(self.age(Instant::now()).as_millis() as u64);
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(L2_MAGIC);
        out.extend_from_slice(&self.status.as_u16().to_le_bytes());
        for n in [
            stored_unix_ms,
            self.ttl.as_millis() as u64,
            self.stale_if_error.as_millis() as u64,
            self.stale_while_revalidate.as_millis() as u64,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.points.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            for part in [name.as_str().as_bytes(), value.as_bytes()] {
                out.extend_from_slice(&(part.len() as u32).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
        out.extend_from_slice(&self.body);
        Some(out)
    }

    /// An entry from the cluster's L2; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut reader = Reader(bytes.strip_prefix(L2_MAGIC)?);
        let mut take = |n: usize| reader.take(n);
        let status = StatusCode::from_u16(u16::from_le_bytes(take(2)?.try_into().ok()?)).ok()?;
        let mut numbers = [0u64; 4];
        for n in &mut numbers {
            *n = u64::from_le_bytes(take(8)?.try_into().ok()?);
        }
        let points = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut headers = Vec::new();
        for _ in 0..count {
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let name = HeaderName::from_bytes(take(len)?).ok()?;
            let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
            let value = HeaderValue::from_bytes(take(len)?).ok()?;
            headers.push((name, value));
        }
        let body = Bytes::copy_from_slice(reader.0);
        let [stored_unix_ms, ttl, stale_if_error, stale_while_revalidate] = numbers;
        let age = Duration::from_millis(unix_ms().saturating_sub(stored_unix_ms));
        let etag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..32]);
        Some(Entry {
            status,
            headers: headers.into_boxed_slice(),
            body,
            etag: HeaderValue::from_str(&etag).ok()?,
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            ttl: Duration::from_millis(ttl),
            stale_if_error: Duration::from_millis(stale_if_error),
            stale_while_revalidate: Duration::from_millis(stale_while_revalidate),
            vary: None,
            points,
            age_headers: ArcSwapOption::empty(),
        })
    }

    /// The stored end-to-end headers.
    pub fn headers(&self) -> HeaderMap {
        self.headers.iter().cloned().collect()
    }

    /// The response for a request: 304 when `If-None-Match` matches, no body for HEAD.
    pub fn to_response(
        &self,
        request_headers: &HeaderMap,
        head: bool,
        status: HeaderValue,
    ) -> Response<Body> {
        let now = Instant::now();
        let not_modified = self.not_modified(request_headers);
        let body = if head || not_modified {
            Body::empty()
        } else {
            Body::full(self.body.clone())
        };
        let mut response = Response::new(body);
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            self.status
        };
        // Sized once for what is added below, so that no insert grows it.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 5);
        if not_modified {
            // RFC 9110 §15.4.5: a 304 carries the validators and caching headers only.
            if let Some((_, vary)) = self.headers.iter().find(|(n, _)| n == header::VARY) {
                headers.insert(header::VARY, vary.clone());
            }
        } else {
            for (name, value) in &self.headers {
                headers.append(name.clone(), value.clone());
            }
            if head {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
            }
        }
        let (age, cache_control) = self.age_headers(now);
        headers.insert(header::CACHE_CONTROL, cache_control);
        headers.insert(header::AGE, age);
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(CACHE_STATUS.clone(), status);
        *response.headers_mut() = headers;
        response
    }

    /// `Age` and `Cache-Control: private, max-age` at `now`, in whole seconds so that the two
    /// add up to the TTL; from the second second of age on, made once per second and shared
    /// by that second's hits.
    fn age_headers(&self, now: Instant) -> (HeaderValue, HeaderValue) {
        let age = self.age(now).as_secs();
        if let Some(current) = &*self.age_headers.load()
            && current.age == age
        {
            return (current.age_value.clone(), current.cache_control.clone());
        }
        let remaining = self.ttl.as_secs().saturating_sub(age);
        let made = AgeHeaders {
            age,
            age_value: HeaderValue::from(age),
            cache_control: HeaderValue::from_str(&format!("private, max-age={remaining}"))
                .expect("ascii"),
        };
        let values = (made.age_value.clone(), made.cache_control.clone());
        // Not for the answer that stored the entry (age 0): most entries are never asked for
        // again, and would carry the memo for nothing.
        if age > 0 {
            self.age_headers.store(Some(Arc::new(made)));
        }
        values
    }
}

/// Reads an encoded entry front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
}

/// Marks (and versions) an encoded L2 entry.
const L2_MAGIC: &[u8] = b"WGE1";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `If-None-Match` names `etag` (or is `*`).
pub fn list_tokens_match(request_headers: &HeaderMap, etag: &str) -> bool {
    list_tokens(request_headers, &header::IF_NONE_MATCH)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// RFC 9211's header.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Values almost every stored answer has, kept as statics: no allocation per entry, and
/// nothing to count references of when a hit clones them.
static COMMON_VALUES: [HeaderValue; 5] = [
    HeaderValue::from_static("application/json;charset=UTF-8"),
    HeaderValue::from_static("application/json"),
    HeaderValue::from_static(forward::VIA[0]),
    HeaderValue::from_static(forward::VIA[1]),
    HeaderValue::from_static(forward::VIA[2]),
];

/// A header value as an entry keeps it: a common one as a static, else a copy of its own.
fn stored_value(value: &HeaderValue) -> HeaderValue {
    if let Some(common) = COMMON_VALUES.iter().find(|c| *c == value) {
        return common.clone();
    }
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}

/// The header names upstream's `Vary` lists, `None` without `Vary`. `*` is handled by the
/// caller (never stored).
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = list_tokens(headers, &header::VARY)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// Whether upstream's answer says `Vary: *` (never stored).
pub fn varies_on_everything(headers: &HeaderMap) -> bool {
    list_tokens(headers, &header::VARY).any(|n| n == "*")
}

fn fingerprint(names: &[HeaderName], request_headers: &HeaderMap) -> [u8; 32] {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_answer_does_not_keep_the_buffers_it_was_read_into() {
        // hyper hands out the body and header values as slices of its read buffers.
        let read_buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let within = |p: *const u8| read_buffer.as_ptr_range().contains(&p);
        let mut headers = HeaderMap::new();
        let value = read_buffer.slice(0..8);
        headers.insert(
            "x-aaccountid",
            HeaderValue::from_maybe_shared(value).unwrap(),
        );
        let answer = Buffered {
            status: StatusCode::OK,
            headers,
            body: read_buffer.slice(8..1208),
        };
        let lifetime = Lifetime {
            ttl: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        };
        let entry = Entry::new(answer, &HeaderMap::new(), lifetime, false, 1);
        assert_eq!(entry.body.len(), 1200);
        assert!(!within(entry.body.as_ptr()));
        for (_, value) in entry.headers.iter() {
            assert!(!within(value.as_bytes().as_ptr()));
        }
    }

    fn entry(vary: Option<&'static str>) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        if let Some(vary) = vary {
            headers.insert(header::VARY, HeaderValue::from_static(vary));
        }
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        let lifetime = Lifetime {
            ttl: Duration::from_secs(60),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        };
        let answer = Buffered {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"{}"),
        };
        Entry::new(answer, &request, lifetime, false, 1)
    }

    #[test]
    fn upstream_caching_headers_are_replaced_by_wikigates() {
        let response = entry(None).to_response(
            &HeaderMap::new(),
            false,
            HeaderValue::from_static("wikigate; hit"),
        );
        let headers = response.headers();
        assert_eq!(headers[header::CACHE_CONTROL], "private, max-age=60");
        assert!(!headers.contains_key(header::SET_COOKIE));
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(headers["cache-status"], "wikigate; hit");
        assert!(headers[header::ETAG].to_str().unwrap().starts_with('"'));
    }

    #[test]
    fn if_none_match_gets_304_without_body() {
        let entry = entry(None);
        let mut request = HeaderMap::new();
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", {}", entry.etag.to_str().unwrap())).unwrap(),
        );
        let response =
            entry.to_response(&request, false, HeaderValue::from_static("wikigate; hit"));
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert!(!response.headers().contains_key(header::CONTENT_TYPE));
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(
            entry
                .to_response(&request, false, HeaderValue::from_static("wikigate; hit"))
                .status(),
            StatusCode::OK
        );
    }

    #[test]
    fn entries_survive_the_trip_through_l2() {
        let original = entry(None);
        let copy = Entry::decode(&original.encode().unwrap()).unwrap();
        assert_eq!(
            (copy.status, &copy.body, &copy.etag),
            (original.status, &original.body, &original.etag)
        );
        assert_eq!(copy.headers, original.headers);
        assert_eq!((copy.ttl, copy.points), (original.ttl, original.points));
        assert!(copy.is_fresh(Instant::now()));
        assert!(Entry::decode(b"WGE1\x00").is_none());
        assert!(
            entry(Some("Accept-Language")).encode().is_none(),
            "variants stay in L1"
        );
    }

    #[test]
    fn vary_headers_must_match() {
        let entry = entry(Some("Accept-Language"));
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        assert!(entry.matches_vary(&request));
        request.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
        assert!(!entry.matches_vary(&request));
    }
}
