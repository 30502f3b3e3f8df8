//! Atlassian's three limits as its edge states them, one test per row of the table (burst
//! buckets per endpoint and method, the points quota, per-resource write limits) and per field
//! quirk, and wikigate's cap on requests upstream at once. The fake applies and states each
//! limit as the edge does; time is tokio's paused clock where the test waits on the fake.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use wikigate::fake::{FakeBursts, FakeOptions, FakeQuota, FakeWriteLimit, Faults, QuotaMode};
use wikigate::routes::Operation;

use crate::support::{API, Answer, Harness, TestClient, alice, basic, metric_in, put_property};

/// An API-token site (no points headers) whose burst buckets hold `limit` and refill `limit`
/// a second, stating their refill (`X-RateLimit-FillRate`).
fn api_token_site(limit: u32) -> FakeOptions {
    FakeOptions {
        quota: None,
        bursts: Some(FakeBursts {
            state_refill: true,
            ..FakeBursts::new(limit, limit)
        }),
        ..FakeOptions::default()
    }
}

/// A read of another endpoint than [`fresh`]'s (`GET /user/memberof`).
async fn other_endpoint(h: &Harness) -> Answer {
    h.client
        .get(
            &format!("{API}/memberof?accountId={}", alice().account_id),
            Some(&basic(alice())),
        )
        .await
}

/// A read of `GET /user/current` that always goes upstream (a distinct query each time).
async fn fresh(h: &Harness, n: usize) -> Answer {
    h.client
        .get(&format!("{API}/current?n={n}"), Some(&basic(alice())))
        .await
}

#[tokio::test(start_paused = true)]
async fn a_dry_burst_bucket_paces_its_endpoint_only_and_never_reads_as_the_quota() {
    let h = Harness::start_on(api_token_site(5), |_| {}).await;
    let started = tokio::time::Instant::now();
    // Twelve quick reads against a bucket of five a second: the first five go at once, the
    // rest wait for their share of the refill (200 ms each), and upstream refuses none.
    for n in 0..12 {
        let answer = fresh(&h, n).await;
        assert_eq!(answer.status, 200, "read {n}: {:?}", answer.body);
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        h.fake.limit_refusals(),
        0,
        "no upstream 429 pacing could avoid"
    );
    // Another endpoint was never slowed by it.
    let other = tokio::time::Instant::now();
    let groups = other_endpoint(&h).await;
    assert_eq!(groups.status, 200);
    assert!(other.elapsed() < Duration::from_millis(50));
    let text = h.metrics().await;
    assert!(
        !text.contains("wikigate_site_quota{"),
        "a burst bucket is not the quota: {text}"
    );
    assert_eq!(metric_in(&text, "wikigate_site_quota_low"), Some(0.0));
    assert_eq!(
        metric_in(&text, "wikigate_site_quota_exhausted_seconds"),
        Some(0.0)
    );
    assert_eq!(
        metric_in(
            &text,
            r#"wikigate_upstream_burst_limit{route="current",method="GET"}"#
        ),
        Some(5.0)
    );
    assert!(
        metric_in(
            &text,
            r#"wikigate_upstream_burst_remaining{route="memberof",method="GET"}"#
        )
        .is_some()
    );
    let waited = metric_in(
        &text,
        r#"wikigate_upstream_burst_wait_seconds_count{route="current",method="GET"}"#,
    );
    assert_eq!(waited, Some(12.0));
}

