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
//! position: no name is hashed, nothing is inserted, the copy never grows.
//!
//! Invariants: a set is immutable once interned, and equal (name for name, byte for byte) to
//! the one each entry that points at it stored; a hit head's first values are its slots, in
//! [`SLOTS`]' order, and every one of them is overwritten before it is sent (the first four by
//! [`Set::hit`], `X-Request-Id` by every answer's `finish`); the table keeps sets only weakly
//! (an entry's eviction frees its set when it was the last to use it), and dead slots are
//! swept as the table grows. Only the store path takes the table's lock; hits clone from the
//! set itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Weak};

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

/// One stored header set and the heads hits start from.
#[derive(Debug)]
pub(super) struct Set {
    stored: HeaderMap,
    /// Identity's hit head, then gzip's.
    hits: [HeaderMap; 2],
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
        let hit = |coding: Coding| {
            let mut head = HeaderMap::with_capacity(SLOTS.len() + stored.len() + 1);
            for name in SLOTS {
                head.append(name.clone(), HeaderValue::from_static(""));
            }
            for (name, value) in stored.iter().filter(|(name, _)| !SLOTS.contains(name)) {
                head.append(name.clone(), value.clone());
            }
            if let Some(value) = coding.header_value() {
                head.insert(header::CONTENT_ENCODING, value);
            }
            head
        };
        Set {
            hits: [hit(Coding::Identity), hit(Coding::Gzip)],
            stored,
        }
    }

    /// A hit's head in `coding`: the set, the coding, and `ETag`, `Cache-Control`, `Age` and
    /// `Cache-Status` as given (`X-Request-Id` still to be written).
    pub(super) fn hit(&self, coding: Coding, slots: [HeaderValue; 4]) -> HeaderMap {
        let mut head = self.hits[match coding {
            Coding::Identity => 0,
            Coding::Gzip => 1,
        }]
        .clone();
        for (slot, value) in head.values_mut().zip(slots) {
            *slot = value;
        }
        head
    }
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
        // The stored set is as stored: no slot, no coding.
        assert_eq!(head.len(), 2);
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
