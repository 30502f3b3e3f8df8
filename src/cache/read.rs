//! The read path past the one lookup: a miss led once for every identical request, a
//! background refresh, the answer stored, and stale entries standing in when upstream fails.
//!
//! The seam to upstream is [`Origin`]: the proxy hands each read one, and the cache calls it
//! only here — it never knows how the answer is got (admission, the upstream client).
//!
//! Invariants: one flight per key (`flights`): followers take the leader's landed answer, or
//! fetch for themselves when it says nothing about them (streamed, refused by the leader's own
//! limits); the leader's fetch runs in a task of its own, so its answer reaches the cache and
//! the followers even when its request goes away; an answer is stored only under the key its
//! read observed (a write meanwhile leaves it under a dead key).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{HeaderMap, Response, StatusCode, header};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::entry::{Buffered, Entry, Lifetime, exchange_ids, varies_on_everything};
use super::flights::{FollowError, Leader, Role, follow};
use super::key::CacheKey;
use super::outcome::{Forward, Outcome, Served, Stored, Tier};
use super::{Cache, Directive, Found, Lookup, mark};
use crate::body::Body;
use crate::coding::Accepts;
use crate::error::GatewayError;

/// Where a read's answer comes from when the cache has none: the proxy's side of the seam.
/// A read is given one; the cache asks it for the read's GET — once per miss, again for a
/// background refresh — and stores or passes on what it answers.
pub trait Origin: Send + Sync {
    /// Upstream's answer to the read's GET; with `query` in place of the request's own query
    /// when given (a bulk lookup asks only for the accounts it has not cached). Charged to
    /// the read's caller.
    fn fetch(&self, query: Option<String>) -> BoxFuture<'_, Result<Fetched, GatewayError>>;

    /// Upstream's answer to a GET of `route` (another route of the read's family: the bulk
    /// route of a single lookup) for this read's caller, with the query `query` makes once the
    /// call has been admitted upstream — a merged call's batch closes then. `call` says what it
    /// is for, and so how long it may wait; `None` when a [`Call::Refresh`] was not made. A
    /// read whole answer is priced, not charged: the cache shares its points among the lookups
    /// it served ([`Origin::charge`]); any other outcome is charged here.
    fn fetch_for<'a>(
        &'a self,
        route: crate::routes::Route,
        call: Call,
        query: Box<dyn FnOnce() -> String + Send + 'a>,
    ) -> BoxFuture<'a, Result<Option<Fetched>, GatewayError>>;

    /// Charges the read's caller `points` of a call made by [`Origin::fetch_for`].
    fn charge(&self, points: u32) -> BoxFuture<'_, ()>;

    /// The read's GET again, as a refresh: a call of the lowest priority, made only if it
    /// need not wait (a burst token while the bucket is well above empty, a free place
    /// upstream, every limit passed at once); `None` when it was not made. Charged.
    fn refresh(&self) -> BoxFuture<'_, Result<Option<Fetched>, GatewayError>>;
}

/// What a call of another route of a read's family is for ([`Origin::fetch_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Merged single lookups, which clients wait for: after the merge window where one applies
    /// (callers that spend points), it waits its turn.
    Merged,
    /// The shape comparison's bulk lookup: it waits its turn.
    Compare,
    /// Single lookups refreshed ahead of expiry, packed: the lowest priority, made only if it
    /// need not wait (as [`Origin::refresh`]).
    Refresh,
}

/// What upstream answered a fetch with.
pub enum Fetched {
    /// Read whole (at most `max_entry_bytes`).
    Buffered(Buffered),
    /// Too large to hold: streamed through, never stored.
    Streamed(Response<Body>),
    /// An answer this request's client cannot be given (gzip that inflates past
    /// `max_entry_bytes`, for a client that does not accept gzip); never stored, and requests
    /// that followed this one fetch for themselves.
    Undeliverable(GatewayError),
}

/// What the cache made of a read's fetch (stored it, found it after all, passed it on), for
/// the request that made it.
pub(super) enum Settled {
    /// Stored; with upstream's ids of the exchange that fetched it (`Atl-Traceid`, …), which
    /// the entry never keeps and only the request that made the exchange is given.
    Stored(Arc<Entry>, HeaderMap),
    /// Found fresh without an upstream call after all: in this replica's memory (another
    /// leader stored it between this request's lookup and its flight), or in the cluster's
    /// shared tier.
    Shared(Arc<Entry>, Tier),
    /// A bounded answer that may not be stored (an error status, a `Set-Cookie`).
    Answer(Arc<Buffered>),
    Streamed(Response<Body>),
    Undeliverable(GatewayError),
    Failed(GatewayError),
}

