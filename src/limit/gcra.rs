//! The GCRA limits of `limit`, on governor: per-caller (keyed) and shared (direct)
//! limiters on tokio's clock, the kinds of limit and how each refuses, and the allowance a
//! request is told of (`RateLimit-Policy` / `RateLimit` for its caller).
//!
//! Invariants: a refusal's wait is whole seconds rounded up, never zero; limiters read
//! tokio's clock, so paused-time tests drive them.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota as GcraQuota, RateLimiter};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::caller::CallerId;
use crate::config::Rate;
use crate::error::{GatewayError, Refusal};

pub(super) type Keyed =
    RateLimiter<CallerId, DashMapStateStore<CallerId>, TokioClock, StateInformationMiddleware>;

pub(super) type Direct =
    RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// Governor's clock on tokio's time, as the holds and the cache read it: buckets refill as
/// tokio's clock moves, so a test that pauses time sees them refill when it advances it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct TokioClock;

/// An instant of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tick(Instant);

impl Clock for TokioClock {
    type Instant = Tick;

    fn now(&self) -> Tick {
        Tick(Instant::now())
    }
}

impl Reference for Tick {
    fn duration_since(&self, earlier: Tick) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Tick {
        Tick(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl std::ops::Add<Nanos> for Tick {
    type Output = Tick;

    fn add(self, duration: Nanos) -> Tick {
        Tick(self.0 + Duration::from(duration))
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Upstream,
    UpstreamGlobal,
    UpstreamHold,
    UpstreamMethod,
    Points,
    QuotaReserve,
    SiteQuota,
    UpstreamBurst,
    UpstreamWrite,
}

impl LimitKind {
    pub(crate) const ALL: [LimitKind; 10] = [
        LimitKind::Requests,
        LimitKind::Upstream,
        LimitKind::UpstreamGlobal,
        LimitKind::UpstreamHold,
        LimitKind::UpstreamMethod,
        LimitKind::Points,
        LimitKind::QuotaReserve,
        LimitKind::SiteQuota,
        LimitKind::UpstreamBurst,
        LimitKind::UpstreamWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Upstream => "upstream",
            LimitKind::UpstreamGlobal => "upstream-global",
            LimitKind::UpstreamHold => "upstream-hold",
            LimitKind::UpstreamMethod => "upstream-method",
            LimitKind::Points => "points",
            LimitKind::QuotaReserve => "quota-reserve",
            LimitKind::SiteQuota => "site-quota",
            LimitKind::UpstreamBurst => "upstream-burst",
            LimitKind::UpstreamWrite => "upstream-write",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::Requests => "this caller's request rate limit (wikigate)",
            LimitKind::Upstream => "this caller's upstream allowance (wikigate)",
            LimitKind::UpstreamGlobal => "the global upstream budget (wikigate)",
            LimitKind::UpstreamHold => {
                "an upstream hold: Confluence asked wikigate to back off (Retry-After)"
            }
            LimitKind::UpstreamMethod => "the upstream budget of this method (wikigate)",
            LimitKind::Points => "this caller's hourly Atlassian points budget (wikigate)",
            LimitKind::QuotaReserve => {
                "the site's quota is low: what is left is kept for callers of higher priority (wikigate)"
            }
            LimitKind::SiteQuota => {
                "Confluence's points quota for this site is spent until its window resets"
            }
            LimitKind::UpstreamBurst => {
                "Confluence's per-second burst limit of this endpoint and method (paced by wikigate)"
            }
            LimitKind::UpstreamWrite => {
                "Confluence's write limit of this resource: writes to it are spaced out"
            }
        }
    }
}

/// The state of one limit after a decision, for the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub kind: LimitKind,
    /// Bucket size (`q`) and the seconds it takes to refill from empty (`w`).
    pub(super) quota: u32,
    pub(super) window: u64,
    /// Requests left now (`r`) and seconds until the bucket is full again (`t`).
    pub(super) remaining: u32,
    pub(super) reset: u64,
}

pub(super) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

pub(super) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Allowance {
    /// The IETF `RateLimit-Policy` and `RateLimit` headers (structured-field form).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
    }

    pub(super) fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let name = self.kind.as_str();
        let policy = format!("\"{name}\";q={};w={}", self.quota, self.window);
        let state = format!("\"{name}\";r={};t={}", self.remaining, self.reset);
        match (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            (Ok(policy), Ok(state)) => {
                vec![
                    (RATELIMIT_POLICY.clone(), policy),
                    (RATELIMIT.clone(), state),
                ]
            }
            _ => Vec::new(),
        }
    }
}

impl LimitKind {
    /// This limit's refusal: wait `retry_after`, and (for a limit with a bucket) its state.
    pub fn refuse(self, retry_after: Duration, allowance: Option<Allowance>) -> GatewayError {
        GatewayError::RateLimited(Refusal {
            limit: self.as_str(),
            description: self.describe(),
            retry_after,
            headers: allowance.map_or_else(Vec::new, |a| a.headers()),
        })
    }
}

/// One limit: its governor state and the rate it was built from.
pub(super) struct Limit<L> {
    pub(super) rate: Rate,
    pub(super) limiter: L,
}

impl<L> Limit<L> {
    pub(super) fn period(&self) -> Duration {
        self.rate.per / self.rate.rate.get()
    }

    pub(super) fn allowance(&self, kind: LimitKind, remaining: u32) -> Allowance {
        let quota = self.rate.burst().get();
        let period = self.period();
        Allowance {
            kind,
            quota,
            window: ceil_secs(period * quota),
            remaining,
            reset: ceil_secs(period * quota.saturating_sub(remaining)),
        }
    }

    pub(super) fn decide(
        &self,
        kind: LimitKind,
        clock: &TokioClock,
        outcome: Result<StateSnapshot, NotUntil<Tick>>,
    ) -> Result<Allowance, GatewayError> {
        match outcome {
            Ok(snapshot) => Ok(self.allowance(kind, snapshot.remaining_burst_capacity())),
            Err(not_until) => Err(kind.refuse(
                not_until.wait_time_from(clock.now()),
                Some(self.allowance(kind, 0)),
            )),
        }
    }
}

/// The local GCRA quota for `rate`: this replica's share of it when `replicas` share it.
pub(super) fn gcra_quota(rate: &Rate, replicas: u32) -> GcraQuota {
    let share = |n: u32| NonZeroU32::new((n / replicas).max(1)).expect("at least 1");
    GcraQuota::with_period(rate.per / share(rate.rate.get()).get())
        .expect("validated: per > 0")
        .allow_burst(share(rate.burst().get()))
}

pub(super) fn keyed(rate: Option<Rate>, replicas: u32) -> Option<Limit<Keyed>> {
    rate.map(|rate| Limit {
        rate,
        limiter: Keyed::new(
            gcra_quota(&rate, replicas),
            DashMapStateStore::default(),
            TokioClock,
        ),
    })
}

pub(super) fn direct(rate: Option<Rate>, replicas: u32) -> Option<Limit<Direct>> {
    rate.map(|rate| Limit {
        rate,
        limiter: Direct::new(
            gcra_quota(&rate, replicas),
            InMemoryState::default(),
            TokioClock,
        ),
    })
}

pub(super) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
