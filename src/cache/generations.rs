//! Tag generations: the fence between writes and the reads they change.
//!
//! Every tag maps to one of a fixed number of counters. A write bumps the counters of the tags
//! it changes; a read folds the current counters of the tags it observes into its cache key
//! (see `key`). So after a bump, no read can find — or join the fetch of — an answer keyed
//! under the old generation, without scanning or indexing the cache.
//!
//! Invariants:
//! - Memory is fixed: tags hash into `SLOTS` counters. Two tags sharing a counter means a write
//!   to one also invalidates the other (a spurious miss), never that an invalidation is lost.
//! - Counters only grow (`fetch_add`, `fetch_max`), so a generation read before a fetch
//!   differs from the one read after any bump that happened in between.
//! - An epoch covers every key: a full purge bumps it. In a cluster, the epoch and the route
//!   counters are copies of the cluster's ([`Generations::raise_epoch`],
//!   [`Generations::raise_route`]), so every replica computes the same keys.
//! - An era covers the keys whose resource generation lives in Redis (a cluster's writable
//!   routes): it is the cluster's too ([`Generations::raise_era`]), and moves on after every
//!   outage, so that a slot counter Redis lost (a restart, an old snapshot) or could not
//!   count (a write while it was unreachable) never makes a key from before it reachable.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::routes::{Route, Tag};

/// 65 536 counters, 512 KiB.
const SLOTS: usize = 1 << 16;

/// Counters of accounts (`account:ID`, an operator's purge): 4 096, 32 KiB. Two accounts sharing
/// one means purging one drops the other's entries too (a spurious miss, 1 in 4 096).
const ACCOUNT_SLOTS: usize = 1 << 12;

pub(super) struct Generations {
    slots: Box<[AtomicU64]>,
    /// `route:{name}` tags have counters of their own: every read observes one, so looking
    /// them up must not hash or allocate.
    routes: [AtomicU64; Route::ALL.len()],
    /// Like the routes', a cluster's are copies of the cluster's: read on every lookup that
    /// names an account, without waiting for Redis.
    accounts: Box<[AtomicU64]>,
    epoch: AtomicU64,
    era: AtomicU64,
}

impl Default for Generations {
    fn default() -> Self {
        Generations {
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            routes: Default::default(),
            accounts: (0..ACCOUNT_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            era: AtomicU64::new(0),
        }
    }
}

impl Generations {
    /// The current generation of `tag`.
    pub(super) fn get(&self, tag: &Tag) -> u64 {
        self.counter(tag).load(Ordering::Acquire)
    }

    /// The current generation of the `route:{name}` tag.
    pub(super) fn route(&self, route: Route) -> u64 {
        self.routes[route as usize].load(Ordering::Acquire)
    }

    fn counter(&self, tag: &Tag) -> &AtomicU64 {
        match tag {
            Tag::Route(route) => &self.routes[route.index()],
            Tag::Account { id } => &self.accounts[account_slot(id)],
            _ => &self.slots[slot(tag)],
        }
    }

    /// The current generation of account `id`'s counter.
    pub(super) fn account(&self, id: &str) -> u64 {
        self.accounts[account_slot(id)].load(Ordering::Acquire)
    }

    /// Raises account counter `slot` to `value` (the cluster's); whether it moved.
    pub(super) fn raise_account(&self, slot: usize, value: u64) -> bool {
        self.accounts
            .get(slot)
            .is_some_and(|counter| counter.fetch_max(value, Ordering::AcqRel) < value)
    }