/// What a fetch leaves for the requests that waited on it: the same caller's answer (their key
/// is its key). A streamed or undeliverable answer leaves nothing: they fetch for themselves.
#[derive(Clone)]
pub(super) enum Landed {
    Stored(Arc<Entry>),
    Answer(Arc<Buffered>),
    Failed(GatewayError),
}

impl Settled {
    pub(super) fn landed(&self) -> Option<Landed> {
        match self {
            Settled::Stored(entry, _) | Settled::Shared(entry, _) => {
                Some(Landed::Stored(entry.clone()))
            }
            Settled::Answer(answer) => Some(Landed::Answer(answer.clone())),
            Settled::Failed(error) => Some(Landed::Failed(error.clone())),
            Settled::Streamed(_) | Settled::Undeliverable(_) => None,
        }
    }

    /// Whether upstream failed (an error status worth falling back on, or no answer); the
    /// status when there was one.
    fn failure(&self) -> Option<Option<StatusCode>> {
        match self {
            Settled::Failed(_) => Some(None),
            Settled::Answer(answer) if is_upstream_failure(answer.status) => {
                Some(Some(answer.status))
            }
            _ => None,
        }
    }
}

impl From<Landed> for Settled {
    fn from(landed: Landed) -> Settled {
        match landed {
            Landed::Stored(entry) => Settled::Stored(entry, HeaderMap::new()),
            Landed::Answer(answer) => Settled::Answer(answer),
            Landed::Failed(error) => Settled::Failed(error),
        }
    }
}

impl Cache {
    /// Answers a read from what [`Cache::find`] found: a fresh entry as a hit; an entry in its
    /// stale-while-revalidate window at once, refreshing it in the background; one in its
    /// stale-on-low-quota window, while the quota is low, at once; else by
    /// asking `origin` (for the GET, also for HEAD requests) — once for every identical request
    /// in flight — and storing the answer.
    pub async fn read(
        self: &Arc<Self>,
        lookup: Lookup,
        found: Found,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        match found {
            Found::Fresh(entry) => self.hit(&lookup, entry, request_headers),
            Found::RefreshAhead(entry) => {
                self.refresh_ahead(lookup, entry.clone(), request_headers, origin);
                self.hit(&lookup, entry, request_headers)
            }
            Found::Revalidate(entry) => {
                self.refresh_in_background(lookup, request_headers, origin);
                let saved = Some(entry.points);
                let outcome = Outcome::StaleWhileRevalidate;
                self.serve(&lookup, entry, request_headers, outcome, saved)
            }
            Found::Refreshing(entry) => {
                let saved = Some(entry.points);
                let outcome = Outcome::StaleWhileRevalidate;
                self.serve(&lookup, entry, request_headers, outcome, saved)
            }
            Found::SpareQuota(entry) => {
                let saved = Some(entry.points);
                let outcome = Outcome::StaleOnLowQuota;
                self.serve(&lookup, entry, request_headers, outcome, saved)
            }
            Found::Missing { fallback } if lookup.directive != Directive::Normal => {
                let store = lookup.directive == Directive::NoCache;
                let settled = self
                    .settle(lookup, request_headers, origin.fetch(None).await, store)
                    .await;
                let forwarded = (Forward::Request, false);
                self.respond(settled, &lookup, request_headers, fallback, forwarded)
            }
            Found::Missing { fallback } => {
                self.miss(lookup, request_headers, origin, fallback).await
            }
        }
    }

