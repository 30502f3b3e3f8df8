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
mod etag;
mod flights;
mod generations;
mod heads;
mod key;
mod outcome;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode, header};
use moka::sync::Cache as Moka;
use tokio::time::Instant;
use tracing::Instrument as _;

pub use bulk::BulkPlan;
use entry::exchange_ids;
pub use entry::{
    Buffered, CACHE_STATUS, Entry, Lifetime, add_vary_accept_encoding, varies_on_everything,
};
use flights::{Flights, FollowError, Leader, Role, follow};
use generations::Generations;
pub use key::{Bypass, CacheKey, Partition};
pub use outcome::{Forward, Outcome, Served, Stored, Tier};

use crate::body::Body;
use crate::caller::Credential;
use crate::cluster::{Cluster, Confirmation, Listener};
use crate::coding::{Accepts, Coding};
use crate::config::{CacheConfig, RoutePolicy};
use crate::error::GatewayError;
use crate::forward::list_tokens;
use crate::links::Links;
use crate::metrics::{CacheStats, Metrics};
use crate::quota::Quota;
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

/// What a read's fetch came to, for the request that made it.
enum Fetch {
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
enum Landed {
    Stored(Arc<Entry>),
    Answer(Arc<Buffered>),
    Failed(GatewayError),
}

impl Fetch {
    fn landed(&self) -> Option<Landed> {
        match self {
            Fetch::Stored(entry, _) | Fetch::Shared(entry, _) => {
                Some(Landed::Stored(entry.clone()))
            }
            Fetch::Answer(answer) => Some(Landed::Answer(answer.clone())),
            Fetch::Failed(error) => Some(Landed::Failed(error.clone())),
            Fetch::Streamed(_) | Fetch::Undeliverable(_) => None,
        }
    }

