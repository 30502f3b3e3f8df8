//! The cache's three promises — no leaks, read-your-writes, bounded — and its behaviour:
//! coalescing, stale serving, bypass, validators, HEAD.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use serde_json::json;
use wikigate::config::RoutePolicy;
use wikigate::fake::Faults;
use wikigate::routes::{Operation, Route};

use crate::support::{
    API, Answer, Harness, TestClient, alice, basic, bob, put_property, spawn_get,
};

fn policy(ttl_ms: u64, stale_if_error_s: u64, stale_while_revalidate_s: u64) -> RoutePolicy {
    RoutePolicy {
        ttl: Duration::from_millis(ttl_ms),
        stale_if_error: Duration::from_secs(stale_if_error_s),
        stale_while_revalidate: Duration::from_secs(stale_while_revalidate_s),
        stale_on_low_quota: Duration::ZERO,
    }
}

#[tokio::test]
async fn no_cached_answer_crosses_callers_on_any_route() {
    let h = Harness::start().await;
    let (a, b) = (alice().account_id, bob().account_id);
    put_property(
        &h.client,
        bob(),
        b,
        "shared-key",
        Method::POST,
        json!({ "n": 1 }),
    )
    .await;
    // Every cacheable route, with targets both callers may read.
    let targets = [
        format!("{API}?accountId={a}"),
        format!("{API}/current"),
        format!("{API}/memberof?accountId={a}"),
        format!("{API}/bulk?accountId={a},{b}"),
        // Bulk before single: a single lookup's first miss stores its account's bulk object
        // too (comparing the two), which a bulk lookup of the same caller then reuses.
        format!("{API}/email/bulk?accountId={a}"),
        format!("{API}/email?accountId={a}"),
        format!("{API}/watch/content/77"),
        format!("{API}/watch/label/news"),
        format!("{API}/watch/space/ENG"),
        format!("{API}/{b}/property"),
        format!("{API}/{b}/property/shared-key"),
    ];
    for target in &targets {
        let first = h.client.get(target, Some(&basic(alice()))).await;
        assert_eq!(first.status, 200, "{target}");
        assert!(
            first.cache_status().contains("stored"),
            "{target}: {}",
            first.cache_status()
        );
        let again = h.client.get(target, Some(&basic(alice()))).await;
        assert_eq!(again.cache_status(), "wikigate; hit", "{target}");
        assert_eq!(again.body, first.body);

        let before = h.fake.requests();
        let other = h.client.get(target, Some(&basic(bob()))).await;
        // Bob's own bulk lookup of the same account, a step earlier, may answer his single one.
        let reused = target.contains("/email?") && other.cache_status() == "wikigate; hit";
        assert!(
            h.fake.requests() == before + 1 || reused,
            "{target}: bob's first read went upstream"
        );
        assert_eq!(
            other.viewer(),
            b,
            "{target}: bob got an answer made for someone else"
        );
        let other_again = h.client.get(target, Some(&basic(bob()))).await;
        assert_eq!(other_again.viewer(), b, "{target}");
        assert_eq!(other_again.body, other.body);
        assert_eq!(
            h.client.get(target, Some(&basic(alice()))).await.viewer(),
            a,
            "{target}"
        );
    }
    // Where the bodies themselves differ, each caller keeps its own.
    let alice_view = h
        .client
        .get(&format!("{API}?accountId={a}"), Some(&basic(alice())))
        .await
        .json();
    let bob_view = h
        .client
        .get(&format!("{API}?accountId={a}"), Some(&basic(bob())))
        .await
        .json();
    assert_eq!(alice_view["email"], "alice@example.com");
    assert_eq!(
        bob_view["email"], "",
        "bob must not see alice's privacy-filtered email"
    );
    // The same user under another credential form is another partition.
    let bearer = format!("Bearer {}", alice().bearer);
    let before = h.fake.requests();
    h.client.get(&format!("{API}/current"), Some(&bearer)).await;
    assert_eq!(h.fake.requests(), before + 1);
    // Anonymous callers have a partition of their own.
    let anonymous = h.client.get(&format!("{API}/current"), None).await;
    assert_eq!(anonymous.json()["type"], "anonymous");
}

