//! Atlassian's per-second burst buckets — one per endpoint (route) and method, for every
//! caller, API tokens included — as upstream states them, and the pacing of upstream calls by
//! them.
//!
//! Upstream states a bucket on every answer: `X-RateLimit-Limit` (its size) and
//! `X-RateLimit-Remaining` (what was left as that request was counted). These are not the
//! hourly points quota (`quota`): a dry bucket says nothing about the site, only that this
//! endpoint and method should slow down for a moment.
//!
//! A bucket is learned from answers: its size, and what is left as of an answer, less the calls
//! still in flight (upstream had not counted them yet). Between answers it refills steadily,
//! from empty to full in `upstream.burst_window`. An upstream call takes a token: at once while
//! the bucket has one; else it waits for its share of the refill, when that comes within
//! `upstream.burst_wait`; else it is refused (`upstream-burst`, 429, `Retry-After`). A burst
//! 429 (`RateLimit-Reason: …-burst-based`) empties the bucket until its `Retry-After`.
//!
//! Invariants: a bucket upstream never stated does not pace; a bucket paces only its own
//! route and method; a waiting call has reserved its token (so waits queue up in order, and
//! nobody waits past `burst_wait`); every token taken is settled once, by the answer that
//! reports on the bucket or by the [`Ticket`] being dropped.

use std::time::Duration;

use http::{Method, StatusCode};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::hints::{Hints, Reason};
use crate::routes::Route;

/// Methods that have buckets of their own: GET (HEAD is a GET upstream), POST, PUT, DELETE.
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

/// Which bucket: a route and a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketId {
    pub route: Route,
    method: usize,
}

impl BucketId {
    /// The bucket of `route` and `method`; `None` for a method that never goes upstream.
    pub fn of(route: Route, method: &Method) -> Option<BucketId> {
        let method = match *method {
            Method::GET | Method::HEAD => 0,
            Method::POST => 1,
            Method::PUT => 2,
            Method::DELETE => 3,
            _ => return None,
        };
        Some(BucketId { route, method })
    }

    /// The method's name, for metrics.
    pub fn method(&self) -> &'static str {
        METHODS[self.method].as_str()
    }

    fn index(&self) -> usize {
        self.route.index() * METHODS.len() + self.method
    }

    /// The bucket's name in Redis (multi-replica pacing).
    pub fn key(&self) -> String {
        format!("b:{}:{}", self.route.name(), self.method())
    }
}

/// A bucket as last learned.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    limit: u64,
    /// Tokens at `at` (negative: reserved by calls that wait), and refilling after it.
    tokens: f64,
    at: Instant,
    /// Calls admitted that upstream has not answered yet.
    in_flight: u64,
}

impl Bucket {
    /// Tokens refilled per second.
    fn rate(&self, window: Duration) -> f64 {
        self.limit as f64 / window.as_secs_f64()
    }

    fn refill(&mut self, now: Instant, window: Duration) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        if now > self.at {
            self.tokens = (self.tokens + elapsed * self.rate(window)).min(self.limit as f64);
            self.at = now;
        }
    }
}

/// What a bucket says of the next call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pace {
    /// Go now.
    Go,
    /// Go after this wait (the token is reserved).
    After(Duration),
    /// Refused: the token would come after `burst_wait`; retry after this long.
    Refused(Duration),
}

/// What a bucket looks like now, for metrics and the status page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    pub id: BucketId,
    pub limit: u64,
    /// Tokens left now (0 when reserved ahead).
    pub remaining: f64,
}

/// Every bucket upstream has stated.
pub(crate) struct Bursts {
    buckets: Box<[Mutex<Option<Bucket>>]>,
    window: Duration,
    max_wait: Duration,
}

/// A call's claim on its bucket, settled by [`Bursts::answered`] or, when the call ends
/// without an answer, on drop.
#[must_use]
pub(crate) struct Ticket<'a> {
    bursts: &'a Bursts,
    id: Option<BucketId>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.bursts.settle(id);
        }
    }
}

impl Bursts {
    /// `window`: a bucket's time to refill from empty; `max_wait`: the longest a call waits
    /// for a token.
    pub(crate) fn new(window: Duration, max_wait: Duration) -> Bursts {
        Bursts {
            buckets: (0..Route::ALL.len() * METHODS.len())
                .map(|_| Mutex::new(None))
                .collect(),
            window: window.max(Duration::from_millis(1)),
            max_wait,
        }
    }

    /// The longest a call waits for a token.
    pub(crate) fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// The bucket's size, once upstream stated it.
    pub(crate) fn limit(&self, id: BucketId) -> Option<u64> {
        self.buckets[id.index()].lock().map(|b| b.limit)
    }

    /// The time a bucket of `limit` takes to refill one token.
    pub(crate) fn interval(&self, limit: u64) -> Duration {
        self.window.div_f64(limit.max(1) as f64)
    }

