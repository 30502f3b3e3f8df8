//! Where entries are kept: this replica's memory (L1, [`Memory`]) and, in a cluster, the tier
//! every replica shares (L2, a [`Shared`] implementation: Redis through [`Cluster`]; an
//! in-memory one in the tests). The tier logic — which tier is asked when, what is written back,
//! which counters key a read — stays in the cache; this module only keeps and hands back.
//!
//! L1 is one concrete type, not a second implementation of [`Shared`]: the hit path is a plain
//! call with no `await` (see `gateway`), which an async storage trait would take away, and
//! moka is its only implementation.
//!
//! Invariants: L1 weighs every entry in bytes against `cache.max_bytes` and keeps it for what
//! is left of its retention, counted from when it was stored first (an entry from L2, or one
//! stored again with another representation, is older than its insertion); an entry gains a
//! representation only in place of the very entry it was made from ([`Memory::replace`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use moka::sync::Cache as Moka;
use tokio::time::Instant;

use super::entry::Entry;
use super::key::{CacheKey, KeyHashing};
use crate::cluster::Cluster;
use crate::metrics::Metrics;

/// The tier a cluster's replicas share: entries (encoded, [`Entry::encode`]) and the counters
/// of resource-tag slots, which every write through any replica bumps.
pub(crate) trait Shared: Send + Sync {
    /// The entry stored under `key`, if any (and reachable).
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<Vec<u8>>>;
    /// Stores an entry under `key` for `ttl`.
    fn set<'a>(&'a self, key: &'a CacheKey, entry: Vec<u8>, ttl: Duration) -> BoxFuture<'a, ()>;
    /// The counter of a resource-tag slot; `None` when the tier cannot say.
    fn generation(&self, slot: usize) -> BoxFuture<'_, Option<u64>>;
    /// Bumps the counters of `slots`; whether the tier was reached.
    fn bump<'a>(&'a self, slots: &'a [usize]) -> BoxFuture<'a, bool>;
}

impl Shared for Cluster {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<Vec<u8>>> {
        Box::pin(Cluster::get(self, key.as_bytes()))
    }

    fn set<'a>(&'a self, key: &'a CacheKey, entry: Vec<u8>, ttl: Duration) -> BoxFuture<'a, ()> {
        Box::pin(Cluster::set(self, key.as_bytes(), entry, ttl))
    }

    fn generation(&self, slot: usize) -> BoxFuture<'_, Option<u64>> {
        Box::pin(Cluster::generation(self, slot))
    }

    fn bump<'a>(&'a self, slots: &'a [usize]) -> BoxFuture<'a, bool> {
        Box::pin(Cluster::bump(self, slots))
    }
}

/// This replica's entries (L1): moka, weighed in bytes, each kept for its retention.
pub(super) struct Memory {
    entries: Moka<CacheKey, Arc<Entry>, KeyHashing>,
    max_bytes: u64,
}

impl Memory {
    /// At most `max_bytes` of entries; evictions are counted in `metrics` by cause.
    pub(super) fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Memory {
        let entries = Moka::builder()
            .max_capacity(max_bytes)
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
            .build_with_hasher(KeyHashing);
        Memory { entries, max_bytes }
    }

    pub(super) fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.entries.get(key)
    }

    pub(super) fn insert(&self, key: CacheKey, entry: Arc<Entry>) {
        self.entries.insert(key, entry);
    }

    /// Stores `fuller` in place of `read`, unless another answer replaced `read` meanwhile.
    pub(super) fn replace(&self, key: CacheKey, read: &Arc<Entry>, fuller: Arc<Entry>) {
        let read = read.clone();
        self.entries
            .entry(key)
            .and_compute_with(move |current| match current {
                Some(current) if Arc::ptr_eq(current.value(), &read) => {
                    moka::ops::compute::Op::Put(fuller)
                }
                _ => moka::ops::compute::Op::Nop,
            });
    }

    /// Drops every entry (a new epoch left none reachable).
    pub(super) fn clear(&self) {
        self.entries.invalidate_all();
    }

    /// Entries, weighted bytes and the budget, after moka has applied pending evictions.
    pub(super) fn size(&self) -> (u64, u64, u64) {
        self.entries.run_pending_tasks();
        (
            self.entries.entry_count(),
            self.entries.weighted_size(),
            self.max_bytes,
        )
    }
}

/// moka keeps each entry for what is left of its retention (TTL plus its longest stale
/// window).
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

/// A shared tier in this process, for tests of the tier logic without a redis-server: entries
/// and counters in maps, expiring by tokio's clock; `reachable` turned off plays an outage.
#[cfg(test)]
#[derive(Default)]
pub(super) struct SharedMemory {
    entries: parking_lot::Mutex<std::collections::HashMap<CacheKey, (Vec<u8>, Instant)>>,
    counters: parking_lot::Mutex<std::collections::HashMap<usize, u64>>,
    pub(super) unreachable: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
impl SharedMemory {
    fn reachable(&self) -> bool {
        !self.unreachable.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
impl Shared for SharedMemory {
    fn get<'a>(&'a self, key: &'a CacheKey) -> BoxFuture<'a, Option<Vec<u8>>> {
        let found = self
            .reachable()
            .then(|| self.entries.lock().get(key).cloned());
        let found = found
            .flatten()
            .filter(|(_, until)| *until > Instant::now())
            .map(|(entry, _)| entry);
        Box::pin(std::future::ready(found))
    }

    fn set<'a>(&'a self, key: &'a CacheKey, entry: Vec<u8>, ttl: Duration) -> BoxFuture<'a, ()> {
        if self.reachable() {
            let until = Instant::now() + ttl;
            self.entries.lock().insert(*key, (entry, until));
        }
        Box::pin(std::future::ready(()))
    }

    fn generation(&self, slot: usize) -> BoxFuture<'_, Option<u64>> {
        let counter = self
            .reachable()
            .then(|| self.counters.lock().get(&slot).copied().unwrap_or(0));
        Box::pin(std::future::ready(counter))
    }

    fn bump<'a>(&'a self, slots: &'a [usize]) -> BoxFuture<'a, bool> {
        let reachable = self.reachable();
        if reachable {
            let mut counters = self.counters.lock();
            for slot in slots {
                *counters.entry(*slot).or_default() += 1;
            }
        }
        Box::pin(std::future::ready(reachable))
    }
}
