//! Atlassian's points quota: who spends it, the site's standing, hourly budgets, priorities
//! and the reserve, stale answers instead of spent points, per-method budgets. The fake
//! charges points and states them as the edge does; time is tokio's paused clock, so a test
//! hour (the fake's compressed window, or wikigate's own UTC hour) passes at once. Waits are
//! `sleep`s, which paused time skips but which let every timer on the way fire in order (an
//! idle connection closed by the server is noticed before the next request).

use std::num::NonZeroU32;
use std::time::Duration;

use http::{Method, StatusCode};
use wikigate::config::{ClientConfig, KeyHash, PointsBudget, Rate, RawConfig, RoutePolicy};
use wikigate::fake::{FakeOptions, FakeQuota, QuotaMode};
use wikigate::routes::Operation;

use crate::support::{API, Answer, Harness, alice, basic, bob, put_property};

const UI: &str = "ui-key-0123456789abcdef";
const REPORTS: &str = "reports-key-0123456789ab";

fn enforced(points: u64, window: Duration) -> FakeOptions {
    FakeOptions {
        quota: Some(FakeQuota {
            points,
            window,
            mode: QuotaMode::Enforced,
            quirks: false,
        }),
        ..FakeOptions::default()
    }
}

/// Two clients: `ui` of class `interactive` (priority 10) and `reports` of class `batch`
/// (priority 0), with `quota.reserve` = 0.3.
fn priorities(c: &mut RawConfig) {
    c.quota.reserve = 0.3;
    let class = |priority| wikigate::config::ClassLimits {
        priority,
        ..Default::default()
    };
    c.limits.classes.insert("interactive".into(), class(10));
    c.limits.classes.insert("batch".into(), class(0));
    let client = |name: &str, class: &str, key: &str| ClientConfig {
        name: name.into(),
        class: class.into(),
        key_hash: KeyHash::of(key),
        requests: None,
        upstream: None,
        points: None,
    };
    c.callers.clients = vec![
        client("ui", "interactive", UI),
        client("reports", "batch", REPORTS),
    ];
}

/// A read of `/user/current` (3 points upstream) that no earlier request cached, as `key`.
async fn fresh_read(h: &Harness, key: &str, n: usize) -> Answer {
    h.client
        .request(Method::GET, &format!("{API}/current?n={n}"))
        .auth(alice())
        .header("x-wikigate-key", key)
        .send()
        .await
}

