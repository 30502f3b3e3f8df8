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
//!
//! The parts: this file (the admission, in the order above, and the spending), `gcra` (the
//! governor limiters, each kind of limit and its refusal, the allowance a caller is told of),
//! `holds` (what upstream's answers teach: the holds and the tightened budget).

mod gcra;
mod holds;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, StatusCode};
use tokio::time::Instant;

use crate::burst::{self, BucketId, Bursts, Pace, Ticket};
use crate::caller::{Caller, CallerId};
use crate::cluster::{Cluster, Decision};
use crate::config::{ClientConfig, Config, LimitsConfig, PointsBudget, QuotaConfig, Rate};
use crate::error::GatewayError;
use crate::hints::Hints;
use crate::quota::{self, Quota};
pub(crate) use gcra::{Allowance, LimitKind};
use gcra::{Direct, Keyed, Limit, TokioClock, ceil_secs, direct, keyed};
use holds::Hold;
pub(crate) use holds::{HoldKey, WriteKey, jitter, write_key};

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
    /// resource it changes (`write`). The pass is settled by `Pass::answered`; dropped
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
            && let Some((limit, interval)) = self.bursts.pacing(id)
        {
            let held = self.bursts.held(id, Instant::now());
            if held > self.bursts.max_wait() {
                return Err(refuse(held));
            }
            let mut waited = held;
            tokio::time::sleep(held).await;
            let burst = u32::try_from(limit).unwrap_or(u32::MAX);
            loop {
                match cluster.pace(&id.key(), interval, burst).await {
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

    /// Whether `bucket` holds at least `share` of its size now (no bucket: yes).
    pub fn spare_burst(&self, bucket: Option<BucketId>, share: f64) -> bool {
        bucket.is_none_or(|id| self.bursts.spare(id, share, Instant::now()))
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

    /// Whether the state every upstream call goes through can be had: each of its locks is
    /// taken within `within` (a lock held that long means a stuck admission path).
    pub fn responsive(&self, within: Duration) -> bool {
        self.holds.try_lock_for(within).is_some()
            && self.tightened_until.try_lock_for(within).is_some()
            && self.spent.try_lock_for(within).is_some()
            && self.quota.site.responsive(within)
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
        self.holds.lock().retain(|_, hold| !hold.is_over(now));
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
        // Redis's copy of the bucket is told what is left, and counts the answer among every
        // replica's (how the refill is learned from all their calls). Paced in Redis, the call
        // took no local token; the bucket is learned here all the same (its size, its refill,
        // a burst 429's hold).
        let cluster = limits.cluster.as_ref().filter(|c| c.is_up());
        let mut cluster_seq = None;
        if let (Some(cluster), Some(id), Some(stated)) =
            (cluster, self.bucket, hints.bucket.filter(|b| b.limit > 0))
        {
            let interval = limits.bursts.interval(id, &stated);
            let spent = status != StatusCode::TOO_MANY_REQUESTS;
            cluster_seq = cluster
                .learn(&id.key(), interval, stated.limit, stated.remaining, spent)
                .await;
        }
        let ticket = self
            .ticket
            .take()
            .unwrap_or_else(|| limits.bursts.untracked());
        limits.bursts.answered(
            ticket,
            self.bucket,
            status,
            hints,
            cluster_seq,
            Instant::now(),
        );
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
