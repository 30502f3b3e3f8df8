//! Metrics: every `wikigate_*` metric, defined in this one file, and the figures of the status
//! page.
//!
//! prometheus-client (the official OpenMetrics client): no global registry, typed label sets,
//! and text exposition that Prometheus and promtool read. Components record into an
//! `Arc<Metrics>`; scrape-time values (cache size, holds) are read from their owners when
//! `/metrics` or the status page is rendered.
//!
//! Invariant: label values are bounded — a route *name* from the route table, a method from a
//! fixed list, a status class, a cache outcome, a configured client name or quota class, a
//! limit name, an eviction cause. Never a raw path, an account id or a credential.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::routes::{Objects, Route};

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
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: &'static str,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    route: &'static str,
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StaleLabels {
    route: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitedLabels {
    caller: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
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

/// A latency histogram of atomics: observing one takes no lock (prometheus-client's own
/// `Histogram` is behind a mutex, which every request on every core would contend for).
#[derive(Clone, Debug, Default)]
struct LatencyHistogram(Arc<LatencyBuckets>);

#[derive(Debug, Default)]
struct LatencyBuckets {
    /// Per bucket (not cumulative), the last one being +Inf.
    counts: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    fn observe(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.0.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let bounds = LATENCY_BOUNDS_NS
            .iter()
            .map(|ns| *ns as f64 / 1e9)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.0.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The series a cache hit on one route records, resolved once: a hit then hashes no label
/// set and takes no family lock.
struct HitSeries {
    requests: Counter,
    duration: LatencyHistogram,
    saved: Counter,
    points: Counter,
}

/// Status-page figures for one route (Prometheus has the same, bucketed by more labels).
#[derive(Default)]
struct RouteFigures {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    /// Request durations in the buckets of [`FIGURE_BUCKETS`], plus one overflow bucket.
    latency: [AtomicU64; FIGURE_BUCKETS.len() + 1],
}

/// Upper bounds (µs) of the status page's latency buckets.
const FIGURE_BUCKETS: [u64; 20] = [
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 20_000, 50_000,
    100_000, 250_000, 500_000, 1_000_000, 5_000_000,
];

impl RouteFigures {
    /// The bucket bound at quantile `q`, in µs (an upper estimate).
    fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(FIGURE_BUCKETS.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        None
    }
}

/// What the cache did for a request, as metrics and logs label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLabel {
    Hit,
    Miss,
    Coalesced,
    StaleWhileRevalidate,
    StaleIfError,
    Bypass,
    /// The request's own `Cache-Control` sent it upstream.
    Request,
    /// Not a cacheable read (writes, refusals).
    None,
}

impl CacheLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheLabel::Hit => "hit",
            CacheLabel::Miss => "miss",
            CacheLabel::Coalesced => "coalesced",
            CacheLabel::StaleWhileRevalidate | CacheLabel::StaleIfError => "stale",
            CacheLabel::Bypass => "bypass",
            CacheLabel::Request => "request",
            CacheLabel::None => "none",
        }
    }
}

