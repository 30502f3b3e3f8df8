//! Rate limits, points budgets and upstream back-pressure: spend Atlassian quota fairly, keep
//! the reserve for those who need it most, pace calls by Atlassian's burst buckets, and never
//! call past a hold.
//!
//! On arrival, every request (cache hits included) is checked against its caller's
//! `requests` GCRA limit (governor). A request about to go upstream (a miss, a write, a
//! bypass — never a hit) is then admitted ([`Limits::admit_upstream`]) by, in this order:
//! - `upstream-hold` — the credential's hold after an upstream 429 with no reason (below);
//! - `site-quota` — Confluence refused for its points quota (or said none is left): nothing
//!   goes until the window resets;
//! - `quota-reserve` — under `quota.reserve` (or while upstream says it is near its limit),
//!   the classes of lower priority are refused, the lowest first: with n priorities, rank k
//!   (0 the lowest) is refused under `reserve × (n−1−k)/(n−1)` of the quota left; the highest
//!   never;
//! - `points` — the caller's hourly points budget (per class, each caller its own; or per
//!   client), windows aligned to the top of the UTC hour; charged after the answer, when its
//!   cost is known;
//! - `upstream-write` — a write to a resource Confluence refused a write to for its
//!   per-resource write limit, until that 429's `Retry-After`;
//! - `upstream` — per caller GCRA, so a cache hit never spends upstream allowance;
//! - `upstream-global` — one GCRA budget for all upstream traffic, tightened to half while
//!   upstream says `X-RateLimit-NearLimit: true`;
//! - `upstream-method` — per-method GCRA budgets (`quota.methods`), of the operator's own;
//! - `upstream-burst` — Atlassian's burst bucket of the call's route and method (`burst`):
//!   the call waits for its token, at most `upstream.burst_wait`, else is refused.
//!
//! What the answer says is learned by [`Pass::answered`], each limit at its own scope: a
//! quota 429 stops the site (`quota`), a burst 429 that route and method, a write-limit 429
//! writes to that resource; a 429 with no reason (or a 503 with `Retry-After`) holds off the
//! upstream credential until `Retry-After` (else `X-RateLimit-Reset`, else exponential backoff
//! with jitter), clamped to `limits.max_hold`. While held, requests for it never go upstream;
//! when the hold ends, exactly one request probes, and the others stay held until its answer.
//!
//! In multi-replica mode the upstream GCRAs, the burst pacing and the points budgets live in
//! Redis; while it is down each replica enforces its share (`1/cluster.replicas`), and paces
//! by its own copy of each bucket.
//!
//! Invariants: a refusal names the limit that refused (`X-Wikigate-Limit`, and the body), and
//! carries `Retry-After` in whole seconds rounded up. A [`Pass`] is settled once: by its
//! answer, or, dropped without one (a later limit refused, the call failed), by giving back
//! the hold's probe it took and its claim on the burst bucket. Keyed state is reclaimed by
//! [`Limits::reclaim`] (every 30 s): idle callers cost nothing after their bucket refilled,
//! and a past hour's spending is forgotten.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::{Clock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{NotUntil, Quota as GcraQuota, RateLimiter};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::burst::{self, BucketId, Bursts, Pace, Ticket};
use crate::caller::{Caller, CallerId};
use crate::cluster::{Cluster, Decision};
use crate::config::{ClientConfig, Config, LimitsConfig, PointsBudget, QuotaConfig, Rate};
use crate::error::{GatewayError, Refusal};
use crate::hints::{self, Hints, Reason};
use crate::quota::{self, Quota};

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
    UpstreamMethod,
    Points,
    QuotaReserve,
    SiteQuota,
    UpstreamBurst,
    UpstreamWrite,
}

