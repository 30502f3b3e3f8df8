//! Callers, rate limits and the upstream quota.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

use http::{HeaderValue, Method, StatusCode};
use wikigate::config::{AuthMode, ClientConfig, KeyHash, Rate, RoutePolicy};
use wikigate::fake::Faults;
use wikigate::routes::Operation;

use crate::support::{API, Answer, Harness, alice, basic, bob};

fn rate(rate: u32, per_ms: u64, burst: u32) -> Option<Rate> {
    Some(Rate {
        rate: NonZeroU32::new(rate).unwrap(),
        per: Duration::from_millis(per_ms),
        burst: NonZeroU32::new(burst),
    })
}

#[tokio::test]
async fn a_caller_over_its_rate_gets_429_while_another_caller_is_unaffected() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().requests = rate(2, 10_000, 2);
    })
    .await;
    let target = format!("{API}/current");
    let first = h.client.get(&target, Some(&basic(alice()))).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-policy"), "\"requests\";q=2;w=10");
    assert_eq!(first.header("ratelimit"), "\"requests\";r=1;t=5");
    assert_eq!(
        h.client.get(&target, Some(&basic(alice()))).await.status,
        200
    );

    let refused = h.client.get(&target, Some(&basic(alice()))).await;
    let json = refused.assert_error(429);
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("request rate limit"),
        "{json}"
    );
    assert_eq!(refused.header("x-wikigate-limit"), "requests");
    let retry_after: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(
        refused.header("ratelimit"),
        format!("\"requests\";r=0;t=10")
    );

    let other = h.client.get(&target, Some(&basic(bob()))).await;
    assert_eq!(other.status, 200, "bob has a bucket of his own");
    assert_eq!(other.header("ratelimit"), "\"requests\";r=1;t=5");
}

#[tokio::test]
async fn cache_hits_do_not_spend_the_upstream_allowance() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().upstream = rate(1, 60_000, 1);
    })
    .await;
    let target = format!("{API}/current");
    assert_eq!(
        h.client.get(&target, Some(&basic(alice()))).await.status,
        200
    );
    for _ in 0..20 {
        let hit = h.client.get(&target, Some(&basic(alice()))).await;
        assert_eq!(
            (hit.status.as_u16(), hit.cache_status()),
            (200, "wikigate; hit")
        );
    }
    let miss = h
        .client
        .get(&format!("{API}/anonymous"), Some(&basic(alice())))
        .await;
    miss.assert_error(429);
    assert_eq!(miss.header("x-wikigate-limit"), "upstream");
    assert_eq!(h.fake.requests(), 1);
    assert_eq!(
        h.client.get(&target, Some(&basic(alice()))).await.status,
        200,
        "hits still served"
    );
}

