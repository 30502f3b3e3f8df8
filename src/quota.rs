//! Atlassian's points quota: what a call costs, where the site stands, and who spends it.
//!
//! - **Cost** ([`cost`]), by Atlassian's table: 1 point per call, plus 2 per user or group
//!   object in the answer and 1 per object the table does not name (an email record, a
//!   property); a write costs 1.
//! - **The site's standing** ([`Site`]): the quota, window, remaining points and reset that
//!   upstream's own headers state — `RateLimit-Policy`/`RateLimit` (enforced), their `Beta-`
//!   forms (a policy in shadow mode), `X-RateLimit-*` — or, while upstream says nothing,
//!   `quota.points_per_hour` less what wikigate spent this hour. From successive readings, the
//!   burn rate and when the points run out at that rate.
//! - **Accounts** ([`Accounts`]): per caller (a client's name or `class:NAME`, a bounded set),
//!   points spent on upstream calls and saved by answers made without one, in total by route
//!   and this hour.
//! - **Hours** ([`hour`]): aligned to the top of the UTC hour, as Atlassian's. They are read on
//!   tokio's clock, anchored once to the wall clock: the same instant on every path of this
//!   process, and a test that pauses time moves the hour too.
//!
//! Invariants: a shadow policy is reported, never acted on ([`Site::pressure`] ignores it);
//! a reading whose window has ended says nothing about the next one; hours roll over on
//! their own (an account read in a new hour reads zero for it).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tokio::time::Instant;

use crate::hints::{Hints, Mode, Reason};
use crate::routes::{Objects, Route};

const ROUTES: usize = Route::ALL.len();

/// Atlassian's quota window and wikigate's budgets' window.
pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// The points an answer of `route` with `objects` objects costs.
pub(crate) fn cost_of(route: Route, objects: u32) -> u32 {
    let each = match route.spec().objects {
        Objects::User | Objects::UsersOrGroups => 2,
        Objects::Record | Objects::Records => 1,
        Objects::Nothing => 0,
    };
    1 + each * objects
}

/// The points a call of `route` cost: a write 1; a read by the objects its (decoded) answer
/// holds.
pub(crate) fn cost(route: Route, write: bool, body: &[u8]) -> u32 {
    if write {
        return 1;
    }
    let objects = match route.spec().objects {
        Objects::User | Objects::Record => 1,
        Objects::UsersOrGroups | Objects::Records => {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(serde_json::Value::Array(items)) => items.len() as u32,
                Ok(value) => value["results"].as_array().map_or(0, |r| r.len() as u32),
                Err(_) => 0,
            }
        }
        Objects::Nothing => 0,
    };
    cost_of(route, objects)
}

/// What a call whose answer was streamed, not read, is charged: as if it held one object
/// where the route answers one, none where it answers a list (the least it can have cost).
pub(crate) fn estimate(route: Route, write: bool) -> u32 {
    match (write, route.spec().objects) {
        (true, _) => 1,
        (false, Objects::User | Objects::Record) => cost_of(route, 1),
        (false, _) => cost_of(route, 0),
    }
}

/// What an upstream answer of `route` with `status` is charged: nothing for a refusal (429);
/// 1 for a write or an error; else its cost, from its decoded `body` when it was read, or
/// [`estimate`]d when it was streamed through.
pub(crate) fn charge(route: Route, write: bool, status: StatusCode, body: Option<&[u8]>) -> u32 {
    match (status, body) {
        (StatusCode::TOO_MANY_REQUESTS, _) => 0,
        _ if write || !status.is_success() => 1,
        (_, Some(body)) => cost(route, false, body),
        (_, None) => estimate(route, false),
    }
}

/// The wall clock as tokio's clock moves it on from the first time it is read.
fn unix_now(now: Instant) -> Duration {
    static ANCHOR: OnceLock<(Instant, Duration)> = OnceLock::new();
    let (at, unix) = *ANCHOR.get_or_init(|| {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (Instant::now(), unix)
    });
    match now.checked_duration_since(at) {
        Some(later) => unix + later,
        None => unix.saturating_sub(at - now),
    }
}

/// A window of `length` aligned to the Unix epoch (so an hour starts at the top of a UTC
/// hour): its number, and the time left in it at `now`.
pub(crate) fn window(now: Instant, length: Duration) -> (u64, Duration) {
    let unix = unix_now(now).as_nanos();
    let length_ns = length.as_nanos().max(1);
    let index = (unix / length_ns) as u64;
    let left = Duration::from_nanos((length_ns - unix % length_ns) as u64);
    (index, left)
}

