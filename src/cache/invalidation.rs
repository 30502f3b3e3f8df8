//! Invalidation: a write's bump of the tags it changed, an operator's purge, and the
//! generations a cluster's replicas share (`Listener`).
//!
//! Invariants: a write's bump happens after upstream answered and before its response is sent
//! (the gateway awaits [`Cache::invalidate`]); every key from before a bump is unreachable
//! after it, on this replica at once and on every replica as soon as it reads the counter
//! (resource tags: from the shared tier, on every lookup) or adopts the generation (epoch,
//! routes: on the cluster's next sync or purge message); generations only ever rise.

use super::generations;
use super::{Cache, Tag};
use crate::cluster::{Confirmation, Listener};
use crate::routes::Route;
use tokio::time::Instant;

impl Cache {
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
        if let Some(shared) = &self.shared {
            let slots: Vec<usize> = tags.iter().map(generations::slot).collect();
            if !slots.is_empty() && !shared.bump(&slots).await {
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
            Some(Tag::Account { id }) => format!("account:{}", generations::account_slot(id)),
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
        match (route_field(field), account_field(field)) {
            (Some(route), _) => self.generations.bump(&Tag::Route(route)),
            (None, Some(slot)) => self.generations.bump_account(slot),
            (None, None) => {
                self.generations.bump_epoch();
                self.memory.clear();
            }
        }
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
        let accounts = self
            .generations
            .accounts_moved()
            .into_iter()
            .map(|(slot, value)| (format!("account:{slot}"), value));
        [
            ("epoch".to_owned(), self.generations.epoch()),
            ("era".to_owned(), self.generations.era()),
        ]
        .into_iter()
        .chain(routes)
        .chain(accounts)
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
                    self.memory.clear();
                }
                // Entries of an old era are unreachable and age out.
                None if field == "era" => {
                    self.generations.raise_era(*value);
                }
                // So are a purged account's.
                None => {
                    if let Some(slot) = account_field(field) {
                        self.generations.raise_account(slot, *value);
                    }
                }
            }
        }
    }
}

/// The route a shared generation's field (`route:NAME`) names.
fn route_field(field: &str) -> Option<Route> {
    Route::named(field.strip_prefix("route:")?)
}

/// The account counter a shared generation's field (`account:SLOT`) names.
fn account_field(field: &str) -> Option<usize> {
    field.strip_prefix("account:")?.parse().ok()
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
