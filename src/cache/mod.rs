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
//!
//! The parts: this file (lookups, the one find, the hit path, serving an entry), `read` (the
//! read past its find; the [`Origin`] seam through which it asks upstream), `invalidation`
//! (writes, purges, the generations replicas share), `bulk` (bulk lookups account by
//! account), `storage` (L1 memory; the [`Shared`] seam to the cluster's tier), `entry`,
//! `key`, `flights`, `generations`, `outcome`, `etag`, `heads`. The layering among them is
//! drawn in docs/ARCHITECTURE.md and kept by `tests/it/layering.rs`.

mod bulk;
mod entry;
mod etag;
mod flights;
mod generations;
mod heads;
mod invalidation;
mod key;
mod merge;
mod outcome;
mod read;
mod refresh;
mod shapes;
mod single;
mod storage;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response, header};
use tokio::time::Instant;

pub(crate) use bulk::BulkPlan;
use bulk::Scope;
pub(crate) use entry::{Buffered, Entry, Lifetime, add_vary_accept_encoding};
use flights::Flights;
use generations::Generations;
pub(crate) use invalidation::Purge;
pub(crate) use key::Bypass;
pub use key::{CacheKey, KeySecret, Partition};
use merge::Batches;
pub(crate) use outcome::{Forward, Outcome, Served, Stored, Tier, mark};
use read::Landed;
pub(crate) use read::{Call, Fetched, Origin};
pub(crate) use shapes::Agreement;
use shapes::Shapes;
use single::Merged;
pub(crate) use single::SinglePlan;
use storage::Memory;
pub(crate) use storage::Shared;

use crate::body::Body;
use crate::caller::Credential;
use crate::cluster::Cluster;
use crate::coding::Coding;
use crate::config::{CacheConfig, RoutePolicy};
use crate::error::GatewayError;
use crate::forward::list_tokens;
use crate::links::Links;
use crate::metrics::{CacheStats, Metrics};
use crate::quota::Quota;
use crate::routes::{Resolved, Route, Tag};

/// What the one lookup of a read found in this replica's memory.
pub enum Found {
    /// A fresh entry: the hit path answers it.
    Fresh(Arc<Entry>),
    /// A fresh entry late in its life that this read claimed the refresh of: answered as a hit,
    /// refreshed in the background (`refresh`).
    RefreshAhead(Arc<Entry>),
    /// Expired, within stale-while-revalidate: answered at once, refreshed in the background.
    Revalidate(Arc<Entry>),
    /// Expired moments ago while its refresh ahead of expiry is under way: answered at once
    /// rather than waiting for that refresh to land.
    Refreshing(Arc<Entry>),
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
    /// In a cluster: in the shared tier, in this slot.
    Shared(&'a dyn Shared, usize),
}

/// A GET that the cache may answer.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    key: CacheKey,
    partition: Partition,
    route: Route,
    head: bool,
    shared: bool,
    lifetime: Lifetime,
    directive: Directive,
}

pub struct Cache {
    /// This replica's entries (L1).
    memory: Memory,
    generations: Generations,
    flights: Flights<CacheKey, Option<Landed>>,
    /// Single account lookups being merged into bulk calls, by scope.
    merges: Batches<Scope, Merged>,
    /// Single account lookups being refreshed ahead of expiry in one bulk call, by scope.
    refreshes: Batches<Scope, Merged>,
    /// Whether this site's single and bulk answers of one account agree.
    shapes: Shapes,
    /// What of `[cache]` is fixed until a restart; the reloadable parts are `routes` and
    /// `not_found`.
    config: Settings,
    /// The tier the replicas share (L2) and the counters of resource tags, in a cluster.
    shared: Option<Arc<dyn Shared>>,
    /// The cluster, whose replicas an operator's purge reaches.
    cluster: Option<Arc<Cluster>>,
    /// Per-route TTLs and stale windows; replaced by a reload.
    routes: arc_swap::ArcSwap<crate::config::RoutePolicies>,
    /// How long a 404 is kept (`cache.cache_not_found`, `not_found_ttl`); `None`: not at all.
    /// Replaced by a reload.
    not_found: arc_swap::ArcSwap<Option<Duration>>,
    /// `_links` rewriting to `server.public_url`.
    links: Arc<Links>,
    secret: [u8; 32],
    /// What cache keys are hashed under, derived from `secret`.
    key_secret: KeySecret,
    metrics: Arc<Metrics>,
    /// The site's quota: while it is low, expired entries stand in for upstream calls
    /// (`stale_on_low_quota`).
    quota: Arc<Quota>,
}

