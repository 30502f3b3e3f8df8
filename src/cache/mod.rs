//! The response cache: per-caller GET answers in moka, invalidated by the writes that change
//! them, with coalescing and stale serving.
//!
//! The four promises and how this module keeps them:
//! 1. **No leaks.** Every key is built from a [`Partition`] (`key`): the keyed hash of the
//!    caller's whole `Authorization` value, the anonymous partition, or — only for routes the
//!    route table declares shared — everyone. JWT and cookie requests are never cached.
//!    Followers of a coalesced fetch share its key, and so its partition.
//! 2. **Read-your-writes.** A write bumps the generation of every tag it changes (`generations`)
//!    after upstream answered and *before* its response is sent. Keys include the generations
//!    their read observes, so every key — stored or still being fetched — from before the bump
//!    is unreachable afterwards; answers fetched across a write are stored under a dead key.
//!    Stale serving only ever considers entries under the current key, so an invalidated entry
//!    is never served stale.
//! 3. **One entry per key, whatever the client's encoding** (`entry`): upstream's `Vary:
//!    Accept-Encoding` never splits an entry; an entry holds the representations its clients
//!    asked for, a missing one added when first needed — stored again only in place of the
//!    very entry it was made from, so it never overwrites a newer answer.
//! 4. **Bounded.** moka weighs entries in bytes (body + headers + key + bookkeeping) against
//!    `cache.max_bytes`; answers over `max_entry_bytes` are streamed through, never buffered
//!    whole or stored. Tag generations are a fixed array; the flight map holds only fetches in
//!    progress.

mod bulk;
mod entry;
mod flights;
mod generations;
mod heads;
mod key;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use moka::future::Cache as Moka;
use tokio::time::Instant;
use tracing::Instrument as _;

pub use bulk::BulkPlan;
pub use entry::{
    Buffered, CACHE_STATUS, Entry, Lifetime, add_vary_accept_encoding, varies_on_everything,
};
use flights::{Flights, FollowError, Role, follow};
use generations::Generations;
pub use key::{Bypass, CacheKey, Partition};

use crate::body::Body;
use crate::cluster::{Cluster, Confirmation, Listener};
use crate::coding::{Accepts, Coding};
use crate::config::CacheConfig;
use crate::error::GatewayError;
use crate::forward::list_tokens;
use crate::links::Links;
use crate::metrics::{CacheLabel, Metrics, quota_points};
use crate::routes::{Resolved, Route, Tag};

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

/// What a leader's fetch leaves for the requests that followed it.
#[derive(Clone)]
enum Outcome {
    Stored(Arc<Entry>),
    /// A bounded answer that may not be stored (an error status), shared with followers of
    /// the same key — the same caller.
    Answer(Arc<Buffered>),
    Failed(GatewayError),
    /// Streamed to the leader alone (or not deliverable to it); followers fetch for
    /// themselves.
    Streamed,
}

/// A request's cache directives (`Cache-Control` / `Pragma` request headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Normal,
    /// `no-cache` (or `max-age=0`): go upstream, then refresh the entry.
    NoCache,
    /// `no-store`: go upstream, store nothing.
    NoStore,
}

impl Directive {
    fn of(headers: &HeaderMap) -> Directive {
        let mut directive = Directive::Normal;
        let tokens = list_tokens(headers, &header::CACHE_CONTROL)
            .chain(list_tokens(headers, &header::PRAGMA))
            .map(str::to_ascii_lowercase);
        for token in tokens {
            match token.as_str() {
                "no-store" => return Directive::NoStore,
                "no-cache" | "max-age=0" => directive = Directive::NoCache,
                _ => {}
            }
        }
        directive
    }
}

/// A GET that the cache may answer.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    key: CacheKey,
    partition: Partition,
    generations: [u64; 3],
    route: Route,
    head: bool,
    shared: bool,
    lifetime: Lifetime,
    directive: Directive,
}

/// Counters for `/admin/cache/stats`.
#[derive(Default)]
struct Stats {
    hits: AtomicU64,
    misses: AtomicU64,
    stored: AtomicU64,
    coalesced: AtomicU64,
    stale: AtomicU64,
    bypassed: AtomicU64,
    invalidations: AtomicU64,
}