/// The UTC hour `now` falls in, and the time left in it.
pub(crate) fn hour(now: Instant) -> (u64, Duration) {
    window(now, HOUR)
}

/// Where a policy's figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// Upstream's enforced policy (`RateLimit-Policy`).
    Enforced,
    /// Upstream's policy in shadow mode (`Beta-RateLimit-Policy`): reported, not enforced.
    Shadow,
    /// `quota.points_per_hour`, less wikigate's own spend this hour.
    Configured,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Enforced => "enforced",
            Source::Shadow => "shadow",
            Source::Configured => "configured",
        }
    }

    fn of(mode: Mode) -> Source {
        match mode {
            Mode::Enforced => Source::Enforced,
            Mode::Shadow => Source::Shadow,
        }
    }
}

/// The name the configured quota is reported under.
pub(crate) const CONFIGURED_POLICY: &str = "quota.points_per_hour";

/// One policy's quota as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    pub source: Source,
    /// The policy's name (`tenant-app-quota`, `global-app-quota`, …).
    pub policy: Arc<str>,
    /// Points per window, and the window.
    pub quota: u64,
    pub window: Duration,
    /// Points left; `None` while upstream does not say (Atlassian states `r` only once about
    /// 80 % of the window's points are used).
    pub remaining: Option<u64>,
    pub reset_in: Duration,
    /// Upstream's `X-RateLimit-NearLimit: true` (under 20 % left).
    pub near_limit: bool,
    /// Points spent per hour at the recent rate, when two readings a second apart say.
    pub burn_per_hour: Option<f64>,
    /// When the remaining points run out at that rate (`None`: not spending).
    pub exhaustion_in: Option<Duration>,
}

impl Standing {
    /// The share of the quota left, when known.
    pub fn share(&self) -> Option<f64> {
        let remaining = self.remaining?;
        (self.quota > 0).then(|| remaining as f64 / self.quota as f64)
    }
}

/// What the site's quota means for the next upstream call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// The enforced (or configured) remaining share of the binding policy, `None` when unknown.
    pub share: Option<f64>,
    /// Upstream says it is near its limit.
    pub near_limit: bool,
    /// Upstream refused for its quota (or said none is left): nothing goes until then.
    pub exhausted_for: Option<Duration>,
}

impl Pressure {
    /// Whether the quota is under `reserve` (a share of it), or upstream says it is near.
    pub fn under(&self, reserve: f64) -> bool {
        self.near_limit || self.share.is_some_and(|share| share < reserve)
    }
}

/// What is known of one policy upstream stated.
#[derive(Debug, Clone)]
struct Known {
    /// `q` and `w`, as last stated (kept when the policy header vanishes).
    quota: u64,
    window: Duration,
    /// `r`, and the end of the window it is of.
    remaining: Option<(u64, Instant)>,
    /// The end of the window the policy was last stated in: it says nothing after it.
    until: Instant,
    /// Recent readings of `r`, for the burn rate.
    samples: Samples,
}

impl Known {
    fn remaining(&self, now: Instant) -> Option<u64> {
        self.remaining
            .filter(|(_, until)| *until > now)
            .map(|(r, _)| r)
    }
}

/// Recent (instant, points left) readings of one quota, for its burn rate: the last
/// [`BURN_WINDOW`] of them, started afresh when more is left than before (a new window).
#[derive(Debug, Clone, Default)]
struct Samples(VecDeque<(Instant, u64)>);

impl Samples {
    fn push(&mut self, now: Instant, remaining: u64) {
        if self.0.back().is_some_and(|(_, last)| remaining > *last) {
            self.0.clear();
        }
        self.0.push_back((now, remaining));
        while self
            .0
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > BURN_WINDOW)
        {
            self.0.pop_front();
        }
    }

    /// Points per second over the readings, when they span at least a second.
    fn burn_per_second(&self) -> Option<f64> {
        let (first_at, first) = *self.0.front()?;
        let (last_at, last) = *self.0.back()?;
        let span = last_at.duration_since(first_at);
        (span >= Duration::from_secs(1))
            .then(|| first.saturating_sub(last) as f64 / span.as_secs_f64())
    }
}

