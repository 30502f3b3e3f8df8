use super::holds::backoff;
use super::*;
use crate::error::Refusal;
use crate::hints;
use http::header::{HeaderMap, HeaderValue};

#[test]
fn backoff_doubles_with_bounded_jitter() {
    for strikes in 1..10 {
        let d = backoff(strikes);
        let base = 1u64 << (strikes - 1).min(6);
        assert!(d >= Duration::from_secs(base) && d < Duration::from_secs(base).mul_f64(1.25));
    }
}

fn limits(config: &LimitsConfig) -> Limits {
    let policy = Policy {
        limits: config,
        quota: &QuotaConfig::default(),
        clients: &[],
        burst: (Duration::from_secs(1), Duration::from_secs(2)),
    };
    Limits::new(policy, None, Arc::default())
}

fn caller(class: &str) -> Caller {
    Caller {
        id: CallerId::Address([127, 0, 0, 1].into()),
        credential: None,
        class: class.into(),
        account: quota::Accounts::default().get(&format!("class:{class}")),
    }
}

#[test]
fn lower_priorities_meet_the_reserve_first() {
    let mut config = LimitsConfig::default();
    for (name, priority) in [("batch", 0), ("default", 5), ("interactive", 10)] {
        let class = crate::config::ClassLimits {
            priority,
            ..Default::default()
        };
        config.classes.insert(name.to_owned(), class);
    }
    let below = reserve_thresholds(&config, 0.3);
    assert_eq!([below(0), below(5), below(10)], [0.3, 0.15, 0.0]);
    let mut alone = LimitsConfig::default();
    alone.classes.get_mut("default").unwrap().priority = 7;
    assert_eq!(reserve_thresholds(&alone, 0.3)(7), 0.0, "nobody to protect");
}

#[tokio::test]
async fn near_limit_halves_the_global_budget_until_the_reset() {
    let config = LimitsConfig {
        upstream_global: Some(Rate {
            rate: NonZeroU32::new(10).unwrap(),
            per: Duration::from_secs(60),
            burst: None,
        }),
        ..LimitsConfig::default()
    };
    let caller = caller("default");
    async fn admitted(limits: &Limits, caller: &Caller) -> usize {
        let mut n = 0;
        for _ in 0..20 {
            let admitted = limits
                .admit_upstream(caller, &[0; 16], None, &Method::GET, None)
                .await;
            n += usize::from(admitted.is_ok());
        }
        n
    }
    assert_eq!(admitted(&limits(&config), &caller).await, 10);
    let tightened = limits(&config);
    let mut headers = HeaderMap::new();
    headers.insert("x-ratelimit-nearlimit", HeaderValue::from_static("true"));
    headers.insert("x-ratelimit-reset", HeaderValue::from_static("60"));
    tightened.observe(&[0; 16], None, StatusCode::OK, &Hints::read(&headers));
    assert_eq!(admitted(&tightened, &caller).await, 5);
}

