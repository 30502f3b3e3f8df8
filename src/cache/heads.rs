//! Stored header sets, shared by every entry that stores the same one.
//!
//! Once the per-exchange headers are gone, the answers one caller gets carry the same few
//! end-to-end headers (`Content-Type`, `X-AAccountId`, the site's security headers, `Via`,
//! `Vary`), and a few hundred bytes of them per entry would cost more than a gzip body. So the
//! entries of a caller point at one set.
//!
//! A set is kept as the `HeaderMap` a hit's response starts from: a hit clones it (copying
//! its hash index) instead of hashing every name into a new one.
//!
//! Invariants: a set is immutable once interned, and equal (name for name, byte for byte) to
//! the one each entry that points at it stored; the table keeps sets only weakly (an entry's
//! eviction frees its set when it was the last to use it), and dead slots are swept as the
//! table grows. Only the store path takes the table's lock; hits clone from the set itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;

use http::{HeaderMap, HeaderName, HeaderValue};

/// A stored, shared header set.
pub(super) type Head = Arc<HeaderMap>;

/// The process's table of stored header sets.
static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Table {
    sets: HashMap<u64, Vec<Weak<HeaderMap>>>,
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
    // Room for what a hit adds (Cache-Control, Age, ETag, Cache-Status, a coding, a length),
    // so that no hit re-indexes its copy.
    let mut map = HeaderMap::with_capacity(set.len() + 6);
    for (name, value) in set {
        map.append(name, value);
    }
    let set = map;
    let mut table = TABLE.lock();
    let slot = table.sets.entry(hash).or_default();
    if let Some(existing) = slot
        .iter()
        .filter_map(Weak::upgrade)
        .find(|existing| **existing == set)
    {
        return existing;
    }
    slot.retain(|weak| weak.strong_count() > 0);
    let head: Head = Arc::from(set);
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
                http::header::CONTENT_TYPE,
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