impl LimitKind {
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

/// The local GCRA quota for `rate`: this replica's share of it when `replicas` share it.
fn gcra_quota(rate: &Rate, replicas: u32) -> GcraQuota {
    let share = |n: u32| NonZeroU32::new((n / replicas).max(1)).expect("at least 1");
    GcraQuota::with_period(rate.per / share(rate.rate.get()).get())
        .expect("validated: per > 0")
        .allow_burst(share(rate.burst().get()))
}

fn keyed(rate: Option<Rate>, replicas: u32) -> Option<Limit<Keyed>> {
    rate.map(|rate| Limit {
        rate,
        limiter: Keyed::new(
            gcra_quota(&rate, replicas),
            DashMapStateStore::default(),
            TokioClock,
        ),
    })
}

fn direct(rate: Option<Rate>, replicas: u32) -> Option<Limit<Direct>> {
    rate.map(|rate| Limit {
        rate,
        limiter: Direct::new(
            gcra_quota(&rate, replicas),
            InMemoryState::default(),
            TokioClock,
        ),
    })
}

/// Per-class limits, keyed by caller.
struct ClassLimits {
    requests: Option<Limit<Keyed>>,
    upstream: Option<Limit<Keyed>>,
    /// Each caller's points per hour (this replica's share while the cluster is down).
    points: Option<NonZeroU32>,
    /// Under this share of the site's quota left, the class is refused upstream calls.
    reserve_below: f64,
}

/// A configured client's own limits, where it overrides its class.
struct ClientLimits {
    requests: Option<Limit<Direct>>,
    upstream: Option<Limit<Direct>>,
    points: Option<NonZeroU32>,
}

/// What the limits are made from: the `[limits]` and `[quota]` sections and the clients.
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    pub limits: &'a LimitsConfig,
    pub quota: &'a QuotaConfig,
    pub clients: &'a [ClientConfig],
    /// `upstream.burst_window` and `upstream.burst_wait` (fixed until a restart).
    pub burst: (Duration, Duration),
}

impl<'a> Policy<'a> {
    pub fn of(config: &'a Config) -> Policy<'a> {
        Policy {
            limits: &config.limits,
            quota: &config.quota,
            clients: &config.callers.clients,
            burst: (config.upstream.burst_window, config.upstream.burst_wait),
        }
    }
}

/// A resource a write changes (a hash of its path), for Confluence's per-resource write
/// limits.
pub type WriteKey = [u8; 16];

/// The resource a request writes to: its path's, for POST, PUT and DELETE; `None` for reads.
pub fn write_key(method: &Method, path: &str) -> Option<WriteKey> {
    if !matches!(*method, Method::POST | Method::PUT | Method::DELETE) {
        return None;
    }
    let mut key = [0; 16];
    key.copy_from_slice(&blake3::hash(path.as_bytes()).as_bytes()[..16]);
    Some(key)
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
    /// The site's standing (for the reserve) and the spending it counts.
    quota: Arc<Quota>,
    /// Points each caller with a budget spent this hour, on this replica: (hour, points).
    /// Spending outlives reloads, as the hour it belongs to does.
    spent: Mutex<HashMap<CallerId, (u64, u64)>>,
    /// Atlassian's burst buckets, per route and method, as upstream states them.
    bursts: Bursts,
    /// Resources Confluence refused a write to for its per-resource write limit: until when.
    write_holds: Mutex<HashMap<WriteKey, Instant>>,
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
    /// GET (and HEAD), POST, PUT, DELETE.
    methods: [Option<Limit<Direct>>; 4],
    max_hold: Duration,
    replicas: u32,
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
    /// `cluster`: enforce the upstream limits and points budgets across replicas in Redis;
    /// while it is down (and for the `requests` limit always) each replica enforces its share.
    /// `quota`: the site's standing, which the reserve reads and the spending updates.
    pub fn new(policy: Policy<'_>, cluster: Option<Arc<Cluster>>, quota: Arc<Quota>) -> Limits {
        let replicas = cluster.as_ref().map_or(1, |c| c.replicas());
        let (window, wait) = policy.burst;
        Limits {
            rules: ArcSwap::from_pointee(Rules::new(policy, replicas)),
            cluster,
            tightened_until: Mutex::new(None),
            holds: Mutex::default(),
            quota,
            spent: Mutex::default(),
            bursts: Bursts::new(window, wait),
            write_holds: Mutex::default(),
            clock: TokioClock,
        }
    }

    /// Replaces the limits (SIGHUP); holds in force stay in force, and so does this hour's
    /// spending.
    pub fn reload(&self, policy: Policy<'_>) {
        let replicas = self.cluster.as_ref().map_or(1, |c| c.replicas());
        self.rules.store(Arc::new(Rules::new(policy, replicas)));
    }
}

impl Rules {
    fn new(policy: Policy<'_>, replicas: u32) -> Rules {
        let Policy {
            limits: config,
            quota,
            clients,
            burst: _,
        } = policy;
        let share = |budget: Option<PointsBudget>| {
            budget.map(|b| NonZeroU32::new((b.per_hour.get() / replicas).max(1)).expect("≥ 1"))
        };
        let reserve_below = reserve_thresholds(config, quota.reserve);
        let classes = config
            .classes
            .iter()
            .map(|(name, class)| {
                let limits = ClassLimits {
                    requests: keyed(class.requests, replicas),
                    upstream: keyed(class.upstream, replicas),
                    points: share(class.points),
                    reserve_below: reserve_below(class.priority),
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
                    points: share(c.points),
                };
                (Arc::from(c.name.as_str()), limits)
            })
            .collect();
        let methods = &quota.methods;
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
            methods: [methods.get, methods.post, methods.put, methods.delete]
                .map(|rate| direct(rate, replicas)),
            max_hold: config.max_hold,
            replicas,
        }
    }

