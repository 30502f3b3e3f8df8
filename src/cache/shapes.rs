//! Whether this site's single and bulk answers of one account agree, so that one route's answer
//! may be built from the other's objects.
//!
//! The spec's `User` and `BulkUserLookup` are close, not identical, and what the live edge
//! sends cannot be assumed. Per route family and `expand` set, a pair of real answers of the
//! same account — a single lookup's and a bulk lookup's — is compared once (one extra call
//! upstream), and again after `cache.merge.recheck`:
//! - `/user`: the single answer must equal the bulk object with the bulk envelope's
//!   `_links.base` and `_links.context` added to its `_links` (upstream's single answers state
//!   the site's base in every object; a bulk answer states it once, in its envelope);
//! - `/user/email`: the single record must equal the bulk record.
//!
//! Invariants: nothing of one route is built from the other's objects unless the pair was
//! seen to agree (`Agreement::Agree`); a disagreement is logged once per family and `expand`
//! set, shown on `/metrics` (`wikigate_account_shapes`) and the status page, and turns reuse
//! and merging off for it until a later check agrees; no key or value is ever invented — the
//! transformation only moves what upstream sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::routes::Route;

/// Routes that answer the same accounts one at a time and in bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    /// `/user` and `/user/bulk`.
    User,
    /// `/user/email` and `/user/email/bulk`.
    Email,
}

impl Family {
    pub(crate) fn of(route: Route) -> Option<Family> {
        match route {
            Route::User | Route::Bulk => Some(Family::User),
            Route::Email | Route::EmailBulk => Some(Family::Email),
            _ => None,
        }
    }

    /// The route of single lookups.
    pub(crate) fn single(self) -> Route {
        match self {
            Family::User => Route::User,
            Family::Email => Route::Email,
        }
    }

    /// The route of bulk lookups.
    pub(crate) fn bulk(self) -> Route {
        match self {
            Family::User => Route::Bulk,
            Family::Email => Route::EmailBulk,
        }
    }

    /// A single answer made from a bulk object of the same account (see the module doc); `None`
    /// when the object is not JSON of that shape.
    pub(crate) fn single_from_bulk(self, object: &[u8], envelope_links: &Value) -> Option<Bytes> {
        match self {
            Family::Email => Some(Bytes::copy_from_slice(object)),
            Family::User => {
                let mut object: Value = serde_json::from_slice(object).ok()?;
                add_site_links(&mut object, envelope_links)?;
                Some(Bytes::from(object.to_string()))
            }
        }
    }

    /// Whether a stored single answer and the one made from a bulk object of the same account
    /// ([`Family::single_from_bulk`]) are the same JSON: `Err` names the first difference, for
    /// the log.
    pub(crate) fn same(single: &[u8], made: &[u8]) -> Result<(), String> {
        let single: Value =
            serde_json::from_slice(single).map_err(|_| "the single answer is not JSON")?;
        let made: Value =
            serde_json::from_slice(made).map_err(|_| "the bulk object is not JSON")?;
        if made == single {
            return Ok(());
        }
        let (Value::Object(made), Value::Object(single)) = (&made, &single) else {
            return Err("the single answer is not a JSON object".to_owned());
        };
        let differs = made
            .keys()
            .chain(single.keys())
            .find(|key| made.get(*key) != single.get(*key))
            .map_or_else(String::new, |key| format!("`{key}` differs"));
        Err(differs)
    }
}

/// Adds the envelope's `_links.base` and `_links.context` (those it has) to an object's
/// `_links`; `None` when either has no `_links` object.
fn add_site_links(object: &mut Value, envelope_links: &Value) -> Option<()> {
    let links = object.get_mut("_links")?.as_object_mut()?;
    let site = envelope_links.as_object()?;
    for name in ["base", "context"] {
        if let Some(value) = site.get(name) {
            links.insert(name.to_owned(), value.clone());
        }
    }
    Some(())
}

/// What is known of one family and `expand` set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Agreement {
    /// Not compared yet (or the last try to compare failed).
    Unknown,
    Agree,
    Disagree,
}

#[derive(Debug)]
struct Shape {
    agreement: Agreement,
    /// When it was last compared (or last tried).
    checked: Option<Instant>,
    /// A comparison is under way.
    checking: bool,
}

/// After a failed try to compare, how long until the next.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The agreement of every family and `expand` set seen, for this process.
pub(super) struct Shapes {
    /// `parking_lot::Mutex`: held only to read or change one state, never across an await.
    states: Mutex<HashMap<(Family, String), Shape>>,
    recheck: Duration,
    metrics: Arc<Metrics>,
}

impl Shapes {
    pub(super) fn new(recheck: Duration, metrics: Arc<Metrics>) -> Shapes {
        Shapes {
            states: Mutex::default(),
            recheck,
            metrics,
        }
    }

    pub(super) fn agreement(&self, family: Family, expand: &str) -> Agreement {
        self.states
            .lock()
            .get(&(family, expand.to_owned()))
            .map_or(Agreement::Unknown, |shape| shape.agreement)
    }

    /// Whether the caller should compare a pair now (never compared, or due again, and no
    /// comparison under way); if so, it is the one comparison until [`Shapes::record`].
    pub(super) fn claim_check(&self, family: Family, expand: &str) -> bool {
        let now = Instant::now();
        let mut states = self.states.lock();
        let shape = states.entry((family, expand.to_owned())).or_insert(Shape {
            agreement: Agreement::Unknown,
            checked: None,
            checking: false,
        });
        let wait = match shape.agreement {
            Agreement::Unknown => RETRY_AFTER_FAILURE,
            _ => self.recheck,
        };
        let due = shape.checked.is_none_or(|at| now >= at + wait);
        if shape.checking || !due {
            return false;
        }
        shape.checking = true;
        true
    }

