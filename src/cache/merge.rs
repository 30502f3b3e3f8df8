//! Merging: single-account lookups that miss, gathered into one bulk call.
//!
//! The first lookup of a scope (partition, route family, `expand` set) to miss opens a batch
//! and leads it; lookups of the same scope that miss while the batch is open join it. The
//! leader closes the batch at the last moment — once its call has been admitted upstream (a
//! burst token, a place, the points reserve), after the merge window where one applies — and
//! sends one bulk call for every account the batch holds. So lookups merge exactly while they
//! would otherwise wait, and add no delay when nothing makes them wait.
//!
//! Invariants: a batch is of one scope, so never crosses partitions; it holds at most
//! `max_ids` accounts and a query of at most `max_query_bytes` (a lookup that does not fit
//! opens the next batch); a closed batch takes no one (a late arrival opens the next batch,
//! never joins a call already sent); every waiter gets an answer of its own account, or —
//! when the leader goes away without one — its channel closes and it asks on its own.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// Open batches, by scope.
pub(super) struct Batches<K, V> {
    /// `parking_lot::Mutex`: held only to find, open or close a batch, never across an await.
    open: Mutex<HashMap<K, Arc<Batch<V>>>>,
    max_ids: usize,
    max_query_bytes: usize,
}

/// One bulk call in the making.
pub(super) struct Batch<V> {
    members: Mutex<Members<V>>,
}

struct Members<V> {
    /// The accounts asked for, first occurrences only.
    ids: Vec<String>,
    /// What `ids` add to the bulk call's query.
    query_bytes: usize,
    waiters: Vec<(String, oneshot::Sender<V>)>,
    closed: bool,
}

/// What a lookup does in a batch.
pub(super) enum Joined<V> {
    /// It opened the batch: it closes it and makes the call, then answers every waiter
    /// ([`Batch::answer`]), itself included.
    Leader(Arc<Batch<V>>, oneshot::Receiver<V>),
    /// It waits for the leader's call.
    Member(oneshot::Receiver<V>),
}

impl<K: Hash + Eq + Clone, V> Batches<K, V> {
    pub(super) fn new(max_ids: usize, max_query_bytes: usize) -> Batches<K, V> {
        Batches {
            open: Mutex::default(),
            max_ids: max_ids.max(1),
            max_query_bytes,
        }
    }

    /// Joins the open batch of `scope` for account `id` (which adds `bytes` to a query), or
    /// opens one.
    pub(super) fn join(&self, scope: &K, id: &str, bytes: usize) -> Joined<V> {
        let (sender, receiver) = oneshot::channel();
        let mut open = self.open.lock();
        if let Some(batch) = open.get(scope) {
            let mut members = batch.members.lock();
            let known = members.ids.iter().any(|i| i == id);
            let fits = known
                || (members.ids.len() < self.max_ids
                    && members.query_bytes + bytes <= self.max_query_bytes);
            if !members.closed && fits {
                if !known {
                    members.ids.push(id.to_owned());
                    members.query_bytes += bytes;
                }
                members.waiters.push((id.to_owned(), sender));
                return Joined::Member(receiver);
            }
        }
        let batch = Arc::new(Batch {
            members: Mutex::new(Members {
                ids: vec![id.to_owned()],
                query_bytes: bytes,
                waiters: vec![(id.to_owned(), sender)],
                closed: false,
            }),
        });
        open.insert(scope.clone(), batch.clone());
        Joined::Leader(batch, receiver)
    }

    /// Closes `batch` (the leader's call is about to be sent): it takes no one more, and the
    /// next lookup of `scope` opens a new one. The accounts to ask for.
    pub(super) fn close(&self, scope: &K, batch: &Arc<Batch<V>>) -> Vec<String> {
        let mut open = self.open.lock();
        if open.get(scope).is_some_and(|b| Arc::ptr_eq(b, batch)) {
            open.remove(scope);
        }
        let mut members = batch.members.lock();
        members.closed = true;
        members.ids.clone()
    }
}