    /// A claim on no bucket (a call paced elsewhere, or by no bucket).
    pub(crate) fn untracked(&self) -> Ticket<'_> {
        Ticket {
            bursts: self,
            id: None,
        }
    }

    /// How long `id`'s bucket is still held after a burst 429 (zero when it is not).
    pub(crate) fn held(&self, id: BucketId, now: Instant) -> Duration {
        self.buckets[id.index()]
            .lock()
            .map_or(Duration::ZERO, |b| b.at.saturating_duration_since(now))
    }

    /// Takes a token of `id`'s bucket for a call at `now`: go, go after a wait, or refused.
    /// The ticket is settled by the call's answer (or its drop); a refused call has none.
    pub(crate) fn take(&self, id: Option<BucketId>, now: Instant) -> (Pace, Ticket<'_>) {
        let untracked = self.untracked();
        let Some(id) = id else {
            return (Pace::Go, untracked);
        };
        let mut slot = self.buckets[id.index()].lock();
        let Some(bucket) = slot.as_mut() else {
            return (Pace::Go, untracked);
        };
        bucket.refill(now, self.window);
        // Until `at` (a 429's Retry-After) nothing refills; then a token takes 1/rate.
        let held = bucket.at.saturating_duration_since(now);
        let pace = if bucket.tokens >= 1.0 && held.is_zero() {
            Pace::Go
        } else {
            // Concurrent answers can stamp the bucket a moment after this call's `now`: then
            // a whole token may be there already, and the deficit is none, never negative.
            let deficit = (1.0 - bucket.tokens).max(0.0);
            let refill = Duration::try_from_secs_f64(deficit / bucket.rate(self.window))
                .unwrap_or(Duration::MAX);
            let wait = held.saturating_add(refill);
            if wait > self.max_wait {
                return (Pace::Refused(wait), untracked);
            }
            Pace::After(wait)
        };
        bucket.tokens -= 1.0;
        bucket.in_flight += 1;
        (
            pace,
            Ticket {
                bursts: self,
                id: Some(id),
            },
        )
    }

    /// Learns from an answer to the call `ticket` was taken for: the bucket upstream states
    /// (for this route and method), and a burst 429's `Retry-After`.
    pub(crate) fn answered(
        &self,
        mut ticket: Ticket<'_>,
        id: Option<BucketId>,
        status: StatusCode,
        hints: &Hints,
        now: Instant,
    ) {
        let settled = ticket.id.take();
        let Some(id) = id else {
            return;
        };
        let burst_refusal =
            status == StatusCode::TOO_MANY_REQUESTS && hints.reason == Some(Reason::Burst);
        let mut slot = self.buckets[id.index()].lock();
        if let Some(bucket) = slot.as_mut()
            && settled == Some(id)
        {
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
        }
        let in_flight = slot.map_or(0, |b| b.in_flight);
        if let Some(stated) = hints.bucket.filter(|b| b.limit > 0) {
            *slot = Some(Bucket {
                limit: stated.limit,
                tokens: stated.remaining.min(stated.limit) as f64 - in_flight as f64,
                at: now,
                in_flight,
            });
        }
        if burst_refusal {
            let limit = slot.map_or(1, |b| b.limit);
            let wait = hints.retry_after.unwrap_or(self.interval(limit));
            *slot = Some(Bucket {
                limit,
                tokens: -(in_flight as f64),
                at: now + wait,
                in_flight,
            });
        }
    }

    /// A call ended without an answer: it no longer counts as in flight.
    fn settle(&self, id: BucketId) {
        if let Some(bucket) = self.buckets[id.index()].lock().as_mut() {
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
        }
    }

    /// Every bucket upstream has stated, as it stands at `now`.
    pub(crate) fn standings(&self, now: Instant) -> Vec<Standing> {
        let mut standings = Vec::new();
        for route in Route::ALL {
            for method in &METHODS {
                let Some(id) = BucketId::of(route, method) else {
                    continue;
                };
                if let Some(mut bucket) = *self.buckets[id.index()].lock() {
                    bucket.refill(now, self.window);
                    let held = bucket.at > now;
                    standings.push(Standing {
                        id,
                        limit: bucket.limit,
                        remaining: if held { 0.0 } else { bucket.tokens.max(0.0) },
                    });
                }
            }
        }
        standings
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hints::Bucket as Stated;

    fn stated(limit: u64, remaining: u64) -> Hints {
        Hints {
            bucket: Some(Stated { limit, remaining }),
            ..Hints::default()
        }
    }

    const GET_USER: Option<BucketId> = Some(BucketId {
        route: Route::User,
        method: 0,
    });
    const GET_GROUPS: Option<BucketId> = Some(BucketId {
        route: Route::MemberOf,
        method: 0,
    });

    #[tokio::test(start_paused = true)]
    async fn an_unstated_bucket_never_paces() {
        let bursts = Bursts::new(Duration::from_secs(1), Duration::from_secs(2));
        for _ in 0..100 {
            let (pace, _ticket) = bursts.take(GET_USER, Instant::now());
            assert_eq!(pace, Pace::Go);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_bucket_makes_calls_wait_their_turn_then_refuses_past_the_wait() {
        let bursts = Bursts::new(Duration::from_secs(1), Duration::from_secs(2));
        let now = Instant::now();
        let (_, ticket) = bursts.take(GET_USER, now);
        // Five tokens a second; the answer says none is left.
        bursts.answered(ticket, GET_USER, StatusCode::OK, &stated(5, 0), now);
        let mut waits = Vec::new();
        let mut tickets = Vec::new();
        loop {
            match bursts.take(GET_USER, now) {
                (Pace::After(wait), ticket) => {
                    waits.push(wait);
                    tickets.push(ticket);
                }
                (Pace::Refused(retry), _) => {
                    assert!(retry > Duration::from_secs(2));
                    break;
                }
                (Pace::Go, _) => panic!("the bucket is dry"),
            }
        }
        assert_eq!(waits.len(), 10, "two seconds of refill, 5 a second");
        assert_eq!(waits[0], Duration::from_millis(200));
        assert_eq!(waits[9], Duration::from_secs(2));
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "in turn");
        // Another endpoint, and another method, are not paced by it.
        assert_eq!(bursts.take(GET_GROUPS, now).0, Pace::Go);
        let put_user = BucketId::of(Route::User, &Method::PUT);
        assert_eq!(bursts.take(put_user, now).0, Pace::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_in_flight_are_not_counted_twice_and_the_bucket_refills() {
        let bursts = Bursts::new(Duration::from_secs(1), Duration::from_secs(2));
        let now = Instant::now();
        let (_, first) = bursts.take(GET_USER, now);
        bursts.answered(first, GET_USER, StatusCode::OK, &stated(4, 3), now);
        let (a, in_flight) = bursts.take(GET_USER, now);
        let (b, _second) = bursts.take(GET_USER, now);
        assert_eq!((a, b), (Pace::Go, Pace::Go));
        // Upstream counted the first of the two: 2 left as it says, one still in flight.
        bursts.answered(in_flight, GET_USER, StatusCode::OK, &stated(4, 2), now);
        let standing = bursts.standings(now)[0];
        assert_eq!((standing.limit, standing.remaining), (4, 1.0));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            bursts.standings(Instant::now())[0].remaining,
            4.0,
            "refilled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_429_holds_its_bucket_for_retry_after_and_a_dropped_ticket_settles() {
        let bursts = Bursts::new(Duration::from_secs(1), Duration::from_secs(2));
        let now = Instant::now();
        let (_, ticket) = bursts.take(GET_USER, now);
        bursts.answered(ticket, GET_USER, StatusCode::OK, &stated(10, 9), now);
        let (_, dropped) = bursts.take(GET_USER, now);
        drop(dropped);
        let (_, refused) = bursts.take(GET_USER, now);
        let hints = Hints {
            reason: Some(Reason::Burst),
            retry_after: Some(Duration::from_secs(5)),
            ..Hints::default()
        };
        bursts.answered(
            refused,
            GET_USER,
            StatusCode::TOO_MANY_REQUESTS,
            &hints,
            now,
        );
        match bursts.take(GET_USER, now).0 {
            Pace::Refused(retry) => assert!(retry >= Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            bursts.take(GET_USER, Instant::now()).0,
            Pace::After(Duration::from_millis(100)),
            "a token's refill after the hold"
        );
        assert_eq!(bursts.take(GET_GROUPS, now).0, Pace::Go);
    }

    proptest::proptest! {
        /// Whatever answers arrive, in whatever order and at whatever instants (answers of
        /// other threads stamp the bucket after a call read the clock), nothing panics and no
        /// call is told to wait past `burst_wait`.
        #[test]
        fn any_sequence_of_answers_and_calls_is_taken_in(
            steps in proptest::collection::vec(
                (
                    crate::hints::tests::any_limit_headers(),
                    proptest::sample::select(vec![200u16, 429, 503]),
                    -2_000i64..2_000,
                    proptest::bool::ANY,
                ),
                1..40,
            )
        ) {
            let bursts = Bursts::new(Duration::from_secs(1), Duration::from_secs(2));
            let base = Instant::now() + Duration::from_secs(10);
            let mut tickets = Vec::new();
            for (headers, status, offset_ms, take) in steps {
                let now = match offset_ms >= 0 {
                    true => base + Duration::from_millis(offset_ms.unsigned_abs()),
                    false => base - Duration::from_millis(offset_ms.unsigned_abs()),
                };
                if take {
                    let (pace, ticket) = bursts.take(GET_USER, now);
                    if let Pace::After(wait) = pace {
                        proptest::prop_assert!(wait <= Duration::from_secs(2));
                    }
                    tickets.push(ticket);
                } else {
                    let ticket = tickets.pop().unwrap_or_else(|| bursts.untracked());
                    let status = StatusCode::from_u16(status).unwrap();
                    bursts.answered(ticket, GET_USER, status, &Hints::read(&headers), now);
                }
                let _ = bursts.standings(now);
                let _ = bursts.held(GET_USER.unwrap(), now);
            }
        }
    }
}
