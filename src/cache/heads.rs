//! Stored header sets, shared by every entry that stores the same one.
//!
//! Once the per-exchange headers are gone, the answers one caller gets carry the same few
//! end-to-end headers (`Content-Type`, `X-AAccountId`, the site's security headers, `Via`,
//! `Vary`), and a few hundred bytes of them per entry would cost more than a gzip body. So the
//! entries of a caller point at one set.
//!
//! With each set come the heads a hit's response starts from, one per coding: the headers a
//! hit writes itself first ([`SLOTS`], placeholders), then the set, then `Content-Encoding`.
//! A hit clones one (copying its hash index) and overwrites the slots' values in place, by
//! position: no name is hashed, nothing is inserted, the copy never grows. A head is made on
//! a set's first hit in its coding and kept within a fixed budget ([`HEAD_BUDGET`]): the cache
//! weighs its entries' header sets, not these.
//!
//! Invariants: a set is immutable once interned, and equal (name for name, byte for byte) to
//! the one each entry that points at it stored; the heads kept hold at most [`HEAD_BUDGET`]
//! bytes (as [`HEAD_BYTES_PER_HEADER`] counts them); a hit head's first values are its slots,
//! in [`SLOTS`]' order, and every one of them is overwritten before it is sent (the first four by
//! [`Set::hit`], `X-Request-Id` by every answer's `finish`); the table keeps sets only weakly
//! (an entry's eviction frees its set when it was the last to use it), and dead slots are
//! swept as the table grows. Only the store path takes the table's lock; hits clone from the
//! set itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use parking_lot::Mutex;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::outcome::CACHE_STATUS;
use crate::coding::Coding;
use crate::request_id::X_REQUEST_ID;

/// A stored, shared header set.
pub(super) type Head = Arc<Set>;

/// The headers every hit writes itself, in the order they lead a hit head; [`Set::hit`] fills
/// all but the last, which the answer's `finish` writes.
const SLOTS: [&HeaderName; 5] = [
    &header::ETAG,
    &header::CACHE_CONTROL,
    &header::AGE,
    &CACHE_STATUS,
    &X_REQUEST_ID,
];

/// Bytes all hit heads together may hold: a head is ~1.5 KB (a `HeaderMap` of ~14 headers),
/// made for a set only once one of its entries is hit in that coding, and not weighed by the
/// cache (its entries weigh the set, not the heads). With many callers each holding few
/// entries, heads past this budget are not kept: those hits build their head each time.
const HEAD_BUDGET: usize = 8 << 20;

/// What a kept head is counted as: its headers' buckets and its index.
const HEAD_BYTES_PER_HEADER: usize = 120;

/// The bytes the kept heads of the process hold.
static HEADS: Budget = Budget::new(HEAD_BUDGET);