#[derive(Debug, Default)]
struct SiteState {
    points_per_hour: Option<u64>,
    reserve: f64,
    /// Every policy upstream stated, by source and name.
    policies: BTreeMap<(Source, Arc<str>), Known>,
    /// `X-RateLimit-NearLimit` (and the `Beta-` form) as last stated, until the hour's end.
    near_limit: [Option<Instant>; 2],
    /// Points spent this hour through this gateway: (hour, points); the cluster's total when
    /// the cluster counts it.
    spent: (u64, u64),
    /// Recent (instant, remaining) of the configured quota, for the burn rate.
    configured_samples: Samples,
    exhausted_until: Option<Instant>,
}

/// How far back the burn rate looks.
const BURN_WINDOW: Duration = Duration::from_secs(300);

/// The site's points quota, as upstream's answers and wikigate's own spending tell it.
#[derive(Debug, Default)]
pub struct Site {
    state: Mutex<SiteState>,
}

impl Site {
    /// `points_per_hour`: the quota when upstream says nothing (`quota.points_per_hour`);
    /// `reserve`: the share of it under which the quota is low (`quota.reserve`).
    pub fn new(points_per_hour: Option<u64>, reserve: f64) -> Site {
        let site = Site::default();
        site.configure(points_per_hour, reserve);
        site
    }

    /// Replaces the configured quota and reserve (SIGHUP).
    pub fn configure(&self, points_per_hour: Option<u64>, reserve: f64) {
        let mut state = self.state.lock();
        state.points_per_hour = points_per_hour;
        state.reserve = reserve;
    }

    /// Whether the site's state can be had within `within` (readiness).
    pub fn responsive(&self, within: Duration) -> bool {
        self.state.try_lock_for(within).is_some()
    }

    /// Whether `quota.points_per_hour` is set (so wikigate's spending counts it down).
    pub fn configured(&self) -> bool {
        self.state.lock().points_per_hour.is_some()
    }

    /// `quota.reserve`.
    pub fn reserve(&self) -> f64 {
        self.state.lock().reserve
    }

    /// Whether the quota is under the reserve, or upstream says it is near its limit.
    pub fn low(&self) -> bool {
        self.pressure().under(self.reserve())
    }

    /// Learns from what an upstream answer (any status) says of the points quota: only the
    /// points headers (`RateLimit-Policy`/`RateLimit`, their `Beta-` forms, `NearLimit`) and
    /// a quota 429. A burst bucket (`X-RateLimit-Limit`/`-Remaining`) is not the quota.
    pub fn observe(&self, status: StatusCode, hints: &Hints) {
        let quota_refusal =
            status == StatusCode::TOO_MANY_REQUESTS && hints.reason == Some(Reason::Quota);
        if hints.policies.is_empty() && !quota_refusal {
            return;
        }
        let now = Instant::now();
        let (_, hour_left) = hour(now);
        let mut state = self.state.lock();
        for stated in &hints.policies {
            let source = Source::of(stated.mode);
            let key = (source, Arc::<str>::from(stated.name.as_str()));
            let known = match (state.policies.get_mut(&key), stated.quota) {
                (Some(known), Some((quota, window))) => {
                    (known.quota, known.window) = (quota, window);
                    known
                }
                (Some(known), None) => known,
                (None, Some((quota, window))) => state.policies.entry(key).or_insert(Known {
                    quota,
                    window,
                    remaining: None,
                    until: now,
                    samples: Samples::default(),
                }),
                // Nothing known of its quota: its remainder alone means nothing.
                (None, None) => continue,
            };
            // An hourly window ends at the top of the UTC hour, whatever `t` says.
            let reset = match known.window == HOUR {
                true => hour_left,
                false => stated.reset_in.unwrap_or(known.window).min(known.window),
            };
            known.until = now + reset;
            if let Some(remaining) = stated.remaining {
                known.remaining = Some((remaining, now + reset));
                known.samples.push(now, remaining);
                if source == Source::Enforced && remaining == 0 {
                    state.exhausted_until = Some(now + reset);
                }
            }
        }
        if hints.policies.iter().any(|p| p.mode == Mode::Enforced) {
            state.near_limit[0] = hints.near_limit.then_some(now + hour_left);
        }
        if hints.policies.iter().any(|p| p.mode == Mode::Shadow) {
            state.near_limit[1] = hints.shadow_near_limit.then_some(now + hour_left);
        }
        if quota_refusal {
            let binding = state.binding(now, Source::Enforced);
            let wait = hints
                .retry_after
                .or_else(|| binding.map(|(_, k)| k.until.saturating_duration_since(now)))
                .unwrap_or(hour_left)
                .max(crate::hints::MIN_WAIT);
            state.exhausted_until = Some(now + wait);
        }
    }