/// Closes a batch when dropped: a leader that fails, or panics, before its call was sent never
/// leaves its batch open to lookups that would wait for it in vain.
pub(super) struct Closing<'a, K: Hash + Eq + Clone, V> {
    pub(super) batches: &'a Batches<K, V>,
    pub(super) scope: &'a K,
    pub(super) batch: &'a Arc<Batch<V>>,
}

impl<K: Hash + Eq + Clone, V> Drop for Closing<'_, K, V> {
    fn drop(&mut self) {
        self.batches.close(self.scope, self.batch);
    }
}

impl<V> Batch<V> {
    /// Answers every waiter with `each(its account)`; an answer whose waiter went away is
    /// given to `lost`. How many waited.
    pub(super) fn answer(&self, mut each: impl FnMut(&str) -> V, mut lost: impl FnMut(V)) -> usize {
        let waiters = std::mem::take(&mut self.members.lock().waiters);
        let n = waiters.len();
        for (id, sender) in waiters {
            if let Err(answer) = sender.send(each(&id)) {
                lost(answer);
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batches() -> Batches<u8, String> {
        Batches::new(3, 20)
    }

    #[tokio::test]
    async fn lookups_of_one_scope_share_the_open_batch_and_each_gets_its_own_answer() {
        let batches = batches();
        let Joined::Leader(batch, first) = batches.join(&1, "a", 2) else {
            panic!("the first opens the batch")
        };
        let Joined::Member(second) = batches.join(&1, "b", 2) else {
            panic!("the second joins it")
        };
        let Joined::Member(again) = batches.join(&1, "a", 2) else {
            panic!("the same account joins too")
        };
        let Joined::Leader(other, _) = batches.join(&2, "a", 2) else {
            panic!("another scope has a batch of its own")
        };
        assert!(!Arc::ptr_eq(&batch, &other));
        assert_eq!(batches.close(&1, &batch), ["a", "b"]);
        let mut lost = Vec::new();
        assert_eq!(
            batch.answer(|id| format!("answer for {id}"), |a| lost.push(a)),
            3
        );
        assert!(lost.is_empty());
        assert_eq!(first.await.unwrap(), "answer for a");
        assert_eq!(second.await.unwrap(), "answer for b");
        assert_eq!(again.await.unwrap(), "answer for a");
    }

    #[test]
    fn a_late_arrival_or_one_that_does_not_fit_opens_the_next_batch() {
        let batches = batches();
        let Joined::Leader(batch, _) = batches.join(&1, "a", 2) else {
            panic!()
        };
        batches.close(&1, &batch);
        assert!(
            matches!(batches.join(&1, "b", 2), Joined::Leader(..)),
            "a closed batch takes no one"
        );
        // At most three accounts, and at most 20 bytes of query.
        assert!(matches!(batches.join(&1, "c", 2), Joined::Member(_)));
        assert!(matches!(batches.join(&1, "d", 2), Joined::Member(_)));
        assert!(matches!(batches.join(&1, "e", 2), Joined::Leader(..)));
        assert!(matches!(batches.join(&1, "f", 18), Joined::Member(_)));
        assert!(matches!(batches.join(&1, "g", 1), Joined::Leader(..)));
    }

    #[tokio::test]
    async fn waiters_of_a_leader_that_went_away_are_told() {
        let batches = batches();
        let Joined::Leader(batch, _) = batches.join(&1, "a", 2) else {
            panic!()
        };
        let Joined::Member(member) = batches.join(&1, "b", 2) else {
            panic!()
        };
        // The leader's task ends without answering (its guard closes the batch).
        drop(Closing {
            batches: &batches,
            scope: &1,
            batch: &batch,
        });
        drop(batch);
        assert!(member.await.is_err(), "a closed channel, never a hang");
        assert!(
            matches!(batches.join(&1, "b", 2), Joined::Leader(..)),
            "and the next lookup opens a new batch"
        );
    }
}
