//! A stored answer, and how a stored answer is served.
//!
//! Invariants:
//! - Only what may be shared with every request of the same key is stored: status, body and
//!   end-to-end headers that are true of every answer made from it. Never `Set-Cookie`, never
//!   hop-by-hop headers, never upstream's caching headers (wikigate writes its own), never
//!   what is true of one exchange only: trace and request ids, `Server-Timing`, `Date`,
//!   `Server`, and the quota headers (`RateLimit*`, `X-RateLimit-*`, `Retry-After`), which a
//!   hit would otherwise replay long after they stopped being true.
//! - One entry per key whatever the client's `Accept-Encoding`: an entry holds its body in
//!   the representations (identity, gzip) its clients have asked for, each served with its
//!   own `ETag` and length, and `Vary: Accept-Encoding`. Upstream's own `Vary:
//!   Accept-Encoding` never splits an entry; other `Vary` names still select a variant.
//! - Every served answer says what the cache did (`Cache-Status`, RFC 9211) and forbids shared
//!   downstream caches from keeping it (`Cache-Control: private`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::etag::ETags;
use super::heads::{self, Head};
use crate::body::Body;
use crate::coding::{self, Accepts, Coding};
use crate::forward::{self, list_tokens};

/// An upstream answer held in memory, decoded: what wikigate reads, rewrites and stores.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub status: StatusCode,
    /// Upstream's end-to-end headers, without `Content-Encoding` and `Content-Length`: those
    /// describe one representation, and are set for the one each client gets.
    pub headers: HeaderMap,
    /// The body, decoded.
    body: Bytes,
    /// Upstream's own gzip of `body`, as long as `body` is what upstream sent.
    gzip: Option<Bytes>,
    /// What the call cost by Atlassian's table, priced once when it was read
    /// ([`Buffered::priced`]): the points an answer made from it saves.
    points: u32,
}

impl Buffered {
    /// An answer whose body arrived without a content coding.
    pub fn plain(status: StatusCode, headers: HeaderMap, body: Bytes) -> Buffered {
        Buffered {
            status,
            headers,
            body,
            gzip: None,
            points: 0,
        }
    }