    /// Counts points this gateway spent (`total`: the cluster's total this hour, when it
    /// keeps one; else this replica's spending is added up here).
    pub fn spent(&self, points: u32, total: Option<u64>) {
        let now = Instant::now();
        let (hour, _) = hour(now);
        let mut state = self.state.lock();
        let before = if state.spent.0 == hour {
            state.spent.1
        } else {
            0
        };
        state.spent = (hour, total.unwrap_or(before + u64::from(points)));
        if let Some(quota) = state.points_per_hour {
            let remaining = quota.saturating_sub(state.spent.1);
            state.configured_samples.push(now, remaining);
        }
    }

    /// The binding policy: upstream's enforced policy with the smallest share left (while
    /// upstream states any), else the configured quota, else upstream's shadow policy with the
    /// smallest share left; `None` when nothing says anything.
    pub fn standing(&self) -> Option<Standing> {
        let now = Instant::now();
        let state = self.state.lock();
        [Source::Enforced, Source::Configured, Source::Shadow]
            .into_iter()
            .find_map(|source| state.standing_of(source, now))
    }

    /// Every policy stated this window, and the configured quota: each as it stands.
    pub fn standings(&self) -> Vec<Standing> {
        let now = Instant::now();
        let state = self.state.lock();
        let mut all: Vec<Standing> = state
            .policies
            .iter()
            .filter(|(_, known)| known.until > now)
            .map(|((source, name), known)| state.standing_from(*source, name, known, now))
            .collect();
        all.extend(state.standing_of(Source::Configured, now));
        all
    }

    /// What the quota means for the next upstream call (shadow policies mean nothing).
    pub fn pressure(&self) -> Pressure {
        let now = Instant::now();
        let exhausted_for = {
            let state = self.state.lock();
            state
                .exhausted_until
                .filter(|until| *until > now)
                .map(|until| until - now)
        };
        match self.standing() {
            Some(standing) if standing.source != Source::Shadow => Pressure {
                share: standing.share(),
                near_limit: standing.near_limit,
                exhausted_for,
            },
            _ => Pressure {
                share: None,
                near_limit: false,
                exhausted_for,
            },
        }
    }
}

impl SiteState {
    /// The policy of `source` (enforced or shadow) stated this window with the smallest share
    /// left (those whose remainder is unknown have more than 20 % left: they bind last).
    fn binding(&self, now: Instant, source: Source) -> Option<(&Arc<str>, &Known)> {
        self.policies
            .iter()
            .filter(|((s, _), known)| *s == source && known.until > now)
            .min_by(|(_, a), (_, b)| {
                let share = |k: &Known| {
                    k.remaining(now)
                        .map_or(f64::INFINITY, |r| r as f64 / k.quota.max(1) as f64)
                };
                share(a).total_cmp(&share(b))
            })
            .map(|((_, name), known)| (name, known))
    }

    fn standing_of(&self, source: Source, now: Instant) -> Option<Standing> {
        match source {
            Source::Configured => {
                let quota = self.points_per_hour?;
                let (hour, left) = hour(now);
                let spent = if self.spent.0 == hour {
                    self.spent.1
                } else {
                    0
                };
                let burn = self.configured_samples.burn_per_second();
                Some(standing(
                    (Source::Configured, Arc::from(CONFIGURED_POLICY)),
                    (quota, HOUR, Some(quota.saturating_sub(spent)), left),
                    false,
                    burn,
                ))
            }
            _ => {
                let (name, known) = self.binding(now, source)?;
                Some(self.standing_from(source, name, known, now))
            }
        }
    }

    fn standing_from(
        &self,
        source: Source,
        name: &Arc<str>,
        known: &Known,
        now: Instant,
    ) -> Standing {
        let near = match source {
            Source::Shadow => self.near_limit[1],
            _ => self.near_limit[0],
        };
        standing(
            (source, name.clone()),
            (
                known.quota,
                known.window,
                known.remaining(now),
                known.until.saturating_duration_since(now),
            ),
            near.is_some_and(|until| until > now),
            known.samples.burn_per_second(),
        )
    }
}

/// A standing from its figures and the burn rate (points per second).
fn standing(
    (source, policy): (Source, Arc<str>),
    (quota, window, remaining, reset_in): (u64, Duration, Option<u64>, Duration),
    near_limit: bool,
    burn_per_second: Option<f64>,
) -> Standing {
    Standing {
        source,
        policy,
        quota,
        window,
        remaining,
        reset_in,
        near_limit,
        burn_per_hour: burn_per_second.map(|rate| rate * 3600.0),
        exhaustion_in: burn_per_second
            .filter(|rate| *rate > 0.0)
            .zip(remaining)
            .and_then(|(rate, r)| Duration::try_from_secs_f64(r as f64 / rate).ok()),
    }
}

