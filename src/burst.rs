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
//! still in flight (upstream had not counted them yet). Between answers it refills steadily at
//! its [`Refill`] rate — which is not its size: `X-RateLimit-Limit` is "the max number of
//! requests (tokens) you can have", and Atlassian does not publish how fast they come back.
//! The rate is, in this order:
//! - **stated**, where the edge says it (`X-RateLimit-FillRate` per
//!   `X-RateLimit-Interval-Seconds`, as Atlassian's Data Center edge does), taken as a steady
//!   refill;
//! - **learned** from successive answers: what is left rose by `remaining₂ − remaining₁`
//!   while the `n` answers between them each spent a token, so the bucket refilled
//!   `remaining₂ − remaining₁ + n` in that time. The answers are counted here, or across every
//!   replica in Redis while the cluster is up (each replica's own count would miss the others'
//!   calls). A span must last [`LEARN_SPAN`] and see [`LEARN_TOKENS`] refilled, counted a
//!   token short (upstream states whole tokens), so that what it shows is a refill upstream
//!   certainly gave (a bucket that filled up during it gave less than it could). The rate is
//!   the fastest such refill, never above it; a burst 429 lowers it by [`BACK_OFF`], and it
//!   stays under that for [`CEILING_FOR`];
//! - **assumed** until then: the bucket's size per `upstream.burst_window` (10 s by default,
//!   Atlassian's stated burst period), slower than any bucket seen.
//!
//! An upstream call takes a token: at once while the bucket has one; else it waits for its
//! share of the refill, when that comes within `upstream.burst_wait`; else it is refused
//! (`upstream-burst`, 429, `Retry-After`). A burst 429 (`RateLimit-Reason: …-burst-based`)
//! empties the bucket until its `Retry-After`.
//!
//! Invariants: a bucket upstream never stated does not pace; a bucket paces only its own
//! route and method; a waiting call has reserved its token (so waits queue up in order, and
//! nobody waits past `burst_wait`); every token taken is settled once, by the answer that
//! reports on the bucket or by the [`Ticket`] being dropped; the rate is positive and finite
//! and never above the fastest refill upstream stated or was seen to give.

use std::time::Duration;

use http::{Method, StatusCode};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::hints::{Bucket as Stated, Hints, Reason};
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

/// How long successive answers must span before they teach a refill rate.
pub(crate) const LEARN_SPAN: Duration = Duration::from_secs(1);

/// How many tokens a span must see refilled before it teaches a rate: the rounding of the
/// stated figures (a token) is then a few percent of it.
pub(crate) const LEARN_TOKENS: f64 = 16.0;

/// What a burst 429 leaves of a learned or assumed rate.
pub(crate) const BACK_OFF: f64 = 0.8;

/// How long, after a burst 429, a learned rate stays under what that 429 lowered it to.
pub(crate) const CEILING_FOR: Duration = Duration::from_secs(3600);

/// The slowest and fastest rates believed (tokens a second).
const RATES: (f64, f64) = (1e-3, 1e6);

/// How fast a bucket refills (tokens a second), and how that is known.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refill {
    /// `X-RateLimit-FillRate` per `X-RateLimit-Interval-Seconds`.
    Stated(f64),
    /// The fastest refill seen between answers (lowered by burst 429s).
    Learned(f64),
    /// Neither yet: the bucket's size per `upstream.burst_window`.
    Assumed(f64),
}

impl Refill {
    /// Tokens a second.
    pub fn per_second(&self) -> f64 {
        match *self {
            Refill::Stated(rate) | Refill::Learned(rate) | Refill::Assumed(rate) => rate,
        }
    }

    /// How the rate is known, for the status page.
    pub fn source(&self) -> &'static str {
        match self {
            Refill::Stated(_) => "stated",
            Refill::Learned(_) => "learned",
            Refill::Assumed(_) => "assumed",
        }
    }
}

/// An answer's place among the answers that stated its bucket and spent a token: counted by
/// this replica, or by every replica together in Redis. Places of the two counts never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seq {
    Here(u64),
    Cluster(u64),
}

