//! Refresh-ahead: an entry read late in its life is fetched again in the background, so that a
//! hot entry never expires into a reader's wait.
//!
//! A read that finds its entry fresh but past `cache.refresh.after` of its TTL (plus up to a
//! tenth more, the entry's own jitter) claims the entry's refresh — one per entry — and is
//! answered from it as any hit; the refresh runs in a task of its own, as the one flight of the
//! key. Entries nobody reads late in their life are left to expire.
//!
//! A read that finds the entry expired moments ago (within a tenth of its TTL) while its
//! refresh is under way is answered from it too, as stale-while-revalidate would, rather than
//! waiting for the refresh to land.
//!
//! A refresh is an upstream call of the lowest priority: never while the site's quota is low
//! (under `quota.reserve`, or Atlassian says it is near its limit), and otherwise only if it
//! need not wait — a burst token while the bucket holds at least `cache.refresh.burst_share`
//! of its size, a free place upstream, every limit of its caller passed at once
//! ([`Origin::refresh`]); the caller's class budget counts its points as any call's. A refresh
//! that was not made, or failed, leaves the entry to its own expiry (and stale-if-error).
//!
//! **Learning what changes.** Each refresh records whether it found the answer changed (its
//! decoded body's digest; the edge's per-request headers are never part of it), in the key's
//! history ([`History`]: Cho and Garcia-Molina's `n` refreshes and `X` changes). Their estimator
//! of the rate of change, λ = −ln((n − X + ½) / (n + ½)) / I (I the interval between
//! refreshes), is the classic one for a source polled at intervals, unbiased where the naive
//! X / (n·I) is not. The refreshed entry stays fresh for the time within which a change is no
//! more likely than one in ten, 1 − e^(−λt) = 0.1, bounded by half the route's TTL and
//! `cache.refresh.max_stretch` times it: entries that keep coming back unchanged are refreshed
//! less often, entries that change more often.
//!
//! Invariants: a refresh stores only under the key its read observed, so a write meanwhile
//! (which moved a generation the key holds) leaves its answer under a dead key — a refresh
//! never brings back what a write changed; it never spends points while the quota is low; one
//! refresh per entry.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::entry::History;
use super::flights::Role;
use super::read::Landed;
use super::{Cache, Entry, Fetched, Lifetime, Lookup, Origin};

/// What a refresh came to (`wikigate_refreshes_total`'s `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refreshed {
    Changed,
    Unchanged,
    /// Upstream failed, or answered with an error status: the entry keeps its own expiry.
    Failed,
    /// Not made: the quota is low, the burst bucket near empty, no place upstream free, or a
    /// limit would have made it wait.
    Skipped,
}

impl From<Refreshed> for &'static str {
    /// Its label, one of `metrics::REFRESH_RESULTS`.
    fn from(refreshed: Refreshed) -> &'static str {
        crate::metrics::REFRESH_RESULTS[refreshed as usize]
    }
}

/// The chance of a change within an entry's freshness that the learned TTL aims at.
const CHANGE_WITHIN_TTL: f64 = 0.1;

impl Cache {
    /// Refreshes `entry` (stored under `lookup`'s key) in the background, if the budget allows.
    pub(super) fn refresh_ahead(
        self: &Arc<Self>,
        lookup: Lookup,
        entry: Arc<Entry>,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) {
        if self.quota.site.low() {
            self.metrics.refreshed(lookup.route, Refreshed::Skipped, 0);
            return;
        }
        let Role::Leader(leader) = self.flights.join(lookup.key) else {
            return; // the key is being fetched already
        };
        let this = self.clone();
        let headers = request_headers.clone();
        tokio::spawn(
            async move {
                let (result, points, landed) =
                    this.refresh(lookup, &entry, &headers, &*origin).await;
                this.metrics.refreshed(lookup.route, result, points);
                leader.complete(landed);
            }
            .in_current_span(),
        );
    }