    /// The outcome of a comparison: `None` when no pair could be had (tried again later).
    pub(super) fn record(&self, family: Family, expand: &str, outcome: Option<Result<(), String>>) {
        let mut states = self.states.lock();
        let Some(shape) = states.get_mut(&(family, expand.to_owned())) else {
            return;
        };
        shape.checking = false;
        shape.checked = Some(Instant::now());
        let was = shape.agreement;
        shape.agreement = match &outcome {
            None => was,
            Some(Ok(())) => Agreement::Agree,
            Some(Err(_)) => Agreement::Disagree,
        };
        match (&outcome, was) {
            (Some(Err(difference)), Agreement::Unknown | Agreement::Agree) => tracing::warn!(
                route = family.single().name(),
                expand,
                difference = %difference,
                "this site's single and bulk answers of one account differ: neither is built \
                 from the other's objects, and single lookups are not merged into bulk calls"
            ),
            (Some(Ok(())), Agreement::Unknown | Agreement::Disagree) => tracing::info!(
                route = family.single().name(),
                expand,
                "this site's single and bulk answers of one account agree: each is answered \
                 from the other's objects, and single lookups may be merged into bulk calls"
            ),
            _ => {}
        }
        let mut counts = [0i64; 3];
        for ((f, _), shape) in states.iter() {
            if *f == family {
                counts[shape.agreement as usize] += 1;
            }
        }
        self.metrics.account_shapes(family.single(), counts);
    }

    /// Every family and `expand` set compared or being compared, for the status page:
    /// `(route, expand, state)`.
    pub(super) fn all(&self) -> Vec<(Route, String, Agreement)> {
        let mut all: Vec<_> = self
            .states
            .lock()
            .iter()
            .map(|((family, expand), shape)| (family.single(), expand.clone(), shape.agreement))
            .collect();
        all.sort_by(|a, b| (a.0.name(), &a.1).cmp(&(b.0.name(), &b.1)));
        all
    }
}

impl Agreement {
    pub(crate) fn as_str(self) -> &'static str {
        crate::metrics::SHAPE_STATES[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope_links() -> Value {
        json!({ "base": "https://site.example/wiki", "context": "/wiki" })
    }

    #[test]
    fn a_single_answer_is_the_bulk_object_with_the_envelopes_site_links() {
        let object = json!({
            "type": "known", "accountId": "712020:a",
            "_links": { "self": "https://site.example/wiki/rest/api/user?accountId=712020:a" },
        });
        let single = json!({
            "type": "known", "accountId": "712020:a",
            "_links": {
                "self": "https://site.example/wiki/rest/api/user?accountId=712020:a",
                "base": "https://site.example/wiki", "context": "/wiki",
            },
        });
        let made = Family::User
            .single_from_bulk(object.to_string().as_bytes(), &envelope_links())
            .unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&made).unwrap(), single);
        assert_eq!(Family::same(single.to_string().as_bytes(), &made), Ok(()));
    }

    #[test]
    fn a_key_only_one_side_has_is_a_disagreement_named() {
        let object = json!({ "type": "known", "accountId": "712020:a", "_links": {} });
        let single = json!({
            "type": "known", "accountId": "712020:a", "isGuest": false,
            "_links": { "base": "https://site.example/wiki", "context": "/wiki" },
        });
        let made = Family::User
            .single_from_bulk(object.to_string().as_bytes(), &envelope_links())
            .unwrap();
        let verdict = Family::same(single.to_string().as_bytes(), &made);
        assert_eq!(verdict, Err("`isGuest` differs".to_owned()));
        // Email records are taken as they are.
        let record = json!({ "accountId": "712020:a", "email": "a@example.com" });
        let made = Family::Email
            .single_from_bulk(record.to_string().as_bytes(), &Value::Null)
            .unwrap();
        assert!(Family::same(record.to_string().as_bytes(), &made).is_ok());
        let other = json!({ "accountId": "712020:a", "email": "" });
        assert!(Family::same(other.to_string().as_bytes(), &made).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn one_check_at_a_time_and_again_when_due() {
        let shapes = Shapes::new(Duration::from_secs(3600), Arc::default());
        assert_eq!(shapes.agreement(Family::User, ""), Agreement::Unknown);
        assert!(shapes.claim_check(Family::User, ""));
        assert!(
            !shapes.claim_check(Family::User, ""),
            "one comparison at a time"
        );
        shapes.record(Family::User, "", Some(Ok(())));
        assert_eq!(shapes.agreement(Family::User, ""), Agreement::Agree);
        assert!(!shapes.claim_check(Family::User, ""), "not due yet");
        tokio::time::advance(Duration::from_secs(3601)).await;
        assert!(shapes.claim_check(Family::User, ""), "due again");
        shapes.record(Family::User, "", Some(Err("`x` differs".to_owned())));
        assert_eq!(shapes.agreement(Family::User, ""), Agreement::Disagree);
        // Other expand sets and families are their own.
        assert_eq!(
            shapes.agreement(Family::User, "operations"),
            Agreement::Unknown
        );
        assert_eq!(shapes.agreement(Family::Email, ""), Agreement::Unknown);
        // A failed try keeps what was known and is tried again after a minute.
        assert!(shapes.claim_check(Family::Email, ""));
        shapes.record(Family::Email, "", None);
        assert!(!shapes.claim_check(Family::Email, ""));
        tokio::time::advance(RETRY_AFTER_FAILURE).await;
        assert!(shapes.claim_check(Family::Email, ""));
    }
}
