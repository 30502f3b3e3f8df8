//! Account lookups that cost less than a perfect cache: single lookups answered from the
//! objects bulk lookups keep (and back), merged into bulk calls, only where this site's single
//! and bulk answers agree.

use std::time::Duration;

use wikigate::fake::{BulkObjects, FakeOptions, Faults, directory_account};

use crate::support::{API, Answer, Harness, TestClient, alice, basic, bob};

fn single(id: &str) -> String {
    format!("{API}?accountId={id}")
}

fn bulk(ids: &[String]) -> String {
    format!("{API}/bulk?accountId={}", ids.join(","))
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(directory_account).collect()
}

/// Upstream calls wikigate made for single and bulk user lookups so far (the tests' own
/// direct requests carry no `Via`).
fn calls(h: &Harness) -> (u64, u64) {
    let made: Vec<String> = h
        .fake
        .recorded()
        .into_iter()
        .filter(|r| r.headers.contains_key("via"))
        .map(|r| r.target)
        .collect();
    let count = |path: &str| made.iter().filter(|t| t.starts_with(path)).count() as u64;
    (count(&format!("{API}?")), count(&format!("{API}/bulk?")))
}

/// The first single lookup of a partition's family compares the two routes' answers: one
/// single call and one bulk call, after which they are known to agree.
async fn agree(h: &Harness, auth: &str) {
    let first = h
        .client
        .get(&single(&directory_account(4999)), Some(auth))
        .await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let text = h.metrics().await;
    assert!(
        text.contains("wikigate_account_shapes{route=\"user\",state=\"agree\"} 1"),
        "{text}"
    );
}

/// A gateway with one place upstream, so that lookups that would wait for it wait in a batch
/// instead; this site's shapes seen to agree for each caller of `auths`; an upstream that takes
/// `delay` to answer.
async fn one_slow_place(auths: &[&str], delay: Duration) -> Harness {
    let h = Harness::start_with(|c| c.upstream.max_in_flight = 1).await;
    for auth in auths {
        agree(&h, auth).await;
    }
    h.fake.set_faults(Faults {
        delay,
        ..Faults::default()
    });
    h
}

