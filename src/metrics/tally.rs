//! The request counters of `metrics`: route × method × status class × cache outcome, with
//! latency, and the cache's own events by route, in arrays of atomics.
//!
//! Invariant: recording an event takes no lock and hashes nothing; every reader (the
//! exposition, the status page, the admin stats) reads these same counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Unit;

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
pub(super) const CACHE_LABELS: [&str; 7] = [
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

    pub(super) fn index(self) -> usize {
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
pub(super) const ROUTES: usize = Route::ALL.len() + 1;

pub(super) const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "other"];

pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The route label of requests that matched no route.
pub(super) const UNMATCHED: &str = "unmatched";

pub(super) fn route_label(index: usize) -> &'static str {
    Route::ALL
        .get(index)
        .map_or(UNMATCHED, |route| route.name())
}

/// Upper bounds of the latency histograms' buckets, in ns: 100 µs doubling to ~26 s.
pub(super) const LATENCY_BOUNDS_NS: [u64; 19] = {
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
pub(super) struct Latency {
    /// Per bucket (not cumulative), the last one being +Inf.
    pub(super) counts: [AtomicU64; LATENCY_BOUNDS_NS.len() + 1],
    pub(super) sum_ns: AtomicU64,
}

impl Latency {
    pub(super) fn observe(&self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NS.partition_point(|bound| *bound < ns);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub(super) fn counts(&self) -> [u64; LATENCY_BOUNDS_NS.len() + 1] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }

    pub(super) fn encode(
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
pub(super) fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
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

pub(super) fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// The counters of requests and of the cache: every such event is counted here, once.
#[derive(Debug)]
pub(super) struct Tally {
    /// By route × method × status class × cache label.
    pub(super) requests: Box<[AtomicU64]>,
    /// By route × method.
    pub(super) durations: Box<[Latency]>,
    /// By route: answers served without an upstream call of their own (the points they saved
    /// are counted by caller, in `quota::Accounts`).
    pub(super) saved: [AtomicU64; ROUTES],
    /// By route: coalesced requests, stale answers (if_error, while_revalidate,
    /// on_low_quota), answers stored, and writes that invalidated reads.
    pub(super) coalesced: [AtomicU64; ROUTES],
    pub(super) stale_if_error: [AtomicU64; ROUTES],
    pub(super) stale_while_revalidate: [AtomicU64; ROUTES],
    pub(super) stale_on_low_quota: [AtomicU64; ROUTES],
    pub(super) stored: [AtomicU64; ROUTES],
    pub(super) invalidations: [AtomicU64; ROUTES],
    pub(super) purges: AtomicU64,
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

pub(super) fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Tally {
    pub(super) fn slot(route: usize, method: usize, class: usize, cache: usize) -> usize {
        ((route * METHODS.len() + method) * CLASSES.len() + class) * CACHE_LABELS.len() + cache
    }

    pub(super) fn record(&self, record: &RequestRecord) {
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
    pub(super) fn requests_of(&self, route: usize, labels: &[CacheLabel]) -> u64 {
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
    pub(super) fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
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
    pub(super) fn encode_requests(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
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
    pub(super) fn encode_durations(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
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
    pub(super) fn encode_per_route(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
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
    pub(super) fn encode_stale(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
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
    pub(super) fn encode_invalidations(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
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

/// One of each `cache` label (the two stale kinds share one).
pub(super) const ALL_LABELS: [CacheLabel; 7] = [
    CacheLabel::Hit,
    CacheLabel::Miss,
    CacheLabel::Coalesced,
    CacheLabel::StaleIfError,
    CacheLabel::Bypass,
    CacheLabel::Request,
    CacheLabel::None,
];

pub(super) fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        _ => 5,
    }
}

pub(super) fn class_index(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RequestLabels {
    pub(super) route: &'static str,
    pub(super) method: &'static str,
    pub(super) status_class: &'static str,
    pub(super) cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RouteMethodLabels {
    pub(super) route: &'static str,
    pub(super) method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StaleLabels {
    pub(super) route: &'static str,
    pub(super) kind: &'static str,
}
