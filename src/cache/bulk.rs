//! Bulk lookups, account by account: `/user/bulk` and `/user/email/bulk` answered from
//! per-account entries, asking upstream only for the accounts not cached yet.
//!
//! A bulk lookup names up to 200 accounts (upstream considers only the first 200; so does this
//! module). Each account's object is stored under a key of its own — partition, route, `expand`
//! set, account id, generations — so a later lookup of any overlapping set reuses it. An
//! account upstream omitted (unknown, or not visible to this caller) is remembered as such for
//! `cache.negative_ttl`. The envelope (everything of upstream's answer but its `results`, and
//! upstream's headers) is stored per partition too, so an answer assembled entirely from the
//! cache carries exactly the keys and the headers upstream gave this caller.
//!
//! Invariants:
//! - The assembled answer equals what upstream would answer for the same request: accounts in
//!   request order, duplicates once, unknown ones omitted, `limit` applied after omission, the
//!   envelope's keys those upstream sent and no others, with `start`/`limit`/`size` (and
//!   `_links.self`, when upstream sends one) made for the request as made.
//! - Entries are per partition, like every other cache entry: no account object fetched for
//!   one caller is ever part of another caller's answer.
//! - Upstream is asked for at most 200 accounts at once, without `limit`, so that every account
//!   it omits really is unknown to it.
//! - Only plain lookups take this path (`accountId`, `expand` and, for `/user/bulk`, a valid
//!   `limit`); anything else is cached as a whole answer, exactly as forwarded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::etag::ETags;
use super::key::normalized_query;
use super::read::is_upstream_failure;
use super::shapes::Family;
use super::{
    Buffered, Cache, CacheKey, Entry, Fetched, Forward, Lifetime, Lookup, Origin, Outcome,
    Partition, Served, Stored, Tier,
};
use crate::body::Body;
use crate::coding::{self, Accepts, Coding};
use crate::error::GatewayError;
use crate::quota;
use crate::routes::Route;

/// The `expand` values the spec documents for `/user/bulk`.
pub(super) const EXPANDABLE: [&str; 3] = ["operations", "personalSpace", "isExternalCollaborator"];

/// The most accounts upstream considers in one lookup.
pub(super) const MAX_IDS: usize = 200;

/// A bulk lookup the per-account cache can answer.
#[derive(Debug, Clone)]
pub struct BulkPlan {
    lookup: Lookup,
    /// Where its accounts' objects are kept.
    scope: Scope,
    /// Requested accounts, first occurrences only, at most [`MAX_IDS`].
    ids: Vec<String>,
    /// `/user/bulk`'s `limit` (default 200); `None` for `/user/email/bulk`.
    limit: Option<usize>,
    /// The request's own query, for the envelope's `_links.self`.
    query: String,
}

/// Where a partition's account objects of one route family and `expand` set are kept: what
/// bulk lookups, single lookups and merged calls of those accounts share. Its generations are
/// both routes' (a purge of either drops the objects), never a resource's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scope {
    pub(super) partition: Partition,
    pub(super) family: Family,
    /// The `expand` set, sorted and comma-joined (part of every account's key).
    pub(super) expand: String,
    /// The epoch, the single route's generation and the bulk route's.
    generations: [u64; 3],
}

/// The per-partition envelope: upstream's answer without its `results` (for `/user/bulk`;
/// `/user/email/bulk` answers a bare array), and the headers upstream sent this caller.
pub(super) struct Envelope {
    keys: Option<Map<String, Value>>,
    pub(super) headers: HeaderMap,
}

/// What storing a bulk answer made: the envelope entry, and the account entries by id.
type StoredAnswer = (Arc<Entry>, Vec<(String, Arc<Entry>)>);