#[tokio::test]
async fn the_shared_anonymous_route_is_fetched_once_and_carries_no_callers_headers() {
    let h = Harness::start().await;
    let first = h
        .client
        .get(&format!("{API}/anonymous"), Some(&basic(alice())))
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.headers["content-type"],
        "application/json;charset=UTF-8"
    );
    let other = h
        .client
        .get(&format!("{API}/anonymous"), Some(&basic(bob())))
        .await;
    assert_eq!(other.cache_status(), "wikigate; hit");
    assert_eq!(other.body, first.body);
    assert_eq!(
        other.viewer(),
        "",
        "a shared entry keeps no caller-specific header"
    );
    assert_eq!(h.fake.hits(Operation::GetAnonymousUser), 1);
}

#[tokio::test]
async fn every_write_through_the_gateway_is_read_back_fresh() {
    let h = Harness::start().await;
    let (a, b) = (alice().account_id, bob().account_id);
    let watching = |answer: Answer| answer.json()["watching"].as_bool().unwrap();
    for kind in ["content/12", "label/release", "space/ENG"] {
        let own = format!("{API}/watch/{kind}");
        let admin_view = format!("{API}/watch/{kind}?accountId={b}");
        // Cache "not watching" for bob, and alice's admin view of bob.
        assert!(!watching(h.client.get(&own, Some(&basic(bob()))).await));
        assert!(!watching(
            h.client.get(&admin_view, Some(&basic(alice()))).await
        ));
        assert_eq!(
            h.client.get(&own, Some(&basic(bob()))).await.cache_status(),
            "wikigate; hit"
        );

        let added = h
            .client
            .request(Method::POST, &own)
            .auth(bob())
            .send()
            .await;
        assert_eq!(added.status, 204);
        assert!(
            watching(h.client.get(&own, Some(&basic(bob()))).await),
            "{kind}: add read back"
        );
        assert!(
            watching(h.client.get(&admin_view, Some(&basic(alice()))).await),
            "{kind}: other caller, other query"
        );

        let removed = h
            .client
            .request(Method::DELETE, &own)
            .auth(bob())
            .send()
            .await;
        assert_eq!(removed.status, 204);
        assert!(
            !watching(h.client.get(&own, Some(&basic(bob()))).await),
            "{kind}: remove read back"
        );
        assert!(
            !watching(h.client.get(&admin_view, Some(&basic(alice()))).await),
            "{kind}"
        );
    }

    let list = format!("{API}/{a}/property");
    let item = format!("{API}/{a}/property/theme");
    let keys = |answer: Answer| {
        answer.json()["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["key"].clone())
            .collect::<Vec<_>>()
    };
    assert!(keys(h.client.get(&list, Some(&basic(alice()))).await).is_empty());
    assert_eq!(
        put_property(
            &h.client,
            alice(),
            a,
            "theme",
            Method::POST,
            json!({ "v": 1 })
        )
        .await
        .status,
        201
    );
    assert_eq!(
        keys(h.client.get(&list, Some(&basic(alice()))).await),
        [json!("theme")],
        "create read back"
    );
    assert_eq!(
        h.client.get(&item, Some(&basic(alice()))).await.json()["value"],
        json!({ "v": 1 })
    );

    assert_eq!(
        put_property(
            &h.client,
            alice(),
            a,
            "theme",
            Method::PUT,
            json!({ "v": 2 })
        )
        .await
        .status,
        204
    );
    assert_eq!(
        h.client.get(&item, Some(&basic(alice()))).await.json()["value"],
        json!({ "v": 2 }),
        "update read back"
    );

    let deleted = h
        .client
        .request(Method::DELETE, &item)
        .auth(alice())
        .send()
        .await;
    assert_eq!(deleted.status, 204);
    assert_eq!(
        h.client.get(&item, Some(&basic(alice()))).await.status,
        404,
        "delete read back"
    );
    assert!(keys(h.client.get(&list, Some(&basic(alice()))).await).is_empty());
}

#[tokio::test]
async fn a_refused_write_invalidates_nothing() {
    let h = Harness::start().await;
    let a = alice().account_id;
    let list = format!("{API}/{a}/property");
    h.client.get(&list, Some(&basic(alice()))).await;
    // Bob may not touch alice's properties: 403 upstream, the cached listing stays.
    let refused = put_property(&h.client, bob(), a, "x", Method::POST, json!({})).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        h.client
            .get(&list, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );
}

#[tokio::test]
async fn a_read_overlapping_a_write_is_not_stored() {
    let h = Harness::start().await;
    let a = alice().account_id;
    let item = format!("{API}/{a}/property/race");
    put_property(
        &h.client,
        alice(),
        a,
        "race",
        Method::POST,
        json!({ "v": 1 }),
    )
    .await;

    // The read computes v1 upstream and is held there while the write goes through.
    let mut hold = h.fake.hold(Operation::GetUserProperty);
    let read = spawn_get(&h.client, &item, alice());
    hold.reached().await;
    assert_eq!(
        put_property(
            &h.client,
            alice(),
            a,
            "race",
            Method::PUT,
            json!({ "v": 2 })
        )
        .await
        .status,
        204
    );
    hold.release();
    assert_eq!(
        read.await.unwrap().json()["value"],
        json!({ "v": 1 }),
        "it started before the write"
    );

    let after = h.client.get(&item, Some(&basic(alice()))).await;
    assert_eq!(
        after.json()["value"],
        json!({ "v": 2 }),
        "the pre-write answer was not stored"
    );
}

#[tokio::test]
async fn a_read_after_a_write_never_joins_a_pre_write_fetch() {
    let h = Harness::start().await;
    let a = alice().account_id;
    let item = format!("{API}/{a}/property/join");
    put_property(
        &h.client,
        alice(),
        a,
        "join",
        Method::POST,
        json!({ "v": 1 }),
    )
    .await;

    let mut hold = h.fake.hold(Operation::GetUserProperty);
    let early = spawn_get(&h.client, &item, alice());
    hold.reached().await;
    assert_eq!(
        put_property(
            &h.client,
            alice(),
            a,
            "join",
            Method::PUT,
            json!({ "v": 2 })
        )
        .await
        .status,
        204
    );
    // Identical request, started after the write's answer arrived, while the early fetch is
    // still held: it must fetch anew instead of waiting for the pre-write answer.
    let late = tokio::time::timeout(
        Duration::from_secs(5),
        h.client.get(&item, Some(&basic(alice()))),
    )
    .await
    .expect("the late read did not wait on the held pre-write fetch");
    assert_eq!(late.json()["value"], json!({ "v": 2 }));
    assert!(!late.cache_status().contains("collapsed"));
    hold.release();
    assert_eq!(early.await.unwrap().json()["value"], json!({ "v": 1 }));
    assert_eq!(
        h.client.get(&item, Some(&basic(alice()))).await.json()["value"],
        json!({ "v": 2 })
    );
}

/// A tiny deterministic PRNG (xorshift), so the randomized test needs no crate and can be
/// replayed from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_and_writes_never_observe_an_acknowledged_write_undone() {
    let h = Arc::new(Harness::start().await);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let users = [alice(), bob()];
    // Four properties: two per owner. Each has one writer (so upstream applies versions in
    // order) and an acknowledged floor: the highest version whose write answer arrived.
    let keys: Vec<(usize, String)> = (0..4).map(|i| (i % 2, format!("k{i}"))).collect();
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..keys.len()).map(|_| AtomicU64::new(0)).collect());
    for (owner, key) in &keys {
        let user = users[*owner];
        let created = put_property(
            &h.client,
            user,
            user.account_id,
            key,
            Method::POST,
            json!({ "v": 0 }),
        )
        .await;
        assert_eq!(created.status, 201);
    }
    let mut tasks = Vec::new();
    for (index, (owner, key)) in keys.iter().cloned().enumerate() {
        let (h, acked) = (h.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let user = users[owner];
            for version in 1..=25u64 {
                let answer = put_property(
                    &h.client,
                    user,
                    user.account_id,
                    &key,
                    Method::PUT,
                    json!({ "v": version }),
                )
                .await;
                assert_eq!(answer.status, 204);
                acked[index].store(version, Ordering::SeqCst);
            }
        }));
    }
    for reader in 0..6u64 {
        let (h, acked, keys) = (h.clone(), acked.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed.wrapping_add(reader.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
            for _ in 0..60 {
                let index = rng.next(keys.len() as u64) as usize;
                let (owner, key) = &keys[index];
                // The owner, or alice (an admin) reading bob's: two partitions, one tag.
                let reader_user = if rng.next(2) == 0 {
                    users[*owner]
                } else {
                    alice()
                };
                let target = format!("{API}/{}/property/{key}", users[*owner].account_id);
                let floor = acked[index].load(Ordering::SeqCst);
                let answer = h.client.get(&target, Some(&basic(reader_user))).await;
                assert_eq!(answer.status, 200);
                let seen = answer.json()["value"]["v"].as_u64().unwrap();
                assert!(
                    seen >= floor,
                    "seed {seed}: read {target} saw v{seen} after v{floor} was acknowledged ({})",
                    answer.cache_status()
                );
                if rng.next(4) == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_identical_misses_make_one_upstream_request() {
    let h = Harness::start().await;
    h.fake.set_faults(Faults {
        delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let target = format!("{API}?accountId={}", bob().account_id);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, target) = (h.client.clone(), target.clone());
            tokio::spawn(async move { client.get(&target, Some(&basic(alice()))).await })
        })
        .collect();
    let mut collapsed = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["accountId"], bob().account_id);
        collapsed += usize::from(answer.cache_status().contains("collapsed"));
    }
    assert_eq!(h.fake.hits(Operation::GetUser), 1);
    assert!(collapsed > 100, "{collapsed} of 200 joined the one fetch");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_an_expired_entry_when_upstream_fails() {
    let h = Harness::start_with(|c| c.cache.routes.set_all(policy(200, 60, 0))).await;
    let target = format!("{API}/current");
    let fresh = h.client.get(&target, Some(&basic(alice()))).await;
    tokio::time::advance(Duration::from_millis(300)).await;
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..Faults::default()
    });
    let stale = h.client.get(&target, Some(&basic(alice()))).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, fresh.body);
    assert!(
        stale.cache_status().contains("fwd=stale")
            && stale.cache_status().contains("fwd-status=503"),
        "{}",
        stale.cache_status()
    );

    // An invalidated entry is gone: never served stale.
    h.fake.set_faults(Faults::default());
    let watch = format!("{API}/watch/space/ENG");
    h.client.get(&watch, Some(&basic(alice()))).await;
    tokio::time::advance(Duration::from_millis(300)).await;
    assert_eq!(
        h.client
            .request(Method::POST, &watch)
            .auth(alice())
            .send()
            .await
            .status,
        204
    );
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..Faults::default()
    });
    h.client
        .get(&watch, Some(&basic(alice())))
        .await
        .assert_error(503);

    // A 4xx is an answer, not a failure: no stale.
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::FORBIDDEN),
        ..Faults::default()
    });
    h.client
        .get(&target, Some(&basic(alice())))
        .await
        .assert_error(403);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let h = Harness::start_with(|c| c.cache.routes.set_all(policy(1000, 0, 60))).await;
    let target = format!("{API}/current");
    h.client.get(&target, Some(&basic(alice()))).await;
    tokio::time::advance(Duration::from_millis(1100)).await;
    h.fake.set_faults(Faults {
        delay: Duration::from_millis(500),
        ..Faults::default()
    });
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, target) = (h.client.clone(), target.clone());
            tokio::spawn(async move { client.get(&target, Some(&basic(alice()))).await })
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(
            answer.cache_status().contains("stale-while-revalidate"),
            "{}",
            answer.cache_status()
        );
    }
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "stale answers waited for upstream"
    );
    // The background refresh waits out upstream's delay.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        h.fake.hits(Operation::GetCurrentUser),
        2,
        "one fill, one background refresh"
    );
    assert_eq!(
        h.client
            .get(&target, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );
}

