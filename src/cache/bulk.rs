//! Bulk lookups, account by account: `/user/bulk` and `/user/email/bulk` answered from
//! per-account entries, asking upstream only for the accounts not cached yet.
//!
//! A bulk lookup names up to 200 accounts (upstream considers only the first 200; so does this
//! module). Each account's object is stored under a key of its own — partition, route, `expand`
//! set, account id, generations — so a later lookup of any overlapping set reuses it. An
//! account upstream omitted (unknown, or not visible to this caller) is remembered as such for
//! `cache.negative_ttl`. The envelope (`_links.base`/`context` and upstream's headers) is stored
//! per partition too, so an answer assembled entirely from the cache still carries the headers
//! upstream gave this caller.
//!
//! Invariants:
//! - The assembled answer equals what upstream would answer for the same request: accounts in
//!   request order, duplicates once, unknown ones omitted, `limit` applied after omission, the
//!   envelope's `start`/`limit`/`size`/`_links` rebuilt for the request as made.
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
use serde_json::Value;
use tokio::time::Instant;

use super::key::normalized_query;
use super::{Buffered, Cache, CacheKey, Entry, Fetched, Lifetime, Lookup, served};
use crate::body::Body;
use crate::error::GatewayError;
use crate::links;
use crate::metrics::CacheLabel;
use crate::routes::Route;

/// The `expand` values the spec documents for `/user/bulk`.
const EXPANDABLE: [&str; 3] = ["operations", "personalSpace", "isExternalCollaborator"];

/// The most accounts upstream considers in one lookup.
pub const MAX_IDS: usize = 200;

/// A bulk lookup the per-account cache can answer.
#[derive(Debug, Clone)]
pub struct BulkPlan {
    lookup: Lookup,
    /// Requested accounts, first occurrences only, at most [`MAX_IDS`].
    ids: Vec<String>,
    /// The `expand` set, sorted and comma-joined (part of every account's key).
    expand: String,
    /// `/user/bulk`'s `limit` (default 200); `None` for `/user/email/bulk`.
    limit: Option<usize>,
    /// The request's own query, for the envelope's `_links.self`.
    query: String,
}

