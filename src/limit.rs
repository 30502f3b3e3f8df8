//! Rate limits and upstream back-pressure: spend Atlassian quota fairly and never past a hold.
//!
//! Three GCRA limits (governor), checked in this order:
//! - `requests` — per caller, every request, cache hits included (checked on arrival);
//! - `upstream` — per caller, only requests that go upstream (misses, writes, bypasses), so a
//!   cache hit never spends upstream allowance;
//! - `upstream_global` — one budget for all upstream traffic, tightened to half while upstream
//!   says `X-RateLimit-NearLimit: true`.
//!
//! Upstream holds: an upstream 429 (or 503 with `Retry-After`) holds off that upstream
//! credential until `Retry-After` (else `X-RateLimit-Reset`, else exponential backoff with
//! jitter), clamped to `limits.max_hold`. While held, requests for it never go upstream; when
//! the hold ends, exactly one request probes, and the others stay held until its answer.
//!
//! Invariants: a refusal names the limit that refused (`X-Wikigate-Limit`, and the body), and
//! carries `Retry-After` in whole seconds rounded up. Keyed state is reclaimed by
//! [`Limits::reclaim`] (every 30 s): idle callers cost nothing after their bucket refilled.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use governor::clock::{Clock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota, RateLimiter};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use crate::caller::{Caller, CallerId};
use crate::cluster::{Cluster, Decision};
use crate::config::{LimitsConfig, Rate};
use crate::error::{GatewayError, Refusal};

type Keyed =
    RateLimiter<CallerId, DashMapStateStore<CallerId>, TokioClock, StateInformationMiddleware>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

/// Governor's clock on tokio's time, as the holds and the cache read it: buckets refill as
/// tokio's clock moves, so a test that pauses time sees them refill when it advances it.
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

/// An instant of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(Instant);

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
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Upstream => "upstream",
            LimitKind::UpstreamGlobal => "upstream-global",
            LimitKind::UpstreamHold => "upstream-hold",
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
        }
    }
}

/// The state of one limit after a decision, for the `RateLimit` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub kind: LimitKind,
    /// Bucket size (`q`) and the seconds it takes to refill from empty (`w`).
    quota: u32,
    window: u64,
    /// Requests left now (`r`) and seconds until the bucket is full again (`t`).
    remaining: u32,
    reset: u64,
}

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

impl Allowance {
    /// The IETF `RateLimit-Policy` and `RateLimit` headers (structured-field form).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in self.headers() {
            headers.insert(name, value);
        }
    }

    fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
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
struct Limit<L> {
    rate: Rate,
    limiter: L,
}

impl<L> Limit<L> {
    fn period(&self) -> Duration {
        self.rate.per / self.rate.rate.get()
    }

