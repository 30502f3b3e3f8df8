//! Metrics: every `wikigate_*` metric, defined in this one file, and the figures of the status
//! page and of `/admin/cache/stats`.
//!
//! Each event is counted once. Requests, by route × method × status class × cache outcome,
//! with their latency, and the cache's own events by route, are arrays of atomics (a [`Tally`]):
//! recording one takes no lock and hashes nothing, and the Prometheus exposition, the status
//! page and the admin stats are all read from the same counters. Events with open-ended label
//! values (upstream statuses, refused callers, errors, evictions) are counted where their
//! labels are, also once. prometheus-client (the official OpenMetrics client) encodes it all:
//! no global registry, OpenMetrics text or the classic Prometheus format.
//!
//! Invariant: label values are bounded — a route *name* from the route table, a method from a
//! fixed list, a status class, a cache outcome, a configured client name or quota class, a
//! limit name, an eviction cause, an error source. Never a raw path, an account id or a
//! credential.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::burst::{self, BucketId};
use crate::error::ErrorSource;
use crate::quota::{Quota, Standing};
use crate::routes::Route;

/// What the cache did for a request, as the `cache` label says it. `cache::Outcome` says it
/// in full; this is its metric dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLabel {
    Hit,
    Miss,
    Coalesced,
    StaleWhileRevalidate,
    StaleIfError,
    StaleOnLowQuota,
    Bypass,
    /// The request's own `Cache-Control` sent it upstream.
    Request,
    /// Not a cacheable read (writes, refusals).
    None,
}

/// The `cache` label values, by [`CacheLabel::index`].
const CACHE_LABELS: [&str; 7] = [
    "hit",
    "miss",
    "coalesced",
    "stale",
    "bypass",
    "request",
    "none",
];

impl CacheLabel {
    pub fn as_str(self) -> &'static str {
        CACHE_LABELS[self.index()]
    }

    fn index(self) -> usize {
        match self {
            CacheLabel::Hit => 0,
            CacheLabel::Miss => 1,
            CacheLabel::Coalesced => 2,
            CacheLabel::StaleWhileRevalidate
            | CacheLabel::StaleIfError
            | CacheLabel::StaleOnLowQuota => 3,
            CacheLabel::Bypass => 4,
            CacheLabel::Request => 5,
            CacheLabel::None => 6,
        }
    }
}

/// One finished request, as the gateway reports it.
pub struct RequestRecord {
    pub route: Option<Route>,
    pub method: Method,
    pub status: StatusCode,
    pub cache: CacheLabel,
    /// Served without an upstream call of its own.
    pub saved: bool,
    pub duration: Duration,
}

/// Routes and the `unmatched` label of requests that matched none.
const ROUTES: usize = Route::ALL.len() + 1;
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "other"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The route label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

fn route_label(index: usize) -> &'static str {
    Route::ALL
        .get(index)
        .map_or(UNMATCHED, |route| route.name())
}

/// Upper bounds of the latency histograms' buckets, in ns: 100 µs doubling to ~26 s.
const LATENCY_BOUNDS_NS: [u64; 19] = {
    let mut bounds = [0; 19];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 100_000 << i;
        i += 1;
    }
    bounds
};

/// A latency histogram of atomics: observing one takes no lock.
#[derive(Debug, Default)]
struct Latency {
    /// Per bucket (not cumulative), the last one being +Inf.
    counts: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Latency {
    fn observe(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; LATENCY_BOUNDS_NS.len() + 1] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        let counts = self.counts();
        let bounds = LATENCY_BOUNDS_NS
            .iter()
            .map(|ns| *ns as f64 / 1e9)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }
}

/// The bucket bound (µs) at quantile `q` of histogram bucket counts (an upper estimate).
fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(LATENCY_BOUNDS_NS.get(i).map_or(u64::MAX, |ns| ns / 1_000));
        }
    }
    None
}

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// The counters of requests and of the cache: every such event is counted here, once.
#[derive(Debug)]
struct Tally {
    /// By route × method × status class × cache label.
    requests: Box<[AtomicU64]>,
    /// By route × method.
    durations: Box<[Latency]>,
    /// By route: answers served without an upstream call of their own (the points they saved
    /// are counted by caller, in `quota::Accounts`).
    saved: [AtomicU64; ROUTES],
    /// By route: coalesced requests, stale answers (if_error, while_revalidate,
    /// on_low_quota), answers stored, and writes that invalidated reads.
    coalesced: [AtomicU64; ROUTES],
    stale_if_error: [AtomicU64; ROUTES],
    stale_while_revalidate: [AtomicU64; ROUTES],
    stale_on_low_quota: [AtomicU64; ROUTES],
    stored: [AtomicU64; ROUTES],
    invalidations: [AtomicU64; ROUTES],
    purges: AtomicU64,
}