/// Distinct reads of `GET /user/current` through `clients` in turn at `per_second` for
/// `seconds`, each sent at its instant whatever the others are doing; how many were answered
/// 200.
pub(crate) async fn drive(clients: &[&TestClient], per_second: f64, seconds: u64) -> usize {
    let start = tokio::time::Instant::now();
    let calls = (per_second * seconds as f64) as usize;
    let tasks: Vec<_> = (0..calls)
        .map(|n| {
            let client = clients[n % clients.len()].clone();
            let at = start + Duration::from_secs_f64(n as f64 / per_second);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let path = format!("{API}/current?drive={n}");
                client.get(&path, Some(&basic(alice()))).await.status
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        if task.await.unwrap() == StatusCode::OK {
            answered += 1;
        }
    }
    answered
}

/// A bucket's size is not its rate, and the Cloud edge does not state the rate: at three
/// times the rate of buckets whose size and rate differ, upstream refuses nothing, and the
/// rate wikigate learned (on `/metrics`) is at most the bucket's.
#[tokio::test(start_paused = true)]
async fn an_unstated_refill_is_learned_and_three_times_its_rate_collects_no_upstream_429() {
    for (size, rate, seconds) in [(10, 2, 20), (350, 100, 6)] {
        let site = FakeOptions {
            quota: None,
            bursts: Some(FakeBursts::new(size, rate)),
            ..FakeOptions::default()
        };
        let h = Harness::start_on(site, |_| {}).await;
        let answered = drive(&[&h.client], 3.0 * f64::from(rate), seconds).await;
        let case = format!("{size} tokens, {rate}/s: {answered} answered");
        assert_eq!(h.fake.limit_refusals(), 0, "{case}");
        let allowed = f64::from(size) + f64::from(rate) * seconds as f64;
        assert!(answered as f64 >= 0.75 * allowed, "{case}");
        let text = h.metrics().await;
        let learned = metric_in(
            &text,
            r#"wikigate_upstream_burst_refill_rate{route="current",method="GET"}"#,
        )
        .unwrap();
        assert!(
            learned <= f64::from(rate) && learned >= 0.8 * f64::from(rate),
            "{case}: learned {learned}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn past_burst_wait_a_call_is_refused_at_once_and_other_endpoints_keep_answering() {
    let h = Harness::start_on(api_token_site(2), |c| {
        c.upstream.burst_wait = Duration::from_millis(600);
    })
    .await;
    // The bucket is learned from the first answer (one token left of two)...
    assert_eq!(fresh(&h, 100).await.status, 200);
    // ...then six at once: one goes, one waits 500 ms, the rest would wait past 600 ms.
    let tasks: Vec<_> = (0..6)
        .map(|n| {
            let client = h.client.clone();
            tokio::spawn(async move {
                client
                    .get(&format!("{API}/current?n={n}"), Some(&basic(alice())))
                    .await
            })
        })
        .collect();
    let mut refused = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => refused.push(answer),
            other => panic!("{other}"),
        }
    }
    assert_eq!(refused.len(), 4);
    for answer in &refused {
        assert_eq!(answer.header("x-wikigate-limit"), "upstream-burst");
        let retry: u64 = answer.header("retry-after").parse().unwrap();
        assert!((1..=3).contains(&retry), "{retry}");
    }
    assert_eq!(h.fake.limit_refusals(), 0);
    let groups = other_endpoint(&h).await;
    assert_eq!(groups.status, 200, "another endpoint");
}

#[tokio::test(start_paused = true)]
async fn a_burst_429_holds_that_endpoint_and_method_only() {
    let h = Harness::start_on(api_token_site(100), |_| {}).await;
    assert_eq!(fresh(&h, 0).await.status, 200);
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("ratelimit-reason", "confluence-burst-based"),
        ("retry-after", "10"),
        ("x-ratelimit-reset", "2026-12-03T10:15Z"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::TOO_MANY_REQUESTS),
        response_headers: headers,
        ..Faults::default()
    });
    fresh(&h, 1).await.assert_error(429);
    h.fake.set_faults(Faults::default());
    let held = fresh(&h, 2).await;
    held.assert_error(429);
    assert_eq!(held.header("x-wikigate-limit"), "upstream-burst");
    assert_eq!(
        h.fake.hits(Operation::GetCurrentUser),
        2,
        "held here, not sent"
    );
    // Every other endpoint, and the site, are untouched.
    let groups = other_endpoint(&h).await;
    assert_eq!(groups.status, 200);
    let text = h.metrics().await;
    assert_eq!(
        metric_in(&text, "wikigate_site_quota_exhausted_seconds"),
        Some(0.0)
    );
    assert_eq!(metric_in(&text, "wikigate_upstream_holds"), Some(0.0));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(fresh(&h, 3).await.status, 200, "the hold ended");
}

#[tokio::test(start_paused = true)]
async fn a_write_limit_429_spaces_out_writes_to_that_resource_only() {
    let options = FakeOptions {
        write_limit: Some(FakeWriteLimit {
            writes: 1,
            per: Duration::from_secs(10),
        }),
        ..FakeOptions::default()
    };
    let h = Harness::start_on(options, |_| {}).await;
    let a = alice().account_id;
    let write = |key: &'static str, v: u64| {
        put_property(&h.client, alice(), a, key, Method::POST, json!({ "v": v }))
    };
    assert_eq!(write("busy", 1).await.status, 201);
    let upstream_refused = write("busy", 2).await;
    upstream_refused.assert_error(429);
    assert_eq!(h.fake.limit_refusals(), 1);
    // wikigate now spaces out writes to it: refused here, never sent.
    let spaced = write("busy", 3).await;
    spaced.assert_error(429);
    assert_eq!(spaced.header("x-wikigate-limit"), "upstream-write");
    assert_eq!(h.fake.limit_refusals(), 1);
    // Another resource, and reads of this one, go on.
    assert_eq!(write("calm", 1).await.status, 201);
    let read = h
        .client
        .get(&format!("{API}/{a}/property/busy"), Some(&basic(alice())))
        .await;
    assert_eq!(read.json()["value"]["v"], 1);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let later = put_property(
        &h.client,
        alice(),
        a,
        "busy",
        Method::PUT,
        json!({ "v": 4 }),
    );
    assert_eq!(later.await.status, 204);
}

