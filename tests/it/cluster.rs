//! Two replicas, one Redis, one upstream: the replicas behave as one gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use wikigate::Running;
use wikigate::config::{Rate, Secret};
use wikigate::fake::{FakeBursts, FakeConfluence, FakeOptions};
use wikigate::routes::Operation;

#[path = "../shared/redis.rs"]
mod redis;
use redis::Redis;

use crate::support::{
    API, Answer, TestClient, alice, basic, bob, config_for, eventually, put_property, spawn_get,
};

struct Pair {
    fake: FakeConfluence,
    redis: Redis,
    a: Running,
    b: Running,
    ca: TestClient,
    cb: TestClient,
    /// Replica A's configuration, to start it again.
    config_a: wikigate::config::Config,
}

impl Pair {
    async fn start(tweak: impl Fn(&mut wikigate::config::RawConfig)) -> Pair {
        Pair::start_each(|config, _| tweak(config)).await
    }

    /// Starts with `tweak(config, replica)` for replica 0 (A) and 1 (B).
    async fn start_each(tweak: impl Fn(&mut wikigate::config::RawConfig, usize)) -> Pair {
        Pair::start_with_redis(Redis::start(), FakeOptions::default(), tweak).await
    }

    async fn start_with_redis(
        redis: Redis,
        options: FakeOptions,
        tweak: impl Fn(&mut wikigate::config::RawConfig, usize),
    ) -> Pair {
        let fake = FakeConfluence::start_with(options).await.unwrap();
        let replica = |index| {
            let mut config = config_for(&fake.url());
            config.cache.key_secret = Some(Secret::new("replicas-share-this-secret"));
            config.cluster.redis_url = Some(redis.url());
            config.cluster.replicas = 2;
            config.cluster.op_timeout = Duration::from_millis(250);
            tweak(&mut config, index);
            config.validate().unwrap()
        };
        let config_a = replica(0);
        let a = wikigate::start(&config_a).await.unwrap();
        let b = wikigate::start(&replica(1)).await.unwrap();
        let pair = Pair {
            ca: TestClient::new(format!("http://{}", a.addr)),
            cb: TestClient::new(format!("http://{}", b.addr)),
            fake,
            redis,
            a,
            b,
            config_a,
        };
        pair.wait_for_redis("redis: up").await;
        pair
    }

    /// Stops replica A and starts it again (its memory empty), on new ports.
    async fn restart_a(&mut self) {
        let fresh = wikigate::start(&self.config_a).await.unwrap();
        let old = std::mem::replace(&mut self.a, fresh);
        old.shutdown();
        old.wait().await;
        self.ca = TestClient::new(format!("http://{}", self.a.addr));
    }

    async fn wait_for_redis(&self, state: &str) {
        for admin in [self.a.admin_addr, self.b.admin_addr] {
            let admin = TestClient::new(format!("http://{admin}"));
            let reports = || async {
                let ready = admin.get("/readyz", None).await;
                String::from_utf8_lossy(&ready.body).contains(state)
            };
            eventually(Duration::from_secs(10), state, reports).await;
        }
    }
}

/// Alice writes her own property `key` = `{"v": v}`.
async fn write(client: &TestClient, method: Method, key: &str, v: u64) -> Answer {
    put_property(
        client,
        alice(),
        alice().account_id,
        key,
        method,
        json!({ "v": v }),
    )
    .await
}