#[tokio::test(start_paused = true)]
async fn the_admitted_rate_is_the_configured_rate() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().requests = rate(40, 1000, 2);
    })
    .await;
    let target = format!("{API}/current");
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (client, target) = (h.client.clone(), target.clone());
            tokio::spawn(async move {
                let mut admitted = 0u64;
                while started.elapsed() < run_for {
                    let answer = client.get(&target, Some(&basic(alice()))).await;
                    admitted += u64::from(answer.status == StatusCode::OK);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                admitted
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    // GCRA admits the burst of 2 at once, then one request every 25 ms — at 25, 50, …,
    // 2 975 ms, the run ending before 3 000 ms: on tokio's clock, exactly.
    assert_eq!(admitted, 2 + 119);
}

#[tokio::test(start_paused = true)]
async fn an_emptied_bucket_refills_at_the_configured_rate() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().requests = rate(1, 1000, 3);
    })
    .await;
    let target = format!("{API}/current");
    let auth = basic(alice());
    let get = || h.client.get(&target, Some(&auth));
    for _ in 0..3 {
        assert_eq!(get().await.status, 200);
    }
    let refused = get().await;
    refused.assert_error(429);
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.header("ratelimit"), "\"requests\";r=0;t=3");
    tokio::time::advance(Duration::from_millis(999)).await;
    get().await.assert_error(429);
    tokio::time::advance(Duration::from_millis(1)).await;
    let refilled = get().await;
    assert_eq!(refilled.status, 200, "one request a second refills");
    assert_eq!(refilled.header("ratelimit"), "\"requests\";r=0;t=3");
    tokio::time::advance(Duration::from_secs(3)).await;
    let full = get().await;
    assert_eq!(
        full.header("ratelimit"),
        "\"requests\";r=2;t=1",
        "full after 3 s"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upstream_429_storm_lets_one_request_per_credential_through_per_window() {
    let h = Harness::start().await;
    let mut response_headers = http::HeaderMap::new();
    response_headers.insert("retry-after", HeaderValue::from_static("2"));
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::TOO_MANY_REQUESTS),
        response_headers,
        ..Faults::default()
    });
    // The first 429 starts the hold; from then on, one request per 2 s window may pass.
    let first = h
        .client
        .get(&format!("{API}/current?first"), Some(&basic(alice())))
        .await;
    assert_eq!(
        (first.status.as_u16(), first.header("x-wikigate-limit")),
        (429, "")
    );
    let started = Instant::now();
    let run_for = Duration::from_millis(4500);
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let client = h.client.clone();
            tokio::spawn(async move {
                let (mut atlassian, mut held) = (0, 0);
                let mut n = 0;
                while started.elapsed() < run_for {
                    n += 1;
                    let answer = client
                        .get(&format!("{API}/current?t={t}&n={n}"), Some(&basic(alice())))
                        .await;
                    assert_eq!(answer.status, 429);
                    match answer.header("x-wikigate-limit") {
                        "upstream-hold" => held += 1,
                        "" => atlassian += 1,
                        other => panic!("unexpected limit {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (atlassian, held)
            })
        })
        .collect();
    let (mut atlassian, mut held) = (0, 0);
    for task in tasks {
        let (a, h) = task.await.unwrap();
        atlassian += a;
        held += h;
    }
    let upstream = h.fake.hits(Operation::GetCurrentUser) - 1;
    assert_eq!(upstream, atlassian);
    assert_eq!(
        upstream, 2,
        "one probe at 2 s and one at 4 s reached upstream in 4.5 s of 2 s holds"
    );
    assert!(
        held > 100,
        "{held} requests were held without an upstream call"
    );

    // Another credential is not held by alice's 429s.
    let before = h.fake.requests();
    let other = h
        .client
        .get(&format!("{API}/current?bob"), Some(&basic(bob())))
        .await;
    assert_eq!(other.header("x-wikigate-limit"), "");
    assert_eq!(h.fake.requests(), before + 1);
}

#[tokio::test(start_paused = true)]
async fn stale_answers_are_served_during_an_upstream_hold() {
    let h = Harness::start_with(|c| {
        c.cache.routes.set_all(RoutePolicy {
            ttl: Duration::from_millis(200),
            stale_if_error: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_on_low_quota: Duration::ZERO,
        })
    })
    .await;
    let target = format!("{API}/current");
    let fresh = h.client.get(&target, Some(&basic(alice()))).await;
    tokio::time::advance(Duration::from_millis(300)).await;
    let mut response_headers = http::HeaderMap::new();
    response_headers.insert("retry-after", HeaderValue::from_static("30"));
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::TOO_MANY_REQUESTS),
        response_headers,
        ..Faults::default()
    });

    let first = h.client.get(&target, Some(&basic(alice()))).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, fresh.body);
    assert!(
        first.cache_status().contains("fwd-status=429"),
        "{}",
        first.cache_status()
    );
    let upstream = h.fake.requests();
    for _ in 0..5 {
        let held = h.client.get(&target, Some(&basic(alice()))).await;
        assert_eq!(held.status, 200);
        assert!(
            held.cache_status().contains("stale-if-error"),
            "{}",
            held.cache_status()
        );
    }
    assert_eq!(
        h.fake.requests(),
        upstream,
        "no upstream call during the hold"
    );
    // Without a stale copy, a held read is wikigate's 429 with the remaining Retry-After.
    let uncached = h
        .client
        .get(
            &format!("{API}/memberof?accountId={}", alice().account_id),
            Some(&basic(alice())),
        )
        .await;
    uncached.assert_error(429);
    assert_eq!(uncached.header("x-wikigate-limit"), "upstream-hold");
    let retry_after: u64 = uncached.header("retry-after").parse().unwrap();
    assert_eq!(retry_after, 30, "no time passed since the hold began");
}

