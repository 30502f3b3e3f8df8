//! What `metrics` encodes at scrape time from state counted elsewhere: the tally's families,
//! upstream calls and refusals by their open-ended labels, the points spent and saved, and
//! the log lines dropped.
//!
//! Invariant: label values are bounded (see `metrics`); nothing here is counted, only read.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::tally::{Latency, Tally};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

use crate::quota::{Quota, Standing};
use crate::routes::Route;

/// Upstream calls: by route and status (or transport error), and their latency by route.
#[derive(Debug, Default)]
pub(super) struct Upstream {
    pub(super) calls: Mutex<HashMap<(Route, String), u64>>,
    pub(super) durations: [Latency; Route::ALL.len()],
}

/// Refusals by (caller, limit): the `rate_limited` family and the status page's top list.
#[derive(Debug, Default)]
pub(super) struct Refused(pub(super) Mutex<HashMap<(String, &'static str), u64>>);

/// Everything the registry encodes on a scrape that is not a plain metric of its own.
#[derive(Debug)]
pub(super) struct Counted {
    pub(super) tally: Arc<Tally>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) refused: Arc<Refused>,
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
pub(super) struct Points(pub(super) Arc<Quota>);

/// `log_dropped_lines_total`: log lines the log's writer dropped because its output could
/// not keep up (`log_sink`).
#[derive(Debug)]
pub(super) struct LogDropped;

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
    pub(super) fn encode_site(&self, encoder: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
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