    /// Bumps account counter `slot` (a purge on this replica alone).
    pub(super) fn bump_account(&self, slot: usize) {
        if let Some(counter) = self.accounts.get(slot) {
            counter.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The account counters that moved, as `(slot, value)`: what a cluster's sync raises.
    pub(super) fn accounts_moved(&self) -> Vec<(usize, u64)> {
        self.accounts
            .iter()
            .enumerate()
            .map(|(slot, counter)| (slot, counter.load(Ordering::Acquire)))
            .filter(|(_, value)| *value > 0)
            .collect()
    }

    /// The current epoch, bumped by every full purge.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The current era of the resource generations that live in Redis.
    pub(super) fn era(&self) -> u64 {
        self.era.load(Ordering::Acquire)
    }

    /// Raises the era to `value` (the cluster's); whether it moved.
    pub(super) fn raise_era(&self, value: u64) -> bool {
        self.era.fetch_max(value, Ordering::AcqRel) < value
    }

    /// Invalidates every key that observed `tag`.
    pub(super) fn bump(&self, tag: &Tag) {
        self.counter(tag).fetch_add(1, Ordering::AcqRel);
    }

    /// Invalidates every key.
    pub(super) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Raises the epoch to `value` (the cluster's); whether it moved.
    pub(super) fn raise_epoch(&self, value: u64) -> bool {
        self.epoch.fetch_max(value, Ordering::AcqRel) < value
    }

    /// Raises `route`'s counter to `value` (the cluster's); whether it moved.
    pub(super) fn raise_route(&self, route: Route, value: u64) -> bool {
        self.routes[route as usize].fetch_max(value, Ordering::AcqRel) < value
    }
}

/// The counter slot of a resource tag (shared with the cluster's counters in Redis).
pub(super) fn slot(tag: &Tag) -> usize {
    // The tag's text, written straight into the hasher: no string is made for a lookup.
    let mut hasher = blake3::Hasher::new();
    write!(hasher, "{tag}").expect("hashing never fails");
    let hash = hasher.finalize();
    let bytes: [u8; 8] = hash.as_bytes()[..8].try_into().expect("8 bytes");
    (u64::from_le_bytes(bytes) as usize) % SLOTS
}

/// The counter of account `id`: FNV-1a of its text (the same on every replica and version;
/// cheap enough for every lookup that names an account).
pub(super) fn account_slot(id: &str) -> usize {
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash as usize) % ACCOUNT_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_the_hash_of_the_tags_text() {
        // Replicas of other versions read the same Redis slots: the slot must stay this.
        let tag = Tag::Property {
            user: "712020:a11ce000".to_owned(),
            key: "k".to_owned(),
        };
        let hash = blake3::hash(b"property:712020:a11ce000:k");
        let expected = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap());
        assert_eq!(slot(&tag), expected as usize % SLOTS);
    }

    #[test]
    fn an_account_slot_is_fnv1a_of_its_id_and_its_purge_reaches_it_only() {
        // Replicas of other versions adopt the same slots: the slot must stay this.
        assert_eq!(
            account_slot(""),
            0xcbf2_9ce4_8422_2325_u64 as usize % ACCOUNT_SLOTS
        );
        let generations = Generations::default();
        let (x, y) = ("712020:a11ce000", "712020:b0b00000");
        assert_ne!(account_slot(x), account_slot(y));
        generations.bump(&Tag::Account { id: x.to_owned() });
        assert_eq!((generations.account(x), generations.account(y)), (1, 0));
        assert_eq!(generations.accounts_moved(), [(account_slot(x), 1)]);
        assert!(generations.raise_account(account_slot(y), 3));
        assert!(
            !generations.raise_account(account_slot(y), 2),
            "never backwards"
        );
        assert!(!generations.raise_account(ACCOUNT_SLOTS, 9), "no such slot");
    }

    #[test]
    fn a_bump_changes_only_its_tag() {
        let generations = Generations::default();
        let watch = |id: &str| Tag::Watch {
            kind: crate::routes::WatchKind::Space,
            id: id.to_owned(),
        };
        let (a, b) = (watch("A"), watch("B"));
        assert_ne!(slot(&a), slot(&b));
        let before = (generations.get(&a), generations.get(&b));
        generations.bump(&a);
        assert_eq!(generations.get(&a), before.0 + 1);
        assert_eq!(generations.get(&b), before.1);
        generations.bump_epoch();
        assert_eq!(generations.epoch(), 1);
        generations.bump(&Tag::Route(Route::MemberOf));
        assert_eq!(generations.route(Route::MemberOf), 1);
        assert_eq!(generations.route(Route::User), 0);
    }

    #[test]
    fn raising_adopts_a_higher_value_only() {
        let generations = Generations::default();
        assert!(generations.raise_epoch(3));
        assert!(
            !generations.raise_epoch(3),
            "applying a purge twice changes nothing"
        );
        assert!(!generations.raise_epoch(2), "never backwards");
        assert_eq!(generations.epoch(), 3);
        assert!(generations.raise_route(Route::MemberOf, 1));
        assert_eq!(generations.route(Route::MemberOf), 1);
        assert!(generations.raise_era(2));
        assert!(!generations.raise_era(1), "never backwards");
        assert_eq!(generations.era(), 2);
    }
}