impl Cache {
    /// The plan for a read, if it is a bulk lookup the per-account cache answers.
    pub fn bulk_plan(&self, lookup: &Lookup, query: Option<&str>) -> Option<BulkPlan> {
        let bulk = match lookup.route {
            Route::Bulk => true,
            Route::EmailBulk => false,
            _ => return None,
        };
        if !self.config.bulk_entities || lookup.directive != super::Directive::Normal {
            return None;
        }
        let family = Family::of(lookup.route)?;
        let mut ids: Vec<String> = Vec::new();
        let (mut expand, mut limit) = (String::new(), None);
        // In request order (account order matters), except `expand`, which is a set. Only
        // text takes this path: anything else is left to the whole-answer cache.
        let expand_set = normalized_query(query)
            .into_iter()
            .find(|(name, _)| name.as_ref() == b"expand")
            .map(|(_, value)| String::from_utf8(value.into_owned()))
            .transpose()
            .ok()?;
        for (name, value) in crate::query::pairs(query.unwrap_or_default()) {
            let value = std::str::from_utf8(&value).ok()?;
            match name.as_ref() {
                b"accountId" => {
                    for id in value.split(',').map(str::trim).filter(|id| !id.is_empty()) {
                        if !ids.iter().any(|seen| seen == id) {
                            ids.push(id.to_owned());
                        }
                    }
                }
                b"expand" if bulk => {
                    // Only the documented values; anything else is forwarded as sent.
                    let set = expand_set.clone().unwrap_or_default();
                    if !set.split(',').all(|v| EXPANDABLE.contains(&v)) {
                        return None;
                    }
                    expand = set;
                }
                b"limit" if bulk => {
                    let n: usize = value.parse().ok()?;
                    if !(1..=MAX_IDS).contains(&n) {
                        return None;
                    }
                    limit = Some(n);
                }
                // Anything else: leave the request to the whole-answer cache, as forwarded.
                _ => return None,
            }
        }
        if ids.is_empty() {
            return None;
        }
        ids.truncate(MAX_IDS);
        Some(BulkPlan {
            lookup: *lookup,
            scope: self.scope(lookup.partition, family, expand),
            ids,
            limit: bulk.then(|| limit.unwrap_or(MAX_IDS)),
            query: query.unwrap_or_default().to_owned(),
        })
    }

    /// Where `partition`'s account objects of `family` and `expand` are kept now.
    pub(super) fn scope(&self, partition: Partition, family: Family, expand: String) -> Scope {
        Scope {
            partition,
            family,
            expand,
            generations: [
                self.generations.epoch(),
                self.generations.route(family.single()),
                self.generations.route(family.bulk()),
            ],
        }
    }

    /// The key of an account's object in `scope` (`id` empty: the envelope), which the
    /// account's purge reaches.
    pub(super) fn account_key(&self, scope: &Scope, id: &str) -> CacheKey {
        let [epoch, single, bulk] = scope.generations;
        let account = match id {
            "" => 0,
            id => self.generations.account(id),
        };
        CacheKey::account(
            &self.key_secret,
            scope.partition,
            scope.family.bulk(),
            &scope.expand,
            id,
            &[epoch, single, bulk, account],
        )
    }

    /// An account's object and the envelope it came with, when both are held fresh and are at
    /// most `max_age` old (the asking route's own TTL).
    pub(super) fn fresh_account(
        &self,
        scope: &Scope,
        id: &str,
        max_age: Duration,
    ) -> Option<(Arc<Entry>, Arc<Entry>)> {
        let now = Instant::now();
        let fresh = |key| {
            self.memory
                .get(&key)
                .filter(|e: &Arc<Entry>| e.is_fresh(now) && e.age(now) < max_age)
        };
        let envelope = fresh(self.account_key(scope, ""))?;
        Some((fresh(self.account_key(scope, id))?, envelope))
    }

