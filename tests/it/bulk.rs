//! Bulk lookups answered account by account.

use std::time::Duration;

use http::Method;
use serde_json::Value;
use wikigate::fake::directory_account;
use wikigate::routes::Operation;

use crate::support::{API, Harness, TestClient, alice, basic, bob};

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(directory_account).collect()
}

/// The gateway's answer and upstream's own answer to the same request, both parsed.
async fn both(h: &Harness, target: &str, auth: &str) -> (Value, Value, String) {
    let through = h.client.get(target, Some(auth)).await;
    assert_eq!(through.status, 200, "{:?}", through.body);
    let direct = TestClient::new(h.fake.url()).get(target, Some(auth)).await;
    (
        through.json(),
        direct.json(),
        through.cache_status().to_owned(),
    )
}

/// The accounts the gateway's last upstream bulk request asked for (the direct comparison
/// requests carry no `Via`).
fn asked(h: &Harness) -> Vec<String> {
    let last = h
        .fake
        .recorded()
        .into_iter()
        .rev()
        .find(|r| r.target.contains("/bulk?") && r.headers.contains_key("via"))
        .unwrap();
    let query = last.target.split_once('?').unwrap().1.to_owned();
    query
        .split('&')
        .find_map(|p| p.strip_prefix("accountId="))
        .unwrap()
        .split(',')
        .map(|id| {
            percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect()
}

#[tokio::test]
async fn none_partial_and_all_cached_lookups_equal_upstreams_answer() {
    let h = Harness::start().await;
    let auth = basic(alice());
    let all = ids(0..5);
    let target = |list: &[String]| format!("{API}/bulk?accountId={}", list.join(","));

    let (through, direct, status) = both(&h, &target(&all[..3]), &auth).await;
    assert_eq!(through, direct);
    assert_eq!(status, "wikigate; fwd=miss; stored");
    assert_eq!(asked(&h), all[..3]);

    let requests = h.fake.hits(Operation::GetBulkUserLookup);
    let partial = [
        all[1].clone(),
        all[3].clone(),
        all[0].clone(),
        all[4].clone(),
    ];
    let (through, direct, status) = both(&h, &target(&partial), &auth).await;
    assert_eq!(through, direct, "merged in request order");
    assert_eq!(
        status,
        "wikigate; fwd=partial; stored; detail=fetched-2-of-4"
    );
    assert_eq!(
        asked(&h),
        [all[3].clone(), all[4].clone()],
        "only the missing accounts were asked for"
    );
    assert_eq!(
        h.fake.hits(Operation::GetBulkUserLookup),
        requests + 2,
        "one for us, one for the direct comparison"
    );

    let reversed: Vec<String> = all.iter().rev().cloned().collect();
    let before = h.fake.hits(Operation::GetBulkUserLookup);
    let (through, direct, status) = both(&h, &target(&reversed), &auth).await;
    assert_eq!(through, direct, "order follows the request");
    assert_eq!(status, "wikigate; hit");
    assert_eq!(
        h.fake.hits(Operation::GetBulkUserLookup),
        before + 1,
        "only the direct comparison went upstream"
    );
    assert_eq!(through["size"], 5);
    assert_eq!(through["_links"]["self"], direct["_links"]["self"]);
}

#[tokio::test(start_paused = true)]
async fn duplicates_unknown_ids_and_limit_behave_as_upstream() {
    let h = Harness::start_with(|c| c.cache.negative_ttl = Duration::from_millis(300)).await;
    let auth = basic(alice());
    let [a, b, c] = [
        directory_account(10),
        directory_account(11),
        directory_account(12),
    ];
    let unknown = "557058:no-such-account";
    for query in [
        format!("accountId={a},{b},{a}"),
        format!("accountId={a},{unknown},{b}"),
        format!("accountId={unknown},{a},{b},{c}&limit=2"),
        format!("accountId={c}&accountId={a}&expand=operations,personalSpace"),
    ] {
        let (through, direct, _) = both(&h, &format!("{API}/bulk?{query}"), &auth).await;
        assert_eq!(through, direct, "{query}");
    }
    // The unknown account is remembered as unknown for negative_ttl, then asked again.
    let before = h.fake.hits(Operation::GetBulkUserLookup);
    let target = format!("{API}/bulk?accountId={a},{unknown}");
    assert_eq!(
        h.client.get(&target, Some(&auth)).await.cache_status(),
        "wikigate; hit"
    );
    assert_eq!(h.fake.hits(Operation::GetBulkUserLookup), before);
    tokio::time::advance(Duration::from_millis(400)).await;
    let again = h.client.get(&target, Some(&auth)).await;
    assert_eq!(
        again.cache_status(),
        "wikigate; fwd=partial; stored; detail=fetched-1-of-2"
    );
    assert_eq!(asked(&h), [unknown]);
    assert_eq!(again.json()["size"], 1);
}

#[tokio::test]
async fn undocumented_parameters_are_forwarded_as_sent() {
    // Found by schemathesis: an `expand` of control and non-ASCII bytes once made the rebuilt
    // upstream query invalid (502). Undocumented values now leave the per-account path.
    let h = Harness::start().await;
    let target =
        format!("{API}/bulk?expand=%C2%AD%1D%F1%BF%87%AF%C2%A9%03&accountId=%C2%99&limit=38");
    let answer = h.client.get(&target, Some(&basic(alice()))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        h.fake.recorded().last().unwrap().target,
        target,
        "forwarded byte for byte"
    );
}

#[tokio::test]
async fn more_than_200_ids_are_answered_like_upstream_and_never_asked_for_in_one_go() {
    let h = Harness::start().await;
    let auth = basic(alice());
    let list = ids(0..250);
    let target = format!("{API}/bulk?accountId={}", list.join(","));
    let (through, direct, _) = both(&h, &target, &auth).await;
    assert_eq!(through, direct);
    assert_eq!(through["size"], 200, "upstream considers the first 200");
    assert!(asked(&h).len() <= 200);
    // Half cached, half not: still at most 200 asked, the answer still upstream's.
    let shifted = format!("{API}/bulk?accountId={}", ids(100..320).join(","));
    let (through, direct, status) = both(&h, &shifted, &auth).await;
    assert_eq!(through, direct);
    assert_eq!(
        status,
        "wikigate; fwd=partial; stored; detail=fetched-100-of-200"
    );
    assert_eq!(asked(&h), ids(200..300));
}

#[tokio::test]
async fn account_entries_are_per_caller() {
    let h = Harness::start().await;
    let (a, b) = (alice().account_id, bob().account_id);
    let target = format!("{API}/bulk?accountId={a},{b}");
    let alice_view = h.client.get(&target, Some(&basic(alice()))).await.json();
    assert_eq!(
        alice_view["results"][1]["email"], "bob@example.com",
        "alice is an admin"
    );
    let before = h.fake.hits(Operation::GetBulkUserLookup);
    let bob_view = h.client.get(&target, Some(&basic(bob()))).await;
    assert_eq!(
        bob_view.cache_status(),
        "wikigate; fwd=miss; stored",
        "nothing of alice's is reused"
    );
    assert_eq!(h.fake.hits(Operation::GetBulkUserLookup), before + 1);
    assert_eq!(
        bob_view.json()["results"][0]["email"],
        "",
        "bob does not see alice's email"
    );
    assert_eq!(bob_view.viewer(), b);
}

#[tokio::test]
async fn no_write_in_scope_changes_user_objects_so_none_invalidates_them() {
    // The user API's writes change watches and user properties. Neither is part of a user
    // object, so cached accounts survive them; this test documents that.
    let h = Harness::start().await;
    let a = alice().account_id;
    let target = format!("{API}/bulk?accountId={a},{}", directory_account(1));
    h.client.get(&target, Some(&basic(alice()))).await;
    let write = h
        .client
        .request(Method::POST, &format!("{API}/{a}/property/theme"))
        .auth(alice())
        .body(r#"{"value":{"v":1}}"#)
        .send()
        .await;
    assert_eq!(write.status, 201);
    assert_eq!(
        h.client
            .request(Method::POST, &format!("{API}/watch/space/ENG"))
            .auth(alice())
            .send()
            .await
            .status,
        204
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
async fn email_bulk_is_answered_account_by_account() {
    let h = Harness::start().await;
    let auth = basic(alice());
    let all = ids(20..24);
    let first = format!("{API}/email/bulk?accountId={}&accountId={}", all[0], all[1]);
    let (through, direct, _) = both(&h, &first, &auth).await;
    assert_eq!(through, direct);
    let second = format!(
        "{API}/email/bulk?accountId={},{},{},no-such",
        all[1], all[2], all[0]
    );
    let (through, direct, status) = both(&h, &second, &auth).await;
    assert_eq!(through, direct);
    assert_eq!(
        status,
        "wikigate; fwd=partial; stored; detail=fetched-2-of-4"
    );
}

#[tokio::test]
async fn without_public_url_bodies_are_byte_identical() {
    let h = Harness::start().await;
    let target = format!("{API}?accountId={}", bob().account_id);
    let through = h.client.get(&target, Some(&basic(alice()))).await;
    let direct = TestClient::new(h.fake.url())
        .get(&target, Some(&basic(alice())))
        .await;
    assert_eq!(through.body, direct.body);
    assert_eq!(
        h.client.get(&target, Some(&basic(alice()))).await.body,
        direct.body,
        "from the cache too"
    );
}
