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
//!
//! The parts: this file (the entry, what it keeps, how it answers), `buffered` (an answer
//! before it is stored), `vary` (upstream's `Vary`), `l2` (the entry as bytes for the
//! shared tier).

mod buffered;
mod l2;
#[cfg(test)]
mod tests;
mod vary;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::etag::ETags;
use super::heads::{self, Head};
use super::outcome::CACHE_STATUS;
use crate::body::Body;
use crate::coding::{self, Accepts, Coding};
use crate::forward;
pub(crate) use buffered::Buffered;
use vary::{Vary, fingerprint, vary_names, vary_value};
pub(crate) use vary::{add_vary_accept_encoding, varies_on_everything};

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
    /// `Age`, `Cache-Control` and `ETag` for the latest second of age and the representation
    /// an answer was made in: every such hit within the same second shares them instead of
    /// formatting its own.
    hit_values: ArcSwapOption<HitValues>,
    /// Refresh-ahead: whether a read claimed its refresh, and what refreshes of its key found.
    pub(super) refresh: Refresh,
}

/// An entry's refresh-ahead state.
#[derive(Debug, Default)]
pub(crate) struct Refresh {
    /// A read claimed this entry's refresh: one per entry.
    claimed: AtomicBool,
    /// What refreshes of this key found so far, carried from entry to entry.
    pub(super) history: History,
    /// When the entry this refresh replaced would have expired: the first hit after it is a
    /// read the refresh saved from a miss.
    replaced_until: Option<Instant>,
    saved: AtomicBool,
}

/// Refreshes of one key and how many found its answer changed: Cho and Garcia-Molina's `n` and
/// `X` ("Estimating frequency of change", 2003), from which the key's rate of change is
/// estimated (`cache::refresh`). Halved together past 32, so that old evidence fades.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct History {
    pub(crate) refreshes: u8,
    pub(crate) changed: u8,
}

impl History {
    /// With one more refresh, which found the answer `changed`.
    pub(crate) fn after(self, changed: bool) -> History {
        let (mut refreshes, mut changed_count) =
            (self.refreshes + 1, self.changed + u8::from(changed));
        if refreshes > 32 {
            refreshes /= 2;
            changed_count /= 2;
        }
        History {
            refreshes,
            changed: changed_count,
        }
    }
}

/// The values a hit writes that change once a second at most, and the representation's
/// validator beside them: made by the first hit of a second, shared by that second's others.
#[derive(Debug)]
struct HitValues {
    age: u64,
    coding: Coding,
    etag: HeaderValue,
    age_value: HeaderValue,
    cache_control: HeaderValue,
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
pub(super) fn exchange_ids(headers: &HeaderMap) -> HeaderMap {
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
    TIMING_ALLOW_ORIGIN,
];

const TIMING_ALLOW_ORIGIN: HeaderName = HeaderName::from_static("timing-allow-origin");

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
            .map(|(name, value)| (stored_name(name), stored_value(value)))
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
            hit_values: ArcSwapOption::empty(),
            refresh: Refresh::default(),
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
            hit_values: ArcSwapOption::empty(),
            refresh: Refresh {
                claimed: AtomicBool::new(self.refresh.claimed.load(Ordering::Relaxed)),
                history: self.refresh.history,
                replaced_until: self.refresh.replaced_until,
                saved: AtomicBool::new(self.refresh.saved.load(Ordering::Relaxed)),
            },
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

    /// Whether a read at `now` should refresh this fresh entry ahead of its expiry: past
    /// `after` of its TTL plus up to a tenth more, and no read claimed it before. The first
    /// read to see it due claims it. The tenth is the entry's own, drawn from where it lives
    /// in memory: different on every replica (which then do not refresh in step), and nothing
    /// to compute on the hit path.
    pub fn claim_refresh(&self, now: Instant, after: f64) -> bool {
        let jitter = ((self as *const Entry as usize) >> 6) % 100;
        let share = after + jitter as f64 / 1000.0;
        self.age(now) >= self.lifetime().ttl.mul_f64(share)
            && !self.refresh.claimed.load(Ordering::Relaxed)
            && !self.refresh.claimed.swap(true, Ordering::AcqRel)
    }

    /// Whether this expired entry's refresh ahead of expiry was claimed moments ago — within a
    /// tenth of its TTL past it — and may still land: it is served meanwhile, as
    /// stale-while-revalidate would, rather than making a read wait for the refresh.
    pub fn refreshing(&self, now: Instant) -> bool {
        let ttl = self.lifetime().ttl;
        self.refresh.claimed.load(Ordering::Relaxed) && self.age(now) < ttl + ttl / 10
    }