#[tokio::test]
async fn weighted_size_stays_under_max_bytes() {
    let token = "admin-token-0123456789";
    let h = Harness::start_with(|c| {
        c.cache.max_bytes = 64 * 1024;
        c.cache.max_entry_bytes = 8 * 1024;
        c.admin.token = Some(wikigate::config::Secret::new(token));
    })
    .await;
    for i in 0..300 {
        let target = format!("{API}?accountId={}&n={i}", alice().account_id);
        assert_eq!(
            h.client.get(&target, Some(&basic(alice()))).await.status,
            200
        );
    }
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let stats = admin
        .request(Method::GET, "/admin/cache/stats")
        .header("authorization", &format!("Bearer {token}"))
        .send()
        .await
        .json();
    let weighted = stats["weighted_bytes"].as_u64().unwrap();
    assert!(weighted <= 64 * 1024, "{stats}");
    assert!(stats["entries"].as_u64().unwrap() > 10, "{stats}");
    assert_eq!(stats["stored"], 300);
}

#[tokio::test]
async fn request_no_cache_refreshes_and_no_store_stores_nothing() {
    let h = Harness::start().await;
    let a = alice().account_id;
    let item = format!("{API}/{a}/property/bypass");
    put_property(
        &h.client,
        alice(),
        a,
        "bypass",
        Method::POST,
        json!({ "v": 1 }),
    )
    .await;
    let direct = TestClient::new(h.fake.url());
    let change = |v: u64| {
        let direct = direct.clone();
        async move {
            put_property(
                &direct,
                alice(),
                alice().account_id,
                "bypass",
                Method::PUT,
                json!({ "v": v }),
            )
            .await
        }
    };
    let value = |answer: Answer| answer.json()["value"]["v"].as_u64().unwrap();
    assert_eq!(value(h.client.get(&item, Some(&basic(alice()))).await), 1);
    change(2).await; // behind wikigate's back
    assert_eq!(
        value(h.client.get(&item, Some(&basic(alice()))).await),
        1,
        "cached"
    );
    let refreshed = h
        .client
        .request(Method::GET, &item)
        .auth(alice())
        .header("cache-control", "no-cache")
        .send()
        .await;
    assert!(
        refreshed.cache_status().contains("fwd=request; stored"),
        "{}",
        refreshed.cache_status()
    );
    assert_eq!(value(refreshed), 2);
    assert_eq!(
        value(h.client.get(&item, Some(&basic(alice()))).await),
        2,
        "the entry was refreshed"
    );

    change(3).await;
    let unstored = h
        .client
        .request(Method::GET, &item)
        .auth(alice())
        .header("cache-control", "no-store")
        .send()
        .await;
    assert_eq!(value(unstored), 3);
    assert_eq!(
        value(h.client.get(&item, Some(&basic(alice()))).await),
        2,
        "no-store stored nothing"
    );
}