#[tokio::test(start_paused = true)]
async fn an_hourly_points_budget_refuses_upstream_calls_until_the_top_of_the_hour() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().points = Some(PointsBudget {
            per_hour: NonZeroU32::new(10).unwrap(),
        });
    })
    .await;
    let read = |n: usize, user| {
        h.client
            .request(Method::GET, &format!("{API}/current?n={n}"))
            .auth(user)
            .send()
    };
    // 3 points a miss, charged after the answer: the fourth reaches 12, the fifth is refused.
    for n in 0..4 {
        assert_eq!(read(n, alice()).await.status, 200);
    }
    let refused = read(4, alice()).await;
    refused.assert_error(429);
    assert_eq!(refused.header("x-wikigate-limit"), "points");
    assert_eq!(refused.header("ratelimit-policy"), "\"points\";q=10;w=3600");
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");

    // A hit spends nothing and is served; another credential has a budget of its own.
    assert_eq!(read(0, alice()).await.cache_status(), "wikigate; hit");
    assert_eq!(read(5, bob()).await.status, 200);
    assert_eq!(
        h.metric(r#"wikigate_quota_points_spent_total{caller="class:default",route="current"}"#)
            .await,
        Some(15.0)
    );
    assert_eq!(
        h.metric(r#"wikigate_rate_limited_total{caller="class:default",limit="points"}"#)
            .await,
        Some(1.0)
    );

    // At the top of the UTC hour the budget is whole again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(read(6, alice()).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn under_the_reserve_lower_priorities_are_refused_first_and_the_quota_is_never_overrun() {
    let window = Duration::from_secs(600);
    let h = Harness::start_on(enforced(100, window), priorities).await;
    // Batch reads until the reserve (30 of 100 points) stops it.
    let mut n = 0;
    let refused = loop {
        let answer = fresh_read(&h, REPORTS, n).await;
        n += 1;
        if answer.status != StatusCode::OK {
            break answer;
        }
    };
    refused.assert_error(429);
    assert_eq!(refused.header("x-wikigate-limit"), "quota-reserve");
    let remaining = h
        .metric(r#"wikigate_site_quota_remaining{source="enforced",policy="tenant-app-quota"}"#)
        .await
        .unwrap();
    assert!((27.0..30.0).contains(&remaining), "{remaining} left");
    assert_eq!(h.metric("wikigate_site_quota_low").await, Some(1.0));

    // The interactive client keeps working to the end of the quota, then wikigate stops
    // calling: Confluence never has to refuse.
    let mut interactive = 0;
    let stopped = loop {
        let answer = fresh_read(&h, UI, n).await;
        n += 1;
        if answer.status != StatusCode::OK {
            break answer;
        }
        interactive += 1;
    };
    assert_eq!(interactive, 10, "27..30 points left at 3 a call");
    stopped.assert_error(429);
    assert_eq!(stopped.header("x-wikigate-limit"), "site-quota");
    assert_eq!(h.fake.quota_totals().1, 0, "no upstream 429");

    // The window resets: both classes call again.
    let retry_after: u64 = stopped.header("retry-after").parse().unwrap();
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(fresh_read(&h, REPORTS, n).await.status, 200);
    assert_eq!(fresh_read(&h, UI, n + 1).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn on_low_quota_expired_entries_stand_in_and_writes_still_go_through() {
    let h = Harness::start_on(enforced(100, Duration::from_secs(600)), |c| {
        priorities(c);
        c.cache.routes.set_all(RoutePolicy {
            ttl: Duration::from_secs(1),
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_on_low_quota: Duration::from_secs(600),
        });
    })
    .await;
    let ui = |method, target: &str| {
        h.client
            .request(method, target)
            .auth(alice())
            .header("x-wikigate-key", UI)
    };
    let current = format!("{API}/current");
    let fresh = ui(Method::GET, &current).send().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Quota plenty: the expired entry is fetched anew.
    assert_eq!(
        ui(Method::GET, &current).send().await.cache_status(),
        "wikigate; fwd=miss; stored"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Batch spends the quota down to the reserve.
    let mut n = 0;
    while fresh_read(&h, REPORTS, n).await.status == StatusCode::OK {
        n += 1;
    }
    let calls = h.fake.hits(Operation::GetCurrentUser);
    let stale = ui(Method::GET, &current).send().await;
    assert_eq!(stale.cache_status(), "wikigate; fwd=stale; detail=quota");
    assert_eq!(stale.body, fresh.body);
    assert_eq!(
        h.fake.hits(Operation::GetCurrentUser),
        calls,
        "no points spent"
    );

    // A write goes through and invalidates: the property is read anew, never stale.
    let a = alice().account_id;
    let property = format!("{API}/{a}/property/theme");
    let write = |method, value| {
        ui(method, &property)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "value": value }).to_string())
            .send()
    };
    let created = write(Method::POST, serde_json::json!({"mode": "dark"})).await;
    assert_eq!(created.status, 201);
    let read = ui(Method::GET, &format!("{API}/{a}/property/theme"))
        .send()
        .await;
    assert_eq!(read.json()["value"]["mode"], "dark");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let updated = write(Method::PUT, serde_json::json!({"mode": "light"})).await;
    assert_eq!(updated.status, 204);
    let read = ui(Method::GET, &format!("{API}/{a}/property/theme"))
        .send()
        .await;
    assert_eq!(read.json()["value"]["mode"], "light");
    assert_eq!(
        h.metric(r#"wikigate_cache_stale_served_total{route="current",kind="on_low_quota"}"#)
            .await,
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_sites_standing_burn_rate_and_exhaustion_are_exposed() {
    let h = Harness::start_on(enforced(1000, Duration::from_secs(3600)), |_| {}).await;
    let read = |n: usize| {
        h.client
            .request(Method::GET, &format!("{API}/current?n={n}"))
            .auth(alice())
            .send()
    };
    read(0).await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    read(1).await;
    let series = |name: &str| {
        format!(r#"wikigate_site_quota{name}{{source="enforced",policy="tenant-app-quota"}}"#)
    };
    assert_eq!(h.metric(&series("")).await, Some(1000.0));
    assert_eq!(h.metric(&series("_remaining")).await, Some(994.0));
    assert_eq!(h.metric(&series("_window_seconds")).await, Some(3600.0));
    // 3 points in 20 s: 540 an hour; 994 left last 6 626.7 s at that rate.
    assert_eq!(
        h.metric(&series("_burn_points_per_hour")).await,
        Some(540.0)
    );
    let exhaustion = h.metric(&series("_exhaustion_seconds")).await.unwrap();
    assert!((6626.0..6627.0).contains(&exhaustion), "{exhaustion}");
    assert_eq!(h.metric("wikigate_site_quota_low").await, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_shadow_policy_is_reported_and_never_acted_on() {
    let shadow = FakeOptions {
        quota: Some(FakeQuota {
            points: 10,
            window: Duration::from_secs(3600),
            mode: QuotaMode::Shadow,
            quirks: false,
        }),
        ..FakeOptions::default()
    };
    let h = Harness::start_on(shadow, priorities).await;
    for n in 0..8 {
        assert_eq!(fresh_read(&h, REPORTS, n).await.status, 200, "call {n}");
    }
    assert_eq!(
        h.metric(r#"wikigate_site_quota_remaining{source="shadow",policy="tenant-app-quota"}"#)
            .await,
        Some(0.0)
    );
    assert_eq!(h.metric("wikigate_site_quota_low").await, Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn a_configured_quota_stands_when_upstream_states_none() {
    let silent = FakeOptions {
        quota: None,
        ..FakeOptions::default()
    };
    let h = Harness::start_on(silent, |c| {
        priorities(c);
        c.quota.points_per_hour = Some(20);
    })
    .await;
    // 20 points, 30 % kept: batch stops once fewer than 6 are left.
    let mut calls = 0;
    while fresh_read(&h, REPORTS, calls).await.status == StatusCode::OK {
        calls += 1;
    }
    assert_eq!(calls, 5, "15 points spent, 5 left");
    assert_eq!(
        h.metric(
            r#"wikigate_site_quota_remaining{source="configured",policy="quota.points_per_hour"}"#
        )
        .await,
        Some(5.0)
    );
    assert_eq!(fresh_read(&h, UI, 100).await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_method_budget_refuses_past_the_methods_rate_and_leaves_the_others() {
    let h = Harness::start_with(|c| {
        c.quota.methods.put = Some(Rate {
            rate: NonZeroU32::new(1).unwrap(),
            per: Duration::from_secs(1),
            burst: None,
        });
    })
    .await;
    let a = alice().account_id;
    let value = serde_json::json!({"v": 1});
    let create = put_property(&h.client, alice(), a, "k", Method::POST, value.clone()).await;
    assert_eq!(create.status, 201);
    let put = || put_property(&h.client, alice(), a, "k", Method::PUT, value.clone());
    assert_eq!(put().await.status, 204);
    let refused = put().await;
    refused.assert_error(429);
    assert_eq!(refused.header("x-wikigate-limit"), "upstream-method");
    assert_eq!(
        h.client
            .get(&format!("{API}/{a}/property/k"), Some(&basic(alice())))
            .await
            .status,
        200,
        "GETs have a budget of their own (none here)"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(put().await.status, 204, "the bucket refilled");
}