    fn allowance(&self, kind: LimitKind, remaining: u32) -> Allowance {
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

    fn decide(
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

/// The local quota for `rate`: this replica's share of it when `replicas` share it.
fn quota(rate: &Rate, replicas: u32) -> Quota {
    let share = |n: u32| NonZeroU32::new((n / replicas).max(1)).expect("at least 1");
    Quota::with_period(rate.per / share(rate.rate.get()).get())
        .expect("validated: per > 0")
        .allow_burst(share(rate.burst().get()))
}

fn keyed(rate: Option<Rate>, replicas: u32) -> Option<Limit<Keyed>> {
    rate.map(|rate| Limit {
        rate,
        limiter: Keyed::new(
            quota(&rate, replicas),
            DashMapStateStore::default(),
            TokioClock,
        ),
    })
}

fn direct(rate: Option<Rate>, replicas: u32) -> Option<Limit<Direct>> {
    rate.map(|rate| Limit {
        rate,
        limiter: Direct::new(quota(&rate, replicas), InMemoryState::default(), TokioClock),
    })
}

/// Per-class limits, keyed by caller.
struct ClassLimits {
    requests: Option<Limit<Keyed>>,
    upstream: Option<Limit<Keyed>>,
}

/// A configured client's own limits, where it overrides its class.
struct ClientLimits {
    requests: Option<Limit<Direct>>,
    upstream: Option<Limit<Direct>>,
}

/// The credential an upstream hold applies to (a keyed hash; all zeros for anonymous).
pub type HoldKey = [u8; 16];

pub struct Limits {
    /// Redis, in multi-replica mode: the upstream limits are decided there while it is up.
    cluster: Option<Arc<Cluster>>,
    /// The configured limits; replaced whole by a reload (their buckets start full again).
    rules: ArcSwap<Rules>,
    tightened_until: Mutex<Option<Instant>>,
    /// Upstream holds outlive reloads: Confluence's back-off does not change with the config.
    holds: Mutex<HashMap<HoldKey, Hold>>,
    clock: TokioClock,
}

/// The limits a config describes.
struct Rules {
    classes: HashMap<Arc<str>, ClassLimits>,
    /// Per-client overrides, by client name.
    clients: HashMap<Arc<str>, ClientLimits>,
    global: Option<Limit<Direct>>,
    /// Half the global rate, consulted as well while upstream says it is near its limit.
    tight: Option<Limit<Direct>>,
    max_hold: Duration,
}

#[derive(Debug)]
struct Hold {
    until: Instant,
    /// Consecutive holds, for the backoff when upstream gives no hint.
    strikes: u32,
    /// When the single probe after the hold was let through.
    probe: Option<Instant>,
}

/// How long a probe may take before another request may probe instead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

impl Limits {
    /// `cluster`: enforce the upstream limits across replicas in Redis; while it is down (and
    /// for the `requests` limit always) each replica enforces its share.
    pub fn new(
        config: &LimitsConfig,
        clients: &[crate::config::ClientConfig],
        cluster: Option<Arc<Cluster>>,
    ) -> Limits {
        let replicas = cluster.as_ref().map_or(1, |c| c.replicas());
        Limits {
            rules: ArcSwap::from_pointee(Rules::new(config, clients, replicas)),
            cluster,
            tightened_until: Mutex::new(None),
            holds: Mutex::default(),
            clock: TokioClock,
        }
    }

    /// Replaces the limits (SIGHUP); holds in force stay in force.
    pub fn reload(&self, config: &LimitsConfig, clients: &[crate::config::ClientConfig]) {
        let replicas = self.cluster.as_ref().map_or(1, |c| c.replicas());
        self.rules
            .store(Arc::new(Rules::new(config, clients, replicas)));
    }
}

impl Rules {
    fn new(config: &LimitsConfig, clients: &[crate::config::ClientConfig], replicas: u32) -> Rules {
        let classes = config
            .classes
            .iter()
            .map(|(name, class)| {
                let limits = ClassLimits {
                    requests: keyed(class.requests, replicas),
                    upstream: keyed(class.upstream, replicas),
                };
                (Arc::from(name.as_str()), limits)
            })
            .collect();
        let clients = clients
            .iter()
            .map(|c| {
                let limits = ClientLimits {
                    requests: direct(c.requests, replicas),
                    upstream: direct(c.upstream, replicas),
                };
                (Arc::from(c.name.as_str()), limits)
            })
            .collect();
        let tight = config.upstream_global.map(|rate| Rate {
            rate: NonZeroU32::new((rate.rate.get() / 2).max(1)).expect("at least 1"),
            burst: Some(NonZeroU32::new((rate.burst().get() / 2).max(1)).expect("at least 1")),
            per: rate.per,
        });
        Rules {
            classes,
            clients,
            global: direct(config.upstream_global, replicas),
            tight: direct(tight, replicas),
            max_hold: config.max_hold,
        }
    }
}

impl Limits {
    /// The caller's `requests` limit: admits (with the state for the `RateLimit` headers, when
    /// the limit exists) or refuses with 429.
    pub fn check_request(&self, caller: &Caller) -> Result<Option<Allowance>, GatewayError> {
        self.check_caller(caller, LimitKind::Requests)
    }

    fn check_caller(
        &self,
        caller: &Caller,
        kind: LimitKind,
    ) -> Result<Option<Allowance>, GatewayError> {
        let rules = self.rules.load();
        fn pick(c: &ClientLimits, kind: LimitKind) -> Option<&Limit<Direct>> {
            match kind {
                LimitKind::Requests => c.requests.as_ref(),
                _ => c.upstream.as_ref(),
            }
        }
        if let CallerId::Client(name) = &caller.id
            && let Some(limit) = rules.clients.get(name).and_then(|c| pick(c, kind))
        {
            return limit
                .decide(kind, &self.clock, limit.limiter.check())
                .map(Some);
        }
        let Some(class) = rules.classes.get(&caller.class) else {
            return Ok(None);
        };
        let limit = match kind {
            LimitKind::Requests => class.requests.as_ref(),
            _ => class.upstream.as_ref(),
        };
        match limit {
            Some(limit) => limit
                .decide(kind, &self.clock, limit.limiter.check_key(&caller.id))
                .map(Some),
            None => Ok(None),
        }
    }

    /// Admits a request to go upstream for `caller` with the upstream credential `hold`:
    /// refused while that credential is held, over the caller's upstream allowance, or over
    /// the global budget.
    pub async fn admit_upstream(
        &self,
        caller: &Caller,
        hold: &HoldKey,
    ) -> Result<(), GatewayError> {
        let rules = self.rules.load();
        self.check_hold(hold)?;
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.is_up())
            && let Some(decided) = self.admit_in_cluster(cluster, caller).await
        {
            return decided;
        }
        self.check_caller(caller, LimitKind::Upstream)?;
        if let Some(global) = &rules.global {
            global.decide(
                LimitKind::UpstreamGlobal,
                &self.clock,
                global.limiter.check(),
            )?;
            if self.tightened()
                && let Some(tight) = &rules.tight
            {
                tight.decide(
                    LimitKind::UpstreamGlobal,
                    &self.clock,
                    tight.limiter.check(),
                )?;
            }
        }
        Ok(())
    }

    /// The upstream limits decided in Redis across replicas; `None` when Redis failed mid-way
    /// (the caller then falls back to the local share).
    async fn admit_in_cluster(
        &self,
        cluster: &Cluster,
        caller: &Caller,
    ) -> Option<Result<(), GatewayError>> {
        let rules = self.rules.load();
        let caller_rate = match &caller.id {
            CallerId::Client(name) => rules
                .clients
                .get(name)
                .and_then(|c| c.upstream.as_ref())
                .map(|l| l.rate),
            _ => None,
        }
        .or_else(|| {
            rules
                .classes
                .get(&caller.class)
                .and_then(|c| c.upstream.as_ref())
                .map(|l| l.rate)
        });
        let mut checks = Vec::with_capacity(3);
        if let Some(rate) = caller_rate {
            checks.push((
                LimitKind::Upstream,
                format!("u:{}", caller.id.bucket()),
                rate,
            ));
        }
        if let Some(global) = &rules.global {
            checks.push((LimitKind::UpstreamGlobal, "g".to_owned(), global.rate));
            if self.tightened()
                && let Some(tight) = &rules.tight
            {
                checks.push((LimitKind::UpstreamGlobal, "gt".to_owned(), tight.rate));
            }
        }
        for (kind, bucket, rate) in checks {
            let interval = rate.per / rate.rate.get();
            let burst = rate.burst().get();
            if let Decision::Refused { wait } = cluster.gcra(&bucket, interval, burst).await? {
                let limit = Limit { rate, limiter: () };
                return Some(Err(kind.refuse(wait, Some(limit.allowance(kind, 0)))));
            }
        }
        Some(Ok(()))
    }

    fn tightened(&self) -> bool {
        let mut until = self.tightened_until.lock().expect("lock");
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn check_hold(&self, key: &HoldKey) -> Result<(), GatewayError> {
        let mut holds = self.holds.lock().expect("lock");
        let Some(hold) = holds.get_mut(key) else {
            return Ok(());
        };
        let now = Instant::now();
        let refuse = |retry_after| LimitKind::UpstreamHold.refuse(retry_after, None);
        if now < hold.until {
            return Err(refuse(hold.until - now));
        }
        match hold.probe {
            Some(since) if now.duration_since(since) < PROBE_TIMEOUT => {
                Err(refuse(Duration::from_secs(1)))
            }
            _ => {
                hold.probe = Some(now);
                Ok(())
            }
        }
    }

    /// Learns from an upstream answer: a 429 (or a 503 with `Retry-After`) starts or extends
    /// the hold on `key` (and returns true); any other answer ends it. `X-RateLimit-NearLimit`
    /// tightens the global budget until upstream's reset.
    pub fn observe(&self, key: &HoldKey, status: StatusCode, headers: &HeaderMap) -> bool {
        let rules = self.rules.load();
        let now = Instant::now();
        if headers
            .get("x-ratelimit-nearlimit")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
        {
            let reset = reset_in(headers)
                .unwrap_or(Duration::from_secs(60))
                .min(rules.max_hold);
            *self.tightened_until.lock().expect("lock") = Some(now + reset);
        }
        let throttled = status == StatusCode::TOO_MANY_REQUESTS
            || (status == StatusCode::SERVICE_UNAVAILABLE
                && headers.contains_key(http::header::RETRY_AFTER));
        let mut holds = self.holds.lock().expect("lock");
        if !throttled {
            holds.remove(key);
            return false;
        }
        let strikes = holds.get(key).map_or(0, |h| h.strikes) + 1;
        let wait = retry_after(headers)
            .or_else(|| reset_in(headers))
            .unwrap_or_else(|| backoff(strikes))
            .min(rules.max_hold);
        holds.insert(
            *key,
            Hold {
                until: now + wait,
                strikes,
                probe: None,
            },
        );
        true
    }

    /// How many credentials are held right now, and the longest remaining hold.
    pub fn holds(&self) -> (usize, Duration) {
        let now = Instant::now();
        let holds = self.holds.lock().expect("lock");
        let active = holds.values().filter(|h| h.until > now);
        active.fold((0, Duration::ZERO), |(n, longest), h| {
            (n + 1, longest.max(h.until - now))
        })
    }

    /// A request admitted for `key` failed before upstream answered: if it was the probe,
    /// another request may probe at once.
    pub fn release_probe(&self, key: &HoldKey) {
        if let Some(hold) = self.holds.lock().expect("lock").get_mut(key) {
            hold.probe = None;
        }
    }

    /// Drops state that no longer limits anyone: refilled buckets of idle callers, ended holds.
    pub fn reclaim(&self) {
        let rules = self.rules.load();
        for class in rules.classes.values() {
            for limit in [&class.requests, &class.upstream].into_iter().flatten() {
                limit.limiter.retain_recent();
                limit.limiter.shrink_to_fit();
            }
        }
        let now = Instant::now();
        self.holds
            .lock()
            .expect("lock")
            .retain(|_, hold| hold.until + PROBE_TIMEOUT > now || hold.probe.is_some());
    }

    /// How many callers have keyed limiter state right now.
    pub fn tracked_callers(&self) -> usize {
        let rules = self.rules.load();
        rules
            .classes
            .values()
            .flat_map(|c| [&c.requests, &c.upstream])
            .flatten()
            .map(|l| l.limiter.len())
            .sum()
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// Atlassian's `X-RateLimit-Reset`: an ISO 8601 timestamp (or, from some proxies, seconds).
fn reset_in(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("x-ratelimit-reset")?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_rfc3339(value)?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A UTC RFC 3339 timestamp (`2024-05-01T12:00:00Z`, `2024-05-01T12:00Z`, fractions allowed).
fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let datetime: toml::value::Datetime = value.parse().ok()?;
    let (date, time) = (datetime.date?, datetime.time?);
    if !matches!(datetime.offset, Some(toml::value::Offset::Z)) {
        return None;
    }
    // Howard Hinnant's days-from-civil.
    let (y, m, d) = (
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0));
    let secs = u64::try_from(secs).ok()?;
    Some(
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs)
            + Duration::from_nanos(u64::from(time.nanosecond.unwrap_or(0))),
    )
}

/// 1 s, 2 s, 4 s … up to 64 s, each with up to 25 % random jitter on top.
pub fn backoff(strikes: u32) -> Duration {
    let base = Duration::from_secs(1 << strikes.saturating_sub(1).min(6));
    base + base.mul_f64(jitter() * 0.25)
}

/// A random fraction in [0, 1).
pub fn jitter() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hints_are_read_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), None);
        assert_eq!(reset_in(&headers), Some(Duration::from_secs(7)));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        let epoch = parse_rfc3339("1970-01-02T00:00:01Z").unwrap();
        assert_eq!(epoch, SystemTime::UNIX_EPOCH + Duration::from_secs(86_401));
        let y2k = parse_rfc3339("2000-03-01T00:00:00.5Z").unwrap();
        assert_eq!(
            y2k.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            951_868_800_500
        );
        assert!(parse_rfc3339("2000-03-01T00:00:00+02:00").is_none());
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        for strikes in 1..10 {
            let d = backoff(strikes);
            let base = 1u64 << (strikes - 1).min(6);
            assert!(d >= Duration::from_secs(base) && d < Duration::from_secs(base).mul_f64(1.25));
        }
    }

    #[tokio::test]
    async fn near_limit_halves_the_global_budget_until_the_reset() {
        let config = LimitsConfig {
            upstream_global: Some(Rate {
                rate: NonZeroU32::new(10).unwrap(),
                per: Duration::from_secs(60),
                burst: None,
            }),
            ..LimitsConfig::default()
        };
        let caller = Caller {
            id: CallerId::Address([127, 0, 0, 1].into()),
            class: "default".into(),
        };
        async fn admitted(limits: &Limits, caller: &Caller) -> usize {
            let mut n = 0;
            for _ in 0..20 {
                n += usize::from(limits.admit_upstream(caller, &[0; 16]).await.is_ok());
            }
            n
        }
        assert_eq!(
            admitted(&Limits::new(&config, &[], None), &caller).await,
            10
        );
        let tightened = Limits::new(&config, &[], None);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-nearlimit", HeaderValue::from_static("true"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("60"));
        tightened.observe(&[0; 16], StatusCode::OK, &headers);
        assert_eq!(admitted(&tightened, &caller).await, 5);
    }

    #[test]
    fn a_hold_lets_exactly_one_probe_through_when_it_ends() {
        let limits = Limits::new(&LimitsConfig::default(), &[], None);
        let key = [1; 16];
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("0"));
        limits.observe(&key, StatusCode::TOO_MANY_REQUESTS, &headers);
        assert!(limits.check_hold(&key).is_ok(), "the probe");
        let refused = limits.check_hold(&key).unwrap_err();
        assert!(matches!(
            refused,
            GatewayError::RateLimited(Refusal {
                limit: "upstream-hold",
                ..
            })
        ));
        limits.observe(&key, StatusCode::OK, &HeaderMap::new());
        assert!(limits.check_hold(&key).is_ok());
        assert!(
            limits.check_hold(&[2; 16]).is_ok(),
            "other credentials are not held"
        );
    }
}