/// One finished request, as the gateway reports it.
pub struct RequestRecord {
    pub route: Option<Route>,
    pub method: Method,
    pub status: StatusCode,
    pub cache: CacheLabel,
    /// Atlassian quota points this answer saved (it was served without an upstream call).
    pub saved_points: Option<u32>,
    pub duration: Duration,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<RouteMethodLabels, LatencyHistogram>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    upstream_duration: Family<RouteLabels, LatencyHistogram>,
    saved: Family<RouteLabels, Counter>,
    points_saved: Family<RouteLabels, Counter>,
    invalidations: Family<RouteLabels, Counter>,
    coalesced: Family<RouteLabels, Counter>,
    stale: Family<StaleLabels, Counter>,
    rate_limited: Family<LimitedLabels, Counter>,
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
    /// By [`Route::index`], the last one for requests that matched no route.
    figures: [RouteFigures; Route::ALL.len() + 1],
    /// By [`Route::index`]; made on a route's first hit.
    hit_series: [OnceLock<HitSeries>; Route::ALL.len()],
    /// Refusals by (caller, limit), for the status page's "top limited callers".
    limited: Mutex<HashMap<(String, &'static str), u64>>,
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    saved: AtomicU64,
    points: AtomicU64,
    upstream: AtomicU64,
}

/// The route label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut metrics = Metrics {
            registry: Registry::with_prefix("wikigate"),
            requests: Family::default(),
            request_duration: Family::default(),
            upstream_requests: Family::default(),
            upstream_duration: Family::default(),
            saved: Family::default(),
            points_saved: Family::default(),
            invalidations: Family::default(),
            coalesced: Family::default(),
            stale: Family::default(),
            rate_limited: Family::default(),
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
            figures: Default::default(),
            hit_series: Default::default(),
            limited: Mutex::default(),
            totals: Totals::default(),
        };
        metrics.register();
        metrics.initialize();
        metrics
    }

    /// Creates the zero-valued series of small, known label sets, so that dashboards and
    /// alerts see 0 rather than no data before the first event (Prometheus practice).
    fn initialize(&self) {
        for route in Route::ALL {
            let labels = RouteLabels {
                route: route.name(),
            };
            drop(self.saved.get_or_create(&labels));
            drop(self.points_saved.get_or_create(&labels));
            drop(self.coalesced.get_or_create(&labels));
            for kind in ["if_error", "while_revalidate"] {
                drop(self.stale.get_or_create(&StaleLabels {
                    route: route.name(),
                    kind,
                }));
            }
            if route.operations().iter().any(|op| op.verb().is_write()) {
                drop(self.invalidations.get_or_create(&labels));
            }
        }
        for cause in ["expired", "explicit", "replaced", "size"] {
            drop(self.evictions.get_or_create(&CauseLabels { cause }));
        }
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "requests",
            "Requests answered, by route, method, status class and cache outcome",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time to answer a request (headers ready)",
            Unit::Seconds,
            self.request_duration.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests sent to Confluence, by route and upstream status (or transport error)",
            self.upstream_requests.clone(),
        );
        r.register_with_unit(
            "upstream_request_duration",
            "Time for Confluence to answer (headers)",
            Unit::Seconds,
            self.upstream_duration.clone(),
        );
        r.register(
            "upstream_requests_saved",
            "Requests answered without an upstream call (hits, coalesced, stale)",
            self.saved.clone(),
        );
        r.register("quota_points_saved", "Estimated Atlassian quota points saved: 1 per call + 2 per user or group object in the answer", self.points_saved.clone());
        r.register(
            "cache_invalidations",
            "Writes that invalidated cached reads, by the write's route",
            self.invalidations.clone(),
        );
        r.register(
            "cache_coalesced",
            "Requests that waited for an identical fetch instead of fetching",
            self.coalesced.clone(),
        );
        r.register(
            "cache_stale_served",
            "Expired answers served, by route and kind (if_error, while_revalidate)",
            self.stale.clone(),
        );
        r.register(
            "cache_evictions",
            "Entries removed from the cache, by cause",
            self.evictions.clone(),
        );
        r.register("rate_limited", "Requests refused with 429 by wikigate, by caller (client name or quota class) and limit", self.rate_limited.clone());
        r.register(
            "errors",
            "Error answers wikigate made itself, by route and source: downstream (the request), upstream (the site failed), internal (a fault of wikigate's)",
            self.errors.clone(),
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
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        self.record_figures(record);
        if let (Some(route), CacheLabel::Hit, Some(points)) =
            (record.route, record.cache, record.saved_points)
            && record.method == Method::GET
            && record.status.is_success()
        {
            let series = self.hit_series[route.index()].get_or_init(|| self.hit_series(route));
            series.requests.inc();
            series.duration.observe(record.duration);
            series.saved.inc();
            series.points.inc_by(u64::from(points));
            self.totals.saved.fetch_add(1, Ordering::Relaxed);
            self.totals
                .points
                .fetch_add(u64::from(points), Ordering::Relaxed);
            return;
        }
        let route = record.route.map_or(UNMATCHED, Route::name);
        let method = method_label(&record.method);
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status_class: status_class(record.status),
                cache: record.cache.as_str(),
            })
            .inc();
        self.request_duration
            .get_or_create(&RouteMethodLabels { route, method })
            .observe(record.duration);
        let labels = RouteLabels { route };
        match record.cache {
            CacheLabel::Coalesced => {
                self.coalesced.get_or_create(&labels).inc();
            }
            CacheLabel::StaleIfError | CacheLabel::StaleWhileRevalidate => {
                let kind = if record.cache == CacheLabel::StaleIfError {
                    "if_error"
                } else {
                    "while_revalidate"
                };
                self.stale.get_or_create(&StaleLabels { route, kind }).inc();
            }
            _ => {}
        }
        if let Some(points) = record.saved_points {
            self.saved.get_or_create(&labels).inc();
            self.points_saved
                .get_or_create(&labels)
                .inc_by(u64::from(points));
            self.totals.saved.fetch_add(1, Ordering::Relaxed);
            self.totals
                .points
                .fetch_add(u64::from(points), Ordering::Relaxed);
        }
    }

    /// The series of a GET answered 2xx from the cache on `route`.
    fn hit_series(&self, route: Route) -> HitSeries {
        let route = route.name();
        let labels = RouteLabels { route };
        HitSeries {
            requests: self
                .requests
                .get_or_create(&RequestLabels {
                    route,
                    method: "GET",
                    status_class: "2xx",
                    cache: CacheLabel::Hit.as_str(),
                })
                .clone(),
            duration: self
                .request_duration
                .get_or_create(&RouteMethodLabels {
                    route,
                    method: "GET",
                })
                .clone(),
            saved: self.saved.get_or_create(&labels).clone(),
            points: self.points_saved.get_or_create(&labels).clone(),
        }
    }

    fn record_figures(&self, record: &RequestRecord) {
        let figures = &self.figures[record.route.map_or(Route::ALL.len(), Route::index)];
        figures.requests.fetch_add(1, Ordering::Relaxed);
        match record.cache {
            CacheLabel::Hit | CacheLabel::Coalesced => figures.hits.fetch_add(1, Ordering::Relaxed),
            CacheLabel::Miss | CacheLabel::Request => {
                figures.misses.fetch_add(1, Ordering::Relaxed)
            }
            CacheLabel::StaleIfError | CacheLabel::StaleWhileRevalidate => {
                figures.stale.fetch_add(1, Ordering::Relaxed)
            }
            _ => 0,
        };
        let micros = record.duration.as_micros() as u64;
        let bucket = FIGURE_BUCKETS
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(FIGURE_BUCKETS.len());
        figures.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request sent upstream: its status, or the transport error that ended it.
    pub fn upstream(
        &self,
        route: Route,
        status: Result<StatusCode, &'static str>,
        duration: Duration,
    ) {
        let status = match status {
            Ok(code) => code.as_u16().to_string(),
            Err(error) => error.to_owned(),
        };
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                route: route.name(),
                status,
            })
            .inc();
        self.upstream_duration
            .get_or_create(&RouteLabels {
                route: route.name(),
            })
            .observe(duration);
        self.totals.upstream.fetch_add(1, Ordering::Relaxed);
    }

    pub fn invalidation(&self, route: Route) {
        self.invalidations
            .get_or_create(&RouteLabels {
                route: route.name(),
            })
            .inc();
    }

    /// An error answer wikigate made itself.
    pub fn error(&self, route: Option<Route>, source: crate::error::ErrorSource) {
        self.errors
            .get_or_create(&ErrorLabels {
                route: route.map_or(UNMATCHED, Route::name),
                source: source.as_str(),
            })
            .inc();
    }

    pub fn rate_limited(&self, caller: &str, limit: &'static str) {
        self.rate_limited
            .get_or_create(&LimitedLabels {
                caller: caller.to_owned(),
                limit,
            })
            .inc();
        *self
            .limited
            .lock()
            .expect("lock")
            .entry((caller.to_owned(), limit))
            .or_default() += 1;
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
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        if openmetrics {
            text
        } else {
            classic_text_format(&text)
        }
    }

    /// The status page's figures.
    pub fn status(&self, snapshot: &Snapshot) -> Status {
        let routes = Route::ALL
            .iter()
            .map(|r| r.name())
            .chain([UNMATCHED])
            .zip(&self.figures)
            .filter_map(|(name, f)| {
                let requests = f.requests.load(Ordering::Relaxed);
                (requests > 0).then(|| RouteStatus {
                    route: name,
                    requests,
                    hits: f.hits.load(Ordering::Relaxed),
                    misses: f.misses.load(Ordering::Relaxed),
                    stale: f.stale.load(Ordering::Relaxed),
                    p50_us: f.quantile(0.50),
                    p99_us: f.quantile(0.99),
                })
            })
            .collect();
        let mut limited: Vec<(String, &'static str, u64)> = self
            .limited
            .lock()
            .expect("lock")
            .iter()
            .map(|((caller, limit), n)| (caller.clone(), *limit, *n))
            .collect();
        limited.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        limited.truncate(10);
        Status {
            requests: self.totals.requests.load(Ordering::Relaxed),
            saved: self.totals.saved.load(Ordering::Relaxed),
            points_saved: self.totals.points.load(Ordering::Relaxed),
            upstream: self.totals.upstream.load(Ordering::Relaxed),
            routes,
            limited,
            snapshot: *snapshot,
        }
    }
}