async fn spoofable(h: &Harness, n: usize) -> Answer {
    h.client
        .request(Method::GET, &format!("{API}/anonymous"))
        .header("x-forwarded-for", &format!("203.0.113.{n}"))
        .send()
        .await
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let limited = |c: &mut wikigate::config::RawConfig| {
        c.limits.classes.get_mut("default").unwrap().requests = rate(2, 60_000, 2);
    };
    let h = Harness::start_with(limited).await;
    let statuses: Vec<u16> = [
        spoofable(&h, 1).await,
        spoofable(&h, 2).await,
        spoofable(&h, 3).await,
    ]
    .iter()
    .map(|a| a.status.as_u16())
    .collect();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "spoofed addresses did not buy new buckets"
    );

    let trusted = Harness::start_with(|c| {
        limited(c);
        c.callers.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for n in 1..=3 {
        assert_eq!(
            spoofable(&trusted, n).await.status,
            200,
            "a trusted proxy's X-Forwarded-For names the client"
        );
    }
}

fn client(name: &str, key: &str) -> ClientConfig {
    ClientConfig {
        name: name.to_owned(),
        class: "default".to_owned(),
        key_hash: KeyHash::of(key),
        requests: None,
        upstream: None,
        points: None,
    }
}

const KEY_A: &str = "billing-key-0123456789";
const KEY_B: &str = "search-key-0123456789";

#[tokio::test]
async fn service_account_mode_never_forwards_a_callers_credential_and_refuses_keyless_callers() {
    let dir = std::env::temp_dir().join(format!("wikigate-sa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let credential = dir.join("credential");
    std::fs::write(&credential, format!("{}\n", basic(alice()))).unwrap();
    let h = Harness::start_with(|c| {
        c.auth.mode = AuthMode::ServiceAccount;
        c.auth.credential_file = Some(credential.clone());
        c.callers.clients = vec![client("billing", KEY_A), client("search", KEY_B)];
    })
    .await;
    let target = format!("{API}/current");

    // Keyless: refused, even with a valid Atlassian credential of its own.
    h.client
        .get(&target, Some(&basic(bob())))
        .await
        .assert_error(401);
    h.client
        .request(Method::POST, &format!("{API}/watch/space/ENG"))
        .auth(bob())
        .send()
        .await
        .assert_error(401);
    assert_eq!(h.fake.requests(), 0);

    let answer = h
        .client
        .request(Method::GET, &target)
        .header("x-wikigate-key", KEY_A)
        .auth(bob())
        .header("cookie", "tenant.session.token=bob")
        .send()
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.json()["accountId"],
        alice().account_id,
        "answered for the service account"
    );
    let seen = h.fake.last().unwrap();
    assert_eq!(seen.headers["authorization"], basic(alice()).as_str());
    assert!(!seen.headers.contains_key("cookie"));
    assert!(
        !seen.headers.contains_key("x-wikigate-key"),
        "client keys stay inside wikigate"
    );

    // Every client shares the service account's partition.
    let other = h
        .client
        .request(Method::GET, &target)
        .header("x-wikigate-key", KEY_B)
        .send()
        .await;
    assert_eq!(other.cache_status(), "wikigate; hit");

    // Writes go out with the service credential and the XSRF header.
    let write = h
        .client
        .request(Method::POST, &format!("{API}/watch/space/ENG"))
        .header("x-wikigate-key", KEY_B)
        .send()
        .await;
    assert_eq!(write.status, 204);
    assert_eq!(
        h.fake.last().unwrap().headers["authorization"],
        basic(alice()).as_str()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unknown_client_key_is_401() {
    let h = Harness::start_with(|c| c.callers.clients = vec![client("billing", KEY_A)]).await;
    let answer = h
        .client
        .request(Method::GET, &format!("{API}/current"))
        .header("x-wikigate-key", "not-a-key-of-ours-0000")
        .auth(alice())
        .send()
        .await;
    answer.assert_error(401);
    assert_eq!(h.fake.requests(), 0);
    // A known key passes, and in passthrough mode the caller's own credential goes upstream.
    let known = h
        .client
        .request(Method::GET, &format!("{API}/current"))
        .header("x-wikigate-key", KEY_A)
        .auth(bob())
        .send()
        .await;
    assert_eq!(known.json()["accountId"], bob().account_id);
}

#[tokio::test]
async fn a_client_override_replaces_its_class_limit() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().requests = rate(1, 60_000, 1);
        let mut generous = client("billing", KEY_A);
        generous.requests = rate(100, 1000, 100);
        c.callers.clients = vec![generous];
    })
    .await;
    for _ in 0..5 {
        let answer = h
            .client
            .request(Method::GET, &format!("{API}/anonymous"))
            .header("x-wikigate-key", KEY_A)
            .send()
            .await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(
        h.client.get(&format!("{API}/anonymous"), None).await.status,
        200
    );
    h.client
        .get(&format!("{API}/anonymous"), None)
        .await
        .assert_error(429);
}

#[tokio::test(start_paused = true)]
async fn reads_are_retried_on_connect_errors_and_writes_never() {
    // A port nothing listens on yet; the fake site appears there a moment later.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = crate::support::config_for(&format!("http://{addr}"));
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let client = crate::support::TestClient::new(format!("http://{}", gateway.addr));

    let write = client
        .request(Method::POST, &format!("{API}/watch/space/ENG"))
        .auth(alice())
        .send()
        .await;
    write.assert_error(502);

    let fake = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        wikigate::fake::FakeConfluence::start_on(addr, None)
            .await
            .unwrap()
    });
    let read = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    let fake = fake.await.unwrap();
    assert_eq!(
        read.status, 200,
        "the read was retried once the site listened"
    );
    assert_eq!(fake.hits(Operation::GetCurrentUser), 1);
    assert_eq!(fake.hits(Operation::AddSpaceWatcher), 0);
}

