//! The fake site's per-second burst buckets and per-resource write limits, as Atlassian's
//! edge applies and states them.
//!
//! - **Burst buckets**: one per endpoint (route) and method, for every caller. Each holds
//!   `limit` tokens and refills `refill` of them every `per`, steadily: a bucket's size is not
//!   its rate. Every answer states its bucket: `X-RateLimit-Limit` and
//!   `X-RateLimit-Remaining`, and, when `state_refill` (as Atlassian's Data Center edge does;
//!   its Cloud edge does not), `X-RateLimit-FillRate` per `X-RateLimit-Interval-Seconds`
//!   (whole seconds); a call to a dry bucket is
//!   refused: 429, `RateLimit-Reason: confluence-burst-based`, `Retry-After` in whole seconds
//!   (at least 1) and `X-RateLimit-Reset` as Atlassian writes it on 429s
//!   (`yyyy-MM-ddTHH:mmZ`, the request's time plus `Retry-After`).
//! - **Write limits**: at most `writes` writes to one resource (path) every `per`; past it,
//!   429 with `RateLimit-Reason: confluence-per-content-on-write` and `Retry-After`. Nothing
//!   states them on other answers.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::routes::Route;

/// A burst bucket's size, and its refill: `refill` tokens every `per`.
#[derive(Debug, Clone, Copy)]
pub struct FakeBursts {
    pub limit: u32,
    pub refill: u32,
    pub per: Duration,
    /// State the refill (`X-RateLimit-FillRate`, `X-RateLimit-Interval-Seconds`).
    pub state_refill: bool,
}

impl FakeBursts {
    /// A bucket of `limit` tokens that refills `rate` a second, unstated (as the Cloud edge).
    pub fn new(limit: u32, rate: u32) -> FakeBursts {
        FakeBursts {
            limit,
            refill: rate,
            per: Duration::from_secs(1),
            state_refill: false,
        }
    }
}

impl Default for FakeBursts {
    /// A captured March 2026 answer's size (`X-Ratelimit-Limit: 350`); the refill, which the
    /// Cloud edge does not state, a third of it a second.
    fn default() -> Self {
        FakeBursts::new(350, 100)
    }
}

/// Writes allowed to one resource per period.
#[derive(Debug, Clone, Copy)]
pub struct FakeWriteLimit {
    pub writes: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Tokens {
    left: f64,
    at: Instant,
}

/// Every bucket of the fake site, and what each resource's writes spent.
#[derive(Debug)]
pub(super) struct Limits {
    bursts: Option<FakeBursts>,
    writes: Option<FakeWriteLimit>,
    buckets: Mutex<HashMap<(Route, http::Method), Tokens>>,
    /// Per resource: the window's start and the writes in it.
    written: Mutex<HashMap<String, (Instant, u32)>>,
    refused: Mutex<u64>,
}

/// Why a call was refused, and its answer's headers.
pub(super) struct Refused {
    pub message: &'static str,
    pub headers: HeaderMap,
}

impl Limits {
    pub(super) fn new(bursts: Option<FakeBursts>, writes: Option<FakeWriteLimit>) -> Limits {
        Limits {
            bursts,
            writes,
            buckets: Mutex::default(),
            written: Mutex::default(),
            refused: Mutex::new(0),
        }
    }

    /// Takes a token of the call's bucket (and, for a write, of its resource's allowance);
    /// the headers its answer states, or the refusal.
    pub(super) fn take(
        &self,
        route: Route,
        method: &http::Method,
        path: &str,
        write: bool,
    ) -> Result<HeaderMap, Refused> {
        let now = Instant::now();
        let mut stated = HeaderMap::new();
        if let Some(bursts) = self.bursts {
            let FakeBursts {
                limit, refill, per, ..
            } = bursts;
            let method = match *method {
                http::Method::HEAD => http::Method::GET,
                ref other => other.clone(),
            };
            let mut buckets = self.buckets.lock();
            let tokens = buckets.entry((route, method)).or_insert(Tokens {
                left: f64::from(limit),
                at: now,
            });
            let rate = f64::from(refill.max(1)) / per.as_secs_f64();
            let elapsed = now.saturating_duration_since(tokens.at).as_secs_f64();
            tokens.left = (tokens.left + elapsed * rate).min(f64::from(limit));
            tokens.at = now;
            if tokens.left < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - tokens.left) / rate);
                let mut headers = refusal("confluence-burst-based", wait);
                headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
                headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
                *self.refused.lock() += 1;
                return Err(Refused {
                    message: "Rate limit exceeded: too many requests to this endpoint, slow down",
                    headers,
                });
            }
            tokens.left -= 1.0;
            stated.insert("x-ratelimit-limit", HeaderValue::from(limit));
            stated.insert(
                "x-ratelimit-remaining",
                HeaderValue::from(tokens.left.floor() as u64),
            );
            if bursts.state_refill {
                stated.insert("x-ratelimit-fillrate", HeaderValue::from(refill));
                stated.insert(
                    "x-ratelimit-interval-seconds",
                    HeaderValue::from(per.as_secs().max(1)),
                );
            }
        }
        if let (Some(FakeWriteLimit { writes, per }), true) = (self.writes, write) {
            let mut written = self.written.lock();
            let (start, count) = written.entry(path.to_owned()).or_insert((now, 0));
            if now.saturating_duration_since(*start) >= per {
                (*start, *count) = (now, 0);
            }
            if *count >= writes {
                let wait = (*start + per).saturating_duration_since(now);
                *self.refused.lock() += 1;
                return Err(Refused {
                    message: "Rate limit exceeded: too many writes to this resource",
                    headers: refusal("confluence-per-content-on-write", wait),
                });
            }
            *count += 1;
        }
        Ok(stated)
    }

    /// Calls refused by a burst bucket or a write limit.
    pub(super) fn refused(&self) -> u64 {
        *self.refused.lock()
    }
}

/// A 429's headers: the reason, `Retry-After` (whole seconds, at least 1) and
/// `X-RateLimit-Reset` as Atlassian writes it on 429s.
fn refusal(reason: &'static str, wait: Duration) -> HeaderMap {
    let secs = super::points::ceil_secs(wait).max(1);
    let reset = SystemTime::now() + Duration::from_secs(secs);
    let since_epoch = reset
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let minute = &crate::rfc3339::second(since_epoch)[..16];
    let mut headers = HeaderMap::new();
    headers.insert("ratelimit-reason", HeaderValue::from_static(reason));
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    if let Ok(value) = HeaderValue::from_bytes(&[minute, b"Z"].concat()) {
        headers.insert("x-ratelimit-reset", value);
    }
    headers
}