    /// An answer that arrived gzip-encoded, with its body decoded already.
    pub fn gzipped(status: StatusCode, headers: HeaderMap, body: Bytes, gzip: Bytes) -> Buffered {
        Buffered {
            status,
            headers,
            body,
            gzip: Some(gzip),
            points: 0,
        }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The answer with what its call cost (priced once, where it was read).
    pub fn priced(mut self, points: u32) -> Buffered {
        self.points = points;
        self
    }

    /// What the call cost by Atlassian's table (0 until priced).
    pub fn points(&self) -> u32 {
        self.points
    }

    /// Replaces the body (a rewrite); upstream's gzip of the old one goes with it.
    pub fn set_body(&mut self, body: Bytes) {
        self.body = body;
        self.gzip = None;
    }

    /// The answer as a response to a client with these `Accept-Encoding` preferences (for
    /// answers shared but not stored: 4xx/5xx to followers).
    pub fn to_response(&self, head: bool, accepts: Accepts) -> Response<Body> {
        let (coding, body) = match (&self.gzip, accepts.preferred()) {
            (Some(gzip), Coding::Gzip) => (Coding::Gzip, gzip.clone()),
            // A client that refuses identity gets gzip even when upstream sent none.
            (None, Coding::Gzip) if !accepts.identity() => (Coding::Gzip, coding::gzip(&self.body)),
            _ => (Coding::Identity, self.body.clone()),
        };
        let mut headers = self.headers.clone();
        set_representation(&mut headers, coding, head.then_some(body.len()));
        add_vary_accept_encoding(&mut headers);
        let mut response = Response::new(if head {
            Body::empty()
        } else {
            Body::full(body)
        });
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// The representations of one stored body: those its clients have asked for so far.
/// The representations an entry holds: one, as stored, or both once a client needed the
/// other (boxed: rare, and it would make every entry as large).
#[derive(Debug)]
enum Bodies {
    Identity(Bytes),
    Gzip(Bytes),
    Both(Box<Both>),
}

#[derive(Debug)]
struct Both {
    identity: Bytes,
    gzip: Bytes,
}

impl Bodies {
    fn get(&self, coding: Coding) -> Option<&Bytes> {
        match (self, coding) {
            (Bodies::Identity(b), Coding::Identity) | (Bodies::Gzip(b), Coding::Gzip) => Some(b),
            (Bodies::Both(both), Coding::Identity) => Some(&both.identity),
            (Bodies::Both(both), Coding::Gzip) => Some(&both.gzip),
            _ => None,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Bodies::Identity(b) | Bodies::Gzip(b) => b.len(),
            Bodies::Both(both) => both.identity.len() + both.gzip.len(),
        }
    }
}

/// A cached answer.
#[derive(Debug)]
pub struct Entry {
    pub status: StatusCode,
    /// End-to-end headers of upstream's answer, minus what wikigate writes itself and what is
    /// true of one exchange only; `Vary` is wikigate's own (`Accept-Encoding` first). Shared
    /// with every entry that stores the same set (`heads`): one caller's answers carry the same.
    headers: Head,
    bodies: Bodies,
    /// Strong validators, one per representation (RFC 9110 §8.8.3: a validator differs per
    /// content coding): `"<hash of the decoded body>"` and `"<hash>-gzip"`.
    etags: ETags,
    stored_at: Instant,
    lifetime: Kept,
    /// The request headers upstream's `Vary` named (besides `Accept-Encoding`, which wikigate
    /// answers itself), and a hash of their values.
    vary: Option<Box<Vary>>,
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

#[derive(Debug, Clone)]
struct Vary {
    names: Vec<HeaderName>,
    fingerprint: [u8; 32],
}

/// Headers never stored: wikigate sets its own caching, validator and representation
/// headers, and the rest are true of one exchange only.
static NOT_STORED: [HeaderName; 19] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
    header::AGE,
    header::DATE,
    header::ETAG,
    header::SET_COOKIE,
    header::VARY,
    header::SERVER,
    header::RETRY_AFTER,
    HeaderName::from_static("server-timing"),
    HeaderName::from_static("atl-traceid"),
    HeaderName::from_static("atl-request-id"),
    HeaderName::from_static("x-arequestid"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Upstream's ids of one exchange: what Atlassian's support asks for. Never stored; a miss
/// passes its own exchange's on.
static EXCHANGE_IDS: [HeaderName; 3] = [
    HeaderName::from_static("atl-traceid"),
    HeaderName::from_static("atl-request-id"),
    HeaderName::from_static("x-arequestid"),
];

/// The exchange ids among an upstream answer's headers.
pub fn exchange_ids(headers: &HeaderMap) -> HeaderMap {
    let mut ids = HeaderMap::new();
    for name in &EXCHANGE_IDS {
        for value in headers.get_all(name) {
            ids.append(name.clone(), value.clone());
        }
    }
    ids
}

/// Name prefixes of the quota headers (`RateLimit`, `RateLimit-Policy`, `RateLimit-Reason`,
/// their `Beta-` shadow forms, `Beta-Retry-After`, `X-RateLimit-*`): what they say is true
/// of the moment they were sent.
const QUOTA_PREFIXES: [&str; 4] = [
    "ratelimit",
    "beta-ratelimit",
    "beta-retry-after",
    "x-ratelimit",
];

/// Whether a header of upstream's answer is never stored.
fn not_stored(name: &HeaderName) -> bool {
    NOT_STORED.contains(name) || QUOTA_PREFIXES.iter().any(|p| name.as_str().starts_with(p))
}

/// The only headers a shared entry keeps (besides wikigate's own `Vary`): what describes the
/// body, and the site's security policy, which describes nobody.
const SHARED_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::STRICT_TRANSPORT_SECURITY,
    header::X_CONTENT_TYPE_OPTIONS,
    HeaderName::from_static("timing-allow-origin"),
];

/// Freshness windows of one stored answer: each stale window counts from the end of `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub ttl: Duration,
    pub stale_if_error: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_on_low_quota: Duration,
}

/// A lifetime as an entry keeps it, in milliseconds: half the size of four `Duration`s.
#[derive(Debug, Clone, Copy)]
struct Kept([u64; 4]);

impl From<Lifetime> for Kept {
    fn from(lifetime: Lifetime) -> Kept {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Kept([
            ms(lifetime.ttl),
            ms(lifetime.stale_if_error),
            ms(lifetime.stale_while_revalidate),
            ms(lifetime.stale_on_low_quota),
        ])
    }
}

impl Kept {
    fn lifetime(self) -> Lifetime {
        let [
            ttl,
            stale_if_error,
            stale_while_revalidate,
            stale_on_low_quota,
        ] = self.0.map(Duration::from_millis);
        Lifetime {
            ttl,
            stale_if_error,
            stale_while_revalidate,
            stale_on_low_quota,
        }
    }
}

impl Lifetime {
    /// Fresh for `ttl`, never served stale.
    pub fn fresh_for(ttl: Duration) -> Lifetime {
        Lifetime {
            ttl,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_on_low_quota: Duration::ZERO,
        }
    }
}

impl Entry {
    /// Stores `answer`, in the representation `keep` (the one the client that caused the
    /// store prefers); the caller has checked that it may be stored. An entry `shared` by
    /// every caller keeps only headers that describe the body, never ones that may describe
    /// the caller who happened to fetch it (Atlassian's `X-AAccountId`).
    pub fn new(
        answer: Buffered,
        request_headers: &HeaderMap,
        lifetime: Lifetime,
        shared: bool,
        keep: Coding,
    ) -> Entry {
        let Buffered {
            status,
            headers,
            body,
            gzip,
            points,
        } = answer;
        let vary = vary_names(&headers).map(|names| {
            Box::new(Vary {
                fingerprint: fingerprint(&names, request_headers),
                names,
            })
        });
        // The answer's body, header values and non-standard header names are slices of the
        // buffers hyper read them into, and would keep those (KBs each) alive for as long as
        // the entry lives. Stored ones get allocations of their own size: one copy per store,
        // none per hit.
        let mut stored: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .filter(|(name, _)| !shared || SHARED_HEADERS.contains(name))
            .filter(|(name, _)| !not_stored(name))
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_str().as_bytes())
                    .unwrap_or_else(|_| name.clone());
                (name, stored_value(value))
            })
            .collect();
        stored.push((header::VARY, vary_value(vary.as_deref())));
        let etags = ETags::of(&body);
        let bodies = match keep {
            Coding::Identity => Bodies::Identity(Bytes::copy_from_slice(&body)),
            Coding::Gzip => Bodies::Gzip(match gzip {
                Some(upstreams) => Bytes::copy_from_slice(&upstreams),
                None => coding::gzip(&body),
            }),
        };
        Entry {
            status,
            headers: heads::intern(stored),
            bodies,
            etags,
            stored_at: Instant::now(),
            lifetime: lifetime.into(),
            vary,
            points,
            age_headers: ArcSwapOption::empty(),
        }
    }

