//! What upstream's answers teach `limit`: holds on a credential after a 429 with no reason
//! (one probe when a hold ends), holds on a resource after a per-resource write 429, and the
//! tightened global budget while upstream is near its limit.
//!
//! Invariants: every wait is bounded (`hints`, `limits.max_hold`); a hold's single probe is
//! given back when its answer says nothing of the credential, or after `PROBE_TIMEOUT`.

use std::time::Duration;

use http::{Method, StatusCode};
use tokio::time::Instant;

use super::Limits;
use super::gcra::LimitKind;
use crate::error::GatewayError;
use crate::hints::{self, Hints, Reason};

/// A resource a write changes (a hash of its path), for Confluence's per-resource write
/// limits.
pub(crate) type WriteKey = [u8; 16];

/// The resource a request writes to: its path's, for POST, PUT and DELETE; `None` for reads.
pub(crate) fn write_key(method: &Method, path: &str) -> Option<WriteKey> {
    if !matches!(*method, Method::POST | Method::PUT | Method::DELETE) {
        return None;
    }
    let mut key = [0; 16];
    key.copy_from_slice(&blake3::hash(path.as_bytes()).as_bytes()[..16]);
    Some(key)
}

/// The credential an upstream hold applies to (a keyed hash; all zeros for anonymous).
pub(crate) type HoldKey = [u8; 16];

#[derive(Debug)]
pub(super) struct Hold {
    until: Instant,
    /// Consecutive holds, for the backoff when upstream gives no hint.
    strikes: u32,
    /// When the single probe after the hold was let through.
    probe: Option<Instant>,
}

/// How long a probe may take before another request may probe instead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

impl Hold {
    /// Whether the hold limits nobody any more: ended (its probe's time too) and no probe out.
    pub(super) fn is_over(&self, now: Instant) -> bool {
        self.until + PROBE_TIMEOUT <= now && self.probe.is_none()
    }
}

impl Limits {
    pub(super) fn tightened(&self) -> bool {
        let mut until = self.tightened_until.lock();
        match *until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Refuses while `key` is held; when its hold has ended, lets exactly one probe through
    /// (true: this request is the probe).
    pub(super) fn check_hold(&self, key: &HoldKey) -> Result<bool, GatewayError> {
        let mut holds = self.holds.lock();
        let Some(hold) = holds.get_mut(key) else {
            return Ok(false);
        };
        let now = Instant::now();
        let refuse = |retry_after| LimitKind::UpstreamHold.refuse(retry_after, None);
        if now < hold.until {
            return Err(refuse(hold.until - now));
        }
        match hold.probe {
            Some(since) if now.duration_since(since) < PROBE_TIMEOUT => {
                Err(refuse(Duration::from_secs(1)))
            }
            _ => {
                hold.probe = Some(now);
                Ok(true)
            }
        }
    }

    /// Learns from what an upstream answer says of the limits, each at its own scope: the
    /// site's quota headers update its standing (a quota 429 stops every call until the
    /// reset); the burst bucket of the call's route and method is learned (a burst 429 holds
    /// that bucket only); a per-resource write 429 holds writes to that resource; a 429 with no
    /// reason (or a 503 with `Retry-After`) starts or extends the hold on the credential `key`
    /// (and returns true), any other answer ends it. `X-RateLimit-NearLimit` tightens the
    /// global budget until upstream's reset. Every wait is bounded (`hints`, `max_hold`).
    pub(super) fn observe(
        &self,
        key: &HoldKey,
        write: Option<&WriteKey>,
        status: StatusCode,
        hints: &Hints,
    ) -> bool {
        self.quota.site.observe(status, hints);
        let rules = self.rules.load();
        let now = Instant::now();
        if hints.near_limit {
            let reset = hints
                .reset_in
                .unwrap_or(Duration::from_secs(60))
                .min(rules.max_hold);
            *self.tightened_until.lock() = Some(now + reset);
        }
        let refused = status == StatusCode::TOO_MANY_REQUESTS;
        match hints.reason.filter(|_| refused) {
            // Their own scopes: the site (quota), the bucket (burst, learned by the pass).
            Some(Reason::Quota | Reason::Burst) => {
                self.release_probe(key);
                return false;
            }
            Some(Reason::Write) => {
                if let Some(write) = write {
                    let wait = hints
                        .retry_after
                        .unwrap_or(hints::MIN_WAIT)
                        .min(rules.max_hold);
                    self.write_holds.lock().insert(*write, now + wait);
                }
                self.release_probe(key);
                return false;
            }
            Some(Reason::Other) | None => {}
        }
        let throttled =
            refused || (status == StatusCode::SERVICE_UNAVAILABLE && hints.retry_after.is_some());
        let mut holds = self.holds.lock();
        if !throttled {
            holds.remove(key);
            return false;
        }
        let strikes = holds.get(key).map_or(0, |h| h.strikes).saturating_add(1);
        let wait = hints
            .retry_after
            .or(hints.reset_in)
            .unwrap_or_else(|| backoff(strikes))
            .min(rules.max_hold);
        holds.insert(
            *key,
            Hold {
                until: now + wait,
                strikes,
                probe: None,
            },
        );
        true
    }

    /// How many credentials are held right now, and the longest remaining hold.
    pub fn holds(&self) -> (usize, Duration) {
        let now = Instant::now();
        let holds = self.holds.lock();
        let active = holds.values().filter(|h| h.until > now);
        active.fold((0, Duration::ZERO), |(n, longest), h| {
            (n + 1, longest.max(h.until - now))
        })
    }

    /// The probe of `key`'s hold ended without telling anything of the credential: another
    /// request may probe at once.
    pub(super) fn release_probe(&self, key: &HoldKey) {
        if let Some(hold) = self.holds.lock().get_mut(key) {
            hold.probe = None;
        }
    }
}

/// 1 s, 2 s, 4 s … up to 64 s, each with up to 25 % random jitter on top.
pub(super) fn backoff(strikes: u32) -> Duration {
    let base = Duration::from_secs(1 << strikes.saturating_sub(1).min(6));
    base + base.mul_f64(jitter() * 0.25)
}

/// A random fraction in [0, 1).
pub(crate) fn jitter() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0)
}
