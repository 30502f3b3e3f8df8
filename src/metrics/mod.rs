//! Metrics: every `wikigate_*` metric, defined in this one module, and the figures of the status
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
//!
//! The parts: this file (the registry, every event's counting method, the exposition),
//! `tally` (the request counters in atomics), `collect` (what is read at scrape time from
//! state counted elsewhere), `status` (the status page's and the admin stats' figures).

mod collect;
mod status;
mod tally;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::burst::BucketId;
use crate::error::ErrorSource;
use crate::quota::Quota;
use crate::routes::Route;
use collect::{Counted, LogDropped, Points, Refused, Upstream};
pub(crate) use status::{CacheStats, Snapshot, Status};
pub(crate) use tally::{CacheLabel, RequestRecord};
use tally::{Tally, UNMATCHED};

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

/// Account lookups answered from per-account objects: `how` is `merged` (a single lookup that
/// shared a bulk call) or `reused` (one answered from objects another lookup stored).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    route: &'static str,
    how: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    route: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// Whether a site's single and bulk answers of one account agree, per route family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShapeLabels {
    route: &'static str,
    state: &'static str,
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
    ready: Gauge,
    burst_waits: Family<BucketLabels, Histogram, fn() -> Histogram>,
    burst_remaining: Family<BucketLabels, Gauge<f64, AtomicU64>>,
    burst_limit: Family<BucketLabels, Gauge>,
    burst_refill: Family<BucketLabels, Gauge<f64, AtomicU64>>,
    queue_waits: Histogram,
    account_lookups: Family<AccountLabels, Counter>,
    account_points_saved: Family<AccountLabels, Counter>,
    merge_calls: Family<RouteLabels, Counter>,
    account_shapes: Family<ShapeLabels, Gauge>,
    refreshes: Family<RefreshLabels, Counter>,
    refresh_points: Family<RouteLabels, Counter>,
    refresh_saved: Family<RouteLabels, Counter>,
    upstream_in_flight: Gauge,
    upstream_queued: Gauge,
    /// Requests in a row that failed inside wikigate since an upstream call last completed:
    /// what readiness reads (a gateway whose upstream path fails every time is not ready).
    failing_inside: AtomicU64,
}

/// How account lookups are answered without a call of their own (`wikigate_account_lookups`).
pub(crate) const ACCOUNT_HOWS: [&str; 2] = ["merged", "reused"];

/// What a refresh ahead of expiry came to (`wikigate_refreshes_total`'s `result`).
pub(crate) const REFRESH_RESULTS: [&str; 4] =
    ["changed", "unchanged", "failed", "skipped_for_budget"];

/// The states of a site's single and bulk answers' agreement (`wikigate_account_shapes`).
pub(crate) const SHAPE_STATES: [&str; 3] = ["unknown", "agree", "disagree"];