    /// A miss: leads the fetch for every identical request, or waits for the one that does.
    async fn miss(
        self: &Arc<Self>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
        fallback: Option<Arc<Entry>>,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let why = match fallback {
            Some(_) => Forward::Stale,
            None => Forward::Miss,
        };
        loop {
            let settled = match self.flights.join(lookup.key) {
                Role::Leader(leader) => (
                    self.lead(leader, lookup, request_headers, origin.clone())
                        .await?,
                    false,
                ),
                Role::Follower(receiver) => {
                    match follow(receiver, self.config.coalesce_timeout).await {
                        Err(FollowError::Abandoned) => continue,
                        // A leader refused by its own caller's limits says nothing about this
                        // request's limits: it fetches (and is admitted or refused) itself.
                        Ok(Some(Landed::Failed(GatewayError::RateLimited(_))))
                        | Ok(None)
                        | Err(FollowError::TimedOut) => {
                            let fetched = origin.fetch(None).await;
                            (
                                self.settle(lookup, request_headers, fetched, true).await,
                                false,
                            )
                        }
                        Ok(Some(landed)) => (Settled::from(landed), true),
                    }
                }
            };
            let (settled, collapsed) = settled;
            return self.respond(
                settled,
                &lookup,
                request_headers,
                fallback,
                (why, collapsed),
            );
        }
    }

    /// The leader's fetch, in a task of its own: if this request goes away, the answer still
    /// reaches the cache and the followers. The cluster's shared tier is asked first.
    async fn lead(
        self: &Arc<Self>,
        leader: Leader<CacheKey, Option<Landed>>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) -> Result<Settled, GatewayError> {
        let this = self.clone();
        let headers = request_headers.clone();
        let task = tokio::spawn(
            async move {
                let settled = match this.find_again(lookup, &headers).await {
                    Some((entry, tier)) => Settled::Shared(entry, tier),
                    None => {
                        this.settle(lookup, &headers, origin.fetch(None).await, true)
                            .await
                    }
                };
                leader.complete(settled.landed());
                settled
            }
            .in_current_span(),
        );
        Ok(task.await?)
    }

    /// Stale-while-revalidate: one background refresh per key, deduplicated with any fetch of
    /// the same key already in flight.
    fn refresh_in_background(
        self: &Arc<Self>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) {
        let Role::Leader(leader) = self.flights.join(lookup.key) else {
            return;
        };
        let this = self.clone();
        let headers = request_headers.clone();
        tokio::spawn(
            async move {
                let settled = this
                    .settle(lookup, &headers, origin.fetch(None).await, true)
                    .await;
                leader.complete(settled.landed());
            }
            .in_current_span(),
        );
    }

    /// Stores a fetched answer if it may be stored: its links rewritten, in the representation
    /// the client whose request fetched it prefers.
    pub(super) async fn settle(
        &self,
        lookup: Lookup,
        request_headers: &HeaderMap,
        fetched: Result<Fetched, GatewayError>,
        store: bool,
    ) -> Settled {
        let answer = match fetched {
            Err(error) => return Settled::Failed(error),
            Ok(Fetched::Streamed(response)) => return Settled::Streamed(response),
            Ok(Fetched::Undeliverable(error)) => return Settled::Undeliverable(error),
            Ok(Fetched::Buffered(answer)) => answer,
        };
        let lifetime = match self.lifetime_for(&answer, &lookup) {
            Some(lifetime) if store => lifetime,
            _ => return Settled::Answer(Arc::new(answer)),
        };
        self.store(lookup, request_headers, answer, lifetime, |entry| entry)
            .await
    }

    /// Stores `answer` under `lookup`'s key for `lifetime` (in memory, and in the cluster's
    /// tier), its links rewritten, in the representation the client whose request fetched it
    /// prefers; `made` finishes the entry (a refresh's carries its key's history).
    pub(super) async fn store(
        &self,
        lookup: Lookup,
        request_headers: &HeaderMap,
        answer: Buffered,
        lifetime: Lifetime,
        made: impl FnOnce(Entry) -> Entry,
    ) -> Settled {
        let mut answer = answer;
        if let Some(rewritten) = self.links.rewrite(answer.body()) {
            answer.set_body(rewritten);
        }
        let keep = Accepts::of(request_headers).preferred();
        let exchange = exchange_ids(&answer.headers);
        let entry = Arc::new(made(Entry::new(
            answer,
            request_headers,
            lifetime,
            lookup.shared,
            keep,
        )));
        self.memory.insert(lookup.key, entry.clone());
        self.metrics.stored(lookup.route, 1);
        if let Some(shared) = &self.shared {
            shared
                .set(&lookup.key, entry.encode(), entry.retention())
                .await;
        }
        Settled::Stored(entry, exchange)
    }

