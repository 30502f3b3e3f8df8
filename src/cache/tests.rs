//! The cache core on its own: no sockets, no upstream — the origin is a stand-in that counts
//! its calls, and time is tokio's paused clock. Each test states one of the module's promises.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use futures_util::future::BoxFuture;

use super::storage::SharedMemory;
use super::{Cache, Call, Fetched, Found, Lookup, Origin, Outcome, Tier};
use crate::cache::{Buffered, Forward, Stored};
use crate::config::{CacheConfig, RoutePolicy, UpstreamUrl};
use crate::error::GatewayError;
use crate::links::Links;
use crate::metrics::Metrics;
use crate::routes::{self, Route};

const WATCH: &str = "/wiki/rest/api/user/watch/space/ENG";

fn cache_with(policy: RoutePolicy) -> Arc<Cache> {
    let mut config = CacheConfig::default();
    config.routes.set_all(policy);
    let upstream: UpstreamUrl = "http://127.0.0.1:1".parse().expect("a valid URL");
    let links = Arc::new(Links::new(None, &upstream));
    let quota = Arc::new(crate::quota::Quota::default());
    Arc::new(Cache::new(
        &config,
        links,
        [7; 32],
        Arc::new(Metrics::new(quota.clone())),
        quota,
    ))
}

fn policy(ttl_ms: u64, stale_if_error_ms: u64, stale_while_revalidate_ms: u64) -> RoutePolicy {
    RoutePolicy {
        ttl: Duration::from_millis(ttl_ms),
        stale_if_error: Duration::from_millis(stale_if_error_ms),
        stale_while_revalidate: Duration::from_millis(stale_while_revalidate_ms),
        stale_on_low_quota: Duration::ZERO,
    }
}

fn as_user(user: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Basic {user}")).expect("ASCII");
    headers.insert(header::AUTHORIZATION, value);
    headers
}

async fn lookup(cache: &Cache, path: &str, headers: &HeaderMap) -> Lookup {
    let resolved = routes::resolve(&Method::GET, path).expect("a routed path");
    cache
        .lookup(&resolved, headers, None, None)
        .await
        .expect("a cacheable read")
}

/// A stand-in origin: one way to answer, whatever the call (a merged lookup, a comparison, a
/// refresh); charging points costs nothing.
trait Answers: Send + Sync {
    fn answer(&self, query: Option<String>) -> BoxFuture<'_, Result<Fetched, GatewayError>>;
}

impl<T: Answers> Origin for T {
    fn fetch(&self, query: Option<String>) -> BoxFuture<'_, Result<Fetched, GatewayError>> {
        self.answer(query)
    }

    fn fetch_for<'a>(
        &'a self,
        _: Route,
        _: Call,
        query: Box<dyn FnOnce() -> String + Send + 'a>,
    ) -> BoxFuture<'a, Result<Option<Fetched>, GatewayError>> {
        Box::pin(async move { self.answer(Some(query())).await.map(Some) })
    }

    fn charge(&self, _: u32) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn refresh(&self) -> BoxFuture<'_, Result<Option<Fetched>, GatewayError>> {
        Box::pin(async { self.answer(None).await.map(Some) })
    }
}

/// An origin answering 200 with `body` (or `status`, with `headers`), counting how often it
/// was asked.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    status: StatusCode,
    headers: HeaderMap,
    body: &'static str,
    delay: Duration,
}

impl Upstream {
    fn answering(body: &'static str) -> Upstream {
        Upstream {
            calls: Arc::default(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body,
            delay: Duration::ZERO,
        }
    }

    fn failing(status: StatusCode) -> Upstream {
        Upstream {
            status,
            ..Upstream::answering("{\"message\":\"failed\"}")
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn origin(&self) -> Arc<dyn Origin> {
        Arc::new(self.clone())
    }
}

impl Answers for Upstream {
    fn answer(&self, _: Option<String>) -> BoxFuture<'_, Result<Fetched, GatewayError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            Ok(Fetched::Buffered(Buffered::plain(
                self.status,
                self.headers.clone(),
                Bytes::from_static(self.body.as_bytes()),
            )))
        })
    }
}