impl Seq {
    /// Answers between `self` and a later place of the same count.
    fn since(self, earlier: Seq) -> Option<u64> {
        match (earlier, self) {
            (Seq::Here(a), Seq::Here(b)) | (Seq::Cluster(a), Seq::Cluster(b)) if b > a => {
                Some(b - a)
            }
            _ => None,
        }
    }
}

/// Where a span of learning starts: an answer's instant, what it said was left, its place.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: Instant,
    remaining: u64,
    seq: Seq,
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
    refill: Refill,
    anchor: Option<Anchor>,
    /// Answers that stated this bucket and spent a token, counted here.
    answers: u64,
    /// After a burst 429: the rate learning may not pass, and until when.
    ceiling: Option<(f64, Instant)>,
}

impl Bucket {
    fn new(limit: u64, window: Duration, now: Instant) -> Bucket {
        let assumed = (limit.max(1) as f64 / window.as_secs_f64()).clamp(RATES.0, RATES.1);
        Bucket {
            limit,
            tokens: 0.0,
            at: now,
            in_flight: 0,
            refill: Refill::Assumed(assumed),
            anchor: None,
            answers: 0,
            ceiling: None,
        }
    }

    fn rate(&self) -> f64 {
        self.refill.per_second()
    }

    fn top_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        if now > self.at {
            self.tokens = (self.tokens + elapsed * self.rate()).min(self.limit as f64);
            self.at = now;
        }
    }

    /// Learns the refill from an answer that spent a token and stated the bucket (its place
    /// `seq` in the cluster's count, else counted here).
    fn learn(&mut self, stated: Stated, cluster_seq: Option<u64>, now: Instant) {
        self.answers += 1;
        let seq = cluster_seq.map_or(Seq::Here(self.answers), Seq::Cluster);
        if let Some(fill) = stated.fill {
            self.refill = Refill::Stated(fill.per_second().clamp(RATES.0, RATES.1));
            return;
        }
        let here = Anchor {
            at: now,
            remaining: stated.remaining.min(stated.limit),
            seq,
        };
        let Some(anchor) = self.anchor else {
            self.anchor = Some(here);
            return;
        };
        let Some(spent) = seq.since(anchor.seq) else {
            self.anchor = Some(here);
            return;
        };
        let span = now.saturating_duration_since(anchor.at);
        // Upstream states whole tokens: one less is a refill it certainly gave. A bucket that
        // filled up during the span refilled less than it could: still a refill it gave.
        let refilled = here.remaining as f64 - anchor.remaining as f64 + spent as f64 - 1.0;
        if span < LEARN_SPAN || refilled < LEARN_TOKENS {
            return;
        }
        self.anchor = Some(here);
        let ceiling = self
            .ceiling
            .filter(|(_, until)| *until > now)
            .map_or(RATES.1, |(rate, _)| rate);
        let seen = (refilled / span.as_secs_f64()).clamp(RATES.0, ceiling);
        self.refill = match self.refill {
            Refill::Learned(rate) => Refill::Learned(rate.max(seen)),
            Refill::Assumed(rate) if seen > rate => Refill::Learned(seen),
            other => other,
        };
    }

    /// A burst 429: the rate was too fast (unless upstream stated it).
    fn back_off(&mut self, now: Instant) {
        if let Refill::Stated(_) = self.refill {
            return;
        }
        let lowered = (self.rate() * BACK_OFF).max(RATES.0);
        self.refill = Refill::Learned(lowered);
        self.ceiling = Some((lowered, now + CEILING_FOR));
        self.anchor = None;
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
    pub refill: Refill,
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
    /// `window`: the time a bucket is assumed to take to refill from empty until its rate is
    /// stated or learned; `max_wait`: the longest a call waits for a token.
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

    /// The bucket's size and the time it takes to refill one token, once upstream stated it.
    pub(crate) fn pacing(&self, id: BucketId) -> Option<(u64, Duration)> {
        self.buckets[id.index()]
            .lock()
            .map(|b| (b.limit, Duration::from_secs_f64(1.0 / b.rate())))
    }

    /// The time `id`'s bucket takes to refill one token, as `stated` (an answer's figures)
    /// leaves it: at the rate the answer states, else the bucket's, else the one assumed for
    /// a bucket of its size.
    pub(crate) fn interval(&self, id: BucketId, stated: &Stated) -> Duration {
        let rate = match stated.fill {
            Some(fill) => fill.per_second().clamp(RATES.0, RATES.1),
            None => self.buckets[id.index()].lock().map_or_else(
                || Bucket::new(stated.limit, self.window, Instant::now()).rate(),
                |b| b.rate(),
            ),
        };
        Duration::from_secs_f64(1.0 / rate)
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
        bucket.top_up(now);
        // Until `at` (a 429's Retry-After) nothing refills; then a token takes 1/rate.
        let held = bucket.at.saturating_duration_since(now);
        let pace = if bucket.tokens >= 1.0 && held.is_zero() {
            Pace::Go
        } else {
            // Concurrent answers can stamp the bucket a moment after this call's `now`: then
            // a whole token may be there already, and the deficit is none, never negative.
            let deficit = (1.0 - bucket.tokens).max(0.0);
            let refill =
                Duration::try_from_secs_f64(deficit / bucket.rate()).unwrap_or(Duration::MAX);
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
    /// (for this route and method) and its refill, and a burst 429's `Retry-After`.
    /// `cluster_seq`: the answer's place in the cluster's count of this bucket's answers.
    pub(crate) fn answered(
        &self,
        mut ticket: Ticket<'_>,
        id: Option<BucketId>,
        status: StatusCode,
        hints: &Hints,
        cluster_seq: Option<u64>,
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
            let bucket = slot.get_or_insert_with(|| Bucket::new(stated.limit, self.window, now));
            bucket.limit = stated.limit;
            bucket.tokens = stated.remaining.min(stated.limit) as f64 - in_flight as f64;
            bucket.at = now;
            if !burst_refusal {
                bucket.learn(stated, cluster_seq, now);
            }
        }
        if burst_refusal {
            let bucket = slot.get_or_insert_with(|| Bucket::new(1, self.window, now));
            let wait = hints
                .retry_after
                .unwrap_or_else(|| Duration::from_secs_f64(1.0 / bucket.rate()));
            bucket.tokens = -(in_flight as f64);
            bucket.at = now + wait;
            bucket.back_off(now);
        }
    }

    /// A call ended without an answer: it no longer counts as in flight.
    fn settle(&self, id: BucketId) {
        if let Some(bucket) = self.buckets[id.index()].lock().as_mut() {
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
        }
    }

    /// Whether bucket `id` holds at least `share` of its size at `now` (a bucket upstream never
    /// stated: yes).
    pub(crate) fn spare(&self, id: BucketId, share: f64, now: Instant) -> bool {
        let Some(mut bucket) = *self.buckets[id.index()].lock() else {
            return true;
        };
        bucket.top_up(now);
        bucket.at <= now && bucket.tokens >= share * bucket.limit as f64
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
                    bucket.top_up(now);
                    let held = bucket.at > now;
                    standings.push(Standing {
                        id,
                        limit: bucket.limit,
                        remaining: if held { 0.0 } else { bucket.tokens.max(0.0) },
                        refill: bucket.refill,
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

    fn stated(limit: u64, remaining: u64) -> Hints {
        Hints {
            bucket: Some(Stated {
                limit,
                remaining,
                fill: None,
            }),
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
        bursts.answered(ticket, GET_USER, StatusCode::OK, &stated(5, 0), None, now);
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
        bursts.answered(first, GET_USER, StatusCode::OK, &stated(4, 3), None, now);
        let (a, in_flight) = bursts.take(GET_USER, now);
        let (b, _second) = bursts.take(GET_USER, now);
        assert_eq!((a, b), (Pace::Go, Pace::Go));
        // Upstream counted the first of the two: 2 left as it says, one still in flight.
        bursts.answered(
            in_flight,
            GET_USER,
            StatusCode::OK,
            &stated(4, 2),
            None,
            now,
        );
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
        bursts.answered(ticket, GET_USER, StatusCode::OK, &stated(10, 9), None, now);
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
            None,
            now,
        );
        match bursts.take(GET_USER, now).0 {
            Pace::Refused(retry) => assert!(retry >= Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            bursts.take(GET_USER, Instant::now()).0,
            Pace::After(Duration::from_millis(125)),
            "a token's refill after the hold, at the rate the 429 lowered (10 → 8 a second)"
        );
        assert_eq!(bursts.take(GET_GROUPS, now).0, Pace::Go);
    }

    /// An upstream token bucket of `size` that refills `rate` a second, answering after
    /// `latency`, and callers at `demand` × its rate for `seconds`: every call goes through
    /// `Bursts` as the gateway's do. Returns the burst 429s upstream sent after the first second,
    /// the calls answered, the calls made, and the rate the bucket was paced by at the end.
    fn simulate(
        size: u64,
        rate: f64,
        state_refill: bool,
        demand: f64,
        seconds: u64,
        latency: Duration,
    ) -> (u64, u64, u64, Refill) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        /// What happens at an instant: a caller arrives, a paced call is sent, an answer
        /// arrives (with what upstream said: remaining, or refused).
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Event {
            Arrive,
            Send(usize),
            Answer(usize, Option<u64>),
        }
        let bursts = Bursts::new(Duration::from_secs(10), Duration::from_secs(2));
        let start = Instant::now();
        let mut events = BinaryHeap::new();
        let calls = (demand * rate * seconds as f64) as u64;
        for i in 0..calls {
            let at = Duration::from_secs_f64(i as f64 / (demand * rate));
            events.push(Reverse((at, Event::Arrive)));
        }
        let (mut upstream, mut upstream_at) = (size as f64, Duration::ZERO);
        let mut tickets = Vec::new();
        let (mut late_refusals, mut answered) = (0, 0);
        while let Some(Reverse((at, event))) = events.pop() {
            let now = start + at;
            match event {
                Event::Arrive => match bursts.take(GET_USER, now) {
                    (Pace::Refused(_), _) => {}
                    (Pace::Go, ticket) => {
                        tickets.push(Some(ticket));
                        events.push(Reverse((at, Event::Send(tickets.len() - 1))));
                    }
                    (Pace::After(wait), ticket) => {
                        tickets.push(Some(ticket));
                        events.push(Reverse((at + wait, Event::Send(tickets.len() - 1))));
                    }
                },
                Event::Send(call) => {
                    upstream =
                        (upstream + (at - upstream_at).as_secs_f64() * rate).min(size as f64);
                    upstream_at = at;
                    let said = if upstream >= 1.0 {
                        upstream -= 1.0;
                        Some(upstream.floor() as u64)
                    } else {
                        None
                    };
                    events.push(Reverse((at + latency, Event::Answer(call, said))));
                }
                Event::Answer(call, said) => {
                    let ticket = tickets[call].take().unwrap();
                    let mut hints = Hints {
                        bucket: Some(Stated {
                            limit: size,
                            remaining: said.unwrap_or(0),
                            fill: state_refill.then_some(crate::hints::Fill {
                                tokens: rate as u64,
                                every: Duration::from_secs(1),
                            }),
                        }),
                        ..Hints::default()
                    };
                    let status = match said {
                        Some(_) => {
                            answered += 1;
                            StatusCode::OK
                        }
                        None => {
                            if at > Duration::from_secs(1) {
                                late_refusals += 1;
                            }
                            hints.reason = Some(Reason::Burst);
                            hints.retry_after = Some(Duration::from_secs(1));
                            StatusCode::TOO_MANY_REQUESTS
                        }
                    };
                    bursts.answered(ticket, GET_USER, status, &hints, None, now);
                }
            }
        }
        let refill = bursts.standings(start)[0].refill;
        (late_refusals, answered, calls, refill)
    }

    #[test]
    fn a_bucket_s_refill_is_learned_not_taken_from_its_size() {
        // The field's buckets, and others whose size and rate differ widely, at three times
        // their rate: after the first second upstream refuses nothing, and the pace learned
        // is the bucket's rate (never above it) — whatever the ratio of size to rate.
        // The least each answers, of what the bucket allows (its size, then its rate: a third
        // of the demand). A bucket smaller than a second of its refill is full whenever the
        // pace is under its rate, which hides how much faster it could go: it is learned more
        // slowly, never past its rate.
        let cases = [
            (10, 2.0, 0, 0.9),
            (10, 5.0, 100, 0.9),
            (350, 100.0, 0, 0.9),
            (350, 100.0, 100, 0.9),
            (5, 20.0, 30, 0.4),
        ];
        for (size, rate, latency_ms, share) in cases {
            let latency = Duration::from_millis(latency_ms);
            let (refused, answered, calls, refill) = simulate(size, rate, false, 3.0, 30, latency);
            let case = format!(
                "{size} tokens, {rate}/s, {latency_ms} ms: {refused} refused, {answered} of {calls}, {refill:?}"
            );
            assert_eq!(refused, 0, "{case}");
            assert!(matches!(refill, Refill::Learned(_)), "{case}");
            assert!(refill.per_second() <= rate, "{case}");
            assert!(refill.per_second() >= rate * 0.8, "{case}");
            let allowed = size as f64 + rate * 30.0;
            assert!(answered as f64 >= share * allowed, "{case}");
        }
    }

    #[test]
    fn a_stated_refill_is_taken_as_stated() {
        let (refused, answered, _, refill) =
            simulate(10, 2.0, true, 3.0, 20, Duration::from_millis(50));
        assert_eq!(refill, Refill::Stated(2.0));
        assert_eq!(refused, 0);
        assert!(answered >= 45, "{answered}");
    }

    #[tokio::test(start_paused = true)]
    async fn learning_never_passes_the_ceiling_a_burst_429_set_and_spans_never_mix_counts() {
        let bursts = Bursts::new(Duration::from_secs(10), Duration::from_secs(2));
        let now = Instant::now();
        let (_, ticket) = bursts.take(GET_USER, now);
        bursts.answered(
            ticket,
            GET_USER,
            StatusCode::OK,
            &stated(100, 50),
            None,
            now,
        );
        assert_eq!(bursts.standings(now)[0].refill, Refill::Assumed(10.0));
        let refused = Hints {
            reason: Some(Reason::Burst),
            ..stated(100, 0)
        };
        let (_, ticket) = bursts.take(GET_USER, now);
        bursts.answered(
            ticket,
            GET_USER,
            StatusCode::TOO_MANY_REQUESTS,
            &refused,
            None,
            now,
        );
        assert_eq!(bursts.standings(now)[0].refill, Refill::Learned(8.0));
        // A span then shows 40 a second: learning keeps under the 429's ceiling.
        let later = now + Duration::from_secs(2);
        let (_, t) = bursts.take(GET_USER, later);
        bursts.answered(
            t,
            GET_USER,
            StatusCode::OK,
            &stated(100, 10),
            Some(7),
            later,
        );
        let later = later + Duration::from_secs(1);
        let (_, t) = bursts.take(GET_USER, later);
        bursts.answered(
            t,
            GET_USER,
            StatusCode::OK,
            &stated(100, 40),
            Some(17),
            later,
        );
        assert_eq!(bursts.standings(later)[0].refill, Refill::Learned(8.0));
        // A place in this replica's own count never pairs with one in the cluster's.
        let (_, t) = bursts.take(GET_USER, later + Duration::from_secs(2));
        bursts.answered(
            t,
            GET_USER,
            StatusCode::OK,
            &stated(100, 99),
            None,
            later + Duration::from_secs(2),
        );
        assert_eq!(bursts.standings(later)[0].refill, Refill::Learned(8.0));
        // Past the ceiling's hour, a span teaches again.
        let hour = later + CEILING_FOR;
        for (offset, remaining, seq) in [(0, 10, 100), (1, 40, 110)] {
            let at = hour + Duration::from_secs(offset);
            let (_, t) = bursts.take(GET_USER, at);
            bursts.answered(
                t,
                GET_USER,
                StatusCode::OK,
                &stated(100, remaining),
                Some(seq),
                at,
            );
        }
        assert_eq!(
            bursts.standings(hour)[0].refill,
            Refill::Learned(39.0),
            "30 more left and 10 answers in a second, less a token for the rounding"
        );
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
                    bursts.answered(ticket, GET_USER, status, &Hints::read(&headers), None, now);
                }
                let _ = bursts.standings(now);
                let _ = bursts.held(GET_USER.unwrap(), now);
            }
        }
    }
}