/// Decrements the in-flight gauge when the request ends, however it ends.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Values read from their owners at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub cache_max_bytes: u64,
    pub holds: usize,
    pub longest_hold: Duration,
    /// In multi-replica mode, whether Redis is reachable.
    pub redis_up: Option<bool>,
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
    pub snapshot: Snapshot,
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

/// Atlassian's points model for a read: 1 point per call plus 2 per user or group object in the
/// answer (bulk lookups and memberships count their results).
pub fn quota_points(route: Route, body: &[u8]) -> u32 {
    let objects = match route.spec().objects {
        Objects::One => 1,
        Objects::Results => serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["results"].as_array().map(|r| r.len() as u32))
            .unwrap_or(0),
        Objects::Nothing => 0,
    };
    1 + 2 * objects
}

/// OpenMetrics to the classic Prometheus text format (0.0.4): counter families are named with
/// their `_total` suffix in `HELP`/`TYPE`, and `UNIT` and `EOF` lines go.
fn classic_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut classic = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let header = line
            .strip_prefix("# HELP ")
            .map(|rest| ("# HELP ", rest))
            .or_else(|| line.strip_prefix("# TYPE ").map(|rest| ("# TYPE ", rest)));
        match header {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                classic.push_str(&format!("{kind}{name}{suffix} {tail}"));
            }
            None => classic.push_str(line),
        }
        classic.push('\n');
    }
    classic
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_bucket_bounds() {
        let figures = RouteFigures::default();
        assert_eq!(figures.quantile(0.5), None);
        for (bucket, n) in [(1, 98), (6, 1), (10, 1)] {
            figures.latency[bucket].fetch_add(n, Ordering::Relaxed);
        }
        assert_eq!(figures.quantile(0.50), Some(100));
        assert_eq!(figures.quantile(0.99), Some(1_000));
        assert_eq!(figures.quantile(1.0), Some(5_000));
    }

    #[test]
    fn hits_and_other_requests_land_in_the_same_series() {
        let metrics = Metrics::new();
        let record = |cache, status, micros| RequestRecord {
            route: Some(Route::Current),
            method: Method::GET,
            status,
            cache,
            saved_points: (cache == CacheLabel::Hit).then_some(3),
            duration: Duration::from_micros(micros),
        };
        // Hits take the pre-resolved series, a 304 hit and a miss the labelled lookup.
        metrics.request(&record(CacheLabel::Hit, StatusCode::OK, 150));
        metrics.request(&record(CacheLabel::Hit, StatusCode::OK, 150));
        metrics.request(&record(CacheLabel::Hit, StatusCode::NOT_MODIFIED, 50));
        metrics.request(&record(CacheLabel::Miss, StatusCode::OK, 30_000_000));
        let snapshot = Snapshot {
            cache_entries: 0,
            cache_bytes: 0,
            cache_max_bytes: 0,
            holds: 0,
            longest_hold: Duration::ZERO,
            redis_up: None,
        };
        let text = metrics.encode(&snapshot, false);
        for line in [
            r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="hit"} 2"#,
            r#"wikigate_requests_total{route="current",method="GET",status_class="3xx",cache="hit"} 1"#,
            r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="miss"} 1"#,
            r#"wikigate_upstream_requests_saved_total{route="current"} 3"#,
            r#"wikigate_quota_points_saved_total{route="current"} 9"#,
            // Buckets are cumulative: 50 µs ≤ 100 µs, 150 µs ≤ 200 µs, 30 s only in +Inf.
            r#"wikigate_request_duration_seconds_bucket{le="0.0001",route="current",method="GET"} 1"#,
            r#"wikigate_request_duration_seconds_bucket{le="0.0002",route="current",method="GET"} 3"#,
            r#"wikigate_request_duration_seconds_bucket{le="26.2144",route="current",method="GET"} 3"#,
            r#"wikigate_request_duration_seconds_bucket{le="+Inf",route="current",method="GET"} 4"#,
            r#"wikigate_request_duration_seconds_count{route="current",method="GET"} 4"#,
            r#"wikigate_request_duration_seconds_sum{route="current",method="GET"} 30.00035"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert_eq!(metrics.status(&snapshot).requests, 4);
    }
}