    /// The decoded body, when this entry holds it (bulk account entries always do).
    pub fn plain(&self) -> Option<&Bytes> {
        self.bodies.get(Coding::Identity)
    }

    /// This entry with `coding`'s representation added, for clients that asked for one it
    /// does not hold yet: decoded from its gzip (which wikigate decoded once already when it
    /// stored it, so this cannot fail but for an out-of-memory) or compressed from its body.
    /// `limit` bounds the decoded body (an L2 copy is only as trustworthy as Redis).
    pub fn with_representation(
        &self,
        coding: Coding,
        limit: usize,
    ) -> Result<Entry, coding::DecodeError> {
        let bodies = match (&self.bodies, coding) {
            (Bodies::Gzip(gzip), Coding::Identity) => Bodies::Both(Box::new(Both {
                identity: coding::gunzip(gzip, limit)?,
                gzip: gzip.clone(),
            })),
            (Bodies::Identity(identity), Coding::Gzip) => Bodies::Both(Box::new(Both {
                gzip: coding::gzip(identity),
                identity: identity.clone(),
            })),
            (Bodies::Identity(b), _) => Bodies::Identity(b.clone()),
            (Bodies::Gzip(b), _) => Bodies::Gzip(b.clone()),
            (Bodies::Both(both), _) => Bodies::Both(Box::new(Both {
                identity: both.identity.clone(),
                gzip: both.gzip.clone(),
            })),
        };
        Ok(Entry {
            status: self.status,
            headers: self.headers.clone(),
            bodies,
            etags: self.etags,
            stored_at: self.stored_at,
            lifetime: self.lifetime,
            vary: self.vary.clone(),
            points: self.points,
            age_headers: ArcSwapOption::empty(),
        })
    }