#[tokio::test]
async fn if_none_match_is_answered_304_from_the_cache() {
    let h = Harness::start().await;
    let target = format!("{API}/current");
    let first = h.client.get(&target, Some(&basic(alice()))).await;
    let etag = first.headers["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong validator: {etag}"
    );
    assert!(
        first.headers["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("private, max-age=")
    );
    let conditional = h
        .client
        .request(Method::GET, &target)
        .auth(alice())
        .header("if-none-match", &etag)
        .send()
        .await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert!(conditional.body.is_empty());
    assert_eq!(conditional.headers["etag"], etag.as_str());
    let changed = h
        .client
        .request(Method::GET, &target)
        .auth(alice())
        .header("if-none-match", "\"stale\"")
        .send()
        .await;
    assert_eq!(changed.status, 200);
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 1);
    // The validator never reaches upstream: upstream is always asked for the full answer.
    assert!(
        h.fake
            .recorded()
            .iter()
            .all(|r| !r.headers.contains_key("if-none-match"))
    );
}

#[tokio::test]
async fn jwt_and_cookie_requests_bypass_the_cache() {
    let h = Harness::start().await;
    let target = format!("{API}/current");
    for _ in 0..2 {
        let answer = h
            .client
            .request(Method::GET, &target)
            .header("authorization", "JWT eyJhbGciOiJIUzI1NiJ9.e30.sig")
            .send()
            .await;
        assert_eq!(answer.cache_status(), "wikigate; fwd=bypass; detail=jwt");
    }
    for _ in 0..2 {
        let answer = h
            .client
            .request(Method::GET, &target)
            .auth(alice())
            .header("cookie", "tenant.session.token=x")
            .send()
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.cache_status(), "wikigate; fwd=bypass; detail=cookie");
    }
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 4);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let h = Harness::start().await;
    let target = format!("{API}/current");
    let get = h.client.get(&target, Some(&basic(alice()))).await;
    let head = h
        .client
        .request(Method::HEAD, &target)
        .auth(alice())
        .send()
        .await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.cache_status(), "wikigate; hit");
    assert_eq!(
        head.headers["content-length"],
        get.body.len().to_string().as_str()
    );
    assert_eq!(head.headers["etag"], get.headers["etag"]);
    // A cold HEAD fills the entry with a GET upstream.
    let cold = format!("{API}/memberof?accountId={}", alice().account_id);
    let head = h
        .client
        .request(Method::HEAD, &cold)
        .auth(alice())
        .send()
        .await;
    assert!(head.body.is_empty());
    assert_eq!(h.fake.last().unwrap().method, Method::GET);
    assert_eq!(
        h.client
            .get(&cold, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );
}