#[tokio::test(start_paused = true)]
async fn a_hold_lets_exactly_one_probe_through_when_it_ends() {
    let limits = limits(&LimitsConfig::default());
    let key = [1; 16];
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("0"));
    limits.observe(
        &key,
        None,
        StatusCode::TOO_MANY_REQUESTS,
        &Hints::read(&headers),
    );
    assert!(
        limits.check_hold(&key).is_err(),
        "Retry-After: 0 holds a second"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(limits.check_hold(&key).is_ok(), "the probe");
    let refused = limits.check_hold(&key).unwrap_err();
    assert!(matches!(
        refused,
        GatewayError::RateLimited(Refusal {
            limit: "upstream-hold",
            ..
        })
    ));
    limits.observe(&key, None, StatusCode::OK, &Hints::default());
    assert!(limits.check_hold(&key).is_ok());
    assert!(
        limits.check_hold(&[2; 16]).is_ok(),
        "other credentials are not held"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_refused_by_a_later_limit_is_given_back_at_once() {
    let config = LimitsConfig {
        upstream_global: Some(Rate {
            rate: NonZeroU32::new(1).unwrap(),
            per: Duration::from_secs(60),
            burst: None,
        }),
        ..LimitsConfig::default()
    };
    let limits = limits(&config);
    let caller = caller("default");
    let key = [3; 16];
    let admit = || limits.admit_upstream(&caller, &key, None, &Method::GET, None);
    let pass = admit().await.expect("the global budget's one call");
    let mut headers = HeaderMap::new();
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    assert!(
        pass.answered(StatusCode::TOO_MANY_REQUESTS, &Hints::read(&headers))
            .await
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    // The hold ended: this request is the probe, but the global budget refuses it.
    let refused = admit().await.err().expect("the global budget is spent");
    assert_eq!(refused.refusal().unwrap().limit, "upstream-global");
    assert_eq!(
        limits.check_hold(&key).ok(),
        Some(true),
        "the probe was given back: the next request probes at once"
    );
}

#[tokio::test(start_paused = true)]
async fn each_429_is_held_at_its_own_scope() {
    let limits = limits(&LimitsConfig::default());
    let caller = caller("default");
    let (key, page) = (
        [4; 16],
        write_key(&Method::PUT, "/wiki/rest/api/user/a/property/k"),
    );
    let other = write_key(&Method::PUT, "/wiki/rest/api/user/a/property/other");
    let get_user = BucketId::of(crate::routes::Route::User, &Method::GET);
    let refusal = |reason: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
        headers.insert("ratelimit-reason", HeaderValue::from_static(reason));
        Hints::read(&headers)
    };
    let limit_of = |refused: Result<Pass<'_>, GatewayError>| {
        refused.err().and_then(|e| e.refusal().map(|r| r.limit))
    };
    // A burst 429: that route and method only.
    let pass = limits
        .admit_upstream(&caller, &key, get_user, &Method::GET, None)
        .await;
    assert!(
        !pass
            .unwrap()
            .answered(
                StatusCode::TOO_MANY_REQUESTS,
                &refusal("confluence-burst-based")
            )
            .await
    );
    let again = limits
        .admit_upstream(&caller, &key, get_user, &Method::GET, None)
        .await;
    assert_eq!(limit_of(again), Some("upstream-burst"));
    let groups = BucketId::of(crate::routes::Route::MemberOf, &Method::GET);
    assert!(
        limits
            .admit_upstream(&caller, &key, groups, &Method::GET, None)
            .await
            .is_ok()
    );
    // A write-limit 429: writes to that resource only.
    let pass = limits
        .admit_upstream(&caller, &key, None, &Method::PUT, page)
        .await;
    pass.unwrap()
        .answered(
            StatusCode::TOO_MANY_REQUESTS,
            &refusal("confluence-per-content-on-write"),
        )
        .await;
    let again = limits
        .admit_upstream(&caller, &key, None, &Method::PUT, page)
        .await;
    assert_eq!(limit_of(again), Some("upstream-write"));
    assert!(
        limits
            .admit_upstream(&caller, &key, None, &Method::PUT, other)
            .await
            .is_ok()
    );
    // Neither held the credential, nor the site.
    assert_eq!(limits.holds().0, 0);
    assert_eq!(limits.quota.site.pressure().exhausted_for, None);
    // A quota 429: the site, every caller and route.
    let pass = limits
        .admit_upstream(&caller, &key, groups, &Method::GET, None)
        .await;
    pass.unwrap()
        .answered(
            StatusCode::TOO_MANY_REQUESTS,
            &refusal("confluence-quota-tenant-based"),
        )
        .await;
    let other_caller = limits
        .admit_upstream(&caller, &[5; 16], None, &Method::GET, None)
        .await;
    assert_eq!(limit_of(other_caller), Some("site-quota"));
    assert_eq!(limits.holds().0, 0, "not a credential hold");
    tokio::time::advance(Duration::from_secs(30)).await;
    // A 429 with no reason: the credential, as before.
    let pass = limits
        .admit_upstream(&caller, &key, groups, &Method::GET, None)
        .await;
    let mut plain = HeaderMap::new();
    plain.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
    assert!(
        pass.unwrap()
            .answered(StatusCode::TOO_MANY_REQUESTS, &Hints::read(&plain))
            .await
    );
    let held = limits
        .admit_upstream(&caller, &key, groups, &Method::GET, None)
        .await;
    assert_eq!(limit_of(held), Some("upstream-hold"));
    assert!(
        limits
            .admit_upstream(&caller, &[5; 16], groups, &Method::GET, None)
            .await
            .is_ok()
    );
}

proptest::proptest! {
    /// Whatever limit headers upstream sends, with whatever status, the quota, the limits
    /// and the holds take them in without a panic, and hold for at most an hour.
    #[test]
    fn any_limit_headers_are_taken_in_and_bounded(
        headers in hints::tests::any_limit_headers(),
        status in proptest::sample::select(vec![200u16, 429, 503]),
    ) {
        let hints = Hints::read(&headers);
        let quota = Arc::new(Quota::new(Some(1000), 0.2));
        let policy = Policy {
            limits: &LimitsConfig::default(),
            quota: &QuotaConfig::default(),
            clients: &[],
            burst: (Duration::from_secs(1), Duration::from_secs(2)),
        };
        let limits = Limits::new(policy, None, quota.clone());
        limits.observe(&[7; 16], Some(&[8; 16]), StatusCode::from_u16(status).unwrap(), &hints);
        let _ = quota.site.standing();
        if let Some(exhausted) = quota.site.pressure().exhausted_for {
            proptest::prop_assert!(exhausted <= hints::MAX_WINDOW);
        }
        let (_, longest) = limits.holds();
        proptest::prop_assert!(longest <= hints::MAX_WAIT);
        proptest::prop_assert!(limits.responsive(Duration::from_millis(10)));
    }
}
