//! The fake site's points quota, as Atlassian's edge charges and states it.
//!
//! Every routed call is charged by Atlassian's table (`quota::charge`) after it is answered;
//! windows are aligned to multiples of their length on the UTC clock (an hour by default;
//! a test makes one last seconds). Every answer states the quota:
//! - enforced: `RateLimit-Policy: "tenant-app-quota";q=…;w=…`, `RateLimit:
//!   "tenant-app-quota";r=…;t=…` and, under 20 % left, `X-RateLimit-NearLimit: true`; once
//!   spent, 429 with `RateLimit-Reason: confluence-quota-tenant-based` and `Retry-After` to the
//!   window's end (`X-RateLimit-*` belongs to the burst buckets, not to this quota);
//! - shadow: the same policy as `Beta-RateLimit-Policy` / `Beta-RateLimit` (and
//!   `X-Beta-RateLimit-NearLimit`), never enforced.
//!
//! With `quirks`, it answers as field logs show the edge does: `r` only once 80 % is used, no
//! policy header once `r=0`, a `t` 17 s short of the window's real end, and (shadow)
//! `X-Beta-RateLimit-Reset` naming the window's start.

use parking_lot::Mutex;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use crate::quota;
use crate::routes::Route;

/// Whether the fake enforces its quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// 429 once spent.
    Enforced,
    /// Stated with `Beta-` headers, never enforced (Atlassian's shadow mode).
    Shadow,
}

/// The fake site's points quota.
#[derive(Debug, Clone, Copy)]
pub struct FakeQuota {
    /// Points per window.
    pub points: u64,
    pub window: Duration,
    pub mode: QuotaMode,
    /// The field's quirks (see the module).
    pub quirks: bool,
}

impl Default for FakeQuota {
    /// As a site answered before enforcement began: an hourly quota, in shadow mode.
    fn default() -> Self {
        FakeQuota {
            points: 100_100,
            window: quota::HOUR,
            mode: QuotaMode::Shadow,
            quirks: false,
        }
    }
}

impl FakeQuota {
    /// How long until this quota's window next starts (the top of the UTC hour, for an hourly
    /// one), by the clock the fake's and the gateway's windows both read: a simulation that
    /// sleeps this long starts on a fresh window.
    pub fn until_next_window(&self) -> Duration {
        quota::window(Instant::now(), self.window).1
    }
}

/// What the fake has charged.
#[derive(Debug, Default)]
struct Charged {
    window: u64,
    spent: u64,
    total: u64,
    refused: u64,
}

/// A quota and what it has charged.
#[derive(Debug, Default)]
pub(super) struct Points {
    quota: FakeQuota,
    charged: Mutex<Charged>,
}

impl Points {
    pub(super) fn new(quota: FakeQuota) -> Points {
        Points {
            quota,
            charged: Mutex::default(),
        }
    }

    /// Whether an enforced quota is spent: the headers of the 429 if so.
    pub(super) fn refuse(&self) -> Option<HeaderMap> {
        let (spent, left) = self.spent_now();
        if self.quota.mode != QuotaMode::Enforced || spent < self.quota.points {
            return None;
        }
        self.charged.lock().refused += 1;
        let mut headers = self.headers(spent, left);
        headers.insert(
            "ratelimit-reason",
            HeaderValue::from_static("confluence-quota-tenant-based"),
        );
        headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(ceil_secs(left)),
        );
        Some(headers)
    }

    /// Charges an answer of `route` (its decoded body) and states the quota on it.
    pub(super) fn charge(
        &self,
        route: Route,
        write: bool,
        status: StatusCode,
        body: &[u8],
        headers: &mut HeaderMap,
    ) {
        let points = u64::from(quota::charge(route, write, status, Some(body)));
        let (window, left) = quota::window(Instant::now(), self.quota.window);
        let spent = {
            let mut charged = self.charged.lock();
            if charged.window != window {
                charged.window = window;
                charged.spent = 0;
            }
            charged.spent += points;
            charged.total += points;
            charged.spent
        };
        headers.extend(self.headers(spent, left));
    }

    /// Points charged in every window, and the calls refused for the quota.
    pub(super) fn totals(&self) -> (u64, u64) {
        let charged = self.charged.lock();
        (charged.total, charged.refused)
    }

    /// This window's spending, and the time left in it.
    fn spent_now(&self) -> (u64, Duration) {
        let (window, left) = quota::window(Instant::now(), self.quota.window);
        let charged = self.charged.lock();
        let spent = if charged.window == window {
            charged.spent
        } else {
            0
        };
        (spent, left)
    }

    fn headers(&self, spent: u64, left: Duration) -> HeaderMap {
        let FakeQuota {
            points,
            window,
            mode,
            quirks,
        } = self.quota;
        let remaining = points.saturating_sub(spent);
        let near = remaining * 5 < points;
        let reset = match quirks {
            true => ceil_secs(left).saturating_sub(17),
            false => ceil_secs(left),
        };
        let policy = format!("\"tenant-app-quota\";q={points};w={}", window.as_secs());
        let state = match quirks && !near {
            true => format!("\"tenant-app-quota\";t={reset}"),
            false => format!("\"tenant-app-quota\";r={remaining};t={reset}"),
        };
        let state_policy = !(quirks && remaining == 0);
        let mut headers = HeaderMap::new();
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        };
        let (prefix, near_limit) = match mode {
            QuotaMode::Shadow => ("beta-", "x-beta-ratelimit-nearlimit"),
            QuotaMode::Enforced => ("", "x-ratelimit-nearlimit"),
        };
        if state_policy {
            let name = if prefix.is_empty() {
                "ratelimit-policy"
            } else {
                "beta-ratelimit-policy"
            };
            set(name, policy);
        }
        set(
            if prefix.is_empty() {
                "ratelimit"
            } else {
                "beta-ratelimit"
            },
            state,
        );
        if near {
            set(near_limit, "true".to_owned());
        }
        if quirks && mode == QuotaMode::Shadow {
            let start = std::time::SystemTime::now() + left - window;
            set("x-beta-ratelimit-reset", crate::rfc3339::millis(start));
        }
        headers
    }
}

pub(super) fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}