    /// Answers a bulk lookup from per-account entries; `origin` is asked for the accounts not
    /// cached (the same path, with a query naming only them).
    pub async fn bulk_read(
        &self,
        plan: BulkPlan,
        request_headers: &HeaderMap,
        origin: &dyn Origin,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let now = Instant::now();
        let (mut envelope, mut accounts) = self.cached_accounts(&plan, |e| e.is_fresh(now));
        let missing: Vec<&str> = plan
            .ids
            .iter()
            .zip(&accounts)
            .filter(|(_, entry)| entry.is_none() || envelope.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let fetched = missing.len();
        if fetched > 0 {
            let query = upstream_query(&missing, &plan.scope.expand);
            let answer = match origin.fetch(Some(query)).await {
                Ok(Fetched::Buffered(answer)) if answer.status == StatusCode::OK => answer,
                other => {
                    let failed = match &other {
                        Err(_) => Some(None),
                        Ok(Fetched::Buffered(answer)) if is_upstream_failure(answer.status) => {
                            Some(Some(answer.status))
                        }
                        _ => None,
                    };
                    if let Some(status) = failed
                        && let Some(stale) = self.stale_bulk(&plan, request_headers, status, now)
                    {
                        return stale;
                    }
                    return not_stored(other?, plan.lookup.head, request_headers);
                }
            };
            let (new_envelope, new_accounts) =
                self.store_accounts(&plan.scope, &missing, answer)?;
            envelope = Some(new_envelope);
            for (slot, id) in accounts.iter_mut().zip(&plan.ids) {
                if let Some((_, entry)) = new_accounts.iter().find(|(i, _)| i == id) {
                    *slot = Some(entry.clone());
                }
            }
        }
        let route = plan.lookup.route;
        let of = plan.ids.len();
        self.assembled(&plan, envelope, &accounts, request_headers, now, |found| {
            served(route, fetched, of, found)
        })
    }

    /// A bulk lookup upstream failed to answer (with `status`, or none), answered from the
    /// accounts and envelope within their stale-if-error window, if every one is.
    fn stale_bulk(
        &self,
        plan: &BulkPlan,
        request_headers: &HeaderMap,
        status: Option<StatusCode>,
        now: Instant,
    ) -> Option<Result<(Response<Body>, Served), GatewayError>> {
        let servable = |e: &Arc<Entry>| e.is_fresh(now) || e.may_serve_on_error(now);
        let (envelope, accounts) = self.cached_accounts(plan, servable);
        if envelope.is_none() || accounts.iter().any(Option::is_none) {
            return None;
        }
        Some(
            self.assembled(plan, envelope, &accounts, request_headers, now, |_| {
                Served {
                    outcome: Outcome::StaleIfError(status),
                    saved_points: None,
                }
            }),
        )
    }

    /// The answer upstream would give, assembled from `accounts` (in request order) and the
    /// envelope; `served` says how, given how many accounts it lists.
    fn assembled(
        &self,
        plan: &BulkPlan,
        envelope: Option<Arc<Entry>>,
        accounts: &[Option<Arc<Entry>>],
        request_headers: &HeaderMap,
        now: Instant,
        served: impl FnOnce(usize) -> Served,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let envelope = envelope
            .as_deref()
            .and_then(Envelope::from_entry)
            .ok_or_else(|| {
                GatewayError::Internal("a cached bulk envelope is not readable".to_owned())
            })?;
        let found: Vec<&Bytes> = accounts
            .iter()
            .flatten()
            .filter(|e| e.status == StatusCode::OK)
            .filter_map(|e| e.plain())
            .take(plan.limit.unwrap_or(usize::MAX))
            .collect();
        let body = assemble(plan, &envelope, &found);
        let fresh_for = accounts
            .iter()
            .flatten()
            .map(|e| e.lifetime().ttl.saturating_sub(e.age(now)))
            .min()
            .unwrap_or_default();
        let served = served(found.len());
        // A stale answer says how old it is: as old as its oldest part.
        let age = matches!(served.outcome, Outcome::StaleIfError(_))
            .then(|| accounts.iter().flatten().map(|e| e.age(now)).max())
            .flatten();
        let mut response = respond(
            body,
            &envelope,
            request_headers,
            plan.lookup.head,
            fresh_for,
            &served.outcome,
        );
        if let Some(age) = age {
            response
                .headers_mut()
                .insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        Ok((response, served))
    }

    /// The lookup's envelope and accounts this replica holds that `usable` takes, in request
    /// order.
    fn cached_accounts(
        &self,
        plan: &BulkPlan,
        usable: impl Fn(&Arc<Entry>) -> bool,
    ) -> (Option<Arc<Entry>>, Vec<Option<Arc<Entry>>>) {
        let get = |id: &str| {
            self.memory
                .get(&self.account_key(&plan.scope, id))
                .filter(&usable)
        };
        let envelope = get("");
        let accounts = plan.ids.iter().map(|id| get(id)).collect();
        (envelope, accounts)
    }

    /// Stores every account of an upstream bulk answer in `scope`, the accounts it omitted as
    /// unknown, and the envelope; returns the envelope entry and the new account entries.
    pub(super) fn store_accounts(
        &self,
        scope: &Scope,
        asked: &[&str],
        answer: Buffered,
    ) -> Result<StoredAnswer, GatewayError> {
        let Parsed {
            objects,
            keys,
            site_base,
        } = self.parse_bulk(scope, &answer)?;
        let route = scope.family.bulk();
        let policy = *self.routes.load().get(route);
        // Kept, past their TTL, for the route's stale-if-error window (a bulk lookup upstream
        // fails to answer is assembled from them).
        let kept = |ttl| Lifetime {
            stale_if_error: policy.stale_if_error,
            ..Lifetime::fresh_for(ttl)
        };
        let found_lifetime = kept(policy.ttl);
        let mut stored = Vec::with_capacity(asked.len());
        for mut object in objects {
            let Some(id) = object
                .get("accountId")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            if let Some(Value::String(url)) = object.pointer_mut("/_links/self")
                && let Some(rewritten) = self.links.rewrite_self(url, &site_base)
            {
                *url = rewritten;
            }
            let account = Buffered::plain(
                StatusCode::OK,
                json_headers(),
                Bytes::from(object.to_string()),
            );
            let points = quota::cost_of(route, 1);
            stored.push((id, self.store_account(account, found_lifetime, points)));
        }
        let negative_lifetime = kept(self.config.negative_ttl);
        for id in asked {
            if !stored.iter().any(|(i, _)| i == id) {
                let unknown =
                    Buffered::plain(StatusCode::NOT_FOUND, HeaderMap::new(), Bytes::new());
                stored.push((
                    (*id).to_owned(),
                    self.store_account(unknown, negative_lifetime, 1),
                ));
            }
        }
        for (id, entry) in &stored {
            self.memory
                .insert(self.account_key(scope, id), entry.clone());
        }
        let envelope = Envelope {
            keys,
            headers: answer.headers,
        };
        let entry = Arc::new(envelope.into_entry(found_lifetime));
        self.memory
            .insert(self.account_key(scope, ""), entry.clone());
        self.metrics.stored(route, stored.len() as u64);
        Ok((entry, stored))
    }

    /// An account's entry (always identity: fragments of answers assembled per request).
    fn store_account(&self, account: Buffered, lifetime: Lifetime, points: u32) -> Arc<Entry> {
        let no_request = HeaderMap::new();
        Arc::new(Entry::new(
            account.priced(points),
            &no_request,
            lifetime,
            false,
            Coding::Identity,
        ))
    }

    /// A bulk answer, read.
    fn parse_bulk(&self, scope: &Scope, answer: &Buffered) -> Result<Parsed, GatewayError> {
        let invalid = || {
            GatewayError::UpstreamProtocol("the bulk answer is not the documented JSON".to_owned())
        };
        let value: Value = serde_json::from_slice(answer.body()).map_err(|_| invalid())?;
        let (objects, mut keys) = match (scope.family, value) {
            // Taken out of its place, which stays in upstream's key order.
            (Family::User, Value::Object(mut keys)) => {
                match keys.get_mut("results").map(Value::take) {
                    Some(Value::Array(objects)) => (objects, Some(keys)),
                    _ => return Err(invalid()),
                }
            }
            (Family::Email, Value::Array(objects)) => (objects, None),
            _ => return Err(invalid()),
        };
        let site_base = keys
            .as_ref()
            .and_then(|k| k.get("_links"))
            .and_then(|l| l.get("base"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if let Some(keys) = &mut keys {
            let mut envelope = Value::Object(std::mem::take(keys));
            self.links.rewrite_json(&mut envelope);
            if let Value::Object(rewritten) = envelope {
                *keys = rewritten;
            }
        }
        Ok(Parsed {
            objects,
            keys,
            site_base,
        })
    }
}

/// A bulk answer, read: its objects, its envelope (its keys but `results`, links rewritten;
/// none for `/user/email/bulk`, a bare array) and the site's base its links were relative to.
struct Parsed {
    objects: Vec<Value>,
    keys: Option<Map<String, Value>>,
    site_base: String,
}

/// What a bulk lookup of `route` that asked upstream for `fetched` of its `of` accounts did;
/// `found` is how many accounts its answer lists.
fn served(route: Route, fetched: usize, of: usize, found: usize) -> Served {
    let (outcome, saved_points) = match fetched {
        // The call and its objects, all saved.
        0 => (
            Outcome::Hit(Tier::Memory),
            Some(quota::cost_of(route, found as u32)),
        ),
        n if n == of => (Outcome::STORED, None),
        n => (Outcome::Partial { fetched: n, of }, None),
    };
    Served {
        outcome,
        saved_points,
    }
}

/// The headers of a stored account object.
fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=UTF-8"),
    );
    headers
}

/// Upstream's answer to the missing accounts, passed on as it came: an error status, or an
/// answer too large to hold.
fn not_stored(
    fetched: Fetched,
    head: bool,
    request_headers: &HeaderMap,
) -> Result<(Response<Body>, Served), GatewayError> {
    let (mut response, stored) = match fetched {
        Fetched::Buffered(answer) => {
            let accepts = Accepts::of(request_headers);
            (answer.to_response(head, accepts), Stored::No)
        }
        Fetched::Streamed(response) => (response, Stored::TooLarge),
        Fetched::Undeliverable(error) => return Err(error),
    };
    let served = Served {
        outcome: Outcome::Forwarded {
            why: Forward::Miss,
            collapsed: false,
            stored,
        },
        saved_points: None,
    };
    super::mark(&mut response, &served.outcome);
    Ok((response, served))
}

impl Envelope {
    fn into_entry(self, lifetime: Lifetime) -> Entry {
        let body = match self.keys {
            Some(keys) => Value::Object(keys).to_string(),
            None => "null".to_owned(),
        };
        let answer = Buffered::plain(StatusCode::OK, self.headers, Bytes::from(body));
        Entry::new(answer, &HeaderMap::new(), lifetime, false, Coding::Identity)
    }

    /// The envelope's `_links` (`null` when it has none, as `/user/email/bulk`'s).
    pub(super) fn links(&self) -> &Value {
        self.keys
            .as_ref()
            .and_then(|keys| keys.get("_links"))
            .unwrap_or(&Value::Null)
    }

    pub(super) fn from_entry(entry: &Entry) -> Option<Envelope> {
        let keys = match serde_json::from_slice(entry.plain()?).ok()? {
            Value::Object(keys) => Some(keys),
            _ => None,
        };
        Some(Envelope {
            keys,
            headers: entry.headers(),
        })
    }
}

/// What is escaped in a query value wikigate writes.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b',')
    .add(b'<')
    .add(b'=')
    .add(b'>');

/// The length of account `id` in a query wikigate writes.
pub(super) fn encoded_len(id: &str) -> usize {
    utf8_percent_encode(id, QUERY_VALUE).map(str::len).sum()
}

/// The query asking upstream for `ids` (at most 200, no `limit`: nothing is cut off).
pub(super) fn upstream_query(ids: &[&str], expand: &str) -> String {
    // Commas separate the set's values.
    const EXPAND_VALUE: &AsciiSet = &QUERY_VALUE.remove(b',');
    let encoded: Vec<String> = ids
        .iter()
        .map(|id| utf8_percent_encode(id, QUERY_VALUE).to_string())
        .collect();
    let mut query = format!("accountId={}", encoded.join(","));
    if !expand.is_empty() {
        // Documented values only (see `bulk_plan`), but encoded all the same.
        query.push_str("&expand=");
        query.push_str(&utf8_percent_encode(expand, EXPAND_VALUE).to_string());
    }
    query
}

/// The answer upstream would give: the objects in request order, in upstream's shape — the
/// keys of upstream's envelope in upstream's order, `results` and the counts made for this
/// request, and no key upstream did not send.
fn assemble(plan: &BulkPlan, envelope: &Envelope, found: &[&Bytes]) -> Bytes {
    let mut results = Vec::with_capacity(found.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
    results.push(b'[');
    for (i, object) in found.iter().enumerate() {
        if i > 0 {
            results.push(b',');
        }
        results.extend_from_slice(object);
    }
    results.push(b']');
    let (Some(limit), Some(keys)) = (plan.limit, &envelope.keys) else {
        return Bytes::from(results);
    };
    let mut body = Vec::with_capacity(results.len() + 512);
    body.push(b'{');
    for (i, (key, value)) in keys.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(Value::from(key.as_str()).to_string().as_bytes());
        body.push(b':');
        let made = match key.as_str() {
            "results" => {
                body.extend_from_slice(&results);
                continue;
            }
            "start" => Value::from(0),
            "limit" => Value::from(limit),
            "size" => Value::from(found.len()),
            "_links" => links_for(plan, value),
            _ => value.clone(),
        };
        body.extend_from_slice(made.to_string().as_bytes());
    }
    body.push(b'}');
    Bytes::from(body)
}

/// The envelope's `_links` for this request: upstream's, with a `self` (when upstream sends
/// one) naming this request rather than the one that fetched the missing accounts.
fn links_for(plan: &BulkPlan, links: &Value) -> Value {
    let mut links = links.clone();
    let base = links.get("base").and_then(Value::as_str).map(str::to_owned);
    let context = links
        .get("context")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let (Some(Value::String(url)), Some(base)) = (links.get_mut("self"), base) {
        let path = plan
            .lookup
            .route
            .template()
            .trim_start_matches(context.as_str());
        *url = format!("{base}{path}?{}", plan.query);
    }
    links
}

fn respond(
    body: Bytes,
    envelope: &Envelope,
    request_headers: &HeaderMap,
    head: bool,
    fresh_for: Duration,
    outcome: &Outcome,
) -> Response<Body> {
    let etags = ETags::of(&body);
    let not_modified = etags.matched_by(request_headers);
    // Assembled per request: identity, unless the client refuses it (then gzip, made now).
    let accepts = Accepts::of(request_headers);
    let (coding, body) = match accepts.identity() || !accepts.gzip() {
        true => (Coding::Identity, body),
        false => (Coding::Gzip, coding::gzip(&body)),
    };
    let length = body.len();
    let mut response = Response::new(if head || not_modified {
        Body::empty()
    } else {
        Body::full(body)
    });
    let headers = response.headers_mut();
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    } else {
        headers.clone_from(&envelope.headers);
        if let Some(value) = coding.header_value() {
            headers.insert(header::CONTENT_ENCODING, value);
        }
        if head {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let headers = response.headers_mut();
    super::add_vary_accept_encoding(headers);
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("private, max-age={}", fresh_for.as_secs())).expect("ascii"),
    );
    headers.insert(header::ETAG, etags.get(coding));
    headers.insert(super::outcome::CACHE_STATUS.clone(), outcome.cache_status());
    response
}