    /// What a leader finds before it fetches: a fresh entry that another leader stored in
    /// memory after this request looked (its flight had ended by the time this one began), or
    /// one in the cluster's shared tier.
    async fn find_again(
        &self,
        lookup: Lookup,
        request_headers: &HeaderMap,
    ) -> Option<(Arc<Entry>, Tier)> {
        if let Some(entry) = self.memory.get(&lookup.key)
            && entry.is_fresh(Instant::now())
            && entry.matches_vary(request_headers)
        {
            return Some((entry, Tier::Memory));
        }
        let entry = self.find_shared(lookup, request_headers).await?;
        Some((entry, Tier::Cluster))
    }

    /// The cluster's copy of an entry this replica does not hold, if fresh and of this
    /// request's variant; kept in L1 too.
    pub(super) async fn find_shared(
        &self,
        lookup: Lookup,
        request_headers: &HeaderMap,
    ) -> Option<Arc<Entry>> {
        let shared = self.shared.as_ref()?;
        let entry = Entry::decode(&shared.get(&lookup.key).await?)?;
        if !entry.is_fresh(Instant::now()) || !entry.matches_vary(request_headers) {
            return None;
        }
        let entry = Arc::new(entry);
        self.memory.insert(lookup.key, entry.clone());
        Some(entry)
    }

    /// How long an answer may be stored, or `None` when it may not be.
    pub(super) fn lifetime_for(&self, answer: &Buffered, lookup: &Lookup) -> Option<Lifetime> {
        if answer.headers.contains_key(header::SET_COOKIE)
            || varies_on_everything(&answer.headers)
            || answer.body().len() > self.config.max_entry_bytes
        {
            return None;
        }
        match answer.status {
            StatusCode::OK => Some(lookup.lifetime),
            StatusCode::NOT_FOUND if !lookup.shared => {
                (**self.not_found.load()).map(Lifetime::fresh_for)
            }
            _ => None,
        }
    }

    /// The answer to a read that went upstream (or waited for one that did): a stored entry,
    /// an answer that was not stored, or a failure — for which an expired entry within its
    /// stale-if-error window (`fallback`) is served instead.
    pub(super) fn respond(
        &self,
        settled: Settled,
        lookup: &Lookup,
        request_headers: &HeaderMap,
        fallback: Option<Arc<Entry>>,
        (why, collapsed): (Forward, bool),
    ) -> Result<(Response<Body>, Served), GatewayError> {
        if let (Some(status), Some(entry)) = (settled.failure(), fallback) {
            // Refused before it left (an upstream hold, a limit): no call was spent.
            let refused = matches!(&settled, Settled::Failed(error) if error.refusal().is_some());
            let saved = refused.then_some(entry.points);
            let outcome = Outcome::StaleIfError(status);
            return self.serve(lookup, entry, request_headers, outcome, saved);
        }
        let forwarded = |stored| Outcome::Forwarded {
            why,
            collapsed,
            stored,
        };
        match settled {
            Settled::Shared(entry, tier) => {
                let saved = Some(entry.points);
                let outcome = Outcome::Hit(tier);
                self.serve(lookup, entry, request_headers, outcome, saved)
            }
            Settled::Stored(entry, exchange) => {
                let saved = collapsed.then_some(entry.points);
                let (mut response, served) = self.serve(
                    lookup,
                    entry,
                    request_headers,
                    forwarded(Stored::Yes),
                    saved,
                )?;
                if !collapsed {
                    response.headers_mut().extend(exchange);
                }
                Ok((response, served))
            }
            Settled::Answer(answer) => {
                let mut response = answer.to_response(lookup.head, Accepts::of(request_headers));
                let served = Served {
                    outcome: forwarded(Stored::No),
                    saved_points: collapsed.then_some(1),
                };
                mark(&mut response, &served.outcome);
                Ok((response, served))
            }
            Settled::Streamed(mut response) => {
                let served = Served {
                    outcome: forwarded(Stored::TooLarge),
                    saved_points: None,
                };
                mark(&mut response, &served.outcome);
                Ok((response, served))
            }
            Settled::Failed(error) | Settled::Undeliverable(error) => Err(error),
        }
    }
}

/// Upstream answers that make an expired entry worth serving instead (stale-if-error).
pub(super) fn is_upstream_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}
