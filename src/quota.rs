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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use tokio::time::Instant;

use crate::hints::{Hints, Mode, Reason};
use crate::routes::{Objects, Route};

const ROUTES: usize = Route::ALL.len();

/// Atlassian's quota window and wikigate's budgets' window.
pub const HOUR: Duration = Duration::from_secs(3600);

/// The points an answer of `route` with `objects` objects costs.
pub fn cost_of(route: Route, objects: u32) -> u32 {
    let each = match route.spec().objects {
        Objects::User | Objects::UsersOrGroups => 2,
        Objects::Record | Objects::Records => 1,
        Objects::Nothing => 0,
    };
    1 + each * objects
}

/// The points a call of `route` cost: a write 1; a read by the objects its (decoded) answer
/// holds.
pub fn cost(route: Route, write: bool, body: &[u8]) -> u32 {
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
pub fn estimate(route: Route, write: bool) -> u32 {
    match (write, route.spec().objects) {
        (true, _) => 1,
        (false, Objects::User | Objects::Record) => cost_of(route, 1),
        (false, _) => cost_of(route, 0),
    }
}

/// What an upstream answer of `route` with `status` is charged: nothing for a refusal (429);
/// 1 for a write or an error; else its cost, from its decoded `body` when it was read, or
/// [`estimate`]d when it was streamed through.
pub fn charge(route: Route, write: bool, status: StatusCode, body: Option<&[u8]>) -> u32 {
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
pub fn window(now: Instant, length: Duration) -> (u64, Duration) {
    let unix = unix_now(now).as_nanos();
    let length_ns = length.as_nanos().max(1);
    let index = (unix / length_ns) as u64;
    let left = Duration::from_nanos((length_ns - unix % length_ns) as u64);
    (index, left)
}

/// The UTC hour `now` falls in, and the time left in it.
pub fn hour(now: Instant) -> (u64, Duration) {
    window(now, HOUR)
}

/// Where a policy's figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Upstream's enforced policy (`RateLimit-Policy`, `X-RateLimit-*`).
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
}

/// The site's quota as it stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub source: Source,
    /// Points per window, and the window.
    pub quota: u64,
    pub window: Duration,
    pub remaining: u64,
    pub reset_in: Duration,
    /// Upstream's `X-RateLimit-NearLimit: true` (under 20 % left).
    pub near_limit: bool,
    /// Points spent per hour at the recent rate, when two readings a second apart say.
    pub burn_per_hour: Option<f64>,
    /// When the remaining points run out at that rate (`None`: not spending).
    pub exhaustion_in: Option<Duration>,
}

/// What the site's quota means for the next upstream call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// The enforced (or configured) remaining share of the quota, `None` when unknown.
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

/// One reading of upstream's policy headers.
#[derive(Debug, Clone, Copy)]
struct Reading {
    source: Source,
    quota: u64,
    window: Duration,
    remaining: u64,
    reset_at: Instant,
    near_limit: bool,
}

#[derive(Debug, Default)]
struct SiteState {
    points_per_hour: Option<u64>,
    reserve: f64,
    reading: Option<Reading>,
    /// Points spent this hour through this gateway: (hour, points); the cluster's total when
    /// the cluster counts it.
    spent: (u64, u64),
    /// Recent (instant, remaining) of one source, for the burn rate.
    samples: VecDeque<(Instant, u64)>,
    samples_of: Option<Source>,
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