/// The settings of `[cache]` a reload does not change.
#[derive(Debug, Clone, Copy)]
struct Settings {
    enabled: bool,
    max_entry_bytes: usize,
    coalesce_timeout: Duration,
    bulk_entities: bool,
    negative_ttl: Duration,
    merge: MergeRoutes,
    refresh: RefreshSettings,
}

/// `[cache.refresh]`, as the cache reads it.
#[derive(Debug, Clone, Copy)]
struct RefreshSettings {
    routes: [bool; Route::ALL.len()],
    after: f64,
    max_stretch: f64,
}

impl RefreshSettings {
    fn of(&self, route: Route) -> bool {
        self.routes[route.index()]
    }
}

/// The single-lookup routes answered from per-account objects (`cache.merge.routes`).
#[derive(Debug, Clone, Copy)]
struct MergeRoutes {
    user: bool,
    email: bool,
}

impl MergeRoutes {
    fn of(&self, route: Route) -> bool {
        match route {
            Route::User => self.user,
            Route::Email => self.email,
            _ => false,
        }
    }
}

impl Settings {
    fn of(config: &CacheConfig) -> Settings {
        let named = |name: &str| config.merge.routes.iter().any(|r| r == name);
        Settings {
            enabled: config.enabled,
            max_entry_bytes: config.max_entry_bytes,
            coalesce_timeout: config.coalesce_timeout,
            bulk_entities: config.bulk_entities,
            negative_ttl: config.negative_ttl,
            merge: MergeRoutes {
                user: named("user"),
                email: named("email"),
            },
            refresh: RefreshSettings {
                routes: Route::ALL.map(|route| {
                    config
                        .refresh
                        .routes
                        .iter()
                        .any(|name| name == route.name())
                }),
                after: config.refresh.after,
                max_stretch: config.refresh.max_stretch,
            },
        }
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
        Cache {
            memory: Memory::new(config.max_bytes, metrics.clone()),
            generations: Generations::default(),
            flights: Flights::default(),
            merges: Batches::new(config.merge.max_ids, config.merge.max_query_bytes),
            refreshes: Batches::new(config.merge.max_ids, config.merge.max_query_bytes),
            shapes: Shapes::new(config.merge.recheck, metrics.clone()),
            config: Settings::of(config),
            routes: arc_swap::ArcSwap::from_pointee(config.routes.clone()),
            not_found: arc_swap::ArcSwap::from_pointee(not_found(config)),
            links,
            shared: None,
            cluster: None,
            key_secret: KeySecret::derive(&secret),
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

    /// Joins a cluster: generations of resource tags and a second cache tier in Redis, and
    /// purges that reach every replica.
    pub fn with_cluster(mut self, cluster: Option<Arc<Cluster>>) -> Cache {
        self.shared = cluster.clone().map(|cluster| cluster as Arc<dyn Shared>);
        self.cluster = cluster;
        self
    }

    /// Shares a tier with other caches of this process, as replicas of a cluster do (tests of
    /// the tier logic without Redis).
    #[cfg(test)]
    fn with_shared(mut self, shared: Arc<dyn Shared>) -> Cache {
        self.shared = Some(shared);
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
            Resource::Shared(shared, slot) => {
                let era = self.generations.era();
                let counter = shared.generation(slot).await.ok_or(Bypass::ClusterDown)?;
                if self.generations.era() != era {
                    return Err(Bypass::ClusterDown);
                }
                [era, counter]
            }
        };
        Ok(self.new_lookup(resolved, headers, query, class, resource))
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
        Some(class.map(|class| self.new_lookup(resolved, headers, query, class, [0, resource])))
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
        match (resolved.resource_tag(), &self.shared) {
            (None, _) => Resource::Here(0),
            (Some(tag), None) => Resource::Here(self.generations.get(&tag)),
            (Some(tag), Some(shared)) => Resource::Shared(&**shared, generations::slot(&tag)),
        }
    }

    fn new_lookup(
        &self,
        resolved: &Resolved<'_>,
        headers: &HeaderMap,
        query: Option<&str>,
        (partition, policy): (Partition, RoutePolicy),
        [era, resource]: [u64; 2],
    ) -> Lookup {
        let route = resolved.route();
        // An account's purge reaches every read that names it; reads that name none hash one
        // generation less (which keeps most keys' input within one BLAKE3 block).
        let account = resolved
            .account(query)
            .map(|id| self.generations.account(&id));
        let generations = [
            self.generations.epoch(),
            self.generations.route(route),
            era,
            resource,
            account.unwrap_or(0),
        ];
        let observed = match account {
            Some(_) => &generations[..],
            None => &generations[..4],
        };
        Lookup {
            key: CacheKey::new(&self.key_secret, partition, resolved, query, observed),
            partition,
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

    /// The one lookup of a read: what this replica's memory holds for it. A request whose own
    /// `Cache-Control` sends it upstream finds nothing.
    pub fn find(&self, lookup: &Lookup, request_headers: &HeaderMap) -> Found {
        let missing = Found::Missing { fallback: None };
        if lookup.directive != Directive::Normal {
            return missing;
        }
        let Some(entry) = self.memory.get(&lookup.key) else {
            return missing;
        };
        if !entry.matches_vary(request_headers) {
            return missing;
        }
        let now = Instant::now();
        if entry.is_fresh(now) {
            let refresh = &self.config.refresh;
            match refresh.of(lookup.route) && entry.claim_refresh(now, refresh.after) {
                true => Found::RefreshAhead(entry),
                false => Found::Fresh(entry),
            }
        } else if entry.refreshing(now) {
            Found::Refreshing(entry)
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
        if entry.saved_by_refresh() {
            self.metrics.refresh_saved(lookup.route);
        }
        self.serve(
            lookup,
            entry,
            request_headers,
            Outcome::Hit(Tier::Memory),
            saved,
        )
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
        self.memory.replace(key, entry, fuller.clone());
        Ok(fuller)
    }

    /// Every route family and `expand` set whose single and bulk answers were compared, for
    /// the status page: `(single route, expand, agreement)`.
    pub(crate) fn shapes(&self) -> Vec<(Route, String, Agreement)> {
        self.shapes.all()
    }

    /// Entries, weighted bytes and the budget, after moka has applied pending evictions.
    pub fn size(&self) -> (u64, u64, u64) {
        self.memory.size()
    }

    /// Counters and sizes for `/admin/cache/stats`, after moka has applied pending evictions.
    pub fn stats(&self) -> serde_json::Value {
        let (entries, weighted_bytes, max_bytes) = self.memory.size();
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
            "entries": entries,
            "weighted_bytes": weighted_bytes,
            "max_bytes": max_bytes,
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

/// How long a 404 is kept, if at all.
fn not_found(config: &CacheConfig) -> Option<Duration> {
    config.cache_not_found.then_some(config.not_found_ttl)
}

/// The key of the credential hash that partitions the cache (and identifies callers):
/// derived from `cache.key_secret`, or random for this process.
pub(crate) fn partition_secret(config: &CacheConfig) -> [u8; 32] {
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
