//! Refresh-ahead: hot entries never expire into a reader's wait, within the upstream budget.

use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use wikigate::fake::Faults;
use wikigate::routes::Operation;

use crate::support::{API, Harness, TestClient, alice, basic, put_property};

/// Short TTLs, as operators write them (the stale windows at their defaults).
fn short_ttls(c: &mut wikigate::config::RawConfig) {
    ttls(c, "1s");
}

/// TTLs of 2 s refreshed from half of them on, for tests that read late in an entry's life
/// ([`LATE`]): the refresh point (1–1.2 s, with the entry's own jitter) and the expiry each
/// 300 ms or more away, room for a slow machine's timers.
fn two_second_ttls(c: &mut wikigate::config::RawConfig) {
    ttls(c, "2s");
    c.cache.refresh.after = 0.5;
}

/// A read late in an entry of [`two_second_ttls`]'s life: past its refresh point, before expiry.
const LATE: Duration = Duration::from_millis(1500);

fn ttls(c: &mut wikigate::config::RawConfig, ttl: &str) {
    c.cache.routes = toml::from_str(&format!(
        r#"
        memberof = {{ ttl = "{ttl}" }}
        property = {{ ttl = "{ttl}" }}
        "#
    ))
    .unwrap();
}

async fn metric(h: &Harness, series: &str) -> f64 {
    h.metric(series)
        .await
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Reads `target` every 100 ms for `reads` times: how many waited for upstream, and the
/// slowest read that did not.
async fn read_hot(h: &Harness, target: &str, reads: usize) -> (usize, Duration) {
    let auth = basic(alice());
    let (mut misses, mut slowest_hit) = (0, Duration::ZERO);
    for _ in 0..reads {
        let started = Instant::now();
        let answer = h.client.get(target, Some(&auth)).await;
        assert_eq!(answer.status, 200);
        match answer.cache_status() {
            "wikigate; hit" => slowest_hit = slowest_hit.max(started.elapsed()),
            _ => misses += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (misses, slowest_hit)
}

#[tokio::test]
async fn a_hot_entry_never_expires_into_a_wait() {
    let target = format!("{API}/memberof?accountId={}", alice().account_id);
    let slow = Faults {
        delay: Duration::from_millis(100),
        ..Faults::default()
    };
    // Without refresh-ahead, a read at each expiry waits for upstream.
    let off = Harness::start_with(|c| {
        short_ttls(c);
        c.cache.refresh.routes.clear();
    })
    .await;
    off.fake.set_faults(slow.clone());
    let (misses, _) = read_hot(&off, &target, 30).await;
    assert!(misses >= 3, "{misses} reads waited without refresh-ahead");

    // Refreshed from half the TTL on: a second's TTL leaves a read every 100 ms and a 100 ms
    // upstream room to refresh before it expires.
    let h = Harness::start_with(|c| {
        short_ttls(c);
        c.cache.refresh.after = 0.5;
    })
    .await;
    h.fake.set_faults(slow);
    let (misses, slowest_hit) = read_hot(&h, &target, 30).await;
    assert_eq!(misses, 1, "only the first read waited");
    assert!(slowest_hit < Duration::from_millis(60), "{slowest_hit:?}");
    let refreshed = metric(
        &h,
        r#"wikigate_refreshes_total{route="memberof",result="unchanged"}"#,
    )
    .await;
    assert!(refreshed >= 1.0, "{refreshed} refreshes");
    let saved = metric(
        &h,
        r#"wikigate_refresh_saved_reads_total{route="memberof"}"#,
    )
    .await;
    assert!(saved >= 1.0, "{saved} reads saved from a miss");
    let points = metric(&h, r#"wikigate_refresh_points_total{route="memberof"}"#).await;
    assert!(points > 0.0, "refreshes are charged");
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let page = String::from_utf8_lossy(&admin.get("/", None).await.body).into_owned();
    assert!(page.contains("<tr id=\"refresh-memberof\">"), "{page}");
    // No dearer than without it, give or take the first refresh: it comes at half the TTL, and
    // unchanged answers stretch the learned TTL (to 2×) so that later refreshes come once per
    // configured TTL, as the misses did. (What refresh-ahead saves is measured in
    // benches/refresh_ahead.rs; here the two runs' timing differs by the misses' waits.)
    let (with, without) = (
        h.fake.hits(Operation::GetGroupMembershipsForUser),
        off.fake.hits(Operation::GetGroupMembershipsForUser),
    );
    assert!(
        with <= without + 1,
        "{with} calls with refresh-ahead, {without} without"
    );
}

#[tokio::test]
async fn a_refresh_that_lands_after_a_write_never_brings_back_what_it_changed() {
    let h = Harness::start_with(two_second_ttls).await;
    let (a, auth) = (alice().account_id, basic(alice()));
    let target = format!("{API}/{a}/property/colour");
    put_property(
        &h.client,
        alice(),
        a,
        "colour",
        Method::POST,
        json!({ "v": 1 }),
    )
    .await;
    assert_eq!(
        h.client.get(&target, Some(&auth)).await.json()["value"]["v"],
        1
    );
    // Late in the entry's life a read claims its refresh, whose answer (v1) upstream holds...
    let mut held = h.fake.hold(Operation::GetUserProperty);
    tokio::time::sleep(LATE).await;
    let hit = h.client.get(&target, Some(&auth)).await;
    assert_eq!(hit.cache_status(), "wikigate; hit");
    tokio::time::timeout(Duration::from_secs(5), held.reached())
        .await
        .expect("the late read claimed a refresh");
    // ...while a write changes the property.
    let written = put_property(
        &h.client,
        alice(),
        a,
        "colour",
        Method::PUT,
        json!({ "v": 2 }),
    )
    .await;
    assert!(written.status.is_success(), "{:?}", written.body);
    held.release();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let read = h.client.get(&target, Some(&auth)).await;
        assert_eq!(read.json()["value"]["v"], 2, "{}", read.cache_status());
    }
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_entry_to_its_own_expiry_and_stale_window() {
    let h = Harness::start_with(two_second_ttls).await;
    let target = format!("{API}/memberof?accountId={}", alice().account_id);
    let auth = basic(alice());
    let first = h.client.get(&target, Some(&auth)).await;
    h.fake.set_faults(Faults {
        fail_with: Some(http::StatusCode::SERVICE_UNAVAILABLE),
        ..Faults::default()
    });
    tokio::time::sleep(LATE).await;
    assert_eq!(
        h.client.get(&target, Some(&auth)).await.cache_status(),
        "wikigate; hit"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stale = h.client.get(&target, Some(&auth)).await;
    assert_eq!(stale.status, 200);
    assert!(
        stale.cache_status().contains("detail=stale-if-error"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(stale.json(), first.json());
    let failed = metric(
        &h,
        r#"wikigate_refreshes_total{route="memberof",result="failed"}"#,
    )
    .await;
    assert_eq!(failed, 1.0);
}

#[tokio::test]
async fn no_refresh_spends_points_while_the_quota_is_low() {
    // A site whose configured quota is spent below its reserve after a few calls.
    let h = Harness::start_with(|c| {
        two_second_ttls(c);
        c.quota.points_per_hour = Some(20);
        c.quota.reserve = 0.9;
    })
    .await;
    let target = format!("{API}/memberof?accountId={}", alice().account_id);
    let auth = basic(alice());
    assert_eq!(h.client.get(&target, Some(&auth)).await.status, 200);
    let calls = h.fake.hits(Operation::GetGroupMembershipsForUser);
    tokio::time::sleep(LATE).await;
    assert_eq!(
        h.client.get(&target, Some(&auth)).await.cache_status(),
        "wikigate; hit"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.fake.hits(Operation::GetGroupMembershipsForUser),
        calls,
        "no refresh made"
    );
    let skipped = metric(
        &h,
        r#"wikigate_refreshes_total{route="memberof",result="skipped_for_budget"}"#,
    )
    .await;
    assert_eq!(skipped, 1.0);
    let points = metric(&h, r#"wikigate_refresh_points_total{route="memberof"}"#).await;
    assert_eq!(points, 0.0);
}
