//! Request coalescing: concurrent identical misses make one upstream request.
//!
//! The first request for a key becomes the leader and fetches; the others follow and wait for
//! its outcome. Keys include tag generations (see `key`), so a request that starts after a
//! write never follows a fetch that started before it.
//!
//! Invariants:
//! - A follower never waits forever: it gives up after the coalescing timeout and fetches on its
//!   own (the read-through lock's age limit, as pingora has it).
//! - If the leader goes away without an outcome (its task panicked or was cancelled), its
//!   followers are woken and try again; they never hang on a dead flight.
//! - The map holds only keys being fetched right now; a completed or abandoned flight removes
//!   itself.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// Fetches in flight, by key.
pub(super) struct Flights<K, V> {
    /// `parking_lot::Mutex`: held only to look up, insert or remove, never across an await.
    map: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K, V> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            map: Arc::default(),
        }
    }
}

/// What a request does for a key.
pub(super) enum Role<K: Hash + Eq, V> {
    /// Fetch, then hand the outcome to [`Leader::complete`].
    Leader(Leader<K, V>),
    /// Wait for the leader's outcome with [`follow`].
    Follower(watch::Receiver<Option<V>>),
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Joins the flight for `key`, or starts one.
    pub(super) fn join(&self, key: K) -> Role<K, V> {
        let mut map = self.map.lock();
        if let Some(receiver) = map.get(&key)
            && receiver.has_changed().is_ok()
        {
            return Role::Follower(receiver.clone());
        }
        let (sender, receiver) = watch::channel(None);
        map.insert(key.clone(), receiver);
        Role::Leader(Leader {
            key,
            sender,
            map: self.map.clone(),
        })
    }
}

/// The request that fetches for everyone waiting on the same key.
pub(super) struct Leader<K: Hash + Eq, V> {
    key: K,
    sender: watch::Sender<Option<V>>,
    map: Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>,
}

impl<K: Hash + Eq, V> Leader<K, V> {
    /// Hands the outcome to every follower and ends the flight.
    pub(super) fn complete(self, outcome: V) {
        self.sender.send_replace(Some(outcome));
        // Drop removes the flight.
    }
}

impl<K: Hash + Eq, V> Drop for Leader<K, V> {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        // Remove only our own flight: a newer one may have replaced it after we were abandoned.
        if map
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.sender.subscribe()))
        {
            map.remove(&self.key);
        }
    }
}

/// Why a follower has no outcome to use.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum FollowError {
    /// The leader went away without an outcome: join again.
    Abandoned,
    /// The leader took longer than the coalescing timeout: fetch alone.
    TimedOut,
}

/// Waits for the leader's outcome, at most `timeout`.
pub(super) async fn follow<V: Clone>(
    mut receiver: watch::Receiver<Option<V>>,
    timeout: Duration,
) -> Result<V, FollowError> {
    let wait = receiver.wait_for(Option::is_some);
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(outcome)) => Ok(outcome.clone().expect("waited for Some")),
        Ok(Err(_)) => Err(FollowError::Abandoned),
        Err(_) => Err(FollowError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let flights: Flights<u32, &'static str> = Flights::default();
        let Role::Leader(leader) = flights.join(1) else {
            panic!("first is leader")
        };
        let Role::Follower(rx) = flights.join(1) else {
            panic!("second follows")
        };
        let waiting = tokio::spawn(follow(rx, Duration::from_secs(5)));
        leader.complete("answer");
        assert_eq!(waiting.await.unwrap(), Ok("answer"));
        assert!(
            matches!(flights.join(1), Role::Leader(_)),
            "the flight ended"
        );
    }

    #[tokio::test]
    async fn an_abandoned_flight_wakes_its_followers() {
        let flights: Flights<u32, u8> = Flights::default();
        let Role::Leader(leader) = flights.join(1) else {
            panic!()
        };
        let Role::Follower(rx) = flights.join(1) else {
            panic!()
        };
        drop(leader);
        assert_eq!(
            follow(rx, Duration::from_secs(5)).await,
            Err(FollowError::Abandoned)
        );
        assert!(flights.map.lock().is_empty());
    }

    #[tokio::test]
    async fn followers_give_up_after_the_timeout() {
        let flights: Flights<u32, u8> = Flights::default();
        let Role::Leader(_leader) = flights.join(1) else {
            panic!()
        };
        let Role::Follower(rx) = flights.join(1) else {
            panic!()
        };
        assert_eq!(
            follow(rx, Duration::from_millis(20)).await,
            Err(FollowError::TimedOut)
        );
    }
}