    /// Learns from what an upstream answer (any status) says of the limits.
    pub fn observe(&self, status: StatusCode, hints: &Hints) {
        let now = Instant::now();
        let reading = Reading::of(hints, now);
        let quota_refusal =
            status == StatusCode::TOO_MANY_REQUESTS && hints.reason == Some(Reason::Quota);
        if reading.is_none() && !quota_refusal {
            return;
        }
        let mut state = self.state.lock();
        if let Some(reading) = reading {
            state.push_sample(reading.source, now, reading.remaining);
            state.reading = Some(reading);
            if reading.source == Source::Enforced && reading.remaining == 0 {
                state.exhausted_until = Some(reading.reset_at);
            }
        }
        if quota_refusal {
            let wait = hints
                .retry_after
                .or_else(|| {
                    state
                        .reading
                        .map(|r| r.reset_at.saturating_duration_since(now))
                })
                .unwrap_or(Duration::from_secs(60));
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
        if state.in_force(now) == Some(Source::Configured)
            && let Some(quota) = state.points_per_hour
        {
            let remaining = quota.saturating_sub(state.spent.1);
            state.push_sample(Source::Configured, now, remaining);
        }
    }

    /// The quota as it stands: upstream's enforced policy while its window lasts, else the
    /// configured quota, else upstream's shadow policy; `None` when nothing says anything.
    pub fn standing(&self) -> Option<Standing> {
        let now = Instant::now();
        let state = self.state.lock();
        let source = state.in_force(now)?;
        let (quota, window, remaining, reset_in, near_limit) = match state.upstream_reading(now) {
            Some(r) if r.source == source => (
                r.quota,
                r.window,
                r.remaining,
                r.reset_at - now,
                r.near_limit,
            ),
            _ => {
                let quota = state.points_per_hour?;
                let (hour, left) = hour(now);
                let spent = if state.spent.0 == hour {
                    state.spent.1
                } else {
                    0
                };
                let remaining = quota.saturating_sub(spent);
                (quota, HOUR, remaining, left, false)
            }
        };
        let burn_per_second = state
            .burn_per_second()
            .filter(|_| state.samples_of == Some(source));
        Some(Standing {
            source,
            quota,
            window,
            remaining,
            reset_in,
            near_limit,
            burn_per_hour: burn_per_second.map(|rate| rate * 3600.0),
            exhaustion_in: burn_per_second
                .filter(|rate| *rate > 0.0)
                .and_then(|rate| Duration::try_from_secs_f64(remaining as f64 / rate).ok()),
        })
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
                share: (standing.quota > 0)
                    .then(|| standing.remaining as f64 / standing.quota as f64),
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
    /// Upstream's reading, while its window lasts.
    fn upstream_reading(&self, now: Instant) -> Option<Reading> {
        self.reading.filter(|r| r.reset_at > now)
    }

    /// Whose figures stand: upstream's enforced policy, else the configured quota, else
    /// upstream's shadow policy.
    fn in_force(&self, now: Instant) -> Option<Source> {
        match self.upstream_reading(now) {
            Some(r) if r.source == Source::Enforced => Some(Source::Enforced),
            _ if self.points_per_hour.is_some() => Some(Source::Configured),
            reading => reading.map(|r| r.source),
        }
    }

    /// A reading of `source`'s remaining points; a new window (more left than before) or
    /// another source starts the samples afresh.
    fn push_sample(&mut self, source: Source, now: Instant, remaining: u64) {
        let renewed = self
            .samples
            .back()
            .is_some_and(|(_, last)| remaining > *last);
        if self.samples_of != Some(source) || renewed {
            self.samples.clear();
            self.samples_of = Some(source);
        }
        self.samples.push_back((now, remaining));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > BURN_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Points per second over the recent samples, when they span at least a second.
    fn burn_per_second(&self) -> Option<f64> {
        let (first_at, first) = *self.samples.front()?;
        let (last_at, last) = *self.samples.back()?;
        let span = last_at.duration_since(first_at);
        (span >= Duration::from_secs(1))
            .then(|| first.saturating_sub(last) as f64 / span.as_secs_f64())
    }
}

impl Reading {
    /// Upstream's policy as an answer's hints state it: the enforced points policy, else
    /// the `X-RateLimit-*` set, else the shadow (`Beta-`) policy.
    fn of(hints: &Hints, now: Instant) -> Option<Reading> {
        let policy = |mode| {
            let stated = hints.policies.iter().filter(|p| p.mode == mode);
            let mut complete = stated.filter_map(|p| Some((p, p.remaining?, p.reset_in?)));
            let first = complete.clone().next();
            complete
                .find(|(p, ..)| p.name == "tenant-app-quota")
                .or(first)
                .map(|(p, remaining, reset)| (p.quota, p.window, remaining, reset))
        };
        let legacy = || {
            let bucket = hints.bucket?;
            let reset = hints.reset_in.unwrap_or_else(|| hour(now).1);
            Some((bucket.limit, HOUR, bucket.remaining, reset))
        };
        let (source, (quota, window, remaining, reset)) = match policy(Mode::Enforced) {
            Some(figures) => (Source::Enforced, figures),
            None => match legacy() {
                Some(figures) => (Source::Enforced, figures),
                None => (Source::Shadow, policy(Mode::Shadow)?),
            },
        };
        Some(Reading {
            source,
            quota,
            window,
            remaining,
            // Bounded by the hints (a reset within its window, a window within a day).
            reset_at: now + reset,
            near_limit: hints.near_limit && source == Source::Enforced,
        })
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
        }
    }

    /// The caller's name in metrics and on the status page.
    pub fn label(&self) -> &str {
        &self.label
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
mod tests {
    use super::*;
    use http::HeaderValue;

    const SHADOW: [(&str, &str); 2] = [
        (
            "beta-ratelimit-policy",
            "\"tenant-app-quota\";q=100100;w=3600",
        ),
        ("beta-ratelimit", "\"tenant-app-quota\";r=10;t=2107"),
    ];

    fn hints(pairs: &[(&'static str, &'static str)]) -> Hints {
        let headers: http::HeaderMap = pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                )
            })
            .collect();
        Hints::read(&headers)
    }

    #[test]
    fn calls_cost_what_atlassians_table_says() {
        let bulk = br#"{"results":[{"accountId":"a"},{"accountId":"b"}],"size":2}"#;
        assert_eq!(cost(Route::Bulk, false, bulk), 5);
        assert_eq!(cost(Route::MemberOf, false, br#"{"results":[]}"#), 1);
        assert_eq!(cost(Route::User, false, b"{}"), 3);
        assert_eq!(cost(Route::Email, false, b"{}"), 2);
        assert_eq!(
            cost(Route::EmailBulk, false, br#"[{"a":1},{"a":2},{"a":3}]"#),
            4
        );
        assert_eq!(cost(Route::Properties, false, br#"{"results":[{}]}"#), 2);
        assert_eq!(cost(Route::WatchSpace, false, br#"{"watching":true}"#), 1);
        assert_eq!(cost(Route::Property, true, b""), 1, "writes cost 1");
        assert_eq!(estimate(Route::Current, false), 3);
        assert_eq!(estimate(Route::Bulk, false), 1);
        let ok = StatusCode::OK;
        assert_eq!(charge(Route::Bulk, false, ok, Some(bulk)), 5);
        assert_eq!(
            charge(Route::Bulk, false, ok, None),
            1,
            "streamed: the least"
        );
        assert_eq!(
            charge(Route::User, false, StatusCode::NOT_FOUND, Some(b"{}")),
            1
        );
        assert_eq!(
            charge(Route::User, false, StatusCode::TOO_MANY_REQUESTS, None),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn enforced_headers_win_and_shadow_ones_are_reported_only() {
        let site = Site::new(None, 0.2);
        assert_eq!(site.standing(), None);
        site.observe(StatusCode::OK, &hints(&SHADOW));
        let shadow = site.standing().unwrap();
        assert_eq!(
            (shadow.source, shadow.quota, shadow.remaining),
            (Source::Shadow, 100_100, 10)
        );
        assert_eq!(shadow.reset_in, Duration::from_secs(2107));
        assert!(
            !site.pressure().under(0.2),
            "a shadow policy is not acted on"
        );

        site.observe(
            StatusCode::OK,
            &hints(&[
                (
                    "ratelimit-policy",
                    "\"burst\";q=100;w=1, \"tenant-app-quota\";q=1000;w=3600",
                ),
                (
                    "ratelimit",
                    "\"burst\";r=99;t=1, \"tenant-app-quota\";r=150;t=600",
                ),
                ("x-ratelimit-nearlimit", "true"),
            ]),
        );
        let enforced = site.standing().unwrap();
        assert_eq!(
            (enforced.source, enforced.quota, enforced.remaining),
            (Source::Enforced, 1000, 150)
        );
        let pressure = site.pressure();
        assert_eq!(pressure.share, Some(0.15));
        assert!(pressure.near_limit && pressure.under(0.1));

        // The window ends: the reading says nothing about the next one.
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(site.standing(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_legacy_set_and_a_quota_refusal_are_read() {
        let site = Site::new(None, 0.2);
        site.observe(
            StatusCode::OK,
            &hints(&[
                ("x-ratelimit-limit", "5000"),
                ("x-ratelimit-remaining", "4000"),
                ("x-ratelimit-reset", "120"),
            ]),
        );
        let standing = site.standing().unwrap();
        assert_eq!((standing.quota, standing.remaining), (5000, 4000));
        assert_eq!(standing.reset_in, Duration::from_secs(120));

        site.observe(
            StatusCode::TOO_MANY_REQUESTS,
            &hints(&[
                ("ratelimit-reason", "confluence-quota-tenant-based"),
                ("retry-after", "30"),
            ]),
        );
        assert_eq!(site.pressure().exhausted_for, Some(Duration::from_secs(30)));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(site.pressure().exhausted_for, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_burn_rate_projects_exhaustion() {
        let site = Site::new(None, 0.2);
        let reading = |remaining: &'static str| {
            hints(&[
                ("ratelimit-policy", "\"tenant-app-quota\";q=10000;w=3600"),
                ("ratelimit", remaining),
            ])
        };
        site.observe(
            StatusCode::OK,
            &reading("\"tenant-app-quota\";r=9000;t=3000"),
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        site.observe(
            StatusCode::OK,
            &reading("\"tenant-app-quota\";r=8900;t=2990"),
        );
        let standing = site.standing().unwrap();
        assert_eq!(standing.burn_per_hour, Some(36_000.0));
        assert_eq!(standing.exhaustion_in, Some(Duration::from_secs(890)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_configured_quota_counts_down_with_wikigates_spending_and_resets_hourly() {
        let site = Site::new(Some(1000), 0.2);
        site.observe(StatusCode::OK, &hints(&SHADOW));
        site.spent(100, None);
        site.spent(50, None);
        let standing = site.standing().unwrap();
        assert_eq!(
            (standing.source, standing.remaining),
            (Source::Configured, 850),
            "a configured quota stands over a shadow policy"
        );
        assert_eq!(site.pressure().share, Some(0.85));
        tokio::time::advance(standing.reset_in).await;
        assert_eq!(site.standing().unwrap().remaining, 1000, "a new hour");
    }

    #[tokio::test(start_paused = true)]
    async fn accounts_count_this_hour_and_in_total() {
        let accounts = Accounts::default();
        let batch = accounts.get("class:batch");
        let now = Instant::now();
        batch.spend(Route::Bulk, 41, now);
        batch.save(Route::Bulk, 9, now);
        assert!(Arc::ptr_eq(&batch, &accounts.get("class:batch")));
        assert_eq!(batch.this_hour(), (41, 9));
        let (_, left) = hour(Instant::now());
        tokio::time::advance(left).await;
        assert_eq!(batch.this_hour(), (0, 0), "the top of the hour");
        assert_eq!(batch.by_route(Route::Bulk), (41, 9));
    }

    #[tokio::test(start_paused = true)]
    async fn hours_end_at_the_top_of_the_utc_hour() {
        let (index, left) = hour(Instant::now());
        let unix = unix_now(Instant::now());
        assert_eq!((unix + left).as_secs() % 3600, 0);
        tokio::time::advance(left).await;
        assert_eq!(hour(Instant::now()), (index + 1, HOUR));
    }
}