    /// Bytes this entry costs: bodies, headers, validators, key and bookkeeping. Headers are
    /// counted whole though entries share them, so the weight is an upper bound.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let total = self.bodies.bytes() + headers + 32 + 256;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// How long moka keeps the entry: fresh, then as long as it may still be served stale.
    pub fn retention(&self) -> Duration {
        let Lifetime {
            ttl,
            stale_if_error,
            stale_while_revalidate,
            stale_on_low_quota,
        } = self.lifetime();
        ttl + stale_if_error
            .max(stale_while_revalidate)
            .max(stale_on_low_quota)
    }

    /// What is left of the retention at `now` (an entry from L2, or one re-stored with another
    /// representation, is older than its insertion).
    pub fn remaining_retention(&self, now: Instant) -> Duration {
        self.retention().saturating_sub(self.age(now))
    }

    /// The freshness windows it was stored with.
    pub fn lifetime(&self) -> Lifetime {
        self.lifetime.lifetime()
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.stored_at)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.lifetime().ttl
    }

    /// Expired, but within the stale-while-revalidate window.
    pub fn may_revalidate_in_background(&self, now: Instant) -> bool {
        self.within(now, self.lifetime().stale_while_revalidate)
    }

    /// Expired, but within the stale-if-error window.
    pub fn may_serve_on_error(&self, now: Instant) -> bool {
        self.within(now, self.lifetime().stale_if_error)
    }

    /// Expired, but within the window it may stand in for an upstream call while the site's
    /// quota is low.
    pub fn may_serve_on_low_quota(&self, now: Instant) -> bool {
        self.within(now, self.lifetime().stale_on_low_quota)
    }

    /// Expired, and no longer ago than `window`.
    fn within(&self, now: Instant, window: Duration) -> bool {
        !self.is_fresh(now) && self.age(now) < self.lifetime().ttl + window
    }

    /// Whether this entry answers a request with these headers (upstream's `Vary`).
    pub fn matches_vary(&self, request_headers: &HeaderMap) -> bool {
        self.vary
            .as_ref()
            .is_none_or(|v| fingerprint(&v.names, request_headers) == v.fingerprint)
    }

    /// Whether the request's `If-None-Match` names this entry's body, in either
    /// representation: both stand for the same content, so a client holding either may keep it.
    pub fn not_modified(&self, request_headers: &HeaderMap) -> bool {
        self.etags.matched_by(request_headers)
    }

    /// The response for a request: the representation its `Accept-Encoding` prefers among
    /// those held, 304 when `If-None-Match` matches, no body for HEAD. `Err(coding)` when the
    /// request accepts no representation this entry holds, and it must gain `coding` first
    /// ([`Entry::with_representation`]).
    pub fn respond(
        &self,
        request_headers: &HeaderMap,
        head: bool,
        status: HeaderValue,
    ) -> Result<Response<Body>, Coding> {
        let (coding, body) = self.representation(Accepts::of(request_headers))?;
        let now = Instant::now();
        let not_modified = self.not_modified(request_headers);
        let mut response = Response::new(if head || not_modified {
            Body::empty()
        } else {
            Body::full(body.clone())
        });
        *response.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            self.status
        };
        let mut headers = if not_modified {
            // RFC 9110 §15.4.5: a 304 carries the validators and caching headers only.
            let mut headers = HeaderMap::with_capacity(5);
            if let Some(vary) = self.headers.get(header::VARY) {
                headers.insert(header::VARY, vary.clone());
            }
            headers
        } else {
            let mut headers = HeaderMap::clone(&self.headers);
            // The stored headers name no representation: only what this one needs is added.
            if let Some(value) = coding.header_value() {
                headers.insert(header::CONTENT_ENCODING, value);
            }
            if head {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            headers
        };
        let (age, cache_control) = self.age_headers(now);
        headers.insert(header::CACHE_CONTROL, cache_control);
        headers.insert(header::AGE, age);
        headers.insert(header::ETAG, self.etags.get(coding));
        headers.insert(CACHE_STATUS.clone(), status);
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// The representation to serve: the client's preferred one among those held, or any one
    /// it accepts; else the one to add.
    fn representation(&self, accepts: Accepts) -> Result<(Coding, &Bytes), Coding> {
        let preferred = accepts.preferred();
        if let Some(body) = self.bodies.get(preferred) {
            return Ok((preferred, body));
        }
        match &self.bodies {
            // A gzip client is as well served by identity as by a gzip made now.
            Bodies::Identity(body) if accepts.identity() => Ok((Coding::Identity, body)),
            _ => Err(preferred),
        }
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
        let remaining = self.lifetime().ttl.as_secs().saturating_sub(age);
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

    /// The stored end-to-end headers.
    pub fn headers(&self) -> HeaderMap {
        HeaderMap::clone(&self.headers)
    }

    /// The entry as bytes for the cluster's L2: one representation (gzip when held: fewer
    /// bytes in Redis and on the wire), the variant's request-header fingerprint, and the age
    /// as a wall-clock timestamp.
    pub fn encode(&self) -> Vec<u8> {
        let stored_unix_ms = unix_ms().saturating_sub(self.age(Instant::now()).as_millis() as u64);
        let (coding, body) = match &self.bodies {
            Bodies::Identity(b) => (Coding::Identity, b),
            Bodies::Gzip(b) => (Coding::Gzip, b),
            Bodies::Both(both) => (Coding::Gzip, &both.gzip),
        };
        let mut out = Vec::with_capacity(body.len() + 512);
        out.extend_from_slice(L2_MAGIC);
        out.extend_from_slice(&self.status.as_u16().to_le_bytes());
        for n in [
            stored_unix_ms,
            self.lifetime.0[0],
            self.lifetime.0[1],
            self.lifetime.0[2],
            self.lifetime.0[3],
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(&self.points.to_le_bytes());
        out.push(u8::from(coding == Coding::Gzip));
        let part = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        part(&mut out, &self.etags.digest());
        match &self.vary {
            None => out.extend_from_slice(&0u32.to_le_bytes()),
            Some(vary) => {
                out.extend_from_slice(&(vary.names.len() as u32).to_le_bytes());
                for name in &vary.names {
                    part(&mut out, name.as_str().as_bytes());
                }
                out.extend_from_slice(&vary.fingerprint);
            }
        }
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in self.headers.iter() {
            part(&mut out, name.as_str().as_bytes());
            part(&mut out, value.as_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    /// An entry from the cluster's L2; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let mut reader = Reader(bytes.strip_prefix(L2_MAGIC)?);
        let status = StatusCode::from_u16(u16::from_le_bytes(reader.array()?)).ok()?;
        let mut numbers = [0u64; 5];
        for n in &mut numbers {
            *n = u64::from_le_bytes(reader.array()?);
        }
        let points = u32::from_le_bytes(reader.array()?);
        let gzip = match reader.take(1)? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        let etags = ETags::from_digest(reader.part()?)?;
        let vary_count = u32::from_le_bytes(reader.array()?);
        let vary = if vary_count == 0 {
            None
        } else {
            let names = (0..vary_count)
                .map(|_| HeaderName::from_bytes(reader.part()?).ok())
                .collect::<Option<Vec<_>>>()?;
            Some(Box::new(Vary {
                names,
                fingerprint: reader.array()?,
            }))
        };
        let count = u32::from_le_bytes(reader.array()?);
        let mut headers = Vec::new();
        for _ in 0..count {
            let name = HeaderName::from_bytes(reader.part()?).ok()?;
            let value = HeaderValue::from_bytes(reader.part()?).ok()?;
            headers.push((name, stored_value(&value)));
        }
        let body = Bytes::copy_from_slice(reader.0);
        let [
            stored_unix_ms,
            ttl,
            stale_if_error,
            stale_while_revalidate,
            stale_on_low_quota,
        ] = numbers;
        let age = Duration::from_millis(unix_ms().saturating_sub(stored_unix_ms));
        Some(Entry {
            status,
            headers: heads::intern(headers),
            bodies: if gzip {
                Bodies::Gzip(body)
            } else {
                Bodies::Identity(body)
            },
            etags,
            stored_at: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
            lifetime: Kept([
                ttl,
                stale_if_error,
                stale_while_revalidate,
                stale_on_low_quota,
            ]),
            vary,
            points,
            age_headers: ArcSwapOption::empty(),
        })
    }
}

/// Sets the headers of the representation a response carries: `Content-Encoding` for gzip,
/// and (for HEAD, whose empty body says nothing) `Content-Length`.
fn set_representation(headers: &mut HeaderMap, coding: Coding, head_length: Option<usize>) {
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    if let Some(value) = coding.header_value() {
        headers.insert(header::CONTENT_ENCODING, value);
    }
    if let Some(length) = head_length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// Adds `Accept-Encoding` to a response's `Vary` unless it names it already.
pub fn add_vary_accept_encoding(headers: &mut HeaderMap) {
    let names_it = list_tokens(headers, &header::VARY)
        .any(|n| n.eq_ignore_ascii_case("accept-encoding") || n == "*");
    if !names_it {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// An entry's `Vary`: `Accept-Encoding` (wikigate chooses the representation by it), then the
/// other names upstream's `Vary` listed.
fn vary_value(vary: Option<&Vary>) -> HeaderValue {
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

static ACCEPT_ENCODING_ONLY: HeaderValue = HeaderValue::from_static("Accept-Encoding");

/// Reads an encoded entry front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// A length-prefixed part.
    fn part(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

/// Marks (and versions) an encoded L2 entry.
const L2_MAGIC: &[u8] = b"WGE4";

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 9211's header.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Values almost every stored answer has, kept as statics: no allocation per entry, and
/// nothing to count references of when a hit clones them.
static COMMON_VALUES: [HeaderValue; 9] = [
    HeaderValue::from_static("application/json;charset=UTF-8"),
    HeaderValue::from_static("application/json"),
    HeaderValue::from_static(forward::VIA[0]),
    HeaderValue::from_static(forward::VIA[1]),
    HeaderValue::from_static(forward::VIA[2]),
    HeaderValue::from_static("Accept-Encoding"),
    HeaderValue::from_static("nosniff"),
    HeaderValue::from_static("*"),
    HeaderValue::from_static("max-age=63072000; includeSubDomains; preload"),
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

/// The header names upstream's `Vary` lists besides `Accept-Encoding`, `None` without any.
/// `*` is handled by the caller (never stored).
fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
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

    const LIFETIME: Lifetime = Lifetime {
        ttl: Duration::from_secs(60),
        stale_if_error: Duration::ZERO,
        stale_while_revalidate: Duration::ZERO,
        stale_on_low_quota: Duration::ZERO,
    };

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    /// An answer shaped like Atlassian's edge sends it: per-exchange headers and all.
    fn edge_answer(body: &'static [u8], vary: &'static str) -> Buffered {
        let headers = request(&[
            ("content-type", "application/json;charset=UTF-8"),
            ("cache-control", "no-cache, no-store, no-transform"),
            ("vary", vary),
            ("x-aaccountid", "712020:a11ce"),
            ("atl-traceid", "5e1f0c0ffee"),
            ("atl-request-id", "b2d7-11"),
            ("x-arequestid", "f00d"),
            ("server-timing", "atl-edge;dur=42"),
            ("server", "AtlassianEdge"),
            ("date", "Mon, 30 Nov 2026 10:00:00 GMT"),
            (
                "strict-transport-security",
                "max-age=63072000; includeSubDomains; preload",
            ),
            ("x-ratelimit-remaining", "995"),
            ("beta-ratelimit", "\"tenant-app-quota\";r=17842;t=2107"),
            ("retry-after", "0"),
        ]);
        Buffered::gzipped(
            StatusCode::OK,
            headers,
            Bytes::from_static(body),
            coding::gzip(body),
        )
    }

    fn hit(entry: &Entry, request_headers: &HeaderMap) -> Response<Body> {
        entry
            .respond(
                request_headers,
                false,
                HeaderValue::from_static("wikigate; hit"),
            )
            .expect("the entry holds an acceptable representation")
    }

    async fn body_of(response: Response<Body>) -> Bytes {
        use http_body_util::BodyExt as _;
        response.into_body().collect().await.unwrap().to_bytes()
    }

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
        let answer = Buffered::plain(StatusCode::OK, headers, read_buffer.slice(8..1208));
        let entry = Entry::new(answer, &HeaderMap::new(), LIFETIME, false, Coding::Identity);
        let body = entry.plain().unwrap();
        assert_eq!(body.len(), 1200);
        assert!(!within(body.as_ptr()));
        for (_, value) in entry.headers.iter() {
            assert!(!within(value.as_bytes().as_ptr()));
        }
    }

    #[test]
    fn what_is_true_of_one_exchange_is_not_stored() {
        let entry = Entry::new(
            edge_answer(b"{}", "Accept-Encoding"),
            &HeaderMap::new(),
            LIFETIME,
            false,
            Coding::Gzip,
        );
        let response = hit(&entry, &request(&[("accept-encoding", "gzip")]));
        let headers = response.headers();
        for gone in [
            "atl-traceid",
            "atl-request-id",
            "x-arequestid",
            "server-timing",
            "server",
            "date",
            "x-ratelimit-remaining",
            "beta-ratelimit",
            "retry-after",
            "set-cookie",
        ] {
            assert!(!headers.contains_key(gone), "{gone} was replayed");
        }
        assert_eq!(headers["x-aaccountid"], "712020:a11ce");
        assert_eq!(headers["cache-control"], "private, max-age=60");
        assert_eq!(headers["vary"], "Accept-Encoding");
        assert_eq!(headers["content-encoding"], "gzip");
        assert_eq!(headers["cache-status"], "wikigate; hit");
        assert_eq!(
            headers["strict-transport-security"],
            "max-age=63072000; includeSubDomains; preload"
        );
    }

    #[tokio::test]
    async fn each_client_gets_a_representation_it_accepts_with_its_own_validator() {
        let body = br#"{"type":"known","accountId":"712020:a11ce","displayName":"Alice"}"#;
        let gzip_only = Entry::new(
            edge_answer(body, "Accept-Encoding"),
            &HeaderMap::new(),
            LIFETIME,
            false,
            Coding::Gzip,
        );
        let gzip_client = request(&[("accept-encoding", "gzip, deflate")]);
        let response = hit(&gzip_only, &gzip_client);
        let gzip_etag = response.headers()["etag"].clone();
        assert_eq!(response.headers()["content-encoding"], "gzip");
        let compressed = body_of(response).await;
        assert_eq!(coding::gunzip(&compressed, 1 << 20).unwrap(), &body[..]);
        // A plain client: the entry must gain the identity representation first.
        let plain_client = HeaderMap::new();
        assert!(matches!(
            gzip_only.respond(&plain_client, false, HeaderValue::from_static("x")),
            Err(Coding::Identity)
        ));
        let both = gzip_only
            .with_representation(Coding::Identity, 1 << 20)
            .unwrap();
        let response = hit(&both, &plain_client);
        assert!(!response.headers().contains_key("content-encoding"));
        let plain_etag = response.headers()["etag"].clone();
        assert_ne!(plain_etag, gzip_etag, "one validator per representation");
        assert_eq!(body_of(response).await, &body[..]);
        assert_eq!(
            hit(&both, &gzip_client).headers()["content-encoding"],
            "gzip"
        );
        // identity;q=0 on an identity-only entry: gzip is made for it.
        let identity_only = Entry::new(
            Buffered::plain(StatusCode::OK, HeaderMap::new(), Bytes::from_static(body)),
            &HeaderMap::new(),
            LIFETIME,
            false,
            Coding::Identity,
        );
        assert!(matches!(
            identity_only.respond(
                &request(&[("accept-encoding", "gzip, identity;q=0")]),
                false,
                HeaderValue::from_static("x")
            ),
            Err(Coding::Gzip)
        ));
        // …but a client that merely accepts gzip is served identity as it is.
        assert!(
            !hit(&identity_only, &gzip_client)
                .headers()
                .contains_key("content-encoding")
        );
        // HEAD carries the length of the representation it stands for.
        let head = both
            .respond(&gzip_client, true, HeaderValue::from_static("x"))
            .unwrap();
        assert_eq!(
            head.headers()["content-length"],
            both.bodies
                .get(Coding::Gzip)
                .unwrap()
                .len()
                .to_string()
                .as_str()
        );
    }

    #[test]
    fn if_none_match_gets_304_without_body_for_either_representation() {
        let entry = Entry::new(
            edge_answer(b"{\"watching\":true}", "Accept-Encoding"),
            &HeaderMap::new(),
            LIFETIME,
            false,
            Coding::Gzip,
        );
        for etag in [Coding::Identity, Coding::Gzip].map(|c| entry.etags.get(c)) {
            let mut request = request(&[("accept-encoding", "gzip")]);
            request.insert(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(&format!("\"x\", {}", etag.to_str().unwrap())).unwrap(),
            );
            let response = hit(&entry, &request);
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
            assert!(!response.headers().contains_key(header::CONTENT_TYPE));
            assert_eq!(response.headers()["vary"], "Accept-Encoding");
        }
        let mut request = request(&[("accept-encoding", "gzip")]);
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(hit(&entry, &request).status(), StatusCode::OK);
    }

    #[test]
    fn entries_survive_the_trip_through_l2() {
        let original = Entry::new(
            edge_answer(
                b"{\"accountId\":\"712020:a\"}",
                "Accept-Encoding, Accept-Language",
            )
            .priced(5),
            &request(&[("accept-language", "de")]),
            LIFETIME,
            false,
            Coding::Gzip,
        );
        let copy = Entry::decode(&original.encode()).unwrap();
        assert_eq!(copy.status, original.status);
        assert_eq!(
            copy.bodies.get(Coding::Gzip),
            original.bodies.get(Coding::Gzip)
        );
        assert_eq!(copy.etags, original.etags);
        assert_eq!(copy.headers, original.headers);
        assert_eq!(
            (copy.lifetime(), copy.points),
            (original.lifetime(), original.points)
        );
        assert!(copy.is_fresh(Instant::now()));
        // The variant travels too: a request with other values does not match it.
        assert!(copy.matches_vary(&request(&[("accept-language", "de")])));
        assert!(!copy.matches_vary(&request(&[("accept-language", "fr")])));
        assert!(Entry::decode(b"WGE2\x00").is_none());
        assert!(Entry::decode(&original.encode()[..40]).is_none());
    }

    #[test]
    fn accept_encoding_in_upstreams_vary_does_not_split_entries_other_names_do() {
        let entry = |vary| {
            Entry::new(
                edge_answer(b"{}", vary),
                &request(&[("accept-language", "de"), ("accept-encoding", "gzip")]),
                LIFETIME,
                false,
                Coding::Gzip,
            )
        };
        let plain = entry("Accept-Encoding");
        assert!(plain.matches_vary(&HeaderMap::new()));
        assert!(plain.matches_vary(&request(&[("accept-encoding", "br")])));
        let by_language = entry("accept-encoding, Accept-Language");
        assert!(by_language.matches_vary(&request(&[("accept-language", "de")])));
        assert!(!by_language.matches_vary(&request(&[("accept-language", "fr")])));
        assert_eq!(
            hit(
                &by_language,
                &request(&[("accept-encoding", "gzip"), ("accept-language", "de")])
            )
            .headers()["vary"],
            "Accept-Encoding, accept-language"
        );
    }

    #[test]
    fn buffered_answers_are_served_in_an_encoding_the_client_accepts() {
        let answer = edge_answer(b"{\"statusCode\":500}", "Accept-Encoding");
        let plain = answer.to_response(false, Accepts::IDENTITY);
        assert!(!plain.headers().contains_key("content-encoding"));
        let mut gzip_client = HeaderMap::new();
        gzip_client.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let gzip = answer.to_response(false, Accepts::of(&gzip_client));
        assert_eq!(gzip.headers()["content-encoding"], "gzip");
        let mut rewritten = answer.clone();
        rewritten.set_body(Bytes::from_static(b"{}"));
        gzip_client.insert(
            "accept-encoding",
            HeaderValue::from_static("gzip, identity;q=0"),
        );
        assert_eq!(
            rewritten
                .to_response(false, Accepts::of(&gzip_client))
                .headers()["content-encoding"],
            "gzip"
        );
    }
}