pub struct Cache {
    store: Moka<CacheKey, Arc<Entry>>,
    generations: Generations,
    flights: Flights<CacheKey, Outcome>,
    config: CacheConfig,
    /// Redis, in multi-replica mode.
    cluster: Option<Arc<Cluster>>,
    /// Per-route TTLs and stale windows; replaced by a reload.
    routes: arc_swap::ArcSwap<crate::config::RoutePolicies>,
    /// `_links` rewriting to `server.public_url`.
    links: Arc<Links>,
    secret: [u8; 32],
    stats: Stats,
}

/// moka keeps each entry for what is left of its retention (TTL plus its longest stale
/// window): an entry from L2, or one stored again with another representation, is older than
/// its insertion.
struct Retention;

impl moka::Expiry<CacheKey, Arc<Entry>> for Retention {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        entry: &Arc<Entry>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.remaining_retention(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.remaining_retention(Instant::now()))
    }
}

impl Cache {
    /// `secret` keys the partition hash (see [`partition_secret`]).
    pub fn new(
        config: &CacheConfig,
        links: Arc<Links>,
        secret: [u8; 32],
        metrics: Arc<Metrics>,
    ) -> Cache {
        let store = Moka::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_, entry: &Arc<Entry>| entry.weight())
            .expire_after(Retention)
            .eviction_listener(move |_, _, cause| {
                use moka::notification::RemovalCause;
                metrics.eviction(match cause {
                    RemovalCause::Expired => "expired",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => "replaced",
                    RemovalCause::Size => "size",
                });
            })
            .build();
        Cache {
            store,
            generations: Generations::default(),
            flights: Flights::default(),
            config: config.clone(),
            routes: arc_swap::ArcSwap::from_pointee(config.routes.clone()),
            links,
            cluster: None,
            secret,
            stats: Stats::default(),
        }
    }

    /// The largest answer that is buffered and may be stored.
    pub fn max_entry_bytes(&self) -> usize {
        self.config.max_entry_bytes
    }

    /// Replaces the per-route policies (SIGHUP). Entries already stored keep the lifetime they
    /// were stored with.
    pub fn reload_policies(&self, routes: crate::config::RoutePolicies) {
        self.routes.store(Arc::new(routes));
    }

    /// Joins a cluster: generations of resource tags and a second cache tier in Redis.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Cache {
        self.cluster = cluster;
        self
    }

    /// Classifies a GET or HEAD: the key it is answered under, or why it bypasses the cache.
    pub async fn lookup(
        &self,
        resolved: &Resolved<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Lookup, Bypass> {
        let route = resolved.route();
        let policy = *self.routes.load().get(route);
        if !self.config.enabled || policy.ttl.is_zero() {
            return Err(Bypass::Disabled);
        }
        let shared = route.is_shared();
        let partition = if shared {
            Partition::Shared
        } else {
            Partition::of(headers, &self.secret)?
        };
        let resource = match (resolved.resource_tag(), &self.cluster) {
            (None, _) => 0,
            (Some(tag), None) => self.generations.get(&tag),
            // Writes through any replica bump this counter in Redis; a replica that cannot
            // read it cannot know about them, and does not cache the route meanwhile.
            // Boxed: a Redis round trip's future is large, and would otherwise make every
            // request's future (moved several times per request) as large.
            (Some(tag), Some(cluster)) => Box::pin(cluster.generation(generations::slot(&tag)))
                .await
                .ok_or(Bypass::ClusterDown)?,
        };
        let generations = [
            self.generations.epoch(),
            self.generations.route(route),
            resource,
        ];
        Ok(Lookup {
            key: CacheKey::new(partition, resolved, query, &generations),
            partition,
            generations,
            route,
            head: resolved.head,
            shared,
            lifetime: Lifetime {
                ttl: policy.ttl,
                stale_if_error: policy.stale_if_error,
                stale_while_revalidate: policy.stale_while_revalidate,
            },
            directive: Directive::of(headers),
        })
    }

    /// Counts a request that bypassed the cache.
    pub fn note_bypass(&self) {
        self.stats.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    /// Invalidates every cached read that observed one of `tags` (a write's resource tags),
    /// for every caller — on every replica, when in a cluster (the tag's counter in Redis,
    /// which every replica reads when it looks such a read up).
    pub async fn invalidate(&self, tags: &[Tag]) {
        for tag in tags {
            self.generations.bump(tag);
        }
        self.stats
            .invalidations
            .fetch_add(tags.len() as u64, Ordering::Relaxed);
        if let Some(cluster) = &self.cluster {
            let slots: Vec<usize> = tags.iter().map(generations::slot).collect();
            if !slots.is_empty() && !cluster.bump(&slots).await {
                tracing::warn!(
                    "a write's invalidation could not reach redis; other replicas learn of it by TTL"
                );
            }
        }
    }

    /// An operator's purge, of everything (`None`) or of one tag, on every replica: answered
    /// once every live replica applied it (fetches in flight land under dead keys).
    pub async fn purge(&self, tag: Option<&Tag>) -> Purge {
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        let field = match tag {
            None => "epoch".to_owned(),
            Some(Tag::Route(route)) => format!("route:{}", route.name()),
            // A resource tag's counter is read from Redis by every lookup: in force at once.
            Some(tag) => {
                self.invalidate(std::slice::from_ref(tag)).await;
                return match &self.cluster {
                    None => Purge::Done,
                    Some(cluster) => match cluster.is_up() {
                        true => Purge::Done,
                        false => Purge::ThisReplicaOnly,
                    },
                };
            }
        };
        let Some(cluster) = &self.cluster else {
            self.bump_local(&field);
            return Purge::Done;
        };
        let Some((value, number)) = cluster.purge(&field).await else {
            // Redis unreachable: this replica at least; its next sync tells the others.
            self.bump_local(&field);
            return Purge::ThisReplicaOnly;
        };
        self.adopt(&[(field, value)]);
        cluster.applied(number).await;
        let deadline = Instant::now() + cluster.confirm_within();
        match cluster.confirm(number, deadline).await {
            Some(confirmation) => Purge::Confirmed(confirmation),
            None => Purge::ThisReplicaOnly,
        }
    }

    /// Bumps a shared generation on this replica alone (no cluster, or Redis unreachable).
    fn bump_local(&self, field: &str) {
        match route_field(field) {
            Some(route) => self.generations.bump(&Tag::Route(route)),
            None => {
                self.generations.bump_epoch();
                self.store.invalidate_all();
            }
        }
    }

    /// The answer of a fresh entry in this replica's memory, if there is one: the hit path,
    /// which needs nothing a miss would (no upstream request, no copies of the request).
    /// `None` sends the request on to [`Cache::read`]. What was served comes back beside the
    /// response rather than in its extensions (which would cost allocations on every hit).
    pub async fn hit(
        &self,
        lookup: &Lookup,
        request_headers: &HeaderMap,
    ) -> Option<(Response<Body>, Served)> {
        if lookup.directive != Directive::Normal {
            return None;
        }
        let entry = self.store.get(&lookup.key).await?;
        if !entry.matches_vary(request_headers) || !entry.is_fresh(Instant::now()) {
            return None;
        }
        let status = HeaderValue::from_static("wikigate; hit");
        let response = self
            .answer(lookup, entry.clone(), request_headers, status)
            .await
            .ok()?;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        let served = Served {
            cache: CacheLabel::Hit,
            saved_points: Some(entry.points),
        };
        Some((response, served))
    }

    /// Serves `entry` (stored under `lookup`'s key) to a request: in a representation the
    /// request accepts, which the entry gains first if it holds none yet.
    async fn answer(
        &self,
        lookup: &Lookup,
        entry: Arc<Entry>,
        request_headers: &HeaderMap,
        status: HeaderValue,
    ) -> Result<Response<Body>, GatewayError> {
        let missing = match entry.respond(request_headers, lookup.head, status.clone()) {
            Ok(response) => return Ok(response),
            Err(missing) => missing,
        };
        let fuller = self.add_representation(lookup.key, &entry, missing).await?;
        fuller
            .respond(request_headers, lookup.head, status)
            .map_err(|_| {
                GatewayError::UpstreamProtocol("a stored answer has no representation".to_owned())
            })
    }

    /// `entry` with `coding`'s representation added, stored in its place (weighed anew, with
    /// the retention it had left) unless another answer replaced it meanwhile.
    async fn add_representation(
        &self,
        key: CacheKey,
        entry: &Arc<Entry>,
        coding: Coding,
    ) -> Result<Arc<Entry>, GatewayError> {
        let fuller = Arc::new(
            entry
                .with_representation(coding, self.config.max_entry_bytes)
                .map_err(|e| {
                    GatewayError::UpstreamProtocol(format!(
                        "a stored gzip body cannot be decoded: {e}"
                    ))
                })?,
        );
        let (read, replacement) = (entry.clone(), fuller.clone());
        self.store
            .entry(key)
            .and_compute_with(move |current| {
                let op = match current {
                    Some(current) if Arc::ptr_eq(current.value(), &read) => {
                        moka::ops::compute::Op::Put(replacement)
                    }
                    _ => moka::ops::compute::Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        Ok(fuller)
    }

    /// Answers a cacheable read: from the cache, by joining an identical fetch in flight, or by
    /// fetching with `fetch` (which must ask upstream for the GET, also for HEAD requests).
    pub async fn read<F, Fut>(
        self: &Arc<Self>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        fetch: F,
    ) -> Result<Response<Body>, GatewayError>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Fetched, GatewayError>> + Send + 'static,
    {
        let key = lookup.key;
        let mut stale = None;
        if lookup.directive == Directive::Normal
            && let Some(entry) = self.store.get(&key).await
            && entry.matches_vary(request_headers)
        {
            let now = Instant::now();
            if entry.is_fresh(now) {
                let status = HeaderValue::from_static("wikigate; hit");
                let response = self
                    .answer(&lookup, entry.clone(), request_headers, status)
                    .await?;
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(served(response, CacheLabel::Hit, Some(entry.points)));
            }
            if entry.may_revalidate_in_background(now) {
                self.refresh_in_background(lookup, request_headers, fetch);
                self.stats.stale.fetch_add(1, Ordering::Relaxed);
                let status =
                    HeaderValue::from_static("wikigate; hit; detail=stale-while-revalidate");
                let response = self
                    .answer(&lookup, entry.clone(), request_headers, status)
                    .await?;
                return Ok(served(
                    response,
                    CacheLabel::StaleWhileRevalidate,
                    Some(entry.points),
                ));
            }
            if entry.may_serve_on_error(now) {
                stale = Some(entry);
            }
        }

        if lookup.directive != Directive::Normal {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let store = lookup.directive == Directive::NoCache;
            let outcome = self
                .settle(lookup, request_headers, fetch().await, store)
                .await;
            return self
                .respond(outcome, lookup, request_headers, stale, Path::Request)
                .await;
        }

        loop {
            match self.flights.join(key) {
                Role::Leader(leader) => {
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    // The fetch runs in a task of its own: if this request goes away, the
                    // answer still reaches the cache and the followers.
                    let this = self.clone();
                    let headers = request_headers.clone();
                    let task = tokio::spawn(
                        async move {
                            let mine = match this.look_in_l2(lookup, &headers).await {
                                Some(entry) => LeaderResult::L2(entry),
                                None => this.settle(lookup, &headers, fetch().await, true).await,
                            };
                            leader.complete(mine.shared());
                            mine
                        }
                        .in_current_span(),
                    );
                    let mine = task.await?;
                    let path = if stale.is_some() {
                        Path::Refetch
                    } else {
                        Path::Miss
                    };
                    return self
                        .respond(mine, lookup, request_headers, stale, path)
                        .await;
                }
                Role::Follower(receiver) => {
                    match follow(receiver, self.config.coalesce_timeout).await {
                        // A leader refused by its own caller's limits says nothing about this
                        // request's limits: it fetches (and is admitted or refused) itself.
                        Ok(Outcome::Streamed)
                        | Ok(Outcome::Failed(GatewayError::RateLimited(_)))
                        | Err(FollowError::TimedOut) => {
                            self.stats.misses.fetch_add(1, Ordering::Relaxed);
                            let mine = self
                                .settle(lookup, request_headers, fetch().await, true)
                                .await;
                            return self
                                .respond(mine, lookup, request_headers, stale, Path::Miss)
                                .await;
                        }
                        Err(FollowError::Abandoned) => continue,
                        Ok(outcome) => {
                            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                            let mine = LeaderResult::from(outcome);
                            return self
                                .respond(mine, lookup, request_headers, stale, Path::Collapsed)
                                .await;
                        }
                    }
                }
            }
        }
    }

    /// Stale-while-revalidate: one background refresh per key, deduplicated with any fetch of
    /// the same key already in flight.
    fn refresh_in_background<F, Fut>(
        self: &Arc<Self>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        fetch: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, GatewayError>> + Send + 'static,
    {
        let Role::Leader(leader) = self.flights.join(lookup.key) else {
            return;
        };
        let this = self.clone();
        let headers = request_headers.clone();
        tokio::spawn(
            async move {
                let outcome = this.settle(lookup, &headers, fetch().await, true).await;
                leader.complete(outcome.shared());
            }
            .in_current_span(),
        );
    }

    /// Stores a fetched answer if it may be stored: its links rewritten, in the representation
    /// the client whose request fetched it prefers.
    async fn settle(
        &self,
        lookup: Lookup,
        request_headers: &HeaderMap,
        fetched: Result<Fetched, GatewayError>,
        store: bool,
    ) -> LeaderResult {
        let answer = match fetched {
            Err(error) => return LeaderResult::Failed(error),
            Ok(Fetched::Streamed(response)) => return LeaderResult::Streamed(response),
            Ok(Fetched::Undeliverable(error)) => return LeaderResult::Undeliverable(error),
            Ok(Fetched::Buffered(answer)) => answer,
        };
        let lifetime = match self.lifetime_for(&answer, lookup) {
            Some(lifetime) if store => lifetime,
            _ => return LeaderResult::Answer(Arc::new(answer)),
        };
        let mut answer = answer;
        if let Some(rewritten) = self.links.rewrite(answer.body()) {
            answer.set_body(rewritten);
        }
        let points = quota_points(lookup.route, answer.body());
        let keep = Accepts::of(request_headers).preferred();
        let entry = Arc::new(Entry::new(
            answer,
            request_headers,
            lifetime,
            lookup.shared,
            points,
            keep,
        ));
        self.store.insert(lookup.key, entry.clone()).await;
        self.stats.stored.fetch_add(1, Ordering::Relaxed);
        if let Some(cluster) = &self.cluster {
            cluster
                .set(lookup.key.as_bytes(), entry.encode(), entry.retention())
                .await;
        }
        LeaderResult::Stored(entry)
    }

    /// The cluster's copy of an entry this replica does not hold, if fresh and of this
    /// request's variant; kept in L1 too.
    async fn look_in_l2(&self, lookup: Lookup, request_headers: &HeaderMap) -> Option<Arc<Entry>> {
        let cluster = self.cluster.as_ref()?;
        let entry = Entry::decode(&cluster.get(lookup.key.as_bytes()).await?)?;
        if !entry.is_fresh(Instant::now()) || !entry.matches_vary(request_headers) {
            return None;
        }
        let entry = Arc::new(entry);
        self.store.insert(lookup.key, entry.clone()).await;
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Some(entry)
    }

    /// How long an answer may be stored, or `None` when it may not be.
    fn lifetime_for(&self, answer: &Buffered, lookup: Lookup) -> Option<Lifetime> {
        if answer.headers.contains_key(header::SET_COOKIE)
            || varies_on_everything(&answer.headers)
            || answer.body().len() > self.config.max_entry_bytes
        {
            return None;
        }
        match answer.status {
            StatusCode::OK => Some(lookup.lifetime),
            StatusCode::NOT_FOUND if self.config.cache_not_found && !lookup.shared => {
                Some(Lifetime {
                    ttl: self.config.not_found_ttl,
                    stale_if_error: Duration::ZERO,
                    stale_while_revalidate: Duration::ZERO,
                })
            }
            _ => None,
        }
    }

    /// The response for a read's result; serves `stale` instead of an upstream failure.
    async fn respond(
        &self,
        result: LeaderResult,
        lookup: Lookup,
        request_headers: &HeaderMap,
        stale: Option<Arc<Entry>>,
        path: Path,
    ) -> Result<Response<Body>, GatewayError> {
        let failure_status = match &result {
            LeaderResult::Failed(_) => Some(None),
            LeaderResult::Answer(answer) if is_upstream_failure(answer.status) => {
                Some(Some(answer.status))
            }
            _ => None,
        };
        if let (Some(fwd_status), Some(entry)) = (failure_status, stale) {
            self.stats.stale.fetch_add(1, Ordering::Relaxed);
            let status = match fwd_status {
                Some(code) => format!(
                    "wikigate; fwd=stale; fwd-status={}; detail=stale-if-error",
                    code.as_u16()
                ),
                None => "wikigate; fwd=stale; detail=stale-if-error".to_owned(),
            };
            // Refused before it left (an upstream hold, a limit): no call was spent.
            let saved = matches!(result, LeaderResult::Failed(GatewayError::RateLimited(_)))
                .then_some(entry.points);
            let response = self
                .answer(&lookup, entry, request_headers, status_value(status))
                .await?;
            return Ok(served(response, CacheLabel::StaleIfError, saved));
        }
        let (label, saved) = match (path, &result) {
            (_, LeaderResult::L2(entry)) => (CacheLabel::Hit, Some(entry.points)),
            (Path::Collapsed, LeaderResult::Stored(entry)) => {
                (CacheLabel::Coalesced, Some(entry.points))
            }
            (Path::Collapsed, _) => (CacheLabel::Coalesced, Some(1)),
            (Path::Request, _) => (CacheLabel::Request, None),
            _ => (CacheLabel::Miss, None),
        };
        let fwd = path.fwd();
        let response = match result {
            LeaderResult::L2(entry) => {
                let status = HeaderValue::from_static("wikigate; hit; detail=l2");
                self.answer(&lookup, entry, request_headers, status).await?
            }
            LeaderResult::Stored(entry) => {
                let status = status_value(format!("wikigate; {fwd}; stored"));
                self.answer(&lookup, entry, request_headers, status).await?
            }
            LeaderResult::Answer(answer) => {
                let mut response = answer.to_response(lookup.head, Accepts::of(request_headers));
                set_status(&mut response, &format!("wikigate; {fwd}"));
                response
            }
            LeaderResult::Streamed(mut response) => {
                set_status(&mut response, &format!("wikigate; {fwd}; detail=too-large"));
                response
            }
            LeaderResult::Failed(error) | LeaderResult::Undeliverable(error) => {
                return Err(error);
            }
        };
        Ok(served(response, label, saved))
    }

    /// Entries, weighted bytes and the budget, after moka has applied pending evictions.
    pub async fn size(&self) -> (u64, u64, u64) {
        self.store.run_pending_tasks().await;
        (
            self.store.entry_count(),
            self.store.weighted_size(),
            self.config.max_bytes,
        )
    }

    /// Counters and sizes, after moka has applied pending evictions.
    pub async fn stats(&self) -> serde_json::Value {
        self.store.run_pending_tasks().await;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "entries": self.store.entry_count(),
            "weighted_bytes": self.store.weighted_size(),
            "max_bytes": self.config.max_bytes,
            "hits": get(&self.stats.hits),
            "misses": get(&self.stats.misses),
            "stored": get(&self.stats.stored),
            "coalesced": get(&self.stats.coalesced),
            "stale": get(&self.stats.stale),
            "bypassed": get(&self.stats.bypassed),
            "invalidations": get(&self.stats.invalidations),
        })
    }
}

impl Listener for Cache {
    fn generations(&self) -> Vec<(String, u64)> {
        let routes = Route::ALL.into_iter().map(|route| {
            (
                format!("route:{}", route.name()),
                self.generations.route(route),
            )
        });
        std::iter::once(("epoch".to_owned(), self.generations.epoch()))
            .chain(routes)
            .collect()
    }

    fn adopt(&self, generations: &[(String, u64)]) {
        for (field, value) in generations {
            match route_field(field) {
                // A route's dead entries age out, as a write's do.
                Some(route) => {
                    self.generations.raise_route(route, *value);
                }
                // A new epoch leaves nothing reachable: free the memory now.
                None if field == "epoch" && self.generations.raise_epoch(*value) => {
                    self.store.invalidate_all();
                }
                None => {}
            }
        }
    }
}

/// The route a shared generation's field (`route:NAME`) names.
fn route_field(field: &str) -> Option<Route> {
    Route::named(field.strip_prefix("route:")?)
}

/// What an operator's purge reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purge {
    /// Everywhere the cache lives (this replica; or, for a resource tag, every replica, which
    /// read its counter from Redis).
    Done,
    /// Every live replica applied it — or not all of them in time.
    Confirmed(Confirmation),
    /// Redis is unreachable: this replica only; the others learn of it when it reconnects.
    ThisReplicaOnly,
}

/// What this request got from its own fetch (or from its leader's).
enum LeaderResult {
    Stored(Arc<Entry>),
    /// Found in the cluster's L2: a hit, without an upstream call.
    L2(Arc<Entry>),
    Answer(Arc<Buffered>),
    Streamed(Response<Body>),
    /// An answer for this request alone, which it cannot be given.
    Undeliverable(GatewayError),
    Failed(GatewayError),
}

impl LeaderResult {
    fn shared(&self) -> Outcome {
        match self {
            LeaderResult::Stored(entry) | LeaderResult::L2(entry) => Outcome::Stored(entry.clone()),
            LeaderResult::Answer(answer) => Outcome::Answer(answer.clone()),
            LeaderResult::Streamed(_) | LeaderResult::Undeliverable(_) => Outcome::Streamed,
            LeaderResult::Failed(error) => Outcome::Failed(error.clone()),
        }
    }
}

impl From<Outcome> for LeaderResult {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Stored(entry) => LeaderResult::Stored(entry),
            Outcome::Answer(answer) => LeaderResult::Answer(answer),
            Outcome::Failed(error) => LeaderResult::Failed(error),
            Outcome::Streamed => unreachable!("followers of a streamed answer fetch themselves"),
        }
    }
}

