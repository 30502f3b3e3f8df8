use super::*;
use http::HeaderValue;

const SHADOW: [(&str, &str); 2] = [
    (
        "beta-ratelimit-policy",
        "\"tenant-app-quota\";q=100100;w=3600",
    ),
    ("beta-ratelimit", "\"tenant-app-quota\";r=10;t=2107"),
];

fn hints(pairs: &[(&'static str, &'static str)]) -> Hints {
    let headers: http::HeaderMap = pairs
        .iter()
        .map(|(name, value)| {
            (
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect();
    Hints::read(&headers)
}

#[test]
fn calls_cost_what_atlassians_table_says() {
    let bulk = br#"{"results":[{"accountId":"a"},{"accountId":"b"}],"size":2}"#;
    assert_eq!(cost(Route::Bulk, false, bulk), 5);
    assert_eq!(cost(Route::MemberOf, false, br#"{"results":[]}"#), 1);
    assert_eq!(cost(Route::User, false, b"{}"), 3);
    assert_eq!(cost(Route::Email, false, b"{}"), 2);
    assert_eq!(
        cost(Route::EmailBulk, false, br#"[{"a":1},{"a":2},{"a":3}]"#),
        4
    );
    assert_eq!(cost(Route::Properties, false, br#"{"results":[{}]}"#), 2);
    assert_eq!(cost(Route::WatchSpace, false, br#"{"watching":true}"#), 1);
    assert_eq!(cost(Route::Property, true, b""), 1, "writes cost 1");
    assert_eq!(estimate(Route::Current, false), 3);
    assert_eq!(estimate(Route::Bulk, false), 1);
    let ok = StatusCode::OK;
    assert_eq!(charge(Route::Bulk, false, ok, Some(bulk)), 5);
    assert_eq!(
        charge(Route::Bulk, false, ok, None),
        1,
        "streamed: the least"
    );
    assert_eq!(
        charge(Route::User, false, StatusCode::NOT_FOUND, Some(b"{}")),
        1
    );
    assert_eq!(
        charge(Route::User, false, StatusCode::TOO_MANY_REQUESTS, None),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn enforced_headers_win_and_shadow_ones_are_reported_only() {
    let site = Site::new(None, 0.2);
    assert_eq!(site.standing(), None);
    site.observe(StatusCode::OK, &hints(&SHADOW));
    let shadow = site.standing().unwrap();
    assert_eq!(
        (shadow.source, shadow.quota, shadow.remaining),
        (Source::Shadow, 100_100, Some(10))
    );
    assert_eq!(
        shadow.reset_in,
        hour(Instant::now()).1,
        "an hourly window ends at the top of the UTC hour, whatever t says (2107)"
    );
    assert!(
        !site.pressure().under(0.2),
        "a shadow policy is not acted on"
    );

    site.observe(
        StatusCode::OK,
        &hints(&[
            (
                "ratelimit-policy",
                "\"burst\";q=100;w=1, \"tenant-app-quota\";q=1000;w=3600",
            ),
            (
                "ratelimit",
                "\"burst\";r=99;t=1, \"tenant-app-quota\";r=150;t=600",
            ),
            ("x-ratelimit-nearlimit", "true"),
        ]),
    );
    let enforced = site.standing().unwrap();
    assert_eq!(
        (enforced.source, &*enforced.policy, enforced.remaining),
        (Source::Enforced, "tenant-app-quota", Some(150)),
        "the policy with the smallest share left binds"
    );
    let pressure = site.pressure();
    assert_eq!(pressure.share, Some(0.15));
    assert!(pressure.near_limit && pressure.under(0.1));
    assert_eq!(site.standings().len(), 3, "each policy is reported");

    // The hour ends: its readings say nothing about the next one.
    tokio::time::advance(hour(Instant::now()).1).await;
    assert_eq!(site.standing(), None);
}

#[tokio::test(start_paused = true)]
async fn several_policies_pair_by_name_and_the_lowest_share_binds() {
    let site = Site::new(None, 0.2);
    let both = "\"global-app-quota\";q=65000;w=3600, \"tenant-app-quota\";q=100100;w=3600";
    // Only the global entry says r (r appears once about 80 % is used).
    site.observe(
        StatusCode::OK,
        &hints(&[
            ("ratelimit-policy", both),
            ("ratelimit", "\"global-app-quota\";r=500;t=600"),
        ]),
    );
    let binding = site.standing().unwrap();
    assert_eq!(
        (&*binding.policy, binding.quota, binding.remaining),
        ("global-app-quota", 65_000, Some(500)),
        "never the tenant policy's q with the global entry's r"
    );
    let tenant = site
        .standings()
        .into_iter()
        .find(|s| &*s.policy == "tenant-app-quota")
        .unwrap();
    assert_eq!((tenant.quota, tenant.remaining), (100_100, None));
    // Now the tenant policy says r, lower in share: it binds.
    site.observe(
        StatusCode::OK,
        &hints(&[
            ("ratelimit-policy", both),
            (
                "ratelimit",
                "\"tenant-app-quota\";r=1001;t=600, \"global-app-quota\";r=40000;t=600",
            ),
        ]),
    );
    assert_eq!(&*site.standing().unwrap().policy, "tenant-app-quota");
    assert!(site.low());
}

#[tokio::test(start_paused = true)]
async fn a_vanished_policy_header_keeps_the_last_known_quota() {
    let site = Site::new(None, 0.2);
    site.observe(
        StatusCode::OK,
        &hints(&[
            ("ratelimit-policy", "\"tenant-app-quota\";q=1000;w=3600"),
            ("ratelimit", "\"tenant-app-quota\";r=3;t=60"),
        ]),
    );
    site.observe(
        StatusCode::OK,
        &hints(&[("ratelimit", "\"tenant-app-quota\";r=0;t=60")]),
    );
    let standing = site.standing().unwrap();
    assert_eq!((standing.quota, standing.remaining), (1000, Some(0)));
    let exhausted = site.pressure().exhausted_for.unwrap();
    assert_eq!(
        exhausted,
        hour(Instant::now()).1,
        "until the top of the hour"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_bucket_is_not_the_quota_and_a_quota_refusal_is_read() {
    let site = Site::new(None, 0.2);
    site.observe(
        StatusCode::OK,
        &hints(&[
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "120"),
        ]),
    );
    assert_eq!(site.standing(), None, "X-RateLimit-* is a burst bucket");
    assert_eq!(site.pressure().exhausted_for, None);
    site.observe(
        StatusCode::TOO_MANY_REQUESTS,
        &hints(&[
            ("ratelimit-reason", "confluence-burst-based"),
            ("retry-after", "2"),
        ]),
    );
    assert_eq!(
        site.pressure().exhausted_for,
        None,
        "a burst 429 is not the site's"
    );
    site.observe(
        StatusCode::TOO_MANY_REQUESTS,
        &hints(&[
            ("ratelimit-reason", "confluence-quota-tenant-based"),
            ("retry-after", "30"),
        ]),
    );
    assert_eq!(site.pressure().exhausted_for, Some(Duration::from_secs(30)));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(site.pressure().exhausted_for, None);
}

#[tokio::test(start_paused = true)]
async fn the_burn_rate_projects_exhaustion() {
    let site = Site::new(None, 0.2);
    let reading = |remaining: &'static str| {
        hints(&[
            ("ratelimit-policy", "\"tenant-app-quota\";q=10000;w=3600"),
            ("ratelimit", remaining),
        ])
    };
    site.observe(
        StatusCode::OK,
        &reading("\"tenant-app-quota\";r=9000;t=3000"),
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    site.observe(
        StatusCode::OK,
        &reading("\"tenant-app-quota\";r=8900;t=2990"),
    );
    let standing = site.standing().unwrap();
    assert_eq!(standing.burn_per_hour, Some(36_000.0));
    assert_eq!(standing.exhaustion_in, Some(Duration::from_secs(890)));
}

#[tokio::test(start_paused = true)]
async fn a_configured_quota_counts_down_with_wikigates_spending_and_resets_hourly() {
    let site = Site::new(Some(1000), 0.2);
    site.observe(StatusCode::OK, &hints(&SHADOW));
    site.spent(100, None);
    site.spent(50, None);
    let standing = site.standing().unwrap();
    assert_eq!(
        (standing.source, standing.remaining),
        (Source::Configured, Some(850)),
        "a configured quota stands over a shadow policy"
    );
    assert_eq!(site.pressure().share, Some(0.85));
    tokio::time::advance(standing.reset_in).await;
    assert_eq!(site.standing().unwrap().remaining, Some(1000), "a new hour");
}

#[tokio::test(start_paused = true)]
async fn accounts_count_this_hour_and_in_total() {
    let accounts = Accounts::default();
    let batch = accounts.get("class:batch");
    let now = Instant::now();
    batch.spend(Route::Bulk, 41, now);
    batch.save(Route::Bulk, 9, now);
    assert!(Arc::ptr_eq(&batch, &accounts.get("class:batch")));
    assert_eq!(batch.this_hour(), (41, 9));
    let (_, left) = hour(Instant::now());
    tokio::time::advance(left).await;
    assert_eq!(batch.this_hour(), (0, 0), "the top of the hour");
    assert_eq!(batch.by_route(Route::Bulk), (41, 9));
}

#[tokio::test(start_paused = true)]
async fn hours_end_at_the_top_of_the_utc_hour() {
    let (index, left) = hour(Instant::now());
    let unix = unix_now(Instant::now());
    assert_eq!((unix + left).as_secs() % 3600, 0);
    tokio::time::advance(left).await;
    assert_eq!(hour(Instant::now()), (index + 1, HOUR));
}