#[tokio::test]
async fn answers_that_may_not_be_stored_pass_through() {
    let h = Harness::start_with(|c| c.cache.max_entry_bytes = 512).await;
    // Larger than max_entry_bytes: streamed, complete, not stored.
    let big = format!(
        "{API}/bulk?accountId={},{}",
        alice().account_id,
        bob().account_id
    );
    for _ in 0..2 {
        let answer = h.client.get(&big, Some(&basic(alice()))).await;
        assert_eq!(answer.json()["size"], 2);
        assert!(
            answer.cache_status().contains("too-large"),
            "{}",
            answer.cache_status()
        );
    }
    // The gzip answer upstream sent was too large to decode for a client that does not take
    // gzip: asked for once more without gzip, each time.
    assert_eq!(h.fake.hits(Operation::GetBulkUserLookup), 4);
    let gzip = h
        .client
        .request(Method::GET, &big)
        .auth(alice())
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(gzip.headers["content-encoding"], "gzip");
    assert!(gzip.cache_status().contains("too-large"));
    let decoded = wikigate::gunzip(&gzip.body, 1 << 20).unwrap();
    let decoded: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(decoded["size"], 2);
    assert_eq!(h.fake.hits(Operation::GetBulkUserLookup), 5);
    // Set-Cookie and Vary: * are never stored; other Vary headers join the key.
    for (name, value) in [("set-cookie", "a=b"), ("vary", "*")] {
        let mut response_headers = http::HeaderMap::new();
        response_headers.insert(name, HeaderValue::from_static(value));
        h.fake.set_faults(Faults {
            response_headers,
            ..Faults::default()
        });
        let before = h.fake.requests();
        h.client
            .get(
                &format!("{API}/watch/space/V?{name}"),
                Some(&basic(alice())),
            )
            .await;
        h.client
            .get(
                &format!("{API}/watch/space/V?{name}"),
                Some(&basic(alice())),
            )
            .await;
        assert_eq!(h.fake.requests(), before + 2, "{name}: {value} was stored");
    }
    let mut response_headers = http::HeaderMap::new();
    response_headers.insert("vary", HeaderValue::from_static("Accept-Language"));
    h.fake.set_faults(Faults {
        response_headers,
        ..Faults::default()
    });
    let get = |lang: &'static str| {
        h.client
            .request(Method::GET, &format!("{API}/watch/space/V?accept"))
            .auth(alice())
            .header("accept-language", lang)
            .send()
    };
    let first = get("de").await;
    assert!(
        first.cache_status().contains("stored"),
        "{}",
        first.cache_status()
    );
    assert_eq!(get("de").await.cache_status(), "wikigate; hit");
    assert!(get("fr").await.cache_status().contains("fwd=miss"));
    // Error answers are not stored.
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::INTERNAL_SERVER_ERROR),
        ..Faults::default()
    });
    let before = h.fake.requests();
    h.client
        .get(&format!("{API}/email?accountId=x"), Some(&basic(alice())))
        .await
        .assert_error(500);
    h.client
        .get(&format!("{API}/email?accountId=x"), Some(&basic(alice())))
        .await
        .assert_error(500);
    assert_eq!(h.fake.requests(), before + 2);
}