    /// Whether `other` holds the same content (the same decoded body, whatever coding each
    /// holds it in).
    pub fn same_content(&self, other: &Entry) -> bool {
        self.etags == other.etags
    }

    /// Whether `body` (decoded) is this entry's body.
    pub fn same_body(&self, body: &[u8]) -> bool {
        self.etags == ETags::of(body)
    }

    /// This entry as the refresh of `replaced` stored it: the key's history with this refresh
    /// (`changed` or not), and when `replaced` would have expired.
    pub fn refreshed_from(mut self, replaced: &Entry, changed: bool) -> Entry {
        self.refresh.history = replaced.refresh.history.after(changed);
        self.refresh.replaced_until = Some(replaced.stored_at + replaced.lifetime().ttl);
        self
    }

    /// Whether a hit now is one a refresh saved from a miss (counted once per entry; the
    /// clock is read only for refreshed entries).
    pub fn saved_by_refresh(&self) -> bool {
        self.refresh
            .replaced_until
            .is_some_and(|until| Instant::now() >= until)
            && !self.refresh.saved.swap(true, Ordering::Relaxed)
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

    /// Whether upstream's `Vary` names request headers besides `Accept-Encoding`.
    pub fn varies(&self) -> bool {
        self.vary.is_some()
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
        let [etag, age, cache_control] = self.hit_values(coding, now);
        let headers = if not_modified {
            // RFC 9110 §15.4.5: a 304 carries the validators and caching headers only.
            let mut headers = HeaderMap::with_capacity(5);
            if let Some(vary) = self.headers.get(header::VARY) {
                headers.insert(header::VARY, vary.clone());
            }
            headers.insert(header::CACHE_CONTROL, cache_control);
            headers.insert(header::AGE, age);
            headers.insert(header::ETAG, etag);
            headers.insert(CACHE_STATUS.clone(), status);
            headers
        } else {
            // The stored headers name no representation: the hit head adds this one's.
            let mut headers = self.headers.hit(coding, [etag, cache_control, age, status]);
            if head {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            headers
        };
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

    /// `ETag`, `Age` and `Cache-Control: private, max-age` of `coding`'s representation at
    /// `now`, in whole seconds so that the two add up to the TTL; from the second second of
    /// age on, made once per second and representation and shared by that second's hits.
    fn hit_values(&self, coding: Coding, now: Instant) -> [HeaderValue; 3] {
        let age = self.age(now).as_secs();
        if let Some(current) = &*self.hit_values.load()
            && current.age == age
            && current.coding == coding
        {
            return [
                current.etag.clone(),
                current.age_value.clone(),
                current.cache_control.clone(),
            ];
        }
        let remaining = self.lifetime().ttl.as_secs().saturating_sub(age);
        let made = HitValues {
            age,
            coding,
            etag: self.etags.get(coding),
            age_value: HeaderValue::from(age),
            cache_control: HeaderValue::from_str(&format!("private, max-age={remaining}"))
                .expect("ascii"),
        };
        let values = [
            made.etag.clone(),
            made.age_value.clone(),
            made.cache_control.clone(),
        ];
        // Not for the answer that stored the entry (age 0): most entries are never asked for
        // again, and would carry the memo for nothing.
        if age > 0 {
            self.hit_values.store(Some(Arc::new(made)));
        }
        values
    }

    /// The stored end-to-end headers.
    pub fn headers(&self) -> HeaderMap {
        HeaderMap::clone(&self.headers)
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

/// Names almost every stored answer has that `http` has no constant for, kept as statics.
static COMMON_NAMES: [HeaderName; 2] =
    [HeaderName::from_static("x-aaccountid"), TIMING_ALLOW_ORIGIN];

/// A header name as an entry keeps it: a standard or common one as a constant, else a copy
/// of its own.
fn stored_name(name: &HeaderName) -> HeaderName {
    if let Some(common) = COMMON_NAMES.iter().find(|c| *c == name) {
        return common.clone();
    }
    HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone())
}

/// A header value as an entry keeps it: a common one as a static, else a copy of its own.
fn stored_value(value: &HeaderValue) -> HeaderValue {
    if let Some(common) = COMMON_VALUES.iter().find(|c| *c == value) {
        return common.clone();
    }
    let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    copy.set_sensitive(value.is_sensitive());
    copy
}