#[tokio::test(start_paused = true)]
async fn the_fields_quota_quirks_are_read_as_atlassian_means_them() {
    let options = FakeOptions {
        quota: Some(FakeQuota {
            points: 30,
            window: Duration::from_secs(3600),
            mode: QuotaMode::Enforced,
            quirks: true,
        }),
        ..FakeOptions::default()
    };
    let h = Harness::start_on(options, |_| {}).await;
    let remaining = r#"wikigate_site_quota_remaining{source="enforced",policy="tenant-app-quota"}"#;
    let reset = r#"wikigate_site_quota_reset_seconds{source="enforced",policy="tenant-app-quota"}"#;
    assert_eq!(fresh(&h, 0).await.status, 200);
    let text = h.metrics().await;
    // r is stated only once 80 % is used: the quota is known, its remainder is not.
    assert_eq!(
        metric_in(
            &text,
            r#"wikigate_site_quota{source="enforced",policy="tenant-app-quota"}"#
        ),
        Some(30.0)
    );
    assert_eq!(metric_in(&text, remaining), None);
    // t is 17 s short of the hour's real end: the hour ends at the top of the UTC hour.
    let left = metric_in(&text, reset).unwrap();
    let hour_left = 3600
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 3600;
    assert!(
        (left - hour_left as f64).abs() <= 2.0,
        "{left} vs {hour_left}"
    );
    // 3 points a read: after 8 reads 6 are left (r appears), after 10 none (the policy
    // header vanishes): wikigate keeps the last known quota and stops calling.
    for n in 1..10 {
        assert_eq!(fresh(&h, n).await.status, 200, "read {n}");
    }
    let text = h.metrics().await;
    assert_eq!(metric_in(&text, remaining), Some(0.0));
    assert_eq!(
        metric_in(
            &text,
            r#"wikigate_site_quota{source="enforced",policy="tenant-app-quota"}"#
        ),
        Some(30.0)
    );
    let stopped = fresh(&h, 10).await;
    stopped.assert_error(429);
    assert_eq!(stopped.header("x-wikigate-limit"), "site-quota");
    assert_eq!(h.fake.quota_totals().1, 0, "Confluence never had to refuse");
}

#[tokio::test]
async fn the_upstream_concurrency_cap_answers_503_fast_past_its_queue() {
    let h = Harness::start_on(api_token_site(10_000), |c| {
        c.upstream.max_in_flight = 2;
        c.upstream.max_queued = 2;
        c.upstream.max_queue_wait = Duration::from_secs(5);
    })
    .await;
    h.fake.set_faults(Faults {
        delay: Duration::from_millis(400),
        ..Faults::default()
    });
    // Ten distinct misses at once: two upstream, two queued, six refused at once.
    let tasks: Vec<_> = (0..10)
        .map(|n| {
            let client = h.client.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let answer = client
                    .get(&format!("{API}/current?n={n}"), Some(&basic(alice())))
                    .await;
                (answer, started.elapsed())
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (answer, took) = task.await.unwrap();
        match answer.status.as_u16() {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert_eq!(answer.header("x-wikigate-limit"), "upstream-concurrency");
                assert_eq!(answer.header("retry-after"), "1");
                assert!(took < Duration::from_millis(300), "fast: {took:?}");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!((ok, refused), (4, 6));
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 4);
    let text = h.metrics().await;
    assert_eq!(metric_in(&text, "wikigate_upstream_in_flight"), Some(0.0));
    assert_eq!(metric_in(&text, "wikigate_upstream_queued"), Some(0.0));
    assert_eq!(
        metric_in(
            &text,
            r#"wikigate_rate_limited_total{caller="class:default",limit="upstream-concurrency"}"#
        ),
        Some(6.0)
    );
}