/// Single lookups of `accounts`, all at once, by the caller of `auth`: their answers in order.
async fn look_up_at_once(h: &Harness, accounts: &[String], auth: &str) -> Vec<Answer> {
    let tasks: Vec<_> = accounts
        .iter()
        .map(|id| {
            let (client, target, auth) = (h.client.clone(), single(id), auth.to_owned());
            tokio::spawn(async move { client.get(&target, Some(&auth)).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// Upstream's own answer to the same request, straight from the site.
async fn direct(h: &Harness, target: &str, auth: &str) -> Answer {
    TestClient::new(h.fake.url()).get(target, Some(auth)).await
}

#[tokio::test]
async fn single_lookups_are_answered_from_a_bulk_lookups_objects_and_back_without_a_call() {
    let h = Harness::start().await;
    let auth = basic(alice());
    agree(&h, &auth).await;

    // A bulk lookup of 40 accounts, then single lookups of the same 40: no call at all.
    let accounts = ids(0..40);
    let answer = h.client.get(&bulk(&accounts), Some(&auth)).await;
    assert_eq!(answer.status, 200);
    let before = calls(&h);
    for id in &accounts {
        let through = h.client.get(&single(id), Some(&auth)).await;
        assert_eq!(through.status, 200);
        assert_eq!(through.cache_status(), "wikigate; hit", "{id}");
        // Exactly upstream's own single answer: the same JSON, for the same caller.
        let upstream = direct(&h, &single(id), &auth).await;
        assert_eq!(through.json(), upstream.json(), "{id}");
        assert_eq!(through.viewer(), alice().account_id);
        assert_eq!(
            through.header("content-type"),
            upstream.header("content-type")
        );
    }
    assert_eq!(
        calls(&h),
        before,
        "40 single lookups after a bulk one: 0 calls"
    );

    // And back: single lookups of 40 other accounts, then a bulk lookup of them: no call.
    let others = ids(100..140);
    for id in &others {
        assert_eq!(h.client.get(&single(id), Some(&auth)).await.status, 200);
    }
    let before = calls(&h);
    let through = h.client.get(&bulk(&others), Some(&auth)).await;
    assert_eq!(through.cache_status(), "wikigate; hit");
    assert_eq!(
        calls(&h),
        before,
        "a bulk lookup after single ones: 0 calls"
    );
    assert_eq!(
        through.json()["results"],
        direct(&h, &bulk(&others), &auth).await.json()["results"]
    );
}

#[tokio::test]
async fn where_the_two_routes_answers_differ_neither_is_built_from_the_other() {
    let options = FakeOptions {
        bulk_objects: BulkObjects::Differ,
        ..FakeOptions::default()
    };
    let h = Harness::start_on(options, |_| {}).await;
    let auth = basic(alice());
    let first = h
        .client
        .get(&single(&directory_account(4999)), Some(&auth))
        .await;
    assert_eq!(first.status, 200);
    let accounts = ids(0..10);
    assert_eq!(
        h.client.get(&bulk(&accounts), Some(&auth)).await.status,
        200
    );
    let before = calls(&h);
    for id in &accounts {
        let through = h.client.get(&single(id), Some(&auth)).await;
        assert_eq!(through.json(), direct(&h, &single(id), &auth).await.json());
        assert!(through.cache_status().contains("fwd=miss"), "{id}");
    }
    assert_eq!(
        calls(&h).0,
        before.0 + 10,
        "each single lookup asked for itself"
    );
    assert_eq!(calls(&h).1, before.1, "and none merged into a bulk call");
    let metrics = h.metrics().await;
    assert!(metrics.contains("wikigate_account_shapes{route=\"user\",state=\"disagree\"} 1"));
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let page = String::from_utf8_lossy(&admin.get("/", None).await.body).into_owned();
    assert!(
        page.contains("<td class=\"disagree\">disagree</td>"),
        "{page}"
    );
}

#[tokio::test]
async fn concurrent_single_misses_share_bulk_calls_and_each_gets_its_own_account() {
    // One place upstream: lookups that would wait for it wait in a batch instead.
    let auth = basic(alice());
    let h = one_slow_place(&[&auth], Duration::from_millis(100)).await;
    let before = calls(&h);
    let accounts = ids(200..225);
    for (answer, id) in look_up_at_once(&h, &accounts, &auth)
        .await
        .iter()
        .zip(&accounts)
    {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["accountId"], id.as_str(), "its own account");
        assert_eq!(answer.viewer(), alice().account_id);
    }
    let (singles, bulks) = calls(&h);
    assert_eq!(singles, before.0, "no lookup asked alone");
    assert!(
        bulks - before.1 <= 3,
        "25 lookups in {} bulk calls",
        bulks - before.1
    );
    // Asked again: every one is a hit of its own entry.
    for id in &accounts {
        let again = h.client.get(&single(id), Some(&auth)).await;
        assert_eq!(again.cache_status(), "wikigate; hit");
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("wikigate_account_lookups_total{route=\"user\",how=\"merged\"} 25"),
        "{metrics}"
    );
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let page = String::from_utf8_lossy(&admin.get("/", None).await.body).into_owned();
    assert!(page.contains("<td class=\"merged\">25</td>"), "{page}");
}

#[tokio::test]
async fn lookups_of_different_callers_never_share_a_call_or_an_object() {
    let (a, b) = (basic(alice()), basic(bob()));
    let h = one_slow_place(&[&a, &b], Duration::from_millis(50)).await;
    // Alice is an administrator and sees every email; Bob sees only his own.
    let account = alice().account_id;
    let tasks: Vec<_> = (0..10)
        .flat_map(|_| [a.clone(), b.clone()])
        .map(|auth| {
            let (client, target) = (h.client.clone(), single(account));
            tokio::spawn(async move { (auth.clone(), client.get(&target, Some(&auth)).await) })
        })
        .collect();
    for task in tasks {
        let (auth, answer) = task.await.unwrap();
        let upstream = direct(&h, &single(account), &auth).await;
        assert_eq!(answer.json(), upstream.json(), "each caller's own answer");
        let viewer = if auth == a { alice() } else { bob() };
        assert_eq!(answer.viewer(), viewer.account_id);
    }
    // Every bulk call named one caller's lookups only.
    for recorded in h.fake.recorded() {
        if recorded.target.contains("/bulk?") {
            let auth = recorded.headers["authorization"].to_str().unwrap();
            assert!(auth == a || auth == b);
        }
    }
}

#[tokio::test]
async fn an_account_a_bulk_answer_omits_gets_upstreams_own_single_answer() {
    let h = Harness::start().await;
    let auth = basic(alice());
    agree(&h, &auth).await;
    let unknown = "712020:00000000-0000-4000-8000-00000000dead";
    let before = calls(&h);
    let answer = h.client.get(&single(unknown), Some(&auth)).await;
    let upstream = direct(&h, &single(unknown), &auth).await;
    assert_eq!(answer.status, upstream.status, "{:?}", answer.body);
    assert_eq!(answer.json(), upstream.json());
    assert_eq!(
        calls(&h),
        (before.0 + 1, before.1 + 1),
        "the bulk call omitted it; its own single call answered"
    );
    // Asked again: the omission is remembered, and upstream's single answer decides again.
    let again = h.client.get(&single(unknown), Some(&auth)).await;
    assert_eq!(again.status, upstream.status);
    assert_eq!(calls(&h).1, before.1 + 1, "no second bulk call for it");
}

#[tokio::test]
async fn a_failed_bulk_call_reaches_each_lookup_as_its_own_answer_would() {
    let h = Harness::start_with(|c| {
        c.cache.routes.set(
            wikigate::routes::Route::User,
            wikigate::config::RoutePolicy {
                ttl: Duration::from_millis(300),
                stale_if_error: Duration::from_secs(60),
                stale_while_revalidate: Duration::ZERO,
                stale_on_low_quota: Duration::ZERO,
            },
        );
    })
    .await;
    let auth = basic(alice());
    agree(&h, &auth).await;
    let (old, new) = (directory_account(7), directory_account(8));
    assert_eq!(h.client.get(&single(&old), Some(&auth)).await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.fake.set_faults(Faults {
        fail_with: Some(http::StatusCode::INTERNAL_SERVER_ERROR),
        ..Faults::default()
    });
    // An expired answer within stale-if-error stands in; an account never seen gets upstream's
    // failure, in Confluence's shape, and nothing is stored.
    let stale = h.client.get(&single(&old), Some(&auth)).await;
    assert_eq!(stale.status, 200);
    assert!(
        stale.cache_status().contains("stale"),
        "{}",
        stale.cache_status()
    );
    let failed = h.client.get(&single(&new), Some(&auth)).await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["statusCode"], 500);
    h.fake.set_faults(Faults::default());
    let recovered = h.client.get(&single(&new), Some(&auth)).await;
    assert_eq!(recovered.status, 200);
    assert_eq!(recovered.json()["accountId"], new.as_str());
}

#[tokio::test]
async fn merged_calls_cost_one_call_and_two_points_an_account_shared_among_their_lookups() {
    let auth = basic(alice());
    let h = one_slow_place(&[&auth], Duration::from_millis(100)).await;
    let (spent_before, _) = h.fake.quota_totals();
    let bulks_before = calls(&h).1;
    let accounts = ids(300..330);
    for answer in look_up_at_once(&h, &accounts, &auth).await {
        assert_eq!(answer.status, 200);
    }
    let made = calls(&h).1 - bulks_before;
    let (spent, _) = h.fake.quota_totals();
    // Atlassian's table: a bulk call is 1 point plus 2 an account; one by one, 3 each.
    assert_eq!(spent - spent_before, made + 2 * 30);
    assert!(spent - spent_before < 3 * 30);
    // wikigate charged its callers exactly what the site charged.
    let metrics = h.metrics().await;
    let saved: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("wikigate_account_points_saved_total{route=\"user\",how=\"merged\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap();
    assert_eq!(saved as u64, 3 * 30 - (spent - spent_before));
}

#[tokio::test]
async fn merging_turned_off_for_a_route_asks_one_call_per_lookup() {
    let h = Harness::start_with(|c| c.cache.merge.routes = vec!["email".to_owned()]).await;
    let auth = basic(alice());
    let accounts = ids(0..5);
    assert_eq!(
        h.client.get(&bulk(&accounts), Some(&auth)).await.status,
        200
    );
    let before = calls(&h);
    for id in &accounts {
        let answer = h.client.get(&single(id), Some(&auth)).await;
        assert!(answer.cache_status().contains("fwd=miss"));
    }
    assert_eq!(calls(&h), (before.0 + 5, before.1));
}

#[tokio::test]
async fn email_lookups_share_per_account_records_too() {
    let h = Harness::start().await;
    let auth = basic(alice());
    let email = |id: &str| format!("{API}/email?accountId={id}");
    let first = h
        .client
        .get(&email(&directory_account(0)), Some(&auth))
        .await;
    assert_eq!(first.status, 200);
    let accounts = ids(10..20);
    let target = format!("{API}/email/bulk?accountId={}", accounts.join(","));
    assert_eq!(h.client.get(&target, Some(&auth)).await.status, 200);
    let before = h.fake.requests();
    for id in &accounts {
        let answer = h.client.get(&email(id), Some(&auth)).await;
        assert_eq!(answer.cache_status(), "wikigate; hit");
        assert_eq!(answer.json(), direct(&h, &email(id), &auth).await.json());
    }
    assert_eq!(
        h.fake.requests(),
        before + 10,
        "only the tests' direct requests"
    );
}

/// `DELETE /admin/cache?tag=account:ID` drops every entry about that account — its single
/// lookups, its objects in bulk lookups, its memberships, email and properties — and nothing
/// about another account.
#[tokio::test]
async fn purging_an_account_drops_everything_about_it_and_nothing_else() {
    const TOKEN: &str = "admin-token-0123456789";
    let h = Harness::start_with(|c| {
        c.admin.token = Some(wikigate::config::Secret::new(TOKEN));
    })
    .await;
    let auth = basic(alice());
    let (x, y) = (alice().account_id, directory_account(42));
    crate::support::put_property(
        &h.client,
        alice(),
        x,
        "colour",
        http::Method::POST,
        serde_json::json!({ "v": 1 }),
    )
    .await;
    let about = |id: &str| {
        vec![
            single(id),
            format!("{API}/memberof?accountId={id}"),
            format!("{API}/email?accountId={id}"),
        ]
    };
    let mut x_targets = about(x);
    x_targets.push(format!("{API}/{x}/property"));
    x_targets.push(format!("{API}/{x}/property/colour"));
    let y_targets = about(&y);
    let both = bulk(&[x.to_owned(), y.clone()]);
    for target in x_targets.iter().chain(&y_targets).chain([&both]) {
        assert_eq!(
            h.client.get(target, Some(&auth)).await.status,
            200,
            "{target}"
        );
        let again = h.client.get(target, Some(&auth)).await;
        assert_eq!(again.cache_status(), "wikigate; hit", "{target}");
    }
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let purged = admin
        .request(
            http::Method::DELETE,
            &format!("/admin/cache?tag=account:{x}"),
        )
        .header("authorization", &format!("Bearer {TOKEN}"))
        .send()
        .await;
    assert_eq!(purged.status, 200, "{:?}", purged.body);
    for target in &x_targets {
        let after = h.client.get(target, Some(&auth)).await;
        assert_eq!(after.status, 200);
        assert!(
            after.cache_status().contains("fwd="),
            "{target}: {}",
            after.cache_status()
        );
    }
    for target in &y_targets {
        let after = h.client.get(target, Some(&auth)).await;
        assert_eq!(after.cache_status(), "wikigate; hit", "{target}");
    }
    // The single lookup of the purged account found no object of it (it asked upstream, in a
    // bulk call, above), and brought it back: the bulk lookup is answered from that and the
    // other account's, kept.
    let after = h.client.get(&both, Some(&auth)).await;
    assert_eq!(after.cache_status(), "wikigate; hit");
    assert_eq!(
        after.json()["results"],
        direct(&h, &both, &auth).await.json()["results"]
    );
}

/// Single lookups refreshed ahead of expiry go out together: one bulk call for every hot
/// account of a scope due at once, within the refresh budget.
#[tokio::test]
async fn refreshes_of_single_lookups_are_packed_into_bulk_calls() {
    let h = Harness::start_with(|c| {
        c.cache.routes = toml::from_str("user = { ttl = \"2s\" }").unwrap();
        c.cache.refresh.after = 0.5;
    })
    .await;
    let auth = basic(alice());
    agree(&h, &auth).await;
    let accounts = ids(500..510);
    for answer in look_up_at_once(&h, &accounts, &auth).await {
        assert_eq!(answer.status, 200);
    }
    // Refresh points at 1–1.2 s, the expiry at 2 s: 300 ms of room either side.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = calls(&h);
    // Late in their life, all ten are read at once: hits, each claiming its refresh.
    for answer in look_up_at_once(&h, &accounts, &auth).await {
        assert_eq!(answer.cache_status(), "wikigate; hit");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = calls(&h);
    assert_eq!(after.0, before.0, "no single call");
    assert_eq!(after.1, before.1 + 1, "one bulk call refreshed the ten");
    // Past their first expiry, still hits: the refresh landed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for answer in look_up_at_once(&h, &accounts, &auth).await {
        assert_eq!(answer.cache_status(), "wikigate; hit");
    }
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(r#"wikigate_refreshes_total{route="user",result="unchanged"} 10"#),
        "{metrics}"
    );
}