    /// Whether upstream failed (an error status worth falling back on, or no answer); the
    /// status when there was one.
    fn failure(&self) -> Option<Option<StatusCode>> {
        match self {
            Fetch::Failed(_) => Some(None),
            Fetch::Answer(answer) if is_upstream_failure(answer.status) => {
                Some(Some(answer.status))
            }
            _ => None,
        }
    }
}

impl From<Landed> for Fetch {
    fn from(landed: Landed) -> Fetch {
        match landed {
            Landed::Stored(entry) => Fetch::Stored(entry, HeaderMap::new()),
            Landed::Answer(answer) => Fetch::Answer(answer),
            Landed::Failed(error) => Fetch::Failed(error),
        }
    }
}

/// What the one lookup of a read found in this replica's memory.
pub enum Found {
    /// A fresh entry: the hit path answers it.
    Fresh(Arc<Entry>),
    /// Expired, within stale-while-revalidate: answered at once, refreshed in the background.
    Revalidate(Arc<Entry>),
    /// Expired, within stale-on-low-quota while the site's quota is low: answered at once,
    /// nothing spent.
    SpareQuota(Arc<Entry>),
    /// Nothing to answer with: fetch. `fallback` is an expired entry within stale-if-error,
    /// served if upstream fails.
    Missing { fallback: Option<Arc<Entry>> },
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

/// Where the generation of a read's resource tag is kept.
enum Resource<'a> {
    Here(u64),
    /// In a cluster: in Redis, in this slot.
    InRedis(&'a Cluster, usize),
}

/// A GET that the cache may answer.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    key: CacheKey,
    partition: Partition,
    /// The epoch, the route's generation, and the resource's: its era and counter.
    generations: [u64; 4],
    route: Route,
    head: bool,
    shared: bool,
    lifetime: Lifetime,
    directive: Directive,
}

pub struct Cache {
    store: Moka<CacheKey, Arc<Entry>>,
    generations: Generations,
    flights: Flights<CacheKey, Option<Landed>>,
    /// What of `[cache]` is fixed until a restart; the reloadable parts are `routes` and
    /// `not_found`.
    config: Settings,
    /// Redis, in multi-replica mode.
    cluster: Option<Arc<Cluster>>,
    /// Per-route TTLs and stale windows; replaced by a reload.
    routes: arc_swap::ArcSwap<crate::config::RoutePolicies>,
    /// How long a 404 is kept (`cache.cache_not_found`, `not_found_ttl`); `None`: not at all.
    /// Replaced by a reload.
    not_found: arc_swap::ArcSwap<Option<Duration>>,
    /// `_links` rewriting to `server.public_url`.
    links: Arc<Links>,
    secret: [u8; 32],
    metrics: Arc<Metrics>,
    /// The site's quota: while it is low, expired entries stand in for upstream calls
    /// (`stale_on_low_quota`).
    quota: Arc<Quota>,
}

/// The settings of `[cache]` a reload does not change.
#[derive(Debug, Clone, Copy)]
struct Settings {
    enabled: bool,
    max_bytes: u64,
    max_entry_bytes: usize,
    coalesce_timeout: Duration,
    bulk_entities: bool,
    negative_ttl: Duration,
}

impl Settings {
    fn of(config: &CacheConfig) -> Settings {
        Settings {
            enabled: config.enabled,
            max_bytes: config.max_bytes,
            max_entry_bytes: config.max_entry_bytes,
            coalesce_timeout: config.coalesce_timeout,
            bulk_entities: config.bulk_entities,
            negative_ttl: config.negative_ttl,
        }
    }
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
    /// `secret` keys the partition hash (see [`partition_secret`]); `metrics` counts what the
    /// cache does; `quota` is the site's standing, which `stale_on_low_quota` reads.
    pub fn new(
        config: &CacheConfig,
        links: Arc<Links>,
        secret: [u8; 32],
        metrics: Arc<Metrics>,
        quota: Arc<Quota>,
    ) -> Cache {
        let evictions = metrics.clone();
        let store = Moka::builder()
            .max_capacity(config.max_bytes)
            .weigher(|_, entry: &Arc<Entry>| entry.weight())
            .expire_after(Retention)
            .eviction_listener(move |_, _, cause| {
                use moka::notification::RemovalCause;
                evictions.eviction(match cause {
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
            config: Settings::of(config),
            routes: arc_swap::ArcSwap::from_pointee(config.routes.clone()),
            not_found: arc_swap::ArcSwap::from_pointee(not_found(config)),
            links,
            cluster: None,
            secret,
            metrics,
            quota,
        }
    }

    /// The largest answer that is buffered and may be stored.
    pub fn max_entry_bytes(&self) -> usize {
        self.config.max_entry_bytes
    }

    /// Replaces the per-route policies and the keeping of 404s (SIGHUP). Entries already stored
    /// keep the lifetime they were stored with.
    pub fn reload_policies(&self, config: &CacheConfig) {
        self.routes.store(Arc::new(config.routes.clone()));
        self.not_found.store(Arc::new(not_found(config)));
    }

    /// Joins a cluster: generations of resource tags and a second cache tier in Redis.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Cache {
        self.cluster = cluster;
        self
    }

    /// Classifies a GET or HEAD: the key it is answered under, or why it bypasses the cache.
    /// `credential`: the hash of the credential `headers` carry, when it was made already.
    pub async fn lookup(
        &self,
        resolved: &Resolved<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
        credential: Option<Credential>,
    ) -> Result<Lookup, Bypass> {
        let class = self.classify(resolved, headers, credential)?;
        let resource = match self.resource(resolved) {
            Resource::Here(generation) => [0, generation],
            // Writes through any replica bump this counter in Redis; a replica that cannot
            // read it cannot know about them, and does not cache the route meanwhile. The
            // counter must be of the era the key names: one read across a reconnect (which
            // moves the era on) could be a counter Redis has since lost.
            Resource::InRedis(cluster, slot) => {
                let era = self.generations.era();
                let counter = Box::pin(cluster.generation(slot))
                    .await
                    .ok_or(Bypass::ClusterDown)?;
                if self.generations.era() != era {
                    return Err(Bypass::ClusterDown);
                }
                [era, counter]
            }
        };
        Ok(self.lookup_of(resolved, headers, query, class, resource))
    }

    /// [`Cache::lookup`] on this replica alone, without waiting: `None` when the key needs a
    /// generation that lives in Redis.
    pub fn lookup_here(
        &self,
        resolved: &Resolved<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
        credential: Option<Credential>,
    ) -> Option<Result<Lookup, Bypass>> {
        let Resource::Here(resource) = self.resource(resolved) else {
            return None;
        };
        let class = self.classify(resolved, headers, credential);
        Some(class.map(|class| self.lookup_of(resolved, headers, query, class, [0, resource])))
    }

    /// Whose answer a read is and its route's policy, or why it bypasses the cache.
    fn classify(
        &self,
        resolved: &Resolved<'_>,
        headers: &HeaderMap,
        credential: Option<Credential>,
    ) -> Result<(Partition, RoutePolicy), Bypass> {
        let route = resolved.route();
        let policy = *self.routes.load().get(route);
        if !self.config.enabled || policy.ttl.is_zero() {
            return Err(Bypass::Disabled);
        }
        let partition = match route.is_shared() {
            true => Partition::Shared,
            false => Partition::of(headers, &self.secret, credential)?,
        };
        Ok((partition, policy))
    }

    /// The generation of the read's resource tag (0 without one).
    fn resource(&self, resolved: &Resolved<'_>) -> Resource<'_> {
        match (resolved.resource_tag(), &self.cluster) {
            (None, _) => Resource::Here(0),
            (Some(tag), None) => Resource::Here(self.generations.get(&tag)),
            (Some(tag), Some(cluster)) => Resource::InRedis(cluster, generations::slot(&tag)),
        }
    }

    fn lookup_of(
        &self,
        resolved: &Resolved<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
        (partition, policy): (Partition, RoutePolicy),
        [era, resource]: [u64; 2],
    ) -> Lookup {
        let route = resolved.route();
        let generations = [
            self.generations.epoch(),
            self.generations.route(route),
            era,
            resource,
        ];
        Lookup {
            key: CacheKey::new(partition, resolved, query, &generations),
            partition,
            generations,
            route,
            head: resolved.head,
            shared: route.is_shared(),
            lifetime: Lifetime {
                ttl: policy.ttl,
                stale_if_error: policy.stale_if_error,
                stale_while_revalidate: policy.stale_while_revalidate,
                stale_on_low_quota: policy.stale_on_low_quota,
            },
            directive: Directive::of(headers),
        }
    }

    /// Invalidates every cached read that a write of `route` changed (one of its resource
    /// `tags`), for every caller — on every replica, when in a cluster — and counts it.
    pub async fn invalidate(&self, route: Route, tags: &[Tag]) {
        self.bump(tags).await;
        self.metrics.invalidation(route);
    }

    /// Invalidates every cached read that observed one of `tags` (on every replica, when in a
    /// cluster: the tag's counter in Redis, which every replica reads when it looks such a read
    /// up).
    async fn bump(&self, tags: &[Tag]) {
        for tag in tags {
            self.generations.bump(tag);
        }
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
        self.metrics.purge();
        let field = match tag {
            None => "epoch".to_owned(),
            Some(Tag::Route(route)) => format!("route:{}", route.name()),
            // A resource tag's counter is read from Redis by every lookup: in force at once.
            Some(tag) => {
                self.bump(std::slice::from_ref(tag)).await;
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

    /// The one lookup of a read: what this replica's memory holds for it. A request whose own
    /// `Cache-Control` sends it upstream finds nothing.
    pub fn find(&self, lookup: &Lookup, request_headers: &HeaderMap) -> Found {
        let missing = Found::Missing { fallback: None };
        if lookup.directive != Directive::Normal {
            return missing;
        }
        let Some(entry) = self.store.get(&lookup.key) else {
            return missing;
        };
        if !entry.matches_vary(request_headers) {
            return missing;
        }
        let now = Instant::now();
        if entry.is_fresh(now) {
            Found::Fresh(entry)
        } else if entry.may_serve_on_low_quota(now) && self.quota.site.low() {
            Found::SpareQuota(entry)
        } else if entry.may_revalidate_in_background(now) {
            Found::Revalidate(entry)
        } else if entry.may_serve_on_error(now) {
            Found::Missing {
                fallback: Some(entry),
            }
        } else {
            missing
        }
    }

    /// The hit path: answers a fresh entry of this replica's memory. Nothing a miss needs (the
    /// upstream request, copies of the request) is made for it.
    pub fn hit(
        &self,
        lookup: &Lookup,
        entry: Arc<Entry>,
        request_headers: &HeaderMap,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let saved = Some(entry.points);
        self.serve(
            lookup,
            entry,
            request_headers,
            Outcome::Hit(Tier::Memory),
            saved,
        )
    }

    /// Answers a read from what [`Cache::find`] found: a fresh entry as a hit; an entry in its
    /// stale-while-revalidate window at once, refreshing it in the background; one in its
    /// stale-on-low-quota window, while the quota is low, at once; else by
    /// fetching with `fetch` (which must ask upstream for the GET, also for HEAD requests) —
    /// once for every identical request in flight — and storing the answer.
    pub async fn read<F, Fut>(
        self: &Arc<Self>,
        lookup: Lookup,
        found: Found,
        request_headers: &HeaderMap,
        fetch: F,
    ) -> Result<(Response<Body>, Served), GatewayError>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Fetched, GatewayError>> + Send + 'static,
    {
        match found {
            Found::Fresh(entry) => self.hit(&lookup, entry, request_headers),
            Found::Revalidate(entry) => {
                self.refresh_in_background(lookup, request_headers, fetch);
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
                let fetched = self
                    .settle(lookup, request_headers, fetch().await, store)
                    .await;
                let forwarded = (Forward::Request, false);
                self.respond(fetched, &lookup, request_headers, fallback, forwarded)
            }
            Found::Missing { fallback } => {
                self.fetch_once_for_all(lookup, request_headers, fetch, fallback)
                    .await
            }
        }
    }

    /// A miss: leads the fetch for every identical request, or waits for the one that does.
    async fn fetch_once_for_all<F, Fut>(
        self: &Arc<Self>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        fetch: F,
        fallback: Option<Arc<Entry>>,
    ) -> Result<(Response<Body>, Served), GatewayError>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Fetched, GatewayError>> + Send + 'static,
    {
        let why = match fallback {
            Some(_) => Forward::Stale,
            None => Forward::Miss,
        };
        loop {
            let fetched = match self.flights.join(lookup.key) {
                Role::Leader(leader) => (
                    self.lead(leader, lookup, request_headers, fetch).await?,
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
                            let fetched = fetch().await;
                            (
                                self.settle(lookup, request_headers, fetched, true).await,
                                false,
                            )
                        }
                        Ok(Some(landed)) => (Fetch::from(landed), true),
                    }
                }
            };
            let (fetched, collapsed) = fetched;
            return self.respond(
                fetched,
                &lookup,
                request_headers,
                fallback,
                (why, collapsed),
            );
        }
    }

    /// The leader's fetch, in a task of its own: if this request goes away, the answer still
    /// reaches the cache and the followers. The cluster's shared tier is asked first.
    async fn lead<F, Fut>(
        self: &Arc<Self>,
        leader: Leader<CacheKey, Option<Landed>>,
        lookup: Lookup,
        request_headers: &HeaderMap,
        fetch: F,
    ) -> Result<Fetch, GatewayError>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, GatewayError>> + Send + 'static,
    {
        let this = self.clone();
        let headers = request_headers.clone();
        let task = tokio::spawn(
            async move {
                let fetched = match this.look_again(lookup, &headers).await {
                    Some((entry, tier)) => Fetch::Shared(entry, tier),
                    None => this.settle(lookup, &headers, fetch().await, true).await,
                };
                leader.complete(fetched.landed());
                fetched
            }
            .in_current_span(),
        );
        Ok(task.await?)
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
                let fetched = this.settle(lookup, &headers, fetch().await, true).await;
                leader.complete(fetched.landed());
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
    ) -> Fetch {
        let answer = match fetched {
            Err(error) => return Fetch::Failed(error),
            Ok(Fetched::Streamed(response)) => return Fetch::Streamed(response),
            Ok(Fetched::Undeliverable(error)) => return Fetch::Undeliverable(error),
            Ok(Fetched::Buffered(answer)) => answer,
        };
        let lifetime = match self.lifetime_for(&answer, &lookup) {
            Some(lifetime) if store => lifetime,
            _ => return Fetch::Answer(Arc::new(answer)),
        };
        let mut answer = answer;
        if let Some(rewritten) = self.links.rewrite(answer.body()) {
            answer.set_body(rewritten);
        }
        let keep = Accepts::of(request_headers).preferred();
        let exchange = exchange_ids(&answer.headers);
        let entry = Arc::new(Entry::new(
            answer,
            request_headers,
            lifetime,
            lookup.shared,
            keep,
        ));
        self.store.insert(lookup.key, entry.clone());
        self.metrics.stored(lookup.route, 1);
        if let Some(cluster) = &self.cluster {
            cluster
                .set(lookup.key.as_bytes(), entry.encode(), entry.retention())
                .await;
        }
        Fetch::Stored(entry, exchange)
    }

    /// What a leader finds before it fetches: a fresh entry that another leader stored in
    /// memory after this request looked (its flight had ended by the time this one began), or
    /// one in the cluster's shared tier.
    async fn look_again(
        &self,
        lookup: Lookup,
        request_headers: &HeaderMap,
    ) -> Option<(Arc<Entry>, Tier)> {
        if let Some(entry) = self.store.get(&lookup.key)
            && entry.is_fresh(Instant::now())
            && entry.matches_vary(request_headers)
        {
            return Some((entry, Tier::Memory));
        }
        let entry = self.look_in_l2(lookup, request_headers).await?;
        Some((entry, Tier::Cluster))
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
        self.store.insert(lookup.key, entry.clone());
        Some(entry)
    }

    /// How long an answer may be stored, or `None` when it may not be.
    fn lifetime_for(&self, answer: &Buffered, lookup: &Lookup) -> Option<Lifetime> {
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
    fn respond(
        &self,
        fetched: Fetch,
        lookup: &Lookup,
        request_headers: &HeaderMap,
        fallback: Option<Arc<Entry>>,
        (why, collapsed): (Forward, bool),
    ) -> Result<(Response<Body>, Served), GatewayError> {
        if let (Some(status), Some(entry)) = (fetched.failure(), fallback) {
            // Refused before it left (an upstream hold, a limit): no call was spent.
            let refused = matches!(&fetched, Fetch::Failed(error) if error.refusal().is_some());
            let saved = refused.then_some(entry.points);
            let outcome = Outcome::StaleIfError(status);
            return self.serve(lookup, entry, request_headers, outcome, saved);
        }
        let forwarded = |stored| Outcome::Forwarded {
            why,
            collapsed,
            stored,
        };
        match fetched {
            Fetch::Shared(entry, tier) => {
                let saved = Some(entry.points);
                let outcome = Outcome::Hit(tier);
                self.serve(lookup, entry, request_headers, outcome, saved)
            }
            Fetch::Stored(entry, exchange) => {
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
            Fetch::Answer(answer) => {
                let mut response = answer.to_response(lookup.head, Accepts::of(request_headers));
                let served = Served {
                    outcome: forwarded(Stored::No),
                    saved_points: collapsed.then_some(1),
                };
                mark(&mut response, &served.outcome);
                Ok((response, served))
            }
            Fetch::Streamed(mut response) => {
                let served = Served {
                    outcome: forwarded(Stored::TooLarge),
                    saved_points: None,
                };
                mark(&mut response, &served.outcome);
                Ok((response, served))
            }
            Fetch::Failed(error) | Fetch::Undeliverable(error) => Err(error),
        }
    }

    /// Serves `entry` (stored under `lookup`'s key) to a request, marked with `outcome`: in a
    /// representation the request accepts, which the entry gains first if it holds none yet.
    fn serve(
        &self,
        lookup: &Lookup,
        entry: Arc<Entry>,
        request_headers: &HeaderMap,
        outcome: Outcome,
        saved_points: Option<u32>,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let status = outcome.cache_status();
        let served = Served {
            outcome,
            saved_points,
        };
        let missing = match entry.respond(request_headers, lookup.head, status.clone()) {
            Ok(response) => return Ok((response, served)),
            Err(missing) => missing,
        };
        let fuller = self.add_representation(lookup.key, &entry, missing)?;
        let response = fuller
            .respond(request_headers, lookup.head, status)
            .map_err(|_| {
                GatewayError::Internal("a stored answer gained no representation".to_owned())
            })?;
        Ok((response, served))
    }

    /// `entry` with `coding`'s representation added, stored in its place (weighed anew, with
    /// the retention it had left) unless another answer replaced it meanwhile.
    fn add_representation(
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
            .and_compute_with(move |current| match current {
                Some(current) if Arc::ptr_eq(current.value(), &read) => {
                    moka::ops::compute::Op::Put(replacement)
                }
                _ => moka::ops::compute::Op::Nop,
            });
        Ok(fuller)
    }

    /// Entries, weighted bytes and the budget, after moka has applied pending evictions.
    pub fn size(&self) -> (u64, u64, u64) {
        self.store.run_pending_tasks();
        (
            self.store.entry_count(),
            self.store.weighted_size(),
            self.config.max_bytes,
        )
    }

    /// Counters and sizes for `/admin/cache/stats`, after moka has applied pending evictions.
    pub fn stats(&self) -> serde_json::Value {
        self.store.run_pending_tasks();
        let CacheStats {
            hits,
            misses,
            coalesced,
            stale,
            bypassed,
            stored,
            invalidations,
        } = self.metrics.cache_stats();
        serde_json::json!({
            "entries": self.store.entry_count(),
            "weighted_bytes": self.store.weighted_size(),
            "max_bytes": self.config.max_bytes,
            "hits": hits,
            "misses": misses,
            "stored": stored,
            "coalesced": coalesced,
            "stale": stale,
            "bypassed": bypassed,
            "invalidations": invalidations,
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
        [
            ("epoch".to_owned(), self.generations.epoch()),
            ("era".to_owned(), self.generations.era()),
        ]
        .into_iter()
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
                // Entries of an old era are unreachable and age out.
                None if field == "era" => {
                    self.generations.raise_era(*value);
                }
                None => {}
            }
        }
    }
}

/// How long a 404 is kept, if at all.
fn not_found(config: &CacheConfig) -> Option<Duration> {
    config.cache_not_found.then_some(config.not_found_ttl)
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

/// Upstream answers that make an expired entry worth serving instead (stale-if-error).
fn is_upstream_failure(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// Sets the `Cache-Status` of `outcome` on a response the cache did not build.
pub fn mark(response: &mut Response<Body>, outcome: &Outcome) {
    response
        .headers_mut()
        .insert(CACHE_STATUS.clone(), outcome.cache_status());
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