/// One read through the cache: the one lookup, then what it found.
async fn read(
    cache: &Arc<Cache>,
    path: &str,
    headers: &HeaderMap,
    upstream: &Upstream,
) -> Result<(Outcome, Bytes), GatewayError> {
    let lookup = lookup(cache, path, headers).await;
    let found = cache.find(&lookup, headers);
    let (response, served) = cache
        .read(lookup, found, headers, upstream.origin())
        .await?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("a buffered body")
        .to_bytes();
    Ok((served.outcome, body))
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_stored_once_and_served_to_its_caller_only() {
    let cache = cache_with(policy(60_000, 0, 0));
    let upstream = Upstream::answering("{\"watching\":true}");
    let (alice, bob) = (as_user("alice"), as_user("bob"));

    let (first, body) = read(&cache, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(first, Outcome::STORED);
    assert_eq!(body, "{\"watching\":true}");
    let (second, _) = read(&cache, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(second, Outcome::Hit(Tier::Memory));
    assert_eq!(upstream.calls(), 1);

    // Another credential is another partition: its own fetch, never alice's answer.
    let (for_bob, _) = read(&cache, WATCH, &bob, &upstream).await.unwrap();
    assert_eq!(for_bob, Outcome::STORED);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_write_leaves_every_earlier_key_unreachable() {
    let cache = cache_with(policy(60_000, 60_000, 0));
    let upstream = Upstream::answering("{\"watching\":false}");
    let alice = as_user("alice");
    read(&cache, WATCH, &alice, &upstream).await.unwrap();
    let before = lookup(&cache, WATCH, &alice).await;

    let write = routes::resolve(&Method::POST, WATCH).unwrap();
    cache.invalidate(write.route(), &write.invalidates()).await;

    let after = lookup(&cache, WATCH, &alice).await;
    assert_ne!(before.key, after.key, "the write moved the key");
    // Not even as a stale-if-error fallback: the entry is under a dead key.
    assert!(matches!(
        cache.find(&after, &alice),
        Found::Missing { fallback: None }
    ));
    // Other resources keep their entries.
    let other = "/wiki/rest/api/user/watch/space/OPS";
    read(&cache, other, &alice, &upstream).await.unwrap();
    cache.invalidate(write.route(), &write.invalidates()).await;
    let (outcome, _) = read(&cache, other, &alice, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::Hit(Tier::Memory));
}

#[tokio::test(start_paused = true)]
async fn an_answer_fetched_across_a_write_is_stored_under_the_dead_key() {
    let cache = cache_with(policy(60_000, 0, 0));
    let slow = Upstream {
        delay: Duration::from_millis(100),
        ..Upstream::answering("{\"watching\":false}")
    };
    let alice = as_user("alice");
    let in_flight = tokio::spawn({
        let (cache, alice, slow) = (cache.clone(), alice.clone(), slow.clone());
        async move { read(&cache, WATCH, &alice, &slow).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let write = routes::resolve(&Method::POST, WATCH).unwrap();
    cache.invalidate(write.route(), &write.invalidates()).await;
    assert_eq!(in_flight.await.unwrap().unwrap().0, Outcome::STORED);

    let after = lookup(&cache, WATCH, &alice).await;
    assert!(matches!(
        cache.find(&after, &alice),
        Found::Missing { fallback: None }
    ));
}

#[tokio::test(start_paused = true)]
async fn an_entry_ages_from_fresh_through_its_stale_windows_to_gone() {
    let cache = cache_with(policy(1_000, 3_000, 2_000));
    let upstream = Upstream::answering("{}");
    let alice = as_user("alice");
    read(&cache, WATCH, &alice, &upstream).await.unwrap();
    let (cache, alice) = (&cache, &alice);
    let at = |ms| async move {
        tokio::time::advance(Duration::from_millis(ms)).await;
        let lookup = lookup(cache, WATCH, alice).await;
        match cache.find(&lookup, alice) {
            Found::Fresh(_) => "fresh",
            Found::RefreshAhead(_) => "fresh, refresh ahead",
            Found::Refreshing(_) => "refreshing",
            Found::Revalidate(_) => "revalidate",
            Found::SpareQuota(_) => "spare quota",
            Found::Missing { fallback: Some(_) } => "fallback",
            Found::Missing { fallback: None } => "missing",
        }
    };
    assert_eq!(at(500).await, "fresh");
    assert_eq!(
        at(499).await,
        "fresh, refresh ahead",
        "read late in its life, it is refreshed ahead"
    );
    assert_eq!(at(0).await, "fresh", "once: the first read claimed it");
    assert_eq!(
        at(1).await,
        "refreshing",
        "at the TTL, its refresh under way: served, not waited for"
    );
    assert_eq!(at(100).await, "revalidate", "a tenth of the TTL later");
    assert_eq!(at(1_899).await, "revalidate");
    assert_eq!(at(1).await, "fallback", "past stale-while-revalidate");
    assert_eq!(at(999).await, "fallback");
    assert_eq!(at(1).await, "missing", "past stale-if-error");
}

#[tokio::test(start_paused = true)]
async fn identical_misses_share_one_fetch() {
    let cache = cache_with(policy(60_000, 0, 0));
    let upstream = Upstream {
        delay: Duration::from_millis(100),
        ..Upstream::answering("{\"watching\":true}")
    };
    let alice = as_user("alice");
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let (cache, alice, upstream) = (cache.clone(), alice.clone(), upstream.clone());
            tokio::spawn(async move { read(&cache, WATCH, &alice, &upstream).await })
        })
        .collect();
    let mut collapsed = 0;
    for reader in readers {
        let (outcome, body) = reader.await.unwrap().unwrap();
        assert_eq!(body, "{\"watching\":true}");
        collapsed += usize::from(matches!(
            outcome,
            Outcome::Forwarded {
                collapsed: true,
                ..
            }
        ));
    }
    assert_eq!(upstream.calls(), 1);
    assert_eq!(collapsed, 49);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let cache = cache_with(policy(1_000, 0, 60_000));
    let upstream = Upstream {
        delay: Duration::from_millis(500),
        ..Upstream::answering("{}")
    };
    let alice = as_user("alice");
    read(&cache, WATCH, &alice, &upstream).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_500)).await;

    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        let (outcome, _) = read(&cache, WATCH, &alice, &upstream).await.unwrap();
        assert_eq!(outcome, Outcome::StaleWhileRevalidate);
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "nothing waited for upstream"
    );
    // Past upstream's delay: the refresh has landed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(upstream.calls(), 2, "the fill and one refresh");
    let (outcome, _) = read(&cache, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::Hit(Tier::Memory));
}

#[tokio::test(start_paused = true)]
async fn an_expired_entry_stands_in_for_a_failed_upstream_within_stale_if_error() {
    let cache = cache_with(policy(1_000, 5_000, 0));
    let alice = as_user("alice");
    read(&cache, WATCH, &alice, &Upstream::answering("{\"old\":1}"))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(2_000)).await;

    let unavailable = Upstream::failing(StatusCode::SERVICE_UNAVAILABLE);
    let (outcome, body) = read(&cache, WATCH, &alice, &unavailable).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::StaleIfError(Some(StatusCode::SERVICE_UNAVAILABLE))
    );
    assert_eq!(body, "{\"old\":1}");

    // A 4xx is an answer, not a failure: passed on, not stored.
    let forbidden = Upstream::failing(StatusCode::FORBIDDEN);
    let (outcome, _) = read(&cache, WATCH, &alice, &forbidden).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Forwarded {
            why: Forward::Stale,
            collapsed: false,
            stored: Stored::No
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_requests_own_cache_control_sends_it_upstream() {
    let cache = cache_with(policy(60_000, 0, 0));
    let upstream = Upstream::answering("{}");
    let alice = as_user("alice");
    read(&cache, WATCH, &alice, &upstream).await.unwrap();

    let mut no_store = alice.clone();
    no_store.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let (outcome, _) = read(&cache, WATCH, &no_store, &upstream).await.unwrap();
    let request = |stored| Outcome::Forwarded {
        why: Forward::Request,
        collapsed: false,
        stored,
    };
    assert_eq!(outcome, request(Stored::No));

    let mut no_cache = alice.clone();
    no_cache.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    let (outcome, _) = read(&cache, WATCH, &no_cache, &upstream).await.unwrap();
    assert_eq!(outcome, request(Stored::Yes), "refreshed");
    assert_eq!(upstream.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn answers_that_name_a_session_are_never_stored() {
    let cache = cache_with(policy(60_000, 0, 0));
    let alice = as_user("alice");
    let lookup = lookup(&cache, WATCH, &alice).await;
    let found = cache.find(&lookup, &alice);
    let mut headers = HeaderMap::new();
    headers.insert(header::SET_COOKIE, HeaderValue::from_static("session=1"));
    let upstream = Upstream {
        headers,
        ..Upstream::answering("{}")
    };
    let (_, served) = cache
        .read(lookup, found, &alice, upstream.origin())
        .await
        .unwrap();
    assert!(matches!(
        served.outcome,
        Outcome::Forwarded {
            stored: Stored::No,
            ..
        }
    ));
    assert!(matches!(
        cache.find(&lookup, &alice),
        Found::Missing { fallback: None }
    ));
}

/// An origin that knows every account but `unknown`, and records each query it is asked.
struct Accounts<'a> {
    asked: &'a parking_lot::Mutex<Vec<String>>,
}

impl Answers for Accounts<'_> {
    fn answer(&self, query: Option<String>) -> BoxFuture<'_, Result<Fetched, GatewayError>> {
        let query = query.unwrap_or_default();
        let asked = self.asked;
        Box::pin(async move {
            let ids: Vec<String> = crate::query::pairs(&query)
                .filter(|(name, _)| name.as_ref() == b"accountId")
                .flat_map(|(_, value)| {
                    String::from_utf8_lossy(&value)
                        .split(',')
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            asked.lock().push(ids.join(","));
            let results: Vec<_> = ids
                .iter()
                .filter(|id| *id != "unknown")
                .map(|id| serde_json::json!({"accountId": id, "type": "known"}))
                .collect();
            let body = serde_json::json!({
                "results": results, "start": 0, "limit": 200, "size": results.len(),
                "_links": {"base": "https://site.example/wiki"},
            });
            Ok(Fetched::Buffered(Buffered::plain(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from(body.to_string()),
            )))
        })
    }
}

/// A bulk lookup through the per-account cache; `upstream` answers the accounts it is asked
/// for (all known but `unknown`) and records the query it was asked.
async fn bulk(
    cache: &Arc<Cache>,
    query: &str,
    headers: &HeaderMap,
    asked: &parking_lot::Mutex<Vec<String>>,
) -> (Outcome, serde_json::Value) {
    let path = "/wiki/rest/api/user/bulk";
    let lookup = lookup(cache, path, headers).await;
    let plan = cache
        .bulk_plan(&lookup, Some(query))
        .expect("a per-account lookup");
    let origin = Accounts { asked };
    let (response, served) = cache.bulk_read(plan, headers, &origin).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (served.outcome, serde_json::from_slice(&body).unwrap())
}

fn ids(answer: &serde_json::Value) -> Vec<&str> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["accountId"].as_str().unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_bulk_lookup_asks_upstream_only_for_the_accounts_not_cached() {
    let cache = cache_with(policy(60_000, 0, 0));
    let asked = parking_lot::Mutex::new(Vec::new());
    let alice = as_user("alice");

    let (outcome, answer) = bulk(&cache, "accountId=a,b", &alice, &asked).await;
    assert_eq!(outcome, Outcome::STORED);
    assert_eq!(ids(&answer), ["a", "b"]);

    let (outcome, answer) = bulk(&cache, "accountId=c,a,unknown", &alice, &asked).await;
    assert_eq!(outcome, Outcome::Partial { fetched: 2, of: 3 });
    assert_eq!(
        ids(&answer),
        ["c", "a"],
        "in request order, the unknown left out"
    );

    let (outcome, answer) = bulk(&cache, "accountId=b,unknown,c&limit=1", &alice, &asked).await;
    assert_eq!(
        outcome,
        Outcome::Hit(Tier::Memory),
        "the unknown is remembered"
    );
    assert_eq!(ids(&answer), ["b"]);
    assert_eq!(answer["size"], 1);
    assert_eq!(*asked.lock(), ["a,b", "c,unknown"]);

    // Accounts are cached per partition: bob's lookup asks for itself.
    bulk(&cache, "accountId=a", &as_user("bob"), &asked).await;
    assert_eq!(asked.lock().last().unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_account_is_asked_again_after_negative_ttl() {
    let cache = cache_with(policy(60_000, 0, 0));
    let asked = parking_lot::Mutex::new(Vec::new());
    let alice = as_user("alice");
    bulk(&cache, "accountId=a,unknown", &alice, &asked).await;
    tokio::time::advance(CacheConfig::default().negative_ttl).await;
    let (outcome, _) = bulk(&cache, "accountId=a,unknown", &alice, &asked).await;
    assert_eq!(outcome, Outcome::Partial { fetched: 1, of: 2 });
    assert_eq!(*asked.lock(), ["a,unknown", "unknown"]);
}

#[tokio::test]
async fn bulk_lookups_with_undocumented_parameters_are_left_whole() {
    let cache = cache_with(policy(60_000, 0, 0));
    let alice = as_user("alice");
    let lookup = lookup(&cache, "/wiki/rest/api/user/bulk", &alice).await;
    for query in [
        "accountId=a&expand=nonsense",
        "accountId=a&limit=0",
        "accountId=a&other=1",
        "limit=5",
    ] {
        assert!(cache.bulk_plan(&lookup, Some(query)).is_none(), "{query}");
    }
    assert!(
        cache
            .bulk_plan(&lookup, Some("accountId=a&expand=personalSpace,operations"))
            .is_some()
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_looked_before_another_stored_does_not_fetch_again() {
    let cache = cache_with(policy(60_000, 0, 0));
    let upstream = Upstream::answering("{\"watching\":true}");
    let alice = as_user("alice");
    // It looks, finds nothing, and is slow to go on: meanwhile another request's flight
    // fetches, stores and ends.
    let late = lookup(&cache, WATCH, &alice).await;
    let found = cache.find(&late, &alice);
    assert!(matches!(found, Found::Missing { fallback: None }));
    let (first, _) = read(&cache, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(first, Outcome::STORED);
    // Leading a flight of its own, it finds the stored answer first.
    let (response, served) = cache
        .read(late, found, &alice, upstream.origin())
        .await
        .unwrap();
    assert_eq!(served.outcome, Outcome::Hit(Tier::Memory));
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.calls(), 1);
}

/// Two replicas of a cluster, sharing a tier in this process instead of Redis.
fn replicas(policy: RoutePolicy) -> (Arc<Cache>, Arc<Cache>, Arc<SharedMemory>) {
    let shared = Arc::new(SharedMemory::default());
    let replica = || {
        let cache = Arc::into_inner(cache_with(policy)).expect("a cache of its own");
        Arc::new(cache.with_shared(shared.clone()))
    };
    (replica(), replica(), shared)
}

#[tokio::test(start_paused = true)]
async fn a_replica_finds_in_the_shared_tier_what_another_stored() {
    let (one, two, _) = replicas(policy(60_000, 0, 0));
    let upstream = Upstream::answering("{\"watching\":true}");
    let alice = as_user("alice");
    assert_eq!(
        read(&one, WATCH, &alice, &upstream).await.unwrap().0,
        Outcome::STORED
    );
    let (outcome, body) = read(&two, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::Hit(Tier::Cluster));
    assert_eq!(body, "{\"watching\":true}");
    // Kept in the second replica's memory from then on.
    let (outcome, _) = read(&two, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::Hit(Tier::Memory));
    assert_eq!(upstream.calls(), 1);
    // Never across partitions: bob's read on either replica is his own fetch.
    let bob = as_user("bob");
    let (outcome, _) = read(&two, WATCH, &bob, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::STORED);
    assert_eq!(upstream.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_write_through_one_replica_is_never_read_stale_on_another() {
    let (one, two, _) = replicas(policy(60_000, 0, 0));
    let upstream = Upstream::answering("{\"watching\":false}");
    let alice = as_user("alice");
    read(&one, WATCH, &alice, &upstream).await.unwrap();
    read(&two, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(
        upstream.calls(),
        1,
        "the second replica read the shared tier"
    );

    let write = routes::resolve(&Method::POST, WATCH).unwrap();
    one.invalidate(write.route(), &write.invalidates()).await;
    for replica in [&two, &one] {
        let after = lookup(replica, WATCH, &alice).await;
        assert!(matches!(
            replica.find(&after, &alice),
            Found::Missing { fallback: None }
        ));
    }
    let (outcome, _) = read(&two, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::STORED,
        "the pre-write entry is under a dead key"
    );
    assert_eq!(upstream.calls(), 2);
    let (outcome, _) = read(&one, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::Hit(Tier::Cluster));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_shared_tier_sends_reads_of_its_counters_past_the_cache() {
    let (one, _, shared) = replicas(policy(60_000, 0, 0));
    shared.unreachable.store(true, Ordering::SeqCst);
    let resolved = routes::resolve(&Method::GET, WATCH).unwrap();
    let alice = as_user("alice");
    assert!(matches!(
        one.lookup(&resolved, &alice, None, None).await,
        Err(super::Bypass::ClusterDown)
    ));
    shared.unreachable.store(false, Ordering::SeqCst);
    assert!(one.lookup(&resolved, &alice, None, None).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_shared_entry_of_another_variant_is_not_taken() {
    let (one, two, _) = replicas(policy(60_000, 0, 0));
    let mut vary = HeaderMap::new();
    vary.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
    let upstream = Upstream {
        headers: vary,
        ..Upstream::answering("{}")
    };
    let speaking = |language| {
        let mut headers = as_user("alice");
        headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static(language));
        headers
    };
    read(&one, WATCH, &speaking("en"), &upstream).await.unwrap();
    let (outcome, _) = read(&two, WATCH, &speaking("fr"), &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::STORED, "a French read fetches its own");
    assert_eq!(upstream.calls(), 2);
    let (outcome, _) = read(&one, WATCH, &speaking("fr"), &upstream).await.unwrap();
    assert_eq!(
        outcome,
        Outcome::Hit(Tier::Cluster),
        "the French entry replaced it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shared_entry_expires_with_its_retention() {
    let (one, two, _) = replicas(policy(1_000, 0, 0));
    let upstream = Upstream::answering("{}");
    let alice = as_user("alice");
    read(&one, WATCH, &alice, &upstream).await.unwrap();
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let (outcome, _) = read(&two, WATCH, &alice, &upstream).await.unwrap();
    assert_eq!(outcome, Outcome::STORED);
    assert_eq!(upstream.calls(), 2);
}