    /// The caller's hourly points budget (this replica's share of it): its client's, else
    /// its class's.
    fn points_budget(&self, caller: &Caller) -> Option<NonZeroU32> {
        let client = match &caller.id {
            CallerId::Client(name) => self.clients.get(name).and_then(|c| c.points),
            _ => None,
        };
        client.or_else(|| self.classes.get(&caller.class).and_then(|c| c.points))
    }
}

/// Under which share of the site's quota left each priority is refused: with n distinct
/// priorities, rank k (0 the lowest) under `reserve × (n−1−k)/(n−1)`; the highest never.
fn reserve_thresholds(config: &LimitsConfig, reserve: f64) -> impl Fn(i32) -> f64 {
    let mut priorities: Vec<i32> = config.classes.values().map(|c| c.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    move |priority| {
        let n = priorities.len();
        let rank = priorities
            .iter()
            .position(|p| *p == priority)
            .unwrap_or(n - 1);
        match n {
            0 | 1 => 0.0,
            _ => reserve * (n - 1 - rank) as f64 / (n - 1) as f64,
        }
    }
}

/// The method's index in `Rules::methods`: HEAD is a GET; other methods never go upstream.
fn method_index(method: &Method) -> Option<usize> {
    match *method {
        Method::GET | Method::HEAD => Some(0),
        Method::POST => Some(1),
        Method::PUT => Some(2),
        Method::DELETE => Some(3),
        _ => None,
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

    /// Admits a request to go upstream for `caller` with the upstream credential `hold`, by
    /// every upstream limit in the module's order, then paces it by its burst bucket (`to`:
    /// its route and method), which may wait up to `upstream.burst_wait`. A write names the
    /// resource it changes (`write`). The pass is settled by [`Pass::answered`]; dropped
    /// without an answer, it gives back what it held (the hold's probe, the bucket's claim).
    pub async fn admit_upstream(
        &self,
        caller: &Caller,
        hold: &HoldKey,
        to: Option<BucketId>,
        method: &Method,
        write: Option<WriteKey>,
    ) -> Result<Pass<'_>, GatewayError> {
        let rules = self.rules.load();
        let mut pass = Pass {
            limits: self,
            hold: *hold,
            probe: self.check_hold(hold)?,
            bucket: to,
            ticket: None,
            write,
            waited: Duration::ZERO,
        };
        self.check_site(&rules, caller)?;
        self.check_points(&rules, caller).await?;
        if let Some(write) = &write {
            self.check_write(write)?;
        }
        self.check_upstream(&rules, caller, method).await?;
        pass.waited = self.pace(&mut pass, to).await?;
        Ok(pass)
    }

    /// The GCRA limits on upstream calls: in Redis across replicas while it is up, else here.
    async fn check_upstream(
        &self,
        rules: &Rules,
        caller: &Caller,
        method: &Method,
    ) -> Result<(), GatewayError> {
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.is_up())
            && let Some(decided) = self.admit_in_cluster(cluster, caller, method).await
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
        if let Some(budget) = method_index(method).and_then(|i| rules.methods[i].as_ref()) {
            budget.decide(
                LimitKind::UpstreamMethod,
                &self.clock,
                budget.limiter.check(),
            )?;
        }
        Ok(())
    }

    /// Paces a call by its burst bucket: across replicas in Redis while it is up (a GCRA of
    /// the bucket's stated size), else here; waits at most `upstream.burst_wait`, else refuses
    /// (`upstream-burst`). Returns how long it waited.
    async fn pace<'a>(
        &'a self,
        pass: &mut Pass<'a>,
        to: Option<BucketId>,
    ) -> Result<Duration, GatewayError> {
        let refuse = |wait| LimitKind::UpstreamBurst.refuse(wait, None);
        let cluster = self.cluster.as_ref().filter(|c| c.is_up());
        if let (Some(cluster), Some(id)) = (cluster, to)
            && let Some(limit) = self.bursts.limit(id)
        {
            let held = self.bursts.held(id, Instant::now());
            if held > self.bursts.max_wait() {
                return Err(refuse(held));
            }
            let mut waited = held;
            tokio::time::sleep(held).await;
            let burst = u32::try_from(limit).unwrap_or(u32::MAX);
            let interval = self.bursts.interval(limit);
            loop {
                match cluster.gcra(&id.key(), interval, burst).await {
                    None | Some(Decision::Allowed { .. }) => return Ok(waited),
                    Some(Decision::Refused { wait }) if waited + wait <= self.bursts.max_wait() => {
                        tokio::time::sleep(wait).await;
                        waited += wait;
                    }
                    Some(Decision::Refused { wait }) => return Err(refuse(waited + wait)),
                }
            }
        }
        let (pace, ticket) = self.bursts.take(to, Instant::now());
        match pace {
            Pace::Go => {
                pass.ticket = Some(ticket);
                Ok(Duration::ZERO)
            }
            Pace::After(wait) => {
                pass.ticket = Some(ticket);
                tokio::time::sleep(wait).await;
                Ok(wait)
            }
            Pace::Refused(wait) => Err(refuse(wait)),
        }
    }

    /// Writes to a resource Confluence refused a write to (its per-resource write limit) wait
    /// until its `Retry-After`.
    fn check_write(&self, write: &WriteKey) -> Result<(), GatewayError> {
        let now = Instant::now();
        let mut holds = self.write_holds.lock();
        match holds.get(write) {
            Some(until) if *until > now => Err(LimitKind::UpstreamWrite.refuse(*until - now, None)),
            Some(_) => {
                holds.remove(write);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Every burst bucket upstream has stated, as it stands now.
    pub fn bursts(&self) -> Vec<burst::Standing> {
        self.bursts.standings(Instant::now())
    }

    /// The site's quota: spent (Confluence refused for it) refuses everyone until the reset;
    /// low refuses the caller's class when it is under the class's share of the reserve.
    fn check_site(&self, rules: &Rules, caller: &Caller) -> Result<(), GatewayError> {
        let site = &self.quota.site;
        let pressure = site.pressure();
        if let Some(wait) = pressure.exhausted_for {
            return Err(LimitKind::SiteQuota.refuse(wait, None));
        }
        let reserve = site.reserve();
        let below = rules
            .classes
            .get(&caller.class)
            .map_or(0.0, |class| class.reserve_below);
        if reserve <= 0.0 || below <= 0.0 {
            return Ok(());
        }
        // Upstream's "near its limit" counts as just under the reserve.
        let near = pressure.near_limit.then_some(reserve * 0.999);
        let share = match (pressure.share, near) {
            (Some(share), Some(near)) => share.min(near),
            (share, near) => share.or(near).unwrap_or(1.0),
        };
        if share < below {
            let reset = site.standing().map_or(quota::HOUR, |s| s.reset_in);
            return Err(LimitKind::QuotaReserve.refuse(reset, None));
        }
        Ok(())
    }

    /// The caller's hourly points budget: refused once this hour's spending reached it.
    async fn check_points(&self, rules: &Rules, caller: &Caller) -> Result<(), GatewayError> {
        let Some(budget) = rules.points_budget(caller) else {
            return Ok(());
        };
        let (hour, left) = quota::hour(Instant::now());
        let cluster = self.cluster.as_ref().filter(|c| c.is_up());
        let (spent, budget) = match cluster {
            Some(cluster) => match cluster.points(&caller.id.bucket(), hour).await {
                // The whole budget: the cluster counts every replica's spending.
                Some(spent) => (spent, budget.get().saturating_mul(rules.replicas)),
                None => (self.spent_here(caller, hour), budget.get()),
            },
            None => (self.spent_here(caller, hour), budget.get()),
        };
        if spent < u64::from(budget) {
            return Ok(());
        }
        let allowance = Allowance {
            kind: LimitKind::Points,
            quota: budget,
            window: quota::HOUR.as_secs(),
            remaining: 0,
            reset: ceil_secs(left),
        };
        Err(LimitKind::Points.refuse(left, Some(allowance)))
    }

    /// What `caller` spent this hour on this replica.
    fn spent_here(&self, caller: &Caller, hour: u64) -> u64 {
        match self.spent.lock().get(&caller.id) {
            Some((counted, spent)) if *counted == hour => *spent,
            _ => 0,
        }
    }

    /// Charges `points` an upstream call of `caller` cost, once its answer said what it cost:
    /// to the caller's budget (in Redis while the cluster is up) and to the site's standing.
    pub async fn charge(&self, caller: &Caller, points: u32) {
        if points == 0 {
            return;
        }
        let (hour, _) = quota::hour(Instant::now());
        let budgeted = self.rules.load().points_budget(caller).is_some();
        let cluster = self.cluster.as_ref().filter(|c| c.is_up());
        let counted = match cluster {
            Some(cluster) if budgeted => cluster
                .spend_points(&caller.id.bucket(), hour, points)
                .await
                .is_some(),
            _ => false,
        };
        if budgeted && !counted {
            let mut spent = self.spent.lock();
            let entry = spent.entry(caller.id.clone()).or_insert((hour, 0));
            if entry.0 != hour {
                *entry = (hour, 0);
            }
            entry.1 += u64::from(points);
        }
        // A configured quota is counted down by every replica's spending.
        let site = &self.quota.site;
        let total = match cluster {
            Some(cluster) if site.configured() => cluster.spend_points("site", hour, points).await,
            _ => None,
        };
        site.spent(points, total);
    }

    /// The upstream limits decided in Redis across replicas; `None` when Redis failed mid-way
    /// (the caller then falls back to the local share).
    async fn admit_in_cluster(
        &self,
        cluster: &Cluster,
        caller: &Caller,
        method: &Method,
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
        let mut checks = Vec::with_capacity(4);
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
        if let Some(i) = method_index(method)
            && let Some(budget) = &rules.methods[i]
        {
            checks.push((LimitKind::UpstreamMethod, format!("m:{i}"), budget.rate));
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
        let mut until = self.tightened_until.lock();
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Refuses while `key` is held; when its hold has ended, lets exactly one probe through
    /// (true: this request is the probe).
    fn check_hold(&self, key: &HoldKey) -> Result<bool, GatewayError> {
        let mut holds = self.holds.lock();
        let Some(hold) = holds.get_mut(key) else {
            return Ok(false);
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
                Ok(true)
            }
        }
    }

    /// Learns from what an upstream answer says of the limits, each at its own scope: the
    /// site's quota headers update its standing (a quota 429 stops every call until the
    /// reset); the burst bucket of the call's route and method is learned (a burst 429 holds
    /// that bucket only); a per-resource write 429 holds writes to that resource; a 429 with no
    /// reason (or a 503 with `Retry-After`) starts or extends the hold on the credential `key`
    /// (and returns true), any other answer ends it. `X-RateLimit-NearLimit` tightens the
    /// global budget until upstream's reset. Every wait is bounded (`hints`, `max_hold`).
    fn observe(
        &self,
        key: &HoldKey,
        write: Option<&WriteKey>,
        status: StatusCode,
        hints: &Hints,
    ) -> bool {
        self.quota.site.observe(status, hints);
        let rules = self.rules.load();
        let now = Instant::now();
        if hints.near_limit {
            let reset = hints
                .reset_in
                .unwrap_or(Duration::from_secs(60))
                .min(rules.max_hold);
            *self.tightened_until.lock() = Some(now + reset);
        }
        let refused = status == StatusCode::TOO_MANY_REQUESTS;
        match hints.reason.filter(|_| refused) {
            // Their own scopes: the site (quota), the bucket (burst, learned by the pass).
            Some(Reason::Quota | Reason::Burst) => {
                self.release_probe(key);
                return false;
            }
            Some(Reason::Write) => {
                if let Some(write) = write {
                    let wait = hints
                        .retry_after
                        .unwrap_or(hints::MIN_WAIT)
                        .min(rules.max_hold);
                    self.write_holds.lock().insert(*write, now + wait);
                }
                self.release_probe(key);
                return false;
            }
            Some(Reason::Other) | None => {}
        }
        let throttled =
            refused || (status == StatusCode::SERVICE_UNAVAILABLE && hints.retry_after.is_some());
        let mut holds = self.holds.lock();
        if !throttled {
            holds.remove(key);
            return false;
        }
        let strikes = holds.get(key).map_or(0, |h| h.strikes).saturating_add(1);
        let wait = hints
            .retry_after
            .or(hints.reset_in)
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

    /// Whether the state every upstream call goes through can be had: each of its locks is
    /// taken within `within` (a lock held that long means a stuck admission path).
    pub fn responsive(&self, within: Duration) -> bool {
        self.holds.try_lock_for(within).is_some()
            && self.tightened_until.try_lock_for(within).is_some()
            && self.spent.try_lock_for(within).is_some()
            && self.quota.site.responsive(within)
    }

    /// How many credentials are held right now, and the longest remaining hold.
    pub fn holds(&self) -> (usize, Duration) {
        let now = Instant::now();
        let holds = self.holds.lock();
        let active = holds.values().filter(|h| h.until > now);
        active.fold((0, Duration::ZERO), |(n, longest), h| {
            (n + 1, longest.max(h.until - now))
        })
    }

    /// The probe of `key`'s hold ended without telling anything of the credential: another
    /// request may probe at once.
    fn release_probe(&self, key: &HoldKey) {
        if let Some(hold) = self.holds.lock().get_mut(key) {
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
            .retain(|_, hold| hold.until + PROBE_TIMEOUT > now || hold.probe.is_some());
        self.write_holds.lock().retain(|_, until| *until > now);
        let (hour, _) = quota::hour(now);
        self.spent.lock().retain(|_, (counted, _)| *counted == hour);
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

/// Permission for one call to go upstream, given by [`Limits::admit_upstream`]. It is settled
/// by [`Pass::answered`]; a pass dropped before that (the call failed, or a later step refused
/// it) gives back the hold's probe it took, so the next request may probe at once, and its
/// claim on the burst bucket.
#[must_use]
pub struct Pass<'a> {
    limits: &'a Limits,
    hold: HoldKey,
    /// Whether this call is the probe after its credential's hold.
    probe: bool,
    bucket: Option<BucketId>,
    ticket: Option<Ticket<'a>>,
    write: Option<WriteKey>,
    /// How long the call waited for its burst bucket.
    waited: Duration,
}

impl Pass<'_> {
    /// How long the call waited for its share of its burst bucket.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The call's route and method (its burst bucket).
    pub fn bucket(&self) -> Option<BucketId> {
        self.bucket
    }

    /// Learns from upstream's answer, each limit at its scope (as `Limits::observe` says);
    /// whether a hold on the credential started.
    pub async fn answered(mut self, status: StatusCode, hints: &Hints) -> bool {
        self.probe = false;
        let limits = self.limits;
        // Paced in Redis, the call took no local token; the bucket is learned all the same
        // (its size, a burst 429's hold), and Redis's copy of it is told what is left.
        let ticket = self
            .ticket
            .take()
            .unwrap_or_else(|| limits.bursts.untracked());
        limits
            .bursts
            .answered(ticket, self.bucket, status, hints, Instant::now());
        let cluster = limits.cluster.as_ref().filter(|c| c.is_up());
        if let (Some(cluster), Some(id), Some(stated)) =
            (cluster, self.bucket, hints.bucket.filter(|b| b.limit > 0))
        {
            let interval = limits.bursts.interval(stated.limit);
            cluster
                .learn(&id.key(), interval, stated.limit, stated.remaining)
                .await;
        }
        limits.observe(&self.hold, self.write.as_ref(), status, hints)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.limits.release_probe(&self.hold);
        }
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
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
    fn backoff_doubles_with_bounded_jitter() {
        for strikes in 1..10 {
            let d = backoff(strikes);
            let base = 1u64 << (strikes - 1).min(6);
            assert!(d >= Duration::from_secs(base) && d < Duration::from_secs(base).mul_f64(1.25));
        }
    }

    fn limits(config: &LimitsConfig) -> Limits {
        let policy = Policy {
            limits: config,
            quota: &QuotaConfig::default(),
            clients: &[],
            burst: (Duration::from_secs(1), Duration::from_secs(2)),
        };
        Limits::new(policy, None, Arc::default())
    }

    fn caller(class: &str) -> Caller {
        Caller {
            id: CallerId::Address([127, 0, 0, 1].into()),
            credential: None,
            class: class.into(),
            account: quota::Accounts::default().get(&format!("class:{class}")),
        }
    }

    #[test]
    fn lower_priorities_meet_the_reserve_first() {
        let mut config = LimitsConfig::default();
        for (name, priority) in [("batch", 0), ("default", 5), ("interactive", 10)] {
            let class = crate::config::ClassLimits {
                priority,
                ..Default::default()
            };
            config.classes.insert(name.to_owned(), class);
        }
        let below = reserve_thresholds(&config, 0.3);
        assert_eq!([below(0), below(5), below(10)], [0.3, 0.15, 0.0]);
        let mut alone = LimitsConfig::default();
        alone.classes.get_mut("default").unwrap().priority = 7;
        assert_eq!(reserve_thresholds(&alone, 0.3)(7), 0.0, "nobody to protect");
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
        let caller = caller("default");
        async fn admitted(limits: &Limits, caller: &Caller) -> usize {
            let mut n = 0;
            for _ in 0..20 {
                let admitted = limits
                    .admit_upstream(caller, &[0; 16], None, &Method::GET, None)
                    .await;
                n += usize::from(admitted.is_ok());
            }
            n
        }
        assert_eq!(admitted(&limits(&config), &caller).await, 10);
        let tightened = limits(&config);
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-nearlimit", HeaderValue::from_static("true"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("60"));
        tightened.observe(&[0; 16], None, StatusCode::OK, &Hints::read(&headers));
        assert_eq!(admitted(&tightened, &caller).await, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_lets_exactly_one_probe_through_when_it_ends() {
        let limits = limits(&LimitsConfig::default());
        let key = [1; 16];
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("0"));
        limits.observe(
            &key,
            None,
            StatusCode::TOO_MANY_REQUESTS,
            &Hints::read(&headers),
        );
        assert!(
            limits.check_hold(&key).is_err(),
            "Retry-After: 0 holds a second"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limits.check_hold(&key).is_ok(), "the probe");
        let refused = limits.check_hold(&key).unwrap_err();
        assert!(matches!(
            refused,
            GatewayError::RateLimited(Refusal {
                limit: "upstream-hold",
                ..
            })
        ));
        limits.observe(&key, None, StatusCode::OK, &Hints::default());
        assert!(limits.check_hold(&key).is_ok());
        assert!(
            limits.check_hold(&[2; 16]).is_ok(),
            "other credentials are not held"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_refused_by_a_later_limit_is_given_back_at_once() {
        let config = LimitsConfig {
            upstream_global: Some(Rate {
                rate: NonZeroU32::new(1).unwrap(),
                per: Duration::from_secs(60),
                burst: None,
            }),
            ..LimitsConfig::default()
        };
        let limits = limits(&config);
        let caller = caller("default");
        let key = [3; 16];
        let admit = || limits.admit_upstream(&caller, &key, None, &Method::GET, None);
        let pass = admit().await.expect("the global budget's one call");
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        assert!(
            pass.answered(StatusCode::TOO_MANY_REQUESTS, &Hints::read(&headers))
                .await
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        // The hold ended: this request is the probe, but the global budget refuses it.
        let refused = admit().await.err().expect("the global budget is spent");
        assert_eq!(refused.refusal().unwrap().limit, "upstream-global");
        assert_eq!(
            limits.check_hold(&key).ok(),
            Some(true),
            "the probe was given back: the next request probes at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_429_is_held_at_its_own_scope() {
        let limits = limits(&LimitsConfig::default());
        let caller = caller("default");
        let (key, page) = (
            [4; 16],
            write_key(&Method::PUT, "/wiki/rest/api/user/a/property/k"),
        );
        let other = write_key(&Method::PUT, "/wiki/rest/api/user/a/property/other");
        let get_user = BucketId::of(crate::routes::Route::User, &Method::GET);
        let refusal = |reason: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
            headers.insert("ratelimit-reason", HeaderValue::from_static(reason));
            Hints::read(&headers)
        };
        let limit_of = |refused: Result<Pass<'_>, GatewayError>| {
            refused.err().and_then(|e| e.refusal().map(|r| r.limit))
        };
        // A burst 429: that route and method only.
        let pass = limits
            .admit_upstream(&caller, &key, get_user, &Method::GET, None)
            .await;
        assert!(
            !pass
                .unwrap()
                .answered(
                    StatusCode::TOO_MANY_REQUESTS,
                    &refusal("confluence-burst-based")
                )
                .await
        );
        let again = limits
            .admit_upstream(&caller, &key, get_user, &Method::GET, None)
            .await;
        assert_eq!(limit_of(again), Some("upstream-burst"));
        let groups = BucketId::of(crate::routes::Route::MemberOf, &Method::GET);
        assert!(
            limits
                .admit_upstream(&caller, &key, groups, &Method::GET, None)
                .await
                .is_ok()
        );
        // A write-limit 429: writes to that resource only.
        let pass = limits
            .admit_upstream(&caller, &key, None, &Method::PUT, page)
            .await;
        pass.unwrap()
            .answered(
                StatusCode::TOO_MANY_REQUESTS,
                &refusal("confluence-per-content-on-write"),
            )
            .await;
        let again = limits
            .admit_upstream(&caller, &key, None, &Method::PUT, page)
            .await;
        assert_eq!(limit_of(again), Some("upstream-write"));
        assert!(
            limits
                .admit_upstream(&caller, &key, None, &Method::PUT, other)
                .await
                .is_ok()
        );
        // Neither held the credential, nor the site.
        assert_eq!(limits.holds().0, 0);
        assert_eq!(limits.quota.site.pressure().exhausted_for, None);
        // A quota 429: the site, every caller and route.
        let pass = limits
            .admit_upstream(&caller, &key, groups, &Method::GET, None)
            .await;
        pass.unwrap()
            .answered(
                StatusCode::TOO_MANY_REQUESTS,
                &refusal("confluence-quota-tenant-based"),
            )
            .await;
        let other_caller = limits
            .admit_upstream(&caller, &[5; 16], None, &Method::GET, None)
            .await;
        assert_eq!(limit_of(other_caller), Some("site-quota"));
        assert_eq!(limits.holds().0, 0, "not a credential hold");
        tokio::time::advance(Duration::from_secs(30)).await;
        // A 429 with no reason: the credential, as before.
        let pass = limits
            .admit_upstream(&caller, &key, groups, &Method::GET, None)
            .await;
        let mut plain = HeaderMap::new();
        plain.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
        assert!(
            pass.unwrap()
                .answered(StatusCode::TOO_MANY_REQUESTS, &Hints::read(&plain))
                .await
        );
        let held = limits
            .admit_upstream(&caller, &key, groups, &Method::GET, None)
            .await;
        assert_eq!(limit_of(held), Some("upstream-hold"));
        assert!(
            limits
                .admit_upstream(&caller, &[5; 16], groups, &Method::GET, None)
                .await
                .is_ok()
        );
    }

    proptest::proptest! {
        /// Whatever limit headers upstream sends, with whatever status, the quota, the limits
        /// and the holds take them in without a panic, and hold for at most an hour.
        #[test]
        fn any_limit_headers_are_taken_in_and_bounded(
            headers in hints::tests::any_limit_headers(),
            status in proptest::sample::select(vec![200u16, 429, 503]),
        ) {
            let hints = Hints::read(&headers);
            let quota = Arc::new(Quota::new(Some(1000), 0.2));
            let policy = Policy {
                limits: &LimitsConfig::default(),
                quota: &QuotaConfig::default(),
                clients: &[],
                burst: (Duration::from_secs(1), Duration::from_secs(2)),
            };
            let limits = Limits::new(policy, None, quota.clone());
            limits.observe(&[7; 16], Some(&[8; 16]), StatusCode::from_u16(status).unwrap(), &hints);
            let _ = quota.site.standing();
            if let Some(exhausted) = quota.site.pressure().exhausted_for {
                proptest::prop_assert!(exhausted <= hints::MAX_WINDOW);
            }
            let (_, longest) = limits.holds();
            proptest::prop_assert!(longest <= hints::MAX_WAIT);
            proptest::prop_assert!(limits.responsive(Duration::from_millis(10)));
        }
    }
}