/// The field's answer (Atlassian has sent exactly this): a quota 429 whose `Retry-After` is
/// `i64::MAX` seconds, beside `X-RateLimit-Limit: 0`. Nothing may panic: the site is held for
/// at most an hour, every other request keeps its right answer, and the admin endpoints and
/// readiness keep answering.
#[tokio::test]
async fn an_absurd_retry_after_holds_the_site_for_at_most_an_hour_and_breaks_nothing() {
    let h = Harness::start().await;
    let admin = crate::support::TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let cached = format!("{API}/current");
    assert_eq!(h.client.get(&cached, Some(&basic(bob()))).await.status, 200);

    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("retry-after", "9223372036854775807"),
        ("ratelimit-reason", "confluence-quota-tenant-based"),
        ("x-ratelimit-limit", "0"),
        ("x-ratelimit-remaining", "0"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::TOO_MANY_REQUESTS),
        response_headers: headers,
        ..Faults::default()
    });
    let refused = h
        .client
        .get(
            &format!("{API}?accountId={}", bob().account_id),
            Some(&basic(alice())),
        )
        .await;
    refused.assert_error(429);
    h.fake.set_faults(Faults::default());

    // Another caller, another route: refused by the site's quota, with a bounded wait.
    let later = h
        .client
        .get(
            &format!("{API}/memberof?accountId={}", bob().account_id),
            Some(&basic(bob())),
        )
        .await;
    later.assert_error(429);
    assert_eq!(later.header("x-wikigate-limit"), "site-quota");
    let wait: u64 = later.header("retry-after").parse().unwrap();
    assert!((1..=3600).contains(&wait), "Retry-After {wait}");
    // Hits are still served, and nothing answers 500.
    assert_eq!(h.client.get(&cached, Some(&basic(bob()))).await.status, 200);
    for path in ["/metrics", "/", "/readyz", "/healthz"] {
        let answer = admin.get(path, None).await;
        assert_eq!(answer.status, 200, "{path}");
    }
    let metrics = String::from_utf8(admin.get("/metrics", None).await.body.to_vec()).unwrap();
    assert!(
        !metrics.contains("source=\"internal\"} 1"),
        "no internal fault: {metrics}"
    );
    let exhausted = metrics
        .lines()
        .find(|l| l.starts_with("wikigate_site_quota_exhausted_seconds "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    assert!(exhausted <= 3600.0, "{exhausted}");
}

/// `Retry-After: 0` on a plain throttle: a hold of a second, not a loop of upstream calls.
#[tokio::test(start_paused = true)]
async fn retry_after_zero_holds_for_a_second() {
    let h = Harness::start().await;
    let mut headers = http::HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("0"));
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::TOO_MANY_REQUESTS),
        response_headers: headers,
        ..Faults::default()
    });
    let target = format!("{API}/current");
    h.client
        .get(&target, Some(&basic(alice())))
        .await
        .assert_error(429);
    let held = h.client.get(&target, Some(&basic(alice()))).await;
    held.assert_error(429);
    assert_eq!(held.header("x-wikigate-limit"), "upstream-hold");
    assert_eq!(held.header("retry-after"), "1");
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 1, "held, not sent");
    h.fake.set_faults(Faults::default());
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(
        h.client.get(&target, Some(&basic(alice()))).await.status,
        200
    );
}