#[tokio::test]
async fn a_read_cached_through_one_replica_is_a_hit_through_the_other() {
    let p = Pair::start(|_| {}).await;
    let target = format!("{API}?accountId={}", bob().account_id);
    let first = p.ca.get(&target, Some(&basic(alice()))).await;
    assert!(first.cache_status().contains("stored"));
    let other = p.cb.get(&target, Some(&basic(alice()))).await;
    assert_eq!(other.cache_status(), "wikigate; hit; detail=l2");
    assert_eq!(other.body, first.body);
    assert_eq!(other.headers["etag"], first.headers["etag"]);
    assert_eq!(
        p.cb.get(&target, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );
    assert_eq!(
        p.fake.hits(Operation::GetUser),
        1,
        "one upstream call for both replicas"
    );
    // Still one partition per caller across replicas.
    let bob_view = p.cb.get(&target, Some(&basic(bob()))).await;
    assert!(bob_view.cache_status().contains("fwd=miss"));
}

#[tokio::test]
async fn every_write_through_one_replica_is_read_fresh_through_the_other() {
    let p = Pair::start(|_| {}).await;
    let watching = |answer: Answer| answer.json()["watching"].as_bool().unwrap();
    for kind in ["content/7", "label/ops", "space/ENG"] {
        let target = format!("{API}/watch/{kind}");
        assert!(!watching(p.cb.get(&target, Some(&basic(bob()))).await));
        assert_eq!(
            p.cb.get(&target, Some(&basic(bob()))).await.cache_status(),
            "wikigate; hit"
        );
        assert_eq!(
            p.ca.request(Method::POST, &target)
                .auth(bob())
                .send()
                .await
                .status,
            204
        );
        assert!(
            watching(p.cb.get(&target, Some(&basic(bob()))).await),
            "{kind}: add"
        );
        assert_eq!(
            p.ca.request(Method::DELETE, &target)
                .auth(bob())
                .send()
                .await
                .status,
            204
        );
        assert!(
            !watching(p.cb.get(&target, Some(&basic(bob()))).await),
            "{kind}: remove"
        );
    }
    let item = format!("{API}/{}/property/shared", alice().account_id);
    let list = format!("{API}/{}/property", alice().account_id);
    assert_eq!(
        p.cb.get(&list, Some(&basic(alice()))).await.json()["size"],
        0
    );
    assert_eq!(write(&p.ca, Method::POST, "shared", 1).await.status, 201);
    assert_eq!(
        p.cb.get(&list, Some(&basic(alice()))).await.json()["size"],
        1,
        "create"
    );
    assert_eq!(
        p.cb.get(&item, Some(&basic(alice()))).await.json()["value"]["v"],
        1
    );
    assert_eq!(write(&p.ca, Method::PUT, "shared", 2).await.status, 204);
    assert_eq!(
        p.cb.get(&item, Some(&basic(alice()))).await.json()["value"]["v"],
        2,
        "update"
    );
    assert_eq!(
        p.ca.request(Method::DELETE, &item)
            .auth(alice())
            .send()
            .await
            .status,
        204
    );
    assert_eq!(
        p.cb.get(&item, Some(&basic(alice()))).await.status,
        404,
        "delete"
    );
}

#[tokio::test]
async fn the_read_write_race_holds_across_replicas() {
    let p = Pair::start(|_| {}).await;
    let item = format!("{API}/{}/property/race", alice().account_id);
    write(&p.ca, Method::POST, "race", 1).await;

    let mut hold = p.fake.hold(Operation::GetUserProperty);
    let early = spawn_get(&p.cb, &item, alice());
    hold.reached().await;
    assert_eq!(write(&p.ca, Method::PUT, "race", 2).await.status, 204);
    // Started after the write's answer, on the replica whose fetch is still held.
    let late = tokio::time::timeout(
        Duration::from_secs(5),
        p.cb.get(&item, Some(&basic(alice()))),
    )
    .await
    .expect("the late read did not wait on the held pre-write fetch");
    assert_eq!(late.json()["value"]["v"], 2);
    hold.release();
    assert_eq!(early.await.unwrap().json()["value"]["v"], 1);
    for client in [&p.ca, &p.cb] {
        assert_eq!(
            client.get(&item, Some(&basic(alice()))).await.json()["value"]["v"],
            2,
            "nothing pre-write was stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_combined_upstream_rate_across_replicas_is_within_5_percent() {
    let p = Pair::start(|c| {
        c.limits.classes.get_mut("default").unwrap().upstream = Some(Rate {
            rate: std::num::NonZeroU32::new(40).unwrap(),
            per: Duration::from_secs(1),
            burst: std::num::NonZeroU32::new(2),
        });
    })
    .await;
    let admitted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let client = if i % 2 == 0 {
                p.ca.clone()
            } else {
                p.cb.clone()
            };
            let admitted = admitted.clone();
            tokio::spawn(async move {
                while started.elapsed() < run_for {
                    // no-store: every request goes upstream and spends the allowance.
                    let answer = client
                        .request(Method::GET, &format!("{API}/current"))
                        .auth(alice())
                        .header("cache-control", "no-store")
                        .send()
                        .await;
                    match answer.status {
                        StatusCode::OK => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        StatusCode::TOO_MANY_REQUESTS => {
                            assert_eq!(answer.headers["x-wikigate-limit"], "upstream");
                        }
                        other => panic!("unexpected {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let admitted = admitted.load(Ordering::SeqCst) as f64;
    let expected = 2.0 + 40.0 * started.elapsed().as_secs_f64();
    let error = (admitted - expected).abs() / expected;
    assert!(
        error <= 0.05,
        "admitted {admitted} across both replicas, expected {expected:.0} ({:.1} % off)",
        error * 100.0
    );
}

#[tokio::test]
async fn replicas_keep_serving_without_redis_and_recover_when_it_returns() {
    let mut p = Pair::start(|_| {}).await;
    let current = format!("{API}/current");
    let watch = format!("{API}/watch/space/OPS");
    p.ca.get(&current, Some(&basic(alice()))).await;
    assert_eq!(
        p.cb.get(&current, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit; detail=l2"
    );

    p.redis.stop();
    // The first tagged read finds Redis gone; from then on both replicas serve without it.
    for client in [&p.ca, &p.cb] {
        let answer = client.get(&watch, Some(&basic(alice()))).await;
        assert_eq!(answer.status, 200);
    }
    p.wait_for_redis("redis: down").await;
    for client in [&p.ca, &p.cb] {
        let cached = client.get(&current, Some(&basic(alice()))).await;
        assert_eq!(
            (cached.status.as_u16(), cached.cache_status()),
            (200, "wikigate; hit"),
            "L1 still serves"
        );
        let tagged = client.get(&watch, Some(&basic(alice()))).await;
        assert_eq!(
            tagged.cache_status(),
            "wikigate; fwd=bypass; detail=cluster-down",
            "no generations, no caching"
        );
        assert_eq!(
            client
                .request(Method::POST, &watch)
                .auth(alice())
                .send()
                .await
                .status,
            204
        );
    }
    let admin = TestClient::new(format!("http://{}", p.a.admin_addr));
    let metrics = String::from_utf8(admin.get("/metrics", None).await.body.to_vec()).unwrap();
    assert!(metrics.contains("wikigate_cluster_redis_up 0"), "{metrics}");

    p.redis = Redis::start_on(p.redis.port);
    p.wait_for_redis("redis: up").await;
    let fresh = format!("{API}?accountId={}", alice().account_id);
    assert!(
        p.ca.get(&fresh, Some(&basic(alice())))
            .await
            .cache_status()
            .contains("stored")
    );
    assert_eq!(
        p.cb.get(&fresh, Some(&basic(alice()))).await.cache_status(),
        "wikigate; hit; detail=l2"
    );
    let tagged = p.cb.get(&watch, Some(&basic(alice()))).await;
    assert!(
        tagged.json()["watching"].as_bool().unwrap(),
        "the writes made during the outage are visible"
    );
}

#[tokio::test]
async fn clients_keep_their_own_upstream_buckets_however_each_replica_orders_them() {
    // A rolling deploy added client y: A lists x then y, B lists y then x.
    let client = |name: &str, key: &str| wikigate::config::ClientConfig {
        name: name.to_owned(),
        class: "default".to_owned(),
        key_hash: wikigate::config::KeyHash::of(key),
        requests: None,
        upstream: Some(Rate {
            rate: std::num::NonZeroU32::new(1).unwrap(),
            per: Duration::from_secs(60),
            burst: None,
        }),
        points: None,
    };
    let (x, y) = (
        client("x", "x-key-0123456789"),
        client("y", "y-key-0123456789"),
    );
    let p = Pair::start_each(|config, replica| {
        config.cache.enabled = false;
        config.callers.clients = match replica {
            0 => vec![x.clone(), y.clone()],
            _ => vec![y.clone(), x.clone()],
        };
    })
    .await;
    async fn get(client: &TestClient, key: &str) -> Answer {
        client
            .request(Method::GET, &format!("{API}/current"))
            .auth(alice())
            .header("x-wikigate-key", key)
            .send()
            .await
    }
    assert_eq!(get(&p.ca, "x-key-0123456789").await.status, 200);
    let spent = get(&p.cb, "x-key-0123456789").await;
    assert_eq!(
        spent.status, 429,
        "x's one call a minute is spent on every replica"
    );
    assert_eq!(spent.headers["x-wikigate-limit"], "upstream");
    // y's bucket is its own, however B orders its list.
    assert_eq!(get(&p.cb, "y-key-0123456789").await.status, 200);
    assert_eq!(get(&p.ca, "y-key-0123456789").await.status, 429);
}

#[tokio::test]
async fn a_purge_through_either_replica_is_in_force_on_both_when_answered_and_l2_still_works() {
    const TOKEN: &str = "admin-token-0123456789";
    let p = Pair::start(|c| c.admin.token = Some(Secret::new(TOKEN))).await;
    let a = alice().account_id;
    assert_eq!(
        write(&p.ca, Method::POST, "purged", 1).await.status,
        StatusCode::CREATED
    );
    let admins = [
        TestClient::new(format!("http://{}", p.a.admin_addr)),
        TestClient::new(format!("http://{}", p.b.admin_addr)),
    ];
    let clients = [&p.ca, &p.cb];
    let memberof = format!("{API}/memberof?accountId={a}");
    let cases = [
        (None, memberof.clone()),
        (Some("route:memberof".to_owned()), memberof.clone()),
        (
            Some("watch:space:PURGE".to_owned()),
            format!("{API}/watch/space/PURGE"),
        ),
        (
            Some(format!("property:{a}:purged")),
            format!("{API}/{a}/property/purged"),
        ),
        (
            Some(format!("properties:{a}")),
            format!("{API}/{a}/property"),
        ),
        (Some(format!("account:{a}")), memberof.clone()),
    ];
    for round in 0..3 {
        for (i, (tag, target)) in cases.iter().enumerate() {
            let (purger, other) = match (round + i) % 2 {
                0 => (0, 1),
                _ => (1, 0),
            };
            // Cached on both replicas (the second through L2 or its own L1).
            clients[purger].get(target, Some(&basic(alice()))).await;
            let cached = clients[other].get(target, Some(&basic(alice()))).await;
            assert!(
                cached.cache_status().starts_with("wikigate; hit"),
                "round {round}, {tag:?}: {}",
                cached.cache_status()
            );
            let mut purge = admins[purger]
                .request(Method::DELETE, "/admin/cache")
                .header("authorization", &format!("Bearer {TOKEN}"));
            if let Some(tag) = tag {
                purge = admins[purger]
                    .request(Method::DELETE, &format!("/admin/cache?tag={tag}"))
                    .header("authorization", &format!("Bearer {TOKEN}"));
            }
            let purged = purge.send().await;
            assert_eq!(purged.status, 200, "{:?}", purged.body);
            // In force on the other replica the moment the purge is answered…
            let after = clients[other].get(target, Some(&basic(alice()))).await;
            assert!(
                after.cache_status().contains("fwd=miss"),
                "round {round}, {tag:?} through replica {purger}: replica {other} answered {}",
                after.cache_status()
            );
            // …and the shared tier works afterwards: the purging replica finds that answer.
            let shared = clients[purger].get(target, Some(&basic(alice()))).await;
            assert_eq!(
                shared.cache_status(),
                "wikigate; hit; detail=l2",
                "round {round}, {tag:?}: the replicas no longer compute the same keys"
            );
        }
    }
    let report = admins[0]
        .request(Method::DELETE, "/admin/cache")
        .header("authorization", &format!("Bearer {TOKEN}"))
        .send()
        .await
        .json();
    assert_eq!(
        (report["replicas"].as_u64(), report["applied"].as_u64()),
        (Some(2), Some(2))
    );
}

#[tokio::test]
async fn answers_that_vary_reach_the_shared_tier_and_keep_their_variant() {
    let p = Pair::start(|_| {}).await;
    // Atlassian's edge varies every answer on Accept-Encoding (wikigate's to answer); this
    // upstream also varies on Accept-Language.
    let mut vary = http::HeaderMap::new();
    vary.insert(
        "vary",
        http::HeaderValue::from_static("Accept-Encoding, Accept-Language"),
    );
    p.fake.set_faults(wikigate::fake::Faults {
        response_headers: vary,
        ..Default::default()
    });
    async fn get(client: &TestClient, language: &str, gzip: bool) -> Answer {
        let target = format!("{API}?accountId={}", bob().account_id);
        let mut request = client
            .request(Method::GET, &target)
            .auth(alice())
            .header("accept-language", language);
        if gzip {
            request = request.header("accept-encoding", "gzip");
        }
        request.send().await
    }
    assert!(
        get(&p.ca, "de", true)
            .await
            .cache_status()
            .contains("stored")
    );
    // Another replica, another Accept-Encoding, the same language: from the shared tier.
    let shared = get(&p.cb, "de", false).await;
    assert_eq!(shared.cache_status(), "wikigate; hit; detail=l2");
    assert!(!shared.headers.contains_key("content-encoding"));
    assert_eq!(shared.json()["accountId"], bob().account_id);
    // Another language is another variant, on every replica.
    assert!(
        get(&p.cb, "fr", true)
            .await
            .cache_status()
            .contains("fwd=miss")
    );
    assert_eq!(p.fake.hits(Operation::GetUser), 2);
}

#[tokio::test]
async fn a_points_budget_is_one_budget_across_replicas() {
    let p = Pair::start(|config| {
        config.limits.classes.get_mut("default").unwrap().points =
            Some(wikigate::config::PointsBudget {
                per_hour: std::num::NonZeroU32::new(12).unwrap(),
            });
    })
    .await;
    async fn read(client: &TestClient, n: usize) -> Answer {
        client
            .request(Method::GET, &format!("{API}/current?n={n}"))
            .auth(alice())
            .send()
            .await
    }
    // 3 points a call, all through A: the budget of 12 is spent after four calls, and B
    // knows it (alone, B would allow its share of 6 points).
    for n in 0..4 {
        assert_eq!(read(&p.ca, n).await.status, 200, "call {n}");
    }
    for client in [&p.ca, &p.cb] {
        let refused = read(client, 9).await;
        refused.assert_error(429);
        assert_eq!(refused.headers["x-wikigate-limit"], "points");
    }
    assert_eq!(p.fake.hits(Operation::GetCurrentUser), 4);
}

/// How Redis goes away in [`no_read_after_a_write_is_stale_across_an_outage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// SIGKILL, then started again empty.
    RestartedEmpty,
    /// SIGKILL, then started again from a snapshot taken before the last writes.
    RestartedFromOldSnapshot,
    /// Frozen (connections open, nothing answers) for longer than entries are kept.
    UnreachableLongerThanRetention,
    /// SIGKILL and started again empty, replica A restarted meanwhile.
    ReplicaRestartedDuring,
}

/// Reads alice's watch of space OPS and her property `outage` through both replicas, and
/// asserts what each must say; returns nothing stale or it fails.
async fn both_read(p: &Pair, watching: bool, v: u64, when: &str) {
    let watch = format!("{API}/watch/space/OPS");
    let item = format!("{API}/{}/property/outage", alice().account_id);
    for (name, client) in [("A", &p.ca), ("B", &p.cb)] {
        for _ in 0..2 {
            let w = client.get(&watch, Some(&basic(alice()))).await;
            assert_eq!(w.status, 200, "{when}, {name}: {:?}", w.body);
            assert_eq!(
                w.json()["watching"],
                watching,
                "{when}, through {name}: {}",
                w.cache_status()
            );
            let property = client.get(&item, Some(&basic(alice()))).await;
            assert_eq!(
                property.json()["value"]["v"],
                v,
                "{when}, through {name}: {}",
                property.cache_status()
            );
        }
    }
}

/// A write acknowledged before, during or after an outage of Redis is never followed by a
/// read of the state before it, through either replica, however Redis went away and came back.
async fn no_read_after_a_write_is_stale_across(outage: Outage) {
    let dir = std::env::temp_dir().join(format!(
        "wikigate-outage-{}-{:?}",
        std::process::id(),
        outage
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = match outage {
        Outage::RestartedFromOldSnapshot => Redis::start_persistent(None, &dir),
        _ => Redis::start(),
    };
    let mut p = Pair::start_with_redis(redis, FakeOptions::default(), |c, _| {
        if outage == Outage::UnreachableLongerThanRetention {
            c.cache.routes.set_all(wikigate::config::RoutePolicy {
                ttl: Duration::from_millis(800),
                stale_if_error: Duration::ZERO,
                stale_while_revalidate: Duration::ZERO,
                stale_on_low_quota: Duration::ZERO,
            });
        }
    })
    .await;
    let watch = format!("{API}/watch/space/OPS");
    assert_eq!(write(&p.ca, Method::POST, "outage", 0).await.status, 201);
    if outage == Outage::RestartedFromOldSnapshot {
        both_read(&p, false, 0, "before the snapshot").await;
        p.redis.save();
    }
    assert_eq!(write(&p.cb, Method::PUT, "outage", 1).await.status, 204);
    both_read(&p, false, 1, "before the outage").await;

    match outage {
        Outage::UnreachableLongerThanRetention => p.redis.pause(),
        _ => p.redis.stop(),
    }
    p.wait_for_redis("redis: down").await;
    let post =
        p.ca.request(Method::POST, &watch)
            .auth(alice())
            .send()
            .await;
    assert_eq!(post.status, 204);
    assert_eq!(write(&p.cb, Method::PUT, "outage", 2).await.status, 204);
    both_read(&p, true, 2, "during the outage").await;
    match outage {
        Outage::UnreachableLongerThanRetention => {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            both_read(&p, true, 2, "later in the outage").await;
        }
        Outage::ReplicaRestartedDuring => {
            p.restart_a().await;
            both_read(&p, true, 2, "after A restarted, during the outage").await;
        }
        _ => {}
    }

    match outage {
        Outage::UnreachableLongerThanRetention => p.redis.resume(),
        Outage::RestartedFromOldSnapshot => {
            p.redis = Redis::start_persistent(Some(p.redis.port), &dir);
        }
        _ => p.redis = Redis::start_on(p.redis.port),
    }
    p.wait_for_redis("redis: up").await;
    both_read(&p, true, 2, "after the outage").await;
    assert_eq!(write(&p.ca, Method::PUT, "outage", 3).await.status, 204);
    both_read(&p, true, 3, "after a write through A").await;
    let delete =
        p.cb.request(Method::DELETE, &watch)
            .auth(alice())
            .send()
            .await;
    assert_eq!(delete.status, 204);
    both_read(&p, false, 3, "after a write through B").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn no_read_after_a_write_is_stale_when_redis_restarts_empty() {
    Box::pin(no_read_after_a_write_is_stale_across(
        Outage::RestartedEmpty,
    ))
    .await;
}

#[tokio::test]
async fn no_read_after_a_write_is_stale_when_redis_restarts_from_an_old_snapshot() {
    Box::pin(no_read_after_a_write_is_stale_across(
        Outage::RestartedFromOldSnapshot,
    ))
    .await;
}

#[tokio::test]
async fn no_read_after_a_write_is_stale_when_redis_is_unreachable_past_retention() {
    Box::pin(no_read_after_a_write_is_stale_across(
        Outage::UnreachableLongerThanRetention,
    ))
    .await;
}

#[tokio::test]
async fn no_read_after_a_write_is_stale_when_a_replica_restarts_during_the_outage() {
    Box::pin(no_read_after_a_write_is_stale_across(
        Outage::ReplicaRestartedDuring,
    ))
    .await;
}

/// Atlassian's burst bucket of an endpoint is one for the site, however many replicas call
/// it: the replicas pace their calls together (in Redis), so a burst of API-token reads through
/// both never collects a 429 that pacing could have avoided.
#[tokio::test]
async fn replicas_pace_a_burst_bucket_together() {
    let options = FakeOptions {
        quota: None,
        bursts: Some(FakeBursts {
            state_refill: true,
            ..FakeBursts::new(5, 5)
        }),
        ..FakeOptions::default()
    };
    let p = Pair::start_with_redis(Redis::start(), options, |_, _| {}).await;
    let read = |client: &TestClient, n: usize| {
        let client = client.clone();
        async move {
            client
                .get(&format!("{API}/current?n={n}"), Some(&basic(alice())))
                .await
        }
    };
    // Each replica learns the bucket from its first answer.
    assert_eq!(read(&p.ca, 0).await.status, 200);
    assert_eq!(read(&p.cb, 1).await.status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let tasks: Vec<_> = (2..14)
        .map(|n| {
            let client = if n % 2 == 0 { &p.ca } else { &p.cb };
            tokio::spawn(read(client, n))
        })
        .collect();
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    // Twelve reads of a five-a-second bucket through two replicas: about 1.4 s of pacing.
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(p.fake.limit_refusals(), 0, "no upstream 429");
}

/// Two replicas learn an unstated refill from every replica's calls (their answers counted in
/// Redis): at three times the rate of buckets whose size and rate differ, upstream refuses
/// nothing after the first second.
#[tokio::test]
async fn replicas_learn_a_bucket_s_refill_together_and_collect_no_upstream_429() {
    for (size, rate, seconds) in [(10, 2, 8), (350, 100, 4)] {
        let options = FakeOptions {
            quota: None,
            bursts: Some(FakeBursts::new(size, rate)),
            ..FakeOptions::default()
        };
        let p = Pair::start_with_redis(Redis::start(), options, |_, _| {}).await;
        let answered =
            crate::three_limits::drive(&[&p.ca, &p.cb], 3.0 * f64::from(rate), seconds).await;
        let mut learned = Vec::new();
        for admin in [p.a.admin_addr, p.b.admin_addr] {
            let admin = TestClient::new(format!("http://{admin}"));
            let text = String::from_utf8(admin.get("/metrics", None).await.body.to_vec()).unwrap();
            let series = r#"wikigate_upstream_burst_refill_rate{route="current",method="GET"} "#;
            learned.push(
                text.lines()
                    .find_map(|l| l.strip_prefix(series)?.parse::<f64>().ok()),
            );
        }
        let case = format!("{size} tokens, {rate}/s: {answered} answered, learned {learned:?}");
        assert_eq!(p.fake.limit_refusals(), 0, "{case}");
        let allowed = f64::from(size) + f64::from(rate) * seconds as f64;
        assert!(answered as f64 >= 0.6 * allowed, "{case}");
    }
}

/// A Redis that is never reached says so, with its reason: in `/readyz`'s body (still 200: the
/// replica serves from L1 and upstream), on the status page and as `cluster_redis_up 0`.
#[tokio::test]
async fn a_redis_never_reached_says_why_in_readyz_and_on_the_status_page() {
    let fake = FakeConfluence::start().await.unwrap();
    let guarded = Redis::start_with_password("the-right-one");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_url = format!("redis://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let wrong_password = format!("redis://:not-the-password@127.0.0.1:{}", guarded.port);
    for (url, reason) in [
        (closed_url, "connection refused"),
        (wrong_password, "AUTH refused"),
    ] {
        let mut config = config_for(&fake.url());
        config.cache.key_secret = Some(Secret::new("replicas-share-this-secret"));
        config.cluster.redis_url = Some(url.clone());
        config.cluster.op_timeout = Duration::from_millis(250);
        let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
        let admin = TestClient::new(format!("http://{}", gateway.admin_addr));
        let deadline = Instant::now() + Duration::from_secs(5);
        let readyz = loop {
            let answer = admin.get("/readyz", None).await;
            assert_eq!(answer.status, 200, "still ready");
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            if text.contains(reason) {
                break text;
            }
            assert!(Instant::now() < deadline, "{url}: {text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(readyz.contains("redis: down for"), "{url}: {readyz}");
        assert!(!readyz.contains("not-the-password"), "{readyz}");
        let page = String::from_utf8_lossy(&admin.get("/", None).await.body).into_owned();
        assert!(
            page.contains("Redis down for") && page.contains(reason),
            "{url}: {page}"
        );
        let metrics = String::from_utf8_lossy(&admin.get("/metrics", None).await.body).into_owned();
        assert!(metrics.contains("wikigate_cluster_redis_up 0"), "{metrics}");
        gateway.shutdown();
        gateway.wait().await;
    }
}

/// `serve` logs the first failed connection with its reason, then nothing more for a minute
/// while the outage lasts (the health check tries every 500 ms).
#[tokio::test]
async fn serve_logs_a_redis_that_is_never_reached_once_with_its_reason() {
    let fake = FakeConfluence::start().await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let admin = crate::support::free_addr();
    let dir = std::env::temp_dir().join(format!("wikigate-redis-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluster.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"{admin}\"\n[upstream]\nurl = \"{}\"\n\
             [cache]\nkey_secret = \"replicas-share-this-secret\"\n\
             [cluster]\nredis_url = \"redis://127.0.0.1:{port}\"\nop_timeout = \"250ms\"\n",
            fake.url()
        ),
    )
    .unwrap();
    let gateway = crate::support::Process::start(
        &["serve", "--config", &file.to_string_lossy()],
        &[("WIKIGATE_LOG_FORMAT", "json")],
    );
    let admin = TestClient::new(format!("http://{admin}"));
    eventually(Duration::from_secs(10), "ready", || {
        crate::support::ready(&admin)
    })
    .await;
    // Five health checks' worth of failures.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gateway.signal("TERM");
    let (_, logs) = gateway.exit().await;
    let unreachable: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("redis unreachable") || line.contains("still unreachable"))
        .collect();
    assert_eq!(unreachable.len(), 1, "{logs}");
    assert!(unreachable[0].contains("connection refused"), "{logs}");
    assert!(unreachable[0].contains("WARN"), "{logs}");
}

/// During a rolling upgrade, replicas of two versions share Redis: an entry of another L2
/// format (its first bytes name the format) is a miss for this version — never a parse error
/// or a wrong answer — and is replaced by this version's own.
#[tokio::test]
async fn a_shared_entry_of_another_format_is_a_miss_and_is_replaced() {
    let p = Pair::start(|_| {}).await;
    let target = format!("{API}/memberof?accountId={}", bob().account_id);
    let first = p.ca.get(&target, Some(&basic(alice()))).await;
    assert!(first.cache_status().contains("stored"));
    let keys = p.redis.cli(&["--scan", "--pattern", "*:e:*"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    assert!(!keys.is_empty(), "the entry reached Redis");
    for key in &keys {
        // What a later (or earlier) version would have written there.
        p.redis.cli(&["SETRANGE", key, "0", "WGE9"]);
    }
    let other = p.cb.get(&target, Some(&basic(alice()))).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.cache_status(), "wikigate; fwd=miss; stored");
    assert_eq!(other.json(), first.json());
    // Replaced by this version's own format.
    for key in &keys {
        let format = p.redis.cli(&["GETRANGE", key, "0", "3"]);
        assert!(
            format.starts_with("WGE") && !format.starts_with("WGE9"),
            "{format}"
        );
    }
}

/// A replica that finds another version's key layout in its namespace serves alone and says
/// why, rather than misread the other version's keys; one of its own layout joins as ever.
#[tokio::test]
async fn a_namespace_of_another_key_layout_is_not_joined_and_says_why() {
    let fake = FakeConfluence::start().await.unwrap();
    let redis = Redis::start();
    // What a version with another layout would have written first.
    assert_eq!(
        redis.cli(&["SET", "wikigate:layout:all", "99"]).trim(),
        "OK"
    );
    let mut config = config_for(&fake.url());
    config.cache.key_secret = Some(Secret::new("replicas-share-this-secret"));
    config.cluster.redis_url = Some(redis.url());
    config.cluster.op_timeout = Duration::from_millis(250);
    let gateway = wikigate::start(&config.clone().validate().unwrap())
        .await
        .unwrap();
    let admin = TestClient::new(format!("http://{}", gateway.admin_addr));
    let says = || async {
        let text = String::from_utf8_lossy(&admin.get("/readyz", None).await.body).into_owned();
        text.contains("layout 99") && text.contains("cluster.namespace")
    };
    eventually(Duration::from_secs(5), "the layout named", says).await;
    // It still answers, alone.
    let client = TestClient::new(format!("http://{}", gateway.addr));
    let target = format!("{API}?accountId={}", bob().account_id);
    assert_eq!(client.get(&target, Some(&basic(alice()))).await.status, 200);
    assert!(
        redis
            .cli(&["--scan", "--pattern", "wikigate:e:*"])
            .trim()
            .is_empty()
    );
    gateway.shutdown();
    gateway.wait().await;
    // Its own namespace: joined, and the layout written.
    config.cluster.namespace = "wikigate-next".to_owned();
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let admin = TestClient::new(format!("http://{}", gateway.admin_addr));
    let up = || async {
        String::from_utf8_lossy(&admin.get("/readyz", None).await.body).contains("redis: up")
    };
    eventually(Duration::from_secs(5), "redis: up", up).await;
    assert_eq!(redis.cli(&["GET", "wikigate-next:layout:all"]).trim(), "1");
    gateway.shutdown();
    gateway.wait().await;
}