impl Default for Tally {
    fn default() -> Self {
        let slots = ROUTES * METHODS.len() * CLASSES.len() * CACHE_LABELS.len();
        Tally {
            requests: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            durations: (0..ROUTES * METHODS.len())
                .map(|_| Latency::default())
                .collect(),
            saved: counters(),
            coalesced: counters(),
            stale_if_error: counters(),
            stale_while_revalidate: counters(),
            stale_on_low_quota: counters(),
            stored: counters(),
            invalidations: counters(),
            purges: AtomicU64::new(0),
        }
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Tally {
    fn slot(route: usize, method: usize, class: usize, cache: usize) -> usize {
        ((route * METHODS.len() + method) * CLASSES.len() + class) * CACHE_LABELS.len() + cache
    }

    fn record(&self, record: &RequestRecord) {
        let route = record.route.map_or(Route::ALL.len(), Route::index);
        let method = method_index(&record.method);
        let slot = Tally::slot(
            route,
            method,
            class_index(record.status),
            record.cache.index(),
        );
        self.requests[slot].fetch_add(1, Ordering::Relaxed);
        self.durations[route * METHODS.len() + method].observe(record.duration);
        match record.cache {
            CacheLabel::Coalesced => self.coalesced[route].fetch_add(1, Ordering::Relaxed),
            CacheLabel::StaleIfError => self.stale_if_error[route].fetch_add(1, Ordering::Relaxed),
            CacheLabel::StaleWhileRevalidate => {
                self.stale_while_revalidate[route].fetch_add(1, Ordering::Relaxed)
            }
            CacheLabel::StaleOnLowQuota => {
                self.stale_on_low_quota[route].fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
        if record.saved {
            self.saved[route].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests of `route` (by index) whose cache label is one of `labels`.
    fn requests_of(&self, route: usize, labels: &[CacheLabel]) -> u64 {
        let mut total = 0;
        for method in 0..METHODS.len() {
            for class in 0..CLASSES.len() {
                for label in labels {
                    total += load(&self.requests[Tally::slot(route, method, class, label.index())]);
                }
            }
        }
        total
    }

    /// Every family the tally holds, in exposition order.
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        self.encode_requests(encoder)?;
        self.encode_durations(encoder)?;
        self.encode_per_route(encoder)?;
        self.encode_stale(encoder)?;
        self.encode_invalidations(encoder)?;
        let purges = encoder.encode_descriptor(
            "cache_purges",
            "Purges an operator made (DELETE /admin/cache)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(load(&self.purges)).encode(purges)
    }

    /// `requests_total`: only the label sets that happened.
    fn encode_requests(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut requests = encoder.encode_descriptor(
            "requests",
            "Requests answered, by route, method, status class and cache outcome",
            None,
            MetricType::Counter,
        )?;
        for route in 0..ROUTES {
            for (method, method_label) in METHODS.iter().enumerate() {
                for (class, class_label) in CLASSES.iter().enumerate() {
                    for (cache, cache_label) in CACHE_LABELS.iter().enumerate() {
                        let n = load(&self.requests[Tally::slot(route, method, class, cache)]);
                        if n == 0 {
                            continue;
                        }
                        let labels = RequestLabels {
                            route: route_label(route),
                            method: method_label,
                            status_class: class_label,
                            cache: cache_label,
                        };
                        ConstCounter::new(n).encode(requests.encode_family(&labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `request_duration_seconds`, by route and method, for those that were observed.
    fn encode_durations(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut durations = encoder.encode_descriptor(
            "request_duration",
            "Time to answer a request (headers ready)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for route in 0..ROUTES {
            for (method, method_label) in METHODS.iter().enumerate() {
                let latency = &self.durations[route * METHODS.len() + method];
                if latency.counts().iter().all(|n| *n == 0) {
                    continue;
                }
                let labels = RouteMethodLabels {
                    route: route_label(route),
                    method: method_label,
                };
                latency.encode(durations.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// The counters kept per route, every route listed (a dashboard's zero is a real zero).
    fn encode_per_route(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let per_route = [
            (
                "upstream_requests_saved",
                "Requests answered without an upstream call (hits, coalesced, stale)",
                &self.saved,
            ),
            (
                "cache_coalesced",
                "Requests that waited for an identical fetch instead of fetching",
                &self.coalesced,
            ),
            (
                "cache_stored",
                "Answers stored in the cache (a bulk lookup's accounts one by one)",
                &self.stored,
            ),
        ];
        for (name, help, counts) in per_route {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for route in Route::ALL {
                let labels = [("route", route.name())];
                ConstCounter::new(load(&counts[route.index()]))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// `cache_stale_served_total`, by route and kind.
    fn encode_stale(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut stale = encoder.encode_descriptor(
            "cache_stale_served",
            "Expired answers served, by route and kind (if_error, while_revalidate, on_low_quota)",
            None,
            MetricType::Counter,
        )?;
        for route in Route::ALL {
            for (kind, counts) in [
                ("if_error", &self.stale_if_error),
                ("while_revalidate", &self.stale_while_revalidate),
                ("on_low_quota", &self.stale_on_low_quota),
            ] {
                let labels = StaleLabels {
                    route: route.name(),
                    kind,
                };
                ConstCounter::new(load(&counts[route.index()]))
                    .encode(stale.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    /// `cache_invalidations_total`, by the routes that have writes.
    fn encode_invalidations(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut invalidations = encoder.encode_descriptor(
            "cache_invalidations",
            "Writes that invalidated cached reads, by the write's route",
            None,
            MetricType::Counter,
        )?;
        let written = Route::ALL
            .into_iter()
            .filter(|route| route.operations().iter().any(|op| op.verb().is_write()));
        for route in written {
            let labels = [("route", route.name())];
            ConstCounter::new(load(&self.invalidations[route.index()]))
                .encode(invalidations.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status_class: &'static str,
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteMethodLabels {
    route: &'static str,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StaleLabels {
    route: &'static str,
    kind: &'static str,
}

/// Upstream calls: by route and status (or transport error), and their latency by route.
#[derive(Debug, Default)]
struct Upstream {
    calls: Mutex<HashMap<(Route, String), u64>>,
    durations: [Latency; Route::ALL.len()],
}

/// Refusals by (caller, limit): the `rate_limited` family and the status page's top list.
#[derive(Debug, Default)]
struct Refused(Mutex<HashMap<(String, &'static str), u64>>);

/// Everything the registry encodes on a scrape that is not a plain metric of its own.
#[derive(Debug)]
struct Counted {
    tally: Arc<Tally>,
    upstream: Arc<Upstream>,
    refused: Arc<Refused>,
}

impl Collector for Counted {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        self.tally.encode(&mut encoder)?;
        let mut calls = encoder.encode_descriptor(
            "upstream_requests",
            "Requests sent to Confluence, by route and upstream status (or transport error)",
            None,
            MetricType::Counter,
        )?;
        let mut upstream: Vec<((Route, String), u64)> = self
            .upstream
            .calls
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        upstream.sort_by(|a, b| (a.0.0.index(), &a.0.1).cmp(&(b.0.0.index(), &b.0.1)));
        for ((route, status), n) in &upstream {
            let labels = [("route", route.name()), ("status", status.as_str())];
            ConstCounter::new(*n).encode(calls.encode_family(&labels)?)?;
        }
        let mut durations = encoder.encode_descriptor(
            "upstream_request_duration",
            "Time for Confluence to answer (headers)",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for route in Route::ALL {
            let latency = &self.upstream.durations[route.index()];
            if latency.counts().iter().any(|n| *n > 0) {
                let labels = [("route", route.name())];
                latency.encode(durations.encode_family(&labels)?)?;
            }
        }
        let mut refused = encoder.encode_descriptor(
            "rate_limited",
            "Requests refused by wikigate's limits (429; 503 for upstream-concurrency), by caller (client name or quota class) and limit",
            None,
            MetricType::Counter,
        )?;
        for ((caller, limit), n) in self.refused.0.lock().iter() {
            let labels = [("caller", caller.as_str()), ("limit", *limit)];
            ConstCounter::new(*n).encode(refused.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The quota's families, read at every scrape: each caller's points by route (spent on
/// upstream calls, saved by answers made without one) and this hour, and the site's standing.
#[derive(Debug)]
struct Points(Arc<Quota>);

/// `log_dropped_lines_total`: log lines the log's writer dropped because its output could
/// not keep up (`log_sink`).
#[derive(Debug)]
struct LogDropped;

impl Collector for LogDropped {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let dropped = encoder.encode_descriptor(
            "log_dropped_lines",
            "Log lines dropped because the log output could not keep up",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(crate::log_sink::dropped()).encode(dropped)
    }
}

impl Collector for Points {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let accounts = self.0.accounts.all();
        for (name, help, spent) in [
            (
                "quota_points_spent",
                "Atlassian quota points spent on upstream calls, by caller and route (1 per call + 2 per user or group object + 1 per other object; writes 1)",
                true,
            ),
            (
                "quota_points_saved",
                "Atlassian quota points saved by answers made without an upstream call, by caller and route",
                false,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for account in &accounts {
                for route in Route::ALL {
                    let (s, v) = account.by_route(route);
                    let labels = [("caller", account.label()), ("route", route.name())];
                    ConstCounter::new(if spent { s } else { v })
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut hour = encoder.encode_descriptor(
            "quota_caller_points_this_hour",
            "Points spent and saved by each caller since the top of the UTC hour",
            None,
            MetricType::Gauge,
        )?;
        for account in &accounts {
            let (spent, saved) = account.this_hour();
            for (kind, points) in [("spent", spent), ("saved", saved)] {
                let labels = [("caller", account.label()), ("kind", kind)];
                ConstGauge::new(points as i64).encode(hour.encode_family(&labels)?)?;
            }
        }
        self.encode_site(&mut encoder)
    }
}

impl Points {
    /// `site_quota_*`: the standing, labelled with its source (enforced, shadow, configured).
    fn encode_site(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let site = &self.0.site;
        let pressure = site.pressure();
        let flags = [
            (
                "site_quota_low",
                "1 while the site's quota is under quota.reserve or upstream says it is near its limit",
                f64::from(u8::from(site.low())),
                None,
            ),
            (
                "site_quota_exhausted",
                "Time until Confluence takes calls again after refusing for its quota (0: it takes them)",
                pressure.exhausted_for.map_or(0.0, |d| d.as_secs_f64()),
                Some(&Unit::Seconds),
            ),
        ];
        for (name, help, value, unit) in flags {
            let gauge = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            ConstGauge::new(value).encode(gauge)?;
        }
        // Every family is described, with a sample per policy where its standing says
        // something (the binding policy is the one `site_quota_low` reads).
        let standings = site.standings();
        type Figure = fn(&Standing) -> Option<f64>;
        let figures: [(&str, &str, Figure, Option<&Unit>); 7] = [
            (
                "site_quota",
                "A points policy's quota per window, by source and policy",
                |s| Some(s.quota as f64),
                None,
            ),
            (
                "site_quota_remaining",
                "Points a policy has left in this window (absent while upstream does not say: it states them once about 80 % is used)",
                |s| s.remaining.map(|r| r as f64),
                None,
            ),
            (
                "site_quota_window",
                "A policy's window",
                |s| Some(s.window.as_secs_f64()),
                Some(&Unit::Seconds),
            ),
            (
                "site_quota_reset",
                "Time until a policy's window resets (an hourly one at the top of the UTC hour)",
                |s| Some(s.reset_in.as_secs_f64()),
                Some(&Unit::Seconds),
            ),
            (
                "site_quota_burn_points_per_hour",
                "Points spent per hour at the recent rate (the last 5 minutes of readings)",
                |s| s.burn_per_hour,
                None,
            ),
            (
                "site_quota_exhaustion",
                "When a policy's remaining points run out at the recent rate",
                |s| s.exhaustion_in.map(|d| d.as_secs_f64()),
                Some(&Unit::Seconds),
            ),
            (
                "site_quota_near_limit",
                "1 while upstream says X-RateLimit-NearLimit: true (X-Beta-RateLimit-NearLimit for shadow policies)",
                |s| Some(f64::from(u8::from(s.near_limit))),
                None,
            ),
        ];
        for (name, help, figure, unit) in figures {
            let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            for standing in &standings {
                if let Some(value) = figure(standing) {
                    let labels = [
                        ("source", standing.source.as_str()),
                        ("policy", &*standing.policy),
                    ];
                    ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: &'static str,
    source: &'static str,
}

/// A burst bucket: a route and a method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    route: &'static str,
    method: &'static str,
}

impl BucketLabels {
    fn of(id: BucketId) -> BucketLabels {
        BucketLabels {
            route: id.route.name(),
            method: id.method(),
        }
    }
}

/// Bounds of the waits for a burst bucket or a place upstream: from a millisecond to the
/// longest (`burst_wait`, `max_queue_wait` default to 2 s).
fn wait_histogram() -> Histogram {
    Histogram::new([0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

pub struct Metrics {
    registry: Registry,
    quota: Arc<Quota>,
    tally: Arc<Tally>,
    upstream: Arc<Upstream>,
    refused: Arc<Refused>,
    errors: Family<ErrorLabels, Counter>,
    evictions: Family<CauseLabels, Counter>,
    holds_started: Counter,
    in_flight: Gauge,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    cache_max_bytes: Gauge,
    holds_active: Gauge,
    hold_remaining: Gauge<f64, AtomicU64>,
    redis_up: Gauge,
    burst_waits: Family<BucketLabels, Histogram, fn() -> Histogram>,
    burst_remaining: Family<BucketLabels, Gauge<f64, AtomicU64>>,
    burst_limit: Family<BucketLabels, Gauge>,
    queue_waits: Histogram,
    upstream_in_flight: Gauge,
    upstream_queued: Gauge,
    /// Requests in a row that failed inside wikigate since an upstream call last completed:
    /// what readiness reads (a gateway whose upstream path fails every time is not ready).
    failing_inside: AtomicU64,
}

/// Internal failures in a row, with no upstream answer between them, past which the gateway
/// is not ready.
pub const NOT_READY_AFTER: u64 = 5;

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Arc::default())
    }
}

impl Metrics {
    /// `quota`: the points and the site's standing, exposed at every scrape.
    pub fn new(quota: Arc<Quota>) -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("wikigate"),
            quota,
            tally: Arc::default(),
            upstream: Arc::default(),
            refused: Arc::default(),
            errors: Family::default(),
            evictions: Family::default(),
            holds_started: Counter::default(),
            in_flight: Gauge::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_max_bytes: Gauge::default(),
            holds_active: Gauge::default(),
            hold_remaining: Gauge::default(),
            redis_up: Gauge::default(),
            burst_waits: Family::new_with_constructor(wait_histogram),
            burst_remaining: Family::default(),
            burst_limit: Family::default(),
            queue_waits: wait_histogram(),
            upstream_in_flight: Gauge::default(),
            upstream_queued: Gauge::default(),
            failing_inside: AtomicU64::new(0),
        };
        // Dashboards and alerts see 0 rather than no data before the first eviction.
        for cause in ["expired", "explicit", "replaced", "size"] {
            drop(metrics.evictions.get_or_create(&CauseLabels { cause }));
        }
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register_collector(Box::new(Counted {
            tally: self.tally.clone(),
            upstream: self.upstream.clone(),
            refused: self.refused.clone(),
        }));
        r.register_collector(Box::new(Points(self.quota.clone())));
        r.register_collector(Box::new(LogDropped));
        r.register(
            "errors",
            "Error answers wikigate made itself, by route and source: downstream (the request), upstream (the site failed), internal (a fault of wikigate's)",
            self.errors.clone(),
        );
        r.register(
            "cache_evictions",
            "Entries removed from the cache, by cause",
            self.evictions.clone(),
        );
        r.register(
            "upstream_holds_started",
            "Upstream holds started after a 429 or 503 with Retry-After",
            self.holds_started.clone(),
        );
        r.register(
            "upstream_holds",
            "Upstream credentials held off right now",
            self.holds_active.clone(),
        );
        r.register_with_unit(
            "upstream_hold_remaining",
            "Longest remaining upstream hold",
            Unit::Seconds,
            self.hold_remaining.clone(),
        );
        r.register(
            "cluster_redis_up",
            "Multi-replica mode: 1 while Redis is reachable, 0 while not, -1 without a cluster",
            self.redis_up.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests being answered right now",
            self.in_flight.clone(),
        );
        r.register(
            "upstream_in_flight",
            "Requests upstream right now (at most upstream.max_in_flight)",
            self.upstream_in_flight.clone(),
        );
        r.register(
            "upstream_queued",
            "Requests waiting for a place upstream (at most upstream.max_queued)",
            self.upstream_queued.clone(),
        );
        r.register_with_unit(
            "upstream_queue_wait",
            "Time upstream calls waited for a place upstream",
            Unit::Seconds,
            self.queue_waits.clone(),
        );
        r.register_with_unit(
            "upstream_burst_wait",
            "Time upstream calls waited for their share of Atlassian's burst bucket, by route and method",
            Unit::Seconds,
            self.burst_waits.clone(),
        );
        r.register(
            "upstream_burst_remaining",
            "Tokens left in Atlassian's per-second burst bucket of a route and method, as last stated and refilled since",
            self.burst_remaining.clone(),
        );
        r.register(
            "upstream_burst_limit",
            "Size of Atlassian's per-second burst bucket of a route and method (X-RateLimit-Limit)",
            self.burst_limit.clone(),
        );
        r.register(
            "cache_entries",
            "Entries in the cache",
            self.cache_entries.clone(),
        );
        r.register_with_unit(
            "cache_weighted",
            "Weighted size of the cache (body + headers + key)",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register_with_unit(
            "cache_max",
            "The cache's memory budget",
            Unit::Bytes,
            self.cache_max_bytes.clone(),
        );
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct BuildLabels {
            version: &'static str,
        }
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register("build_info", "Build information", build);
    }

    /// A request began; the guard ends it.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Records a finished request.
    pub fn request(&self, record: &RequestRecord) {
        self.tally.record(record);
    }

    /// `n` answers of `route` were stored in the cache.
    pub fn stored(&self, route: Route, n: u64) {
        self.tally.stored[route.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Records a request sent upstream: its status, or the transport error that ended it.
    pub fn upstream(
        &self,
        route: Route,
        status: Result<StatusCode, &'static str>,
        duration: Duration,
    ) {
        let status = match status {
            Ok(code) => {
                self.failing_inside.store(0, Ordering::Relaxed);
                code.as_u16().to_string()
            }
            Err(error) => error.to_owned(),
        };
        *self
            .upstream
            .calls
            .lock()
            .entry((route, status))
            .or_default() += 1;
        self.upstream.durations[route.index()].observe(duration);
    }

    /// A write through `route` invalidated cached reads.
    pub fn invalidation(&self, route: Route) {
        self.tally.invalidations[route.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// An operator purged the cache (all of it, or one tag).
    pub fn purge(&self) {
        self.tally.purges.fetch_add(1, Ordering::Relaxed);
    }

    /// An error answer wikigate made itself.
    pub fn error(&self, route: Option<Route>, source: ErrorSource) {
        if source == ErrorSource::Internal {
            self.failing_inside.fetch_add(1, Ordering::Relaxed);
        }
        self.errors
            .get_or_create(&ErrorLabels {
                route: route.map_or(UNMATCHED, Route::name),
                source: source.as_str(),
            })
            .inc();
    }

    /// Whether the last [`NOT_READY_AFTER`] or more requests failed inside wikigate with no
    /// upstream answer since: readiness turns 503 until an upstream call completes again.
    pub fn failing_inside(&self) -> Option<u64> {
        let streak = self.failing_inside.load(Ordering::Relaxed);
        (streak >= NOT_READY_AFTER).then_some(streak)
    }

    pub fn rate_limited(&self, caller: &str, limit: &'static str) {
        *self
            .refused
            .0
            .lock()
            .entry((caller.to_owned(), limit))
            .or_default() += 1;
    }

    /// An upstream call of `bucket` waited this long for its burst bucket (zero: not at all).
    pub fn burst_waited(&self, bucket: BucketId, waited: Duration) {
        self.burst_waits
            .get_or_create(&BucketLabels::of(bucket))
            .observe(waited.as_secs_f64());
    }

    /// An upstream call waited this long for a place upstream.
    pub fn queue_waited(&self, waited: Duration) {
        self.queue_waits.observe(waited.as_secs_f64());
    }

    pub fn hold_started(&self) {
        self.holds_started.inc();
    }

    /// An entry left the cache (moka's removal cause).
    pub fn eviction(&self, cause: &'static str) {
        self.evictions.get_or_create(&CauseLabels { cause }).inc();
    }

    /// The exposition, with scrape-time values filled in from `snapshot`: OpenMetrics when the
    /// scraper asks for it (Prometheus does), else the classic Prometheus text format that
    /// `curl` users and `promtool` read.
    pub fn encode(&self, snapshot: &Snapshot, openmetrics: bool) -> String {
        self.cache_entries.set(snapshot.cache_entries as i64);
        self.cache_bytes.set(snapshot.cache_bytes as i64);
        self.cache_max_bytes.set(snapshot.cache_max_bytes as i64);
        self.holds_active.set(snapshot.holds as i64);
        self.hold_remaining.set(snapshot.longest_hold.as_secs_f64());
        self.redis_up.set(snapshot.redis_up.map_or(-1, i64::from));
        self.upstream_in_flight
            .set(i64::try_from(snapshot.upstream_in_flight).unwrap_or(i64::MAX));
        self.upstream_queued
            .set(i64::try_from(snapshot.upstream_queued).unwrap_or(i64::MAX));
        for bucket in &snapshot.bursts {
            let labels = BucketLabels::of(bucket.id);
            self.burst_remaining
                .get_or_create(&labels)
                .set(bucket.remaining);
            self.burst_limit
                .get_or_create(&labels)
                .set(i64::try_from(bucket.limit).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        let encoded = if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        };
        encoded.expect("writing to a String cannot fail");
        text
    }

    /// The cache's counters for `/admin/cache/stats`.
    pub fn cache_stats(&self) -> CacheStats {
        let t = &self.tally;
        let sum = |labels: &[CacheLabel]| (0..ROUTES).map(|r| t.requests_of(r, labels)).sum();
        let total = |counts: &[AtomicU64; ROUTES]| counts.iter().map(load).sum::<u64>();
        CacheStats {
            hits: sum(&[CacheLabel::Hit]),
            misses: sum(&[CacheLabel::Miss, CacheLabel::Request]),
            coalesced: sum(&[CacheLabel::Coalesced]),
            stale: sum(&[CacheLabel::StaleIfError]),
            bypassed: sum(&[CacheLabel::Bypass]),
            stored: total(&t.stored),
            invalidations: total(&t.invalidations) + load(&t.purges),
        }
    }

    /// The status page's figures.
    pub fn status(&self, snapshot: &Snapshot) -> Status {
        let t = &self.tally;
        let routes = (0..ROUTES)
            .filter_map(|route| {
                let requests = t.requests_of(route, &ALL_LABELS);
                let mut latency = [0u64; LATENCY_BOUNDS_NS.len() + 1];
                for method in 0..METHODS.len() {
                    for (sum, n) in latency
                        .iter_mut()
                        .zip(t.durations[route * METHODS.len() + method].counts())
                    {
                        *sum += n;
                    }
                }
                (requests > 0).then(|| RouteStatus {
                    route: route_label(route),
                    requests,
                    hits: t.requests_of(route, &[CacheLabel::Hit, CacheLabel::Coalesced]),
                    misses: t.requests_of(route, &[CacheLabel::Miss, CacheLabel::Request]),
                    stale: t.requests_of(route, &[CacheLabel::StaleIfError]),
                    p50_us: quantile_us(&latency, 0.50),
                    p99_us: quantile_us(&latency, 0.99),
                })
            })
            .collect();
        let mut limited: Vec<(String, &'static str, u64)> = self
            .refused
            .0
            .lock()
            .iter()
            .map(|((caller, limit), n)| (caller.clone(), *limit, *n))
            .collect();
        limited.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        limited.truncate(10);
        let upstream = self.upstream.calls.lock().values().sum();
        let mut callers: Vec<CallerPoints> = self
            .quota
            .accounts
            .all()
            .iter()
            .map(|account| {
                let (spent_hour, saved_hour) = account.this_hour();
                CallerPoints {
                    caller: account.label().to_owned(),
                    spent_hour,
                    saved_hour,
                }
            })
            .filter(|c| c.spent_hour + c.saved_hour > 0)
            .collect();
        callers.sort_by(|a, b| {
            b.spent_hour
                .cmp(&a.spent_hour)
                .then(a.caller.cmp(&b.caller))
        });
        let points_saved = self
            .quota
            .accounts
            .all()
            .iter()
            .flat_map(|account| Route::ALL.map(|route| account.by_route(route).1))
            .sum();
        Status {
            requests: (0..ROUTES).map(|r| t.requests_of(r, &ALL_LABELS)).sum(),
            saved: t.saved.iter().map(load).sum(),
            points_saved,
            upstream,
            routes,
            limited,
            site: self.quota.site.standing(),
            low_quota: self.quota.site.low(),
            callers,
            snapshot: snapshot.clone(),
        }
    }
}

/// One of each `cache` label (the two stale kinds share one).
const ALL_LABELS: [CacheLabel; 7] = [
    CacheLabel::Hit,
    CacheLabel::Miss,
    CacheLabel::Coalesced,
    CacheLabel::StaleIfError,
    CacheLabel::Bypass,
    CacheLabel::Request,
    CacheLabel::None,
];

/// The cache's counters, as `/admin/cache/stats` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub stale: u64,
    pub bypassed: u64,
    pub stored: u64,
    /// Writes that invalidated reads, and operators' purges.
    pub invalidations: u64,
}

/// Decrements the in-flight gauge when the request ends, however it ends.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Values read from their owners at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub cache_max_bytes: u64,
    pub holds: usize,
    pub longest_hold: Duration,
    /// In multi-replica mode, whether Redis is reachable.
    pub redis_up: Option<bool>,
    /// Atlassian's burst buckets as they stand.
    pub bursts: Vec<burst::Standing>,
    /// Requests upstream, and waiting for a place upstream.
    pub upstream_in_flight: usize,
    pub upstream_queued: usize,
}

/// Everything the status page shows.
pub struct Status {
    pub requests: u64,
    pub saved: u64,
    pub points_saved: u64,
    pub upstream: u64,
    pub routes: Vec<RouteStatus>,
    /// Top refused (caller, limit, count), most refused first.
    pub limited: Vec<(String, &'static str, u64)>,
    /// The site's quota, when anything states it.
    pub site: Option<Standing>,
    /// Whether it is under the reserve (or upstream says it is near its limit).
    pub low_quota: bool,
    /// Who spent and saved points this hour, the biggest spender first.
    pub callers: Vec<CallerPoints>,
    pub snapshot: Snapshot,
}

/// One caller's points this hour.
pub struct CallerPoints {
    pub caller: String,
    pub spent_hour: u64,
    pub saved_hour: u64,
}

pub struct RouteStatus {
    pub route: &'static str,
    pub requests: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        _ => 5,
    }
}

fn class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_failures_in_a_row_make_the_gateway_unready_until_upstream_answers() {
        let metrics = Metrics::default();
        for _ in 1..NOT_READY_AFTER {
            metrics.error(Some(Route::User), ErrorSource::Internal);
        }
        metrics.error(None, ErrorSource::Upstream);
        assert_eq!(metrics.failing_inside(), None, "not yet");
        metrics.error(Some(Route::User), ErrorSource::Internal);
        assert_eq!(metrics.failing_inside(), Some(NOT_READY_AFTER));
        metrics.upstream(Route::User, Ok(StatusCode::OK), Duration::from_millis(3));
        assert_eq!(metrics.failing_inside(), None, "an upstream call completed");
        metrics.upstream(Route::User, Err("timeout"), Duration::from_millis(3));
        assert_eq!(metrics.failing_inside(), None);
    }

    #[test]
    fn quantiles_come_from_the_bucket_bounds() {
        let mut counts = [0u64; LATENCY_BOUNDS_NS.len() + 1];
        assert_eq!(quantile_us(&counts, 0.5), None);
        for (bucket, n) in [(0, 98), (3, 1), (5, 1)] {
            counts[bucket] = n;
        }
        assert_eq!(quantile_us(&counts, 0.50), Some(100));
        assert_eq!(quantile_us(&counts, 0.99), Some(800));
        assert_eq!(quantile_us(&counts, 1.0), Some(3_200));
    }

    #[test]
    fn every_view_reads_the_same_counters() {
        let quota = Arc::new(Quota::default());
        let metrics = Metrics::new(quota.clone());
        let account = quota.accounts.get("class:default");
        let record = |cache, status, micros| {
            if cache == CacheLabel::Hit {
                account.save(Route::Current, 3, tokio::time::Instant::now());
            }
            RequestRecord {
                route: Some(Route::Current),
                method: Method::GET,
                status,
                cache,
                saved: cache == CacheLabel::Hit,
                duration: Duration::from_micros(micros),
            }
        };
        metrics.request(&record(CacheLabel::Hit, StatusCode::OK, 150));
        metrics.request(&record(CacheLabel::Hit, StatusCode::OK, 150));
        metrics.request(&record(CacheLabel::Hit, StatusCode::NOT_MODIFIED, 50));
        metrics.request(&record(CacheLabel::Miss, StatusCode::OK, 30_000_000));
        let snapshot = Snapshot::default();
        let text = metrics.encode(&snapshot, false);
        for line in [
            r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="hit"} 2"#,
            r#"wikigate_requests_total{route="current",method="GET",status_class="3xx",cache="hit"} 1"#,
            r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="miss"} 1"#,
            r#"wikigate_upstream_requests_saved_total{route="current"} 3"#,
            r#"wikigate_quota_points_saved_total{caller="class:default",route="current"} 9"#,
            r#"wikigate_quota_points_spent_total{caller="class:default",route="current"} 0"#,
            r#"wikigate_quota_caller_points_this_hour{caller="class:default",kind="saved"} 9"#,
            // Buckets are cumulative: 50 µs ≤ 100 µs, 150 µs ≤ 200 µs, 30 s only in +Inf.
            r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="0.0001"} 1"#,
            r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="0.0002"} 3"#,
            r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="26.2144"} 3"#,
            r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="+Inf"} 4"#,
            r#"wikigate_request_duration_seconds_count{route="current",method="GET"} 4"#,
            r#"wikigate_request_duration_seconds_sum{route="current",method="GET"} 30.00035"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        let status = metrics.status(&snapshot);
        assert_eq!(
            (status.requests, status.saved, status.points_saved),
            (4, 3, 9)
        );
        assert_eq!(status.routes[0].hits, 3);
        assert_eq!(metrics.cache_stats().hits, 3);
        assert_eq!(metrics.cache_stats().misses, 1);
    }
}