    /// One refresh: what it came to, the points it spent, and what it leaves any read that
    /// joined its flight.
    async fn refresh(
        &self,
        lookup: Lookup,
        entry: &Entry,
        request_headers: &HeaderMap,
        origin: &dyn Origin,
    ) -> (Refreshed, u32, Option<Landed>) {
        let answer = match origin.refresh().await {
            Ok(None) => return (Refreshed::Skipped, 0, None),
            Err(error) => return (Refreshed::Failed, 0, Some(Landed::Failed(error))),
            Ok(Some(Fetched::Buffered(answer))) => answer,
            // Too large to hold now: nothing to store; the entry keeps its own expiry.
            Ok(Some(Fetched::Streamed(_) | Fetched::Undeliverable(_))) => {
                return (Refreshed::Failed, 0, None);
            }
        };
        let points = answer.points();
        if answer.status != StatusCode::OK {
            return (
                Refreshed::Failed,
                points,
                Some(Landed::Answer(Arc::new(answer))),
            );
        }
        let Some(base) = self.lifetime_for(&answer, &lookup) else {
            return (Refreshed::Failed, points, None);
        };
        let changed = !entry.same_body(answer.body());
        let history = entry.refresh.history.after(changed);
        let interval = entry.age(Instant::now());
        let lifetime = Lifetime {
            ttl: self.learned_ttl(base.ttl, history, interval),
            ..base
        };
        let settled = self
            .store(lookup, request_headers, answer, lifetime, |new| {
                new.refreshed_from(entry, changed)
            })
            .await;
        let result = match changed {
            true => Refreshed::Changed,
            false => Refreshed::Unchanged,
        };
        (result, points, settled.landed())
    }

    /// How long a refreshed entry stays fresh, from its key's `history` and the `interval`
    /// between its refreshes (see the module doc).
    fn learned_ttl(&self, ttl: Duration, history: History, interval: Duration) -> Duration {
        learned_ttl(ttl, history, interval, self.config.refresh.max_stretch)
    }
}

/// Cho and Garcia-Molina's estimate of the rate of change, and the TTL within which a change is
/// no more likely than [`CHANGE_WITHIN_TTL`], within [½ × `ttl`, `max_stretch` × `ttl`].
fn learned_ttl(ttl: Duration, history: History, interval: Duration, max_stretch: f64) -> Duration {
    let (n, x) = (f64::from(history.refreshes), f64::from(history.changed));
    let (shortest, longest) = (ttl / 2, ttl.mul_f64(max_stretch));
    let interval = interval.as_secs_f64();
    if n == 0.0 || interval <= 0.0 {
        return ttl;
    }
    let rate = -((n - x + 0.5) / (n + 0.5)).ln() / interval;
    if rate <= 0.0 {
        return longest; // never seen to change
    }
    let ttl_for = -(1.0 - CHANGE_WITHIN_TTL).ln() / rate;
    Duration::try_from_secs_f64(ttl_for)
        .unwrap_or(longest)
        .clamp(shortest, longest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(refreshes: u8, changed: u8) -> History {
        History { refreshes, changed }
    }

    #[test]
    fn unchanged_keys_stretch_to_the_maximum_and_changing_ones_shrink_to_half() {
        let ttl = Duration::from_secs(60);
        let every = Duration::from_secs(50);
        assert_eq!(
            learned_ttl(ttl, history(0, 0), every, 2.0),
            ttl,
            "nothing known yet"
        );
        assert_eq!(learned_ttl(ttl, history(4, 0), every, 2.0), ttl * 2);
        assert_eq!(
            learned_ttl(ttl, history(4, 0), every, 1.0),
            ttl,
            "stretch off"
        );
        assert_eq!(learned_ttl(ttl, history(4, 4), every, 2.0), ttl / 2);
        // One change in 20 refreshes 50 s apart: λ = −ln(19.5 / 20.5) / 50 ≈ 1.0e-3 a second,
        // so P(change within t) = 0.1 at t ≈ 105 s.
        let learned = learned_ttl(ttl, history(20, 1), every, 2.0);
        assert!(
            (Duration::from_secs(100)..Duration::from_secs(110)).contains(&learned),
            "{learned:?}"
        );
        // A history grows and halves, keeping its ratio.
        let mut h = History::default();
        for n in 0..40 {
            h = h.after(n % 4 == 0);
        }
        assert!(
            h.refreshes <= 32 && h.changed * 4 <= h.refreshes + 4,
            "{h:?}"
        );
    }
}