#[tokio::test]
async fn admin_cache_endpoints_need_the_token_and_purge() {
    let token = "admin-token-0123456789";
    let h =
        Harness::start_with(|c| c.admin.token = Some(wikigate::config::Secret::new(token))).await;
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let bearer = format!("Bearer {token}");
    admin
        .request(Method::GET, "/admin/cache/stats")
        .send()
        .await
        .assert_error(401);
    admin
        .request(Method::GET, "/admin/cache/stats")
        .header("authorization", "Bearer wrong-token-0123456")
        .send()
        .await
        .assert_error(401);
    admin
        .request(Method::DELETE, "/admin/cache")
        .send()
        .await
        .assert_error(401);

    let (current, user) = (
        format!("{API}/current"),
        format!("{API}?accountId={}", bob().account_id),
    );
    h.client.get(&current, Some(&basic(alice()))).await;
    h.client.get(&user, Some(&basic(alice()))).await;
    let purge_route = admin
        .request(Method::DELETE, "/admin/cache?tag=route:current")
        .header("authorization", &bearer)
        .send()
        .await;
    assert_eq!(purge_route.status, 200);
    for unknown in ["route:nope", "whatever", "watch:page:1", ""] {
        admin
            .request(Method::DELETE, &format!("/admin/cache?tag={unknown}"))
            .header("authorization", &bearer)
            .send()
            .await
            .assert_error(400);
    }
    assert!(
        h.client
            .get(&current, Some(&basic(alice())))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert_eq!(
        h.client
            .get(&user, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );

    assert_eq!(
        admin
            .request(Method::DELETE, "/admin/cache")
            .header("authorization", &bearer)
            .send()
            .await
            .status,
        200
    );
    assert!(
        h.client
            .get(&user, Some(&basic(alice())))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    let stats = admin
        .request(Method::GET, "/admin/cache/stats")
        .header("authorization", &bearer)
        .send()
        .await
        .json();
    for field in [
        "entries",
        "weighted_bytes",
        "hits",
        "misses",
        "stale",
        "coalesced",
        "invalidations",
    ] {
        assert!(stats[field].is_u64(), "{field} in {stats}");
    }
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["invalidations"], 2);
}

#[tokio::test]
async fn admin_cache_endpoints_are_off_without_a_token() {
    let h = Harness::start().await;
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    admin
        .request(Method::GET, "/admin/cache/stats")
        .send()
        .await
        .assert_error(404);
    admin
        .request(Method::DELETE, "/admin/cache")
        .header("authorization", "Bearer anything-at-all-123")
        .send()
        .await
        .assert_error(404);
}

#[tokio::test]
async fn not_found_is_cached_only_when_configured() {
    let target = format!("{API}/{}/property/absent", alice().account_id);
    let off = Harness::start().await;
    for _ in 0..2 {
        off.client
            .get(&target, Some(&basic(alice())))
            .await
            .assert_error(404);
    }
    assert_eq!(off.fake.hits(Operation::GetUserProperty), 2);

    let on = Harness::start_with(|c| c.cache.cache_not_found = true).await;
    on.client
        .get(&target, Some(&basic(alice())))
        .await
        .assert_error(404);
    let again = on.client.get(&target, Some(&basic(alice()))).await;
    again.assert_error(404);
    assert_eq!(again.cache_status(), "wikigate; hit");
    assert_eq!(on.fake.hits(Operation::GetUserProperty), 1);
    // Creating it invalidates the cached 404.
    put_property(
        &on.client,
        alice(),
        alice().account_id,
        "absent",
        Method::POST,
        json!({}),
    )
    .await;
    assert_eq!(
        on.client.get(&target, Some(&basic(alice()))).await.status,
        200
    );
}

#[tokio::test]
async fn a_write_that_failed_upstream_still_invalidates() {
    let h = Harness::start().await;
    let watch = format!("{API}/watch/label/ops");
    h.client.get(&watch, Some(&basic(bob()))).await;
    // 5xx: the write may have been applied, so the cached read must go.
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::BAD_GATEWAY),
        ..Faults::default()
    });
    h.client
        .request(Method::POST, &watch)
        .auth(bob())
        .send()
        .await
        .assert_error(502);
    h.fake.set_faults(Faults::default());
    assert!(
        h.client
            .get(&watch, Some(&basic(bob())))
            .await
            .cache_status()
            .contains("fwd=miss")
    );
}