/// How a read reached upstream (or its leader did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Miss,
    /// An expired entry was kept for stale-if-error while fetching anew.
    Refetch,
    /// The request's own `Cache-Control` sent it upstream.
    Request,
    /// It waited for an identical fetch.
    Collapsed,
}

impl Path {
    fn fwd(self) -> &'static str {
        match self {
            Path::Miss => "fwd=miss",
            Path::Refetch => "fwd=stale",
            Path::Request => "fwd=request",
            Path::Collapsed => "fwd=miss; collapsed",
        }
    }
}

/// What the cache did for a response, attached to it as an extension for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub cache: CacheLabel,
    /// Atlassian quota points saved when the answer needed no upstream call of its own.
    pub saved_points: Option<u32>,
}

fn served(
    mut response: Response<Body>,
    cache: CacheLabel,
    saved_points: Option<u32>,
) -> Response<Body> {
    response.extensions_mut().insert(Served {
        cache,
        saved_points,
    });
    response
}

/// Upstream answers that make an expired entry worth serving instead (stale-if-error).
fn is_upstream_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// A `Cache-Status` value wikigate composed (of its own ASCII words).
fn status_value(status: String) -> HeaderValue {
    HeaderValue::try_from(status).unwrap_or_else(|_| HeaderValue::from_static("wikigate"))
}

/// Sets `Cache-Status` on a response the cache did not build.
pub fn set_status(response: &mut Response<Body>, status: &str) {
    if let Ok(value) = HeaderValue::from_str(status) {
        response.headers_mut().insert(CACHE_STATUS.clone(), value);
    }
}

/// The key of the credential hash that partitions the cache (and identifies callers):
/// derived from `cache.key_secret`, or random for this process.
pub fn partition_secret(config: &CacheConfig) -> [u8; 32] {
    match &config.key_secret {
        Some(secret) => {
            blake3::derive_key("wikigate cache partition v1", secret.expose().as_bytes())
        }
        None => random_secret(),
    }
}

/// A fresh random key, for processes that were not given one.
fn random_secret() -> [u8; 32] {
    use ring::rand::SecureRandom as _;
    let mut secret = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut secret)
        .expect("the operating system provides randomness");
    secret
}