/// The per-partition envelope: where the site is, and the headers upstream sent this caller.
struct Envelope {
    base: String,
    context: String,
    headers: HeaderMap,
}

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
        let mut ids: Vec<String> = Vec::new();
        let (mut expand, mut limit) = (String::new(), None);
        // In request order (account order matters), except `expand`, which is a set.
        let expand_set = normalized_query(query)
            .into_iter()
            .find(|(name, _)| name == "expand")
            .map(|(_, value)| value.into_owned());
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                let decode = |s| percent_encoding::percent_decode_str(s).decode_utf8_lossy();
                (decode(name), decode(value))
            });
        for (name, value) in pairs {
            match name.as_ref() {
                "accountId" => {
                    for id in value.split(',').map(str::trim).filter(|id| !id.is_empty()) {
                        if !ids.iter().any(|seen| seen == id) {
                            ids.push(id.to_owned());
                        }
                    }
                }
                "expand" if bulk => {
                    // Only the documented values; anything else is forwarded as sent.
                    let set = expand_set.clone().unwrap_or_default();
                    if !set.split(',').all(|v| EXPANDABLE.contains(&v)) {
                        return None;
                    }
                    expand = set;
                }
                "limit" if bulk => {
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
            ids,
            expand,
            limit: bulk.then(|| limit.unwrap_or(MAX_IDS)),
            query: query.unwrap_or_default().to_owned(),
        })
    }

    fn account_key(&self, plan: &BulkPlan, id: &str) -> CacheKey {
        let lookup = &plan.lookup;
        CacheKey::account(
            lookup.partition,
            lookup.route,
            &plan.expand,
            id,
            &lookup.generations,
        )
    }

    /// Answers a bulk lookup from per-account entries; `fetch(query)` asks upstream for the
    /// accounts not cached (the same path with that query).
    pub async fn bulk_read<F, Fut>(
        &self,
        plan: BulkPlan,
        request_headers: &HeaderMap,
        fetch: F,
    ) -> Result<Response<Body>, GatewayError>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Fetched, GatewayError>>,
    {
        let now = Instant::now();
        let envelope_key = self.account_key(&plan, "");
        let mut envelope = self
            .store
            .get(&envelope_key)
            .await
            .filter(|e| e.is_fresh(now));
        let mut accounts: Vec<Option<Arc<Entry>>> = Vec::with_capacity(plan.ids.len());
        for id in &plan.ids {
            let entry = self.store.get(&self.account_key(&plan, id)).await;
            accounts.push(entry.filter(|e| e.is_fresh(now)));
        }
        let missing: Vec<&str> = plan
            .ids
            .iter()
            .zip(&accounts)
            .filter(|(_, entry)| entry.is_none() || envelope.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        let fetched = missing.len();

        if fetched > 0 {
            self.stats
                .misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = match fetch(upstream_query(&missing, &plan)).await? {
                Fetched::Buffered(answer) if answer.status == StatusCode::OK => answer,
                Fetched::Buffered(answer) => {
                    let mut response = answer.to_response(plan.lookup.head);
                    super::set_status(&mut response, "wikigate; fwd=miss");
                    return Ok(served(response, CacheLabel::Miss, None));
                }
                Fetched::Streamed(mut response) => {
                    super::set_status(&mut response, "wikigate; fwd=miss; detail=too-large");
                    return Ok(served(response, CacheLabel::Miss, None));
                }
            };
            let (new_envelope, fetched_accounts) =
                self.store_accounts(&plan, &missing, answer).await?;
            envelope = Some(new_envelope);
            for (slot, id) in accounts.iter_mut().zip(&plan.ids) {
                if let Some(entry) = fetched_accounts.iter().find(|(i, _)| i == id) {
                    *slot = Some(entry.1.clone());
                }
            }
        } else {
            self.stats
                .hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let envelope = envelope.expect("fetched or cached");
        let Some(envelope) = Envelope::from_entry(&envelope) else {
            return Err(GatewayError::UpstreamProtocol(
                "a cached bulk envelope is not readable".to_owned(),
            ));
        };
        let found: Vec<&Arc<Entry>> = accounts
            .iter()
            .flatten()
            .filter(|e| e.status == StatusCode::OK)
            .take(plan.limit.unwrap_or(usize::MAX))
            .collect();
        let body = assemble(&plan, &envelope, &found);
        let freshest_expiry = accounts
            .iter()
            .flatten()
            .map(|e| e.ttl.saturating_sub(e.age(now)))
            .min()
            .unwrap_or_default();
        let status = match fetched {
            0 => "wikigate; hit".to_owned(),
            n if n == plan.ids.len() => "wikigate; fwd=miss; stored".to_owned(),
            n => format!(
                "wikigate; fwd=partial; stored; detail=fetched-{n}-of-{}",
                plan.ids.len()
            ),
        };
        let response = respond(
            body,
            &envelope,
            request_headers,
            plan.lookup.head,
            freshest_expiry,
            &status,
        );
        Ok(if fetched == 0 {
            let points = 1 + 2 * found.len() as u32;
            served(response, CacheLabel::Hit, Some(points))
        } else {
            served(response, CacheLabel::Miss, None)
        })
    }

    /// Stores every account of an upstream answer, the accounts it omitted as unknown, and the
    /// envelope; returns the envelope entry and the new account entries.
    async fn store_accounts(
        &self,
        plan: &BulkPlan,
        asked: &[&str],
        answer: Buffered,
    ) -> Result<(Arc<Entry>, Vec<(String, Arc<Entry>)>), GatewayError> {
        let invalid = || {
            GatewayError::UpstreamProtocol("the bulk answer is not the documented JSON".to_owned())
        };
        let value: Value = serde_json::from_slice(&answer.body).map_err(|_| invalid())?;
        let (objects, links) = match plan.limit {
            Some(_) => (
                value
                    .get("results")
                    .and_then(Value::as_array)
                    .ok_or_else(invalid)?,
                value.get("_links"),
            ),
            None => (value.as_array().ok_or_else(invalid)?, None),
        };
        let site_base = links
            .and_then(|l| l.get("base"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let origin = links::site_origin(site_base).unwrap_or_default().to_owned();
        let context = links
            .and_then(|l| l.get("context"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let rewrite = |url: &str| match &self.public_url {
            Some(public) if !origin.is_empty() => {
                links::rewrite_url(url, &origin, public).unwrap_or_else(|| url.to_owned())
            }
            _ => url.to_owned(),
        };
        let policy = *self.routes.load().get(plan.lookup.route);
        let found_lifetime = Lifetime {
            ttl: policy.ttl,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
        };
        let negative_lifetime = Lifetime {
            ttl: self.config.negative_ttl,
            ..found_lifetime
        };
        let mut json_headers = HeaderMap::new();
        json_headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );

        let mut stored = Vec::with_capacity(asked.len());
        for object in objects {
            let Some(id) = object.get("accountId").and_then(Value::as_str) else {
                continue;
            };
            let mut object = object.clone();
            if let Some(Value::String(url)) = object.pointer_mut("/_links/self") {
                *url = rewrite(url);
            }
            let account = Buffered {
                status: StatusCode::OK,
                headers: json_headers.clone(),
                body: Bytes::from(object.to_string()),
            };
            let entry = Arc::new(Entry::new(
                account,
                &HeaderMap::new(),
                found_lifetime,
                false,
                3,
            ));
            self.store
                .insert(self.account_key(plan, id), entry.clone())
                .await;
            stored.push((id.to_owned(), entry));
        }
        for id in asked {
            if !stored.iter().any(|(i, _)| i == id) {
                let unknown = Buffered {
                    status: StatusCode::NOT_FOUND,
                    headers: HeaderMap::new(),
                    body: Bytes::new(),
                };
                let entry = Arc::new(Entry::new(
                    unknown,
                    &HeaderMap::new(),
                    negative_lifetime,
                    false,
                    1,
                ));
                self.store
                    .insert(self.account_key(plan, id), entry.clone())
                    .await;
                stored.push(((*id).to_owned(), entry));
            }
        }
        let envelope = Envelope {
            base: rewrite(site_base),
            context,
            headers: answer.headers,
        };
        let entry = Arc::new(envelope.into_entry(found_lifetime));
        self.store
            .insert(self.account_key(plan, ""), entry.clone())
            .await;
        self.stats
            .stored
            .fetch_add(stored.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok((entry, stored))
    }
}

impl Envelope {
    fn into_entry(self, lifetime: Lifetime) -> Entry {
        let body = serde_json::json!({ "base": self.base, "context": self.context });
        let answer = Buffered {
            status: StatusCode::OK,
            headers: self.headers,
            body: Bytes::from(body.to_string()),
        };
        Entry::new(answer, &HeaderMap::new(), lifetime, false, 0)
    }

    fn from_entry(entry: &Entry) -> Option<Envelope> {
        let value: Value = serde_json::from_slice(&entry.body).ok()?;
        Some(Envelope {
            base: value["base"].as_str()?.to_owned(),
            context: value["context"].as_str()?.to_owned(),
            headers: entry.headers(),
        })
    }
}

/// The query asking upstream for `ids` (at most 200, no `limit`: nothing is cut off).
fn upstream_query(ids: &[&str], plan: &BulkPlan) -> String {
    use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
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
    // Commas separate the set's values.
    const EXPAND_VALUE: &AsciiSet = &QUERY_VALUE.remove(b',');
    let encoded: Vec<String> = ids
        .iter()
        .map(|id| utf8_percent_encode(id, QUERY_VALUE).to_string())
        .collect();
    let mut query = format!("accountId={}", encoded.join(","));
    if !plan.expand.is_empty() {
        // Documented values only (see `bulk_plan`), but encoded all the same.
        query.push_str("&expand=");
        query.push_str(&utf8_percent_encode(&plan.expand, EXPAND_VALUE).to_string());
    }
    query
}

/// The answer upstream would give: the objects in request order, in upstream's shape.
fn assemble(plan: &BulkPlan, envelope: &Envelope, found: &[&Arc<Entry>]) -> Bytes {
    let mut results = Vec::with_capacity(found.iter().map(|e| e.body.len() + 1).sum::<usize>() + 2);
    results.push(b'[');
    for (i, entry) in found.iter().enumerate() {
        if i > 0 {
            results.push(b',');
        }
        results.extend_from_slice(&entry.body);
    }
    results.push(b']');
    let Some(limit) = plan.limit else {
        return Bytes::from(results);
    };
    let path = plan
        .lookup
        .route
        .template()
        .trim_start_matches(envelope.context.as_str());
    let links = serde_json::json!({
        "base": envelope.base,
        "context": envelope.context,
        "self": format!("{}{path}?{}", envelope.base, plan.query),
    });
    let mut body = Vec::with_capacity(results.len() + 256);
    body.extend_from_slice(b"{\"results\":");
    body.extend_from_slice(&results);
    body.extend_from_slice(
        format!(
            ",\"start\":0,\"limit\":{limit},\"size\":{},\"_links\":{links}}}",
            found.len()
        )
        .as_bytes(),
    );
    Bytes::from(body)
}

fn respond(
    body: Bytes,
    envelope: &Envelope,
    request_headers: &HeaderMap,
    head: bool,
    fresh_for: Duration,
    status: &str,
) -> Response<Body> {
    let etag = format!("\"{}\"", &blake3::hash(&body).to_hex()[..32]);
    let not_modified = super::entry::list_tokens_match(request_headers, &etag);
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
        if head {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        }
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("private, max-age={}", fresh_for.as_secs())).expect("ascii"),
    );
    headers.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    headers.insert(
        super::CACHE_STATUS.clone(),
        HeaderValue::from_str(status).expect("ascii"),
    );
    response
}