/// Internal failures in a row, with no upstream answer between them, past which the gateway
/// is not ready.
pub(crate) const NOT_READY_AFTER: u64 = 5;

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
            ready: Gauge::default(),
            burst_waits: Family::new_with_constructor(wait_histogram),
            burst_remaining: Family::default(),
            burst_limit: Family::default(),
            burst_refill: Family::default(),
            queue_waits: wait_histogram(),
            account_lookups: Family::default(),
            account_points_saved: Family::default(),
            merge_calls: Family::default(),
            account_shapes: Family::default(),
            refreshes: Family::default(),
            refresh_points: Family::default(),
            refresh_saved: Family::default(),
            upstream_in_flight: Gauge::default(),
            upstream_queued: Gauge::default(),
            failing_inside: AtomicU64::new(0),
        };
        // Dashboards and alerts see 0 rather than no data before the first event, for every
        // label value known now (Prometheus' instrumentation advice).
        for cause in ["expired", "explicit", "replaced", "size"] {
            drop(metrics.evictions.get_or_create(&CauseLabels { cause }));
        }
        for route in Route::ALL.iter().map(|r| r.name()).chain([UNMATCHED]) {
            for source in ErrorSource::ALL {
                drop(metrics.errors.get_or_create(&ErrorLabels {
                    route,
                    source: source.as_str(),
                }));
            }
        }
        for route in Route::ALL {
            for result in REFRESH_RESULTS {
                drop(metrics.refreshes.get_or_create(&RefreshLabels {
                    route: route.name(),
                    result,
                }));
            }
            let labels = RouteLabels {
                route: route.name(),
            };
            drop(metrics.refresh_points.get_or_create(&labels));
            drop(metrics.refresh_saved.get_or_create(&labels));
        }
        for route in [Route::User, Route::Email] {
            for how in ACCOUNT_HOWS {
                let labels = AccountLabels {
                    route: route.name(),
                    how,
                };
                drop(metrics.account_lookups.get_or_create(&labels));
                drop(metrics.account_points_saved.get_or_create(&labels));
            }
            drop(metrics.merge_calls.get_or_create(&RouteLabels {
                route: route.name(),
            }));
            for state in SHAPE_STATES {
                drop(metrics.account_shapes.get_or_create(&ShapeLabels {
                    route: route.name(),
                    state,
                }));
            }
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
            "ready",
            "1 while /readyz answers 200 (taking traffic and able to serve it), 0 while not",
            self.ready.clone(),
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
            "upstream_burst_refill_rate",
            "Tokens a second Atlassian's burst bucket of a route and method refills by: stated (X-RateLimit-FillRate), learned from its answers, or assumed until then",
            self.burst_refill.clone(),
        );
        r.register(
            "account_lookups",
            "Single account lookups answered from per-account objects, by route and how: merged (shared one bulk call with others) or reused (from objects another lookup stored, with no call)",
            self.account_lookups.clone(),
        );
        r.register(
            "account_points_saved",
            "Atlassian points account lookups saved by merging and by reuse, beyond what one call per lookup would have spent, by route and how",
            self.account_points_saved.clone(),
        );
        r.register(
            "account_merge_calls",
            "Bulk calls upstream that answered merged single account lookups, by route of the lookups",
            self.merge_calls.clone(),
        );
        r.register(
            "account_shapes",
            "expand sets whose single and bulk answers of one account were seen to agree, to disagree, or not checked yet, by route (no answer of one route is built from the other's objects unless they agree)",
            self.account_shapes.clone(),
        );
        r.register(
            "refreshes",
            "Refreshes ahead of expiry, by route and result: changed, unchanged, failed, skipped_for_budget (not made: the quota low, the burst bucket near empty, no place upstream free)",
            self.refreshes.clone(),
        );
        r.register(
            "refresh_points",
            "Atlassian points refreshes ahead of expiry spent, by route",
            self.refresh_points.clone(),
        );
        r.register(
            "refresh_saved_reads",
            "Reads a refresh ahead of expiry saved from a miss (the first hit after the replaced entry would have expired), by route",
            self.refresh_saved.clone(),
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

    /// Counts refusals from 0 for every caller label and limit known from the configuration,
    /// so that `rate_limited_total` has its series before the first refusal.
    pub fn expect_refusals<'a>(
        &self,
        callers: impl IntoIterator<Item = &'a str>,
        limits: &[&'static str],
    ) {
        let mut refused = self.refused.0.lock();
        for caller in callers {
            for limit in limits {
                refused.entry((caller.to_owned(), *limit)).or_default();
            }
        }
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

    /// `n` single account lookups of `route` answered `how` ([`ACCOUNT_HOWS`]), saving
    /// `points` beyond what one call each would have spent.
    pub fn account_lookups(&self, route: Route, how: &'static str, n: u64, points: u64) {
        let labels = AccountLabels {
            route: route.name(),
            how,
        };
        self.account_lookups.get_or_create(&labels).inc_by(n);
        self.account_points_saved
            .get_or_create(&labels)
            .inc_by(points);
    }

    /// A bulk call upstream answered merged lookups of `route`.
    pub fn merge_call(&self, route: Route) {
        self.merge_calls
            .get_or_create(&RouteLabels {
                route: route.name(),
            })
            .inc();
    }

    /// How many `expand` sets of `route`'s family are in each [`SHAPE_STATES`] state.
    pub fn account_shapes(&self, route: Route, counts: [i64; 3]) {
        for (state, count) in SHAPE_STATES.into_iter().zip(counts) {
            self.account_shapes
                .get_or_create(&ShapeLabels {
                    route: route.name(),
                    state,
                })
                .set(count);
        }
    }

    /// Account lookups answered by merging and by reuse, and the points both saved, of
    /// `route`: `(merged, reused, points saved)`.
    pub fn account_totals(&self, route: Route) -> (u64, u64, u64) {
        let get = |family: &Family<AccountLabels, Counter>, how| {
            family
                .get_or_create(&AccountLabels {
                    route: route.name(),
                    how,
                })
                .get()
        };
        let points =
            get(&self.account_points_saved, "merged") + get(&self.account_points_saved, "reused");
        (
            get(&self.account_lookups, "merged"),
            get(&self.account_lookups, "reused"),
            points,
        )
    }

    /// A refresh ahead of expiry of `route` came to `result` (one of [`REFRESH_RESULTS`]),
    /// spending `points`.
    pub fn refreshed(&self, route: Route, result: impl Into<&'static str>, points: u32) {
        let route = route.name();
        self.refreshes
            .get_or_create(&RefreshLabels {
                route,
                result: result.into(),
            })
            .inc();
        self.refresh_points
            .get_or_create(&RouteLabels { route })
            .inc_by(u64::from(points));
    }

    /// A read of `route` that a refresh saved from a miss.
    pub fn refresh_saved(&self, route: Route) {
        self.refresh_saved
            .get_or_create(&RouteLabels {
                route: route.name(),
            })
            .inc();
    }

    /// Refreshes of `route` by result (as [`REFRESH_RESULTS`]), their points, and the reads
    /// they saved from a miss: the status page's figures.
    pub fn refresh_totals(&self, route: Route) -> ([u64; 4], u64, u64) {
        let labels = RouteLabels {
            route: route.name(),
        };
        let results = REFRESH_RESULTS.map(|result| {
            self.refreshes
                .get_or_create(&RefreshLabels {
                    route: route.name(),
                    result,
                })
                .get()
        });
        (
            results,
            self.refresh_points.get_or_create(&labels).get(),
            self.refresh_saved.get_or_create(&labels).get(),
        )
    }

    /// Bulk calls made for merged lookups of `route`.
    pub fn merge_calls_of(&self, route: Route) -> u64 {
        self.merge_calls
            .get_or_create(&RouteLabels {
                route: route.name(),
            })
            .get()
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
        let redis_up = snapshot
            .redis
            .as_ref()
            .map(|health| *health == crate::cluster::Health::Up);
        self.redis_up.set(redis_up.map_or(-1, i64::from));
        self.ready.set(i64::from(snapshot.ready));
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
            self.burst_refill
                .get_or_create(&labels)
                .set(bucket.refill.per_second());
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
}

/// Decrements the in-flight gauge when the request ends, however it ends.
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
