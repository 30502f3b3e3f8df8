//! The figures of the status page and of `/admin/cache/stats`, read from the metrics'
//! counters and from their owners' state at the time of asking.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use super::Metrics;
use super::tally::{
    ALL_LABELS, CacheLabel, LATENCY_BOUNDS_NS, METHODS, ROUTES, load, quantile_us, route_label,
};
use crate::burst;
use crate::quota::Standing;
use crate::routes::Route;

impl Metrics {
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
        let accounts = [Route::User, Route::Email]
            .into_iter()
            .map(|route| {
                let (merged, reused, points_saved) = self.account_totals(route);
                AccountStatus {
                    route: route.name(),
                    merged,
                    reused,
                    calls: self.merge_calls_of(route),
                    points_saved,
                }
            })
            .collect();
        let refreshes = Route::ALL
            .into_iter()
            .map(|route| {
                let (results, points, saved) = self.refresh_totals(route);
                RefreshStatus {
                    route: route.name(),
                    results,
                    points,
                    saved,
                }
            })
            .filter(|r| r.results.iter().sum::<u64>() > 0)
            .collect();
        Status {
            accounts,
            refreshes,
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

/// Values read from their owners at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub cache_entries: u64,
    pub cache_bytes: u64,
    pub cache_max_bytes: u64,
    pub holds: usize,
    pub longest_hold: Duration,
    /// In multi-replica mode, whether Redis is reachable, and why not.
    pub redis: Option<crate::cluster::Health>,
    /// Atlassian's burst buckets as they stand.
    pub bursts: Vec<burst::Standing>,
    /// Requests upstream, and waiting for a place upstream.
    pub upstream_in_flight: usize,
    pub upstream_queued: usize,
    /// Whether `/readyz` would answer 200.
    pub ready: bool,
    /// Whether single and bulk answers of one account agree: `(single route, expand set,
    /// state)` for every one compared.
    pub shapes: Vec<(&'static str, String, &'static str)>,
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
    /// Single account lookups answered without a call of their own, by route.
    pub accounts: Vec<AccountStatus>,
    /// Refreshes ahead of expiry, by route (only routes that had any).
    pub refreshes: Vec<RefreshStatus>,
    pub snapshot: Snapshot,
}

/// A route's refreshes ahead of expiry.
pub struct RefreshStatus {
    pub route: &'static str,
    /// By result, as `REFRESH_RESULTS`: changed, unchanged, failed, skipped for budget.
    pub results: [u64; 4],
    pub points: u64,
    /// Reads they saved from a miss.
    pub saved: u64,
}

/// A single-lookup route's lookups answered by merging and by reuse.
pub struct AccountStatus {
    pub route: &'static str,
    pub merged: u64,
    pub reused: u64,
    /// Bulk calls made for merged lookups.
    pub calls: u64,
    pub points_saved: u64,
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