#[tokio::test]
async fn a_route_with_ttl_zero_is_not_cached() {
    let h = Harness::start_with(|c| {
        c.cache.routes.set(
            Route::Current,
            RoutePolicy {
                ttl: Duration::ZERO,
                ..*c.cache.routes.get(Route::Current)
            },
        )
    })
    .await;
    for _ in 0..2 {
        let answer = h
            .client
            .get(&format!("{API}/current"), Some(&basic(alice())))
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.cache_status(),
            "wikigate; fwd=bypass; detail=disabled"
        );
    }
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 2);
}

/// At the default stale window, a site outage is served from a warm cache, and each answer
/// says it is stale. The TTLs are short here (the routes name only a `ttl`, as operators
/// write them); the stale window is the default's.
#[tokio::test]
async fn a_site_outage_is_served_from_a_warm_cache_at_the_default_stale_window() {
    let h = Harness::start_with(|c| {
        let routes: wikigate::config::RoutePolicies = toml::from_str(
            r#"
            user = { ttl = "1s" }
            memberof = { ttl = "1s" }
            current = { ttl = "1s" }
            watch_space = { ttl = "1s" }
            bulk = { ttl = "1s" }
            "#,
        )
        .unwrap();
        c.cache.routes = routes;
    })
    .await;
    let auth = basic(alice());
    let targets = [
        format!("{API}?accountId={}", bob().account_id),
        format!("{API}/memberof?accountId={}", bob().account_id),
        format!("{API}/current"),
        format!("{API}/watch/space/ENG"),
        format!(
            "{API}/bulk?accountId={},{}",
            alice().account_id,
            bob().account_id
        ),
    ];
    let mut first = Vec::new();
    for target in &targets {
        let answer = h.client.get(target, Some(&auth)).await;
        assert_eq!(answer.status, 200, "{target}");
        first.push(answer.json());
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..Faults::default()
    });
    for (target, first) in targets.iter().zip(&first) {
        let stale = h.client.get(target, Some(&auth)).await;
        assert_eq!(stale.status, 200, "{target}");
        assert_eq!(&stale.json(), first, "{target}");
        assert_eq!(
            stale.cache_status(),
            "wikigate; fwd=stale; fwd-status=503; detail=stale-if-error",
            "{target}"
        );
        let age: u64 = stale.header("age").parse().unwrap();
        assert!(age >= 2, "{target}: Age {age}");
    }
}