/// Bytes held against a limit.
#[derive(Debug)]
struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    const fn new(limit: usize) -> Budget {
        Budget {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// Counts `bytes`, if the limit has room for them.
    fn reserve(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + bytes <= self.limit).then_some(held + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One stored header set and the heads hits start from.
#[derive(Debug)]
pub(super) struct Set {
    stored: HeaderMap,
    /// Identity's hit head, then gzip's: made on the first hit in that coding, kept while
    /// [`HEAD_BUDGET`] allows.
    hits: [OnceLock<HeaderMap>; 2],
}

impl std::ops::Deref for Set {
    type Target = HeaderMap;

    /// The set as stored.
    fn deref(&self) -> &HeaderMap {
        &self.stored
    }
}

impl Set {
    fn new(stored: HeaderMap) -> Set {
        Set {
            stored,
            hits: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// A hit's head in `coding`: the set, the coding, and `ETag`, `Cache-Control`, `Age` and
    /// `Cache-Status` as given (`X-Request-Id` still to be written).
    pub(super) fn hit(&self, coding: Coding, slots: [HeaderValue; 4]) -> HeaderMap {
        let kept = &self.hits[index(coding)];
        let mut head = match kept.get() {
            Some(head) => head.clone(),
            None => {
                let head = self.head(coding);
                if HEADS.reserve(head_bytes(&head)) && kept.set(head.clone()).is_err() {
                    // Another hit kept its own first: give back what this one reserved.
                    HEADS.release(head_bytes(&head));
                }
                head
            }
        };
        for (slot, value) in head.values_mut().zip(slots) {
            *slot = value;
        }
        head
    }

    /// The head hits in `coding` start from: [`SLOTS`] (placeholders), the set, the coding.
    fn head(&self, coding: Coding) -> HeaderMap {
        let mut head = HeaderMap::with_capacity(SLOTS.len() + self.stored.len() + 1);
        for name in SLOTS {
            head.append(name.clone(), HeaderValue::from_static(""));
        }
        for (name, value) in self.stored.iter().filter(|(name, _)| !SLOTS.contains(name)) {
            head.append(name.clone(), value.clone());
        }
        if let Some(value) = coding.header_value() {
            head.insert(header::CONTENT_ENCODING, value);
        }
        head
    }
}

impl Drop for Set {
    fn drop(&mut self) {
        for head in self.hits.iter().filter_map(OnceLock::get) {
            HEADS.release(head_bytes(head));
        }
    }
}

fn index(coding: Coding) -> usize {
    match coding {
        Coding::Identity => 0,
        Coding::Gzip => 1,
    }
}

fn head_bytes(head: &HeaderMap) -> usize {
    head.len() * HEAD_BYTES_PER_HEADER
}

/// The process's table of stored header sets.
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Table {
    sets: HashMap<u64, Vec<Weak<Set>>>,
    /// Sets interned since dead slots were last swept.
    since_sweep: usize,
}

/// The shared set equal to `set`, interning it if there is none.
pub(super) fn intern(set: Vec<(HeaderName, HeaderValue)>) -> Head {
    let hash = {
        let mut hasher = SEED.build_hasher();
        for (name, value) in &set {
            name.hash(&mut hasher);
            value.as_bytes().hash(&mut hasher);
        }
        hasher.finish()
    };
    let mut map = HeaderMap::with_capacity(set.len());
    for (name, value) in set {
        map.append(name, value);
    }
    let set = map;
    let mut table = TABLE.lock();
    let slot = table.sets.entry(hash).or_default();
    if let Some(existing) = slot
        .iter()
        .filter_map(Weak::upgrade)
        .find(|existing| existing.stored == set)
    {
        return existing;
    }
    slot.retain(|weak| weak.strong_count() > 0);
    let head: Head = Arc::new(Set::new(set));
    slot.push(Arc::downgrade(&head));
    table.since_sweep += 1;
    if table.since_sweep > 1024 && table.since_sweep > table.sets.len() {
        table
            .sets
            .retain(|_, slot| slot.iter().any(|weak| weak.strong_count() > 0));
        table.since_sweep = 0;
    }
    head
}

/// The table's hash keys, fixed for the process.
static SEED: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);

#[cfg(test)]
mod tests {
    use super::*;

    fn set(account: &'static str) -> Vec<(HeaderName, HeaderValue)> {
        vec![
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("x-aaccountid"),
                HeaderValue::from_static(account),
            ),
        ]
    }

    #[test]
    fn equal_sets_are_one_and_different_ones_stay_apart() {
        let a = intern(set("712020:a"));
        let again = intern(set("712020:a"));
        let b = intern(set("712020:b"));
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(b["x-aaccountid"], "712020:b");
    }

    #[test]
    fn a_hit_head_holds_the_set_its_coding_and_the_values_given() {
        let head = intern(set("712020:hit"));
        let values = || {
            [
                HeaderValue::from_static("\"e\""),
                HeaderValue::from_static("private, max-age=9"),
                HeaderValue::from_static("1"),
                HeaderValue::from_static("wikigate; hit"),
            ]
        };
        for coding in [Coding::Identity, Coding::Gzip] {
            let mut hit = head.hit(coding, values());
            assert_eq!(hit["etag"], "\"e\"");
            assert_eq!(hit["cache-control"], "private, max-age=9");
            assert_eq!(hit["age"], "1");
            assert_eq!(hit["cache-status"], "wikigate; hit");
            assert_eq!(hit["x-aaccountid"], "712020:hit");
            assert_eq!(hit["content-type"], "application/json");
            assert_eq!(
                hit.get("content-encoding").map(|v| v.as_bytes()),
                coding.header_value().as_ref().map(HeaderValue::as_bytes)
            );
            // The request id is written in place, as every answer's finish writes it.
            let capacity = hit.capacity();
            hit.insert(&X_REQUEST_ID, HeaderValue::from_static("id"));
            assert_eq!(hit.capacity(), capacity, "nothing was added");
            assert_eq!(hit.len(), 7 + usize::from(coding == Coding::Gzip));
            assert_eq!(hit.get_all("x-request-id").iter().count(), 1);
        }
        // The stored set is as stored: no slot, no coding; both heads are kept.
        assert_eq!(head.len(), 2);
        assert!(head.hits.iter().all(|kept| kept.get().is_some()));
    }

    #[test]
    fn heads_are_kept_within_their_budget_and_given_back() {
        let budget = Budget::new(1000);
        assert!(budget.reserve(600));
        assert!(!budget.reserve(600), "over the limit: not kept");
        assert!(budget.reserve(400));
        budget.release(600);
        assert!(budget.reserve(500));
        assert_eq!(budget.held.load(Ordering::Relaxed), 900);
    }

    #[test]
    fn the_table_does_not_keep_sets_alive() {
        let head = intern(set("712020:gone"));
        let weak = Arc::downgrade(&head);
        drop(head);
        assert!(weak.upgrade().is_none());
        // Interning it again makes a new one, and that one is found afterwards.
        let head = intern(set("712020:gone"));
        assert!(Arc::ptr_eq(&head, &intern(set("712020:gone"))));
    }
}