/// One caller's points: spent on upstream calls and saved by answers made without one, by
/// route in total, and this hour.
#[derive(Debug)]
pub struct Account {
    label: Arc<str>,
    spent: [AtomicU64; ROUTES],
    saved: [AtomicU64; ROUTES],
    /// The hour `this_hour` counts, and its (spent, saved).
    hour: AtomicU64,
    spent_hour: AtomicU64,
    saved_hour: AtomicU64,
    /// Upstream's answers to this caller have carried a points policy (an OAuth, Forge or
    /// Connect app): it spends points.
    points: AtomicBool,
}

impl Account {
    fn new(label: Arc<str>) -> Account {
        Account {
            label,
            spent: std::array::from_fn(|_| AtomicU64::new(0)),
            saved: std::array::from_fn(|_| AtomicU64::new(0)),
            hour: AtomicU64::new(0),
            spent_hour: AtomicU64::new(0),
            saved_hour: AtomicU64::new(0),
            points: AtomicBool::new(false),
        }
    }

    /// The caller's name in metrics and on the status page.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// An answer to this caller carried a points policy.
    pub fn stated_points(&self) {
        self.points.store(true, Ordering::Relaxed);
    }

    /// Whether answers to this caller carry a points policy: its calls spend points.
    pub fn states_points(&self) -> bool {
        self.points.load(Ordering::Relaxed)
    }

    /// Points an upstream call of `route` cost, at `now`.
    pub fn spend(&self, route: Route, points: u32, now: Instant) {
        self.roll(now);
        self.spent[route.index()].fetch_add(u64::from(points), Ordering::Relaxed);
        self.spent_hour
            .fetch_add(u64::from(points), Ordering::Relaxed);
    }

    /// Points an answer of `route` made without an upstream call saved, at `now`.
    pub fn save(&self, route: Route, points: u32, now: Instant) {
        self.roll(now);
        self.saved[route.index()].fetch_add(u64::from(points), Ordering::Relaxed);
        self.saved_hour
            .fetch_add(u64::from(points), Ordering::Relaxed);
    }

    /// Points spent and saved on `route`, in total.
    pub fn by_route(&self, route: Route) -> (u64, u64) {
        (
            self.spent[route.index()].load(Ordering::Relaxed),
            self.saved[route.index()].load(Ordering::Relaxed),
        )
    }

    /// Points spent and saved this hour.
    pub fn this_hour(&self) -> (u64, u64) {
        self.roll(Instant::now());
        (
            self.spent_hour.load(Ordering::Relaxed),
            self.saved_hour.load(Ordering::Relaxed),
        )
    }

    /// Starts a new hour's counts when `now` is in a later hour than they are of.
    fn roll(&self, now: Instant) {
        let (hour, _) = hour(now);
        let counted = self.hour.load(Ordering::Relaxed);
        if counted != hour
            && self
                .hour
                .compare_exchange(counted, hour, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.spent_hour.store(0, Ordering::Relaxed);
            self.saved_hour.store(0, Ordering::Relaxed);
        }
    }
}

/// The quota state of one gateway: the site's standing and every caller's account.
#[derive(Debug, Default)]
pub struct Quota {
    pub site: Site,
    pub accounts: Accounts,
}

impl Quota {
    pub fn new(points_per_hour: Option<u64>, reserve: f64) -> Quota {
        Quota {
            site: Site::new(points_per_hour, reserve),
            accounts: Accounts::default(),
        }
    }
}

/// Every caller's account, by label; accounts live as long as the process (the labels are a
/// bounded set: configured clients and classes).
#[derive(Debug, Default)]
pub struct Accounts {
    by_label: Mutex<BTreeMap<Arc<str>, Arc<Account>>>,
}

impl Accounts {
    /// The account of `label`, made on first use.
    pub fn get(&self, label: &str) -> Arc<Account> {
        let mut accounts = self.by_label.lock();
        if let Some(account) = accounts.get(label) {
            return account.clone();
        }
        let label: Arc<str> = Arc::from(label);
        let account = Arc::new(Account::new(label.clone()));
        accounts.insert(label, account.clone());
        account
    }

    /// Every account, in label order.
    pub fn all(&self) -> Vec<Arc<Account>> {
        self.by_label.lock().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
