//! Metrics, the status page and traces, checked after known traffic.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use wikigate::config::{ClientConfig, KeyHash, Rate};

use crate::support::{API, Harness, TestClient, alice, basic, bob};

const TINY_KEY: &str = "tiny-client-key-0123456789";

/// Known traffic: misses, hits, a HEAD, a bulk lookup, a write, a 404, a refused request.
async fn scripted_traffic() -> Harness {
    let h = Harness::start_with(|c| {
        c.callers.clients = vec![ClientConfig {
            name: "tiny".to_owned(),
            class: "default".to_owned(),
            key_hash: KeyHash::of(TINY_KEY),
            requests: Some(Rate {
                rate: NonZeroU32::new(1).unwrap(),
                per: Duration::from_secs(60),
                burst: None,
            }),
            upstream: None,
        }];
    })
    .await;
    let (a, b) = (alice().account_id, bob().account_id);
    let current = format!("{API}/current");
    let bulk = format!("{API}/bulk?accountId={a},{b}");
    assert_eq!(
        h.client.get(&current, Some(&basic(alice()))).await.status,
        200
    );
    assert_eq!(
        h.client
            .get(&current, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );
    assert_eq!(
        h.client
            .request(Method::HEAD, &current)
            .auth(alice())
            .send()
            .await
            .status,
        200
    );
    assert_eq!(h.client.get(&bulk, Some(&basic(alice()))).await.status, 200);
    assert_eq!(
        h.client
            .get(&bulk, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit"
    );
    assert_eq!(
        h.client
            .request(Method::POST, &format!("{API}/watch/space/ENG"))
            .auth(alice())
            .send()
            .await
            .status,
        204
    );
    h.client
        .get("/wiki/rest/api/content", Some(&basic(alice())))
        .await
        .assert_error(404);
    let tiny = || {
        h.client
            .request(Method::GET, &format!("{API}/anonymous"))
            .header("x-wikigate-key", TINY_KEY)
            .send()
    };
    assert_eq!(tiny().await.status, 200);
    tiny().await.assert_error(429);
    h
}

/// The exposition as `name{labels}` → value, comments and EOF left out.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_hold_exactly_the_expected_values_and_pass_promtool() {
    let h = scripted_traffic().await;
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let answer = admin.get("/metrics", None).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    // Prometheus itself negotiates OpenMetrics.
    let openmetrics = admin
        .request(Method::GET, "/metrics")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await;
    assert!(
        openmetrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(String::from_utf8_lossy(&openmetrics.body).ends_with("# EOF\n"));
    let text = String::from_utf8(answer.body.to_vec()).unwrap();
    let samples = samples(&text);
    let expect = [
        (
            r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="miss"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="hit"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="current",method="HEAD",status_class="2xx",cache="hit"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="bulk",method="GET",status_class="2xx",cache="miss"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="bulk",method="GET",status_class="2xx",cache="hit"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="watch_space",method="POST",status_class="2xx",cache="none"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="unmatched",method="GET",status_class="4xx",cache="none"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="anonymous",method="GET",status_class="2xx",cache="miss"}"#,
            1.0,
        ),
        (
            r#"wikigate_requests_total{route="anonymous",method="GET",status_class="4xx",cache="none"}"#,
            1.0,
        ),
        (
            r#"wikigate_upstream_requests_total{route="current",status="200"}"#,
            1.0,
        ),
        (
            r#"wikigate_upstream_requests_total{route="bulk",status="200"}"#,
            1.0,
        ),
        (
            r#"wikigate_upstream_requests_total{route="watch_space",status="204"}"#,
            1.0,
        ),
        (
            r#"wikigate_upstream_requests_saved_total{route="current"}"#,
            2.0,
        ),
        (
            r#"wikigate_upstream_requests_saved_total{route="bulk"}"#,
            1.0,
        ),
        // One user object: 1 + 2. Two users: 1 + 2 × 2.
        (r#"wikigate_quota_points_saved_total{route="current"}"#, 6.0),
        (r#"wikigate_quota_points_saved_total{route="bulk"}"#, 5.0),
        (
            r#"wikigate_cache_invalidations_total{route="watch_space"}"#,
            1.0,
        ),
        (
            r#"wikigate_rate_limited_total{caller="tiny",limit="requests"}"#,
            1.0,
        ),
        (
            r#"wikigate_request_duration_seconds_count{route="current",method="GET"}"#,
            2.0,
        ),
        (
            r#"wikigate_upstream_request_duration_seconds_count{route="current"}"#,
            1.0,
        ),
        ("wikigate_cache_entries", 3.0),
        ("wikigate_requests_in_flight", 0.0),
        ("wikigate_upstream_holds", 0.0),
        (r#"wikigate_build_info{version="0.1.0"}"#, 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(samples.get(series), Some(&value), "{series} in\n{text}");
    }
    let total: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("wikigate_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 9.0, "every request counted once");
    assert!(samples["wikigate_cache_weighted_bytes"] > 0.0);
    // Bounded labels: no account id, no credential, no raw path.
    for forbidden in [
        alice().account_id,
        alice().api_token,
        "/wiki/rest",
        TINY_KEY,
    ] {
        assert!(
            !text.contains(forbidden),
            "{forbidden} leaked into /metrics"
        );
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus)");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_status_page_shows_the_traffic_in_a_headless_browser() {
    let h = scripted_traffic().await;
    let url = format!("http://{}/", h.gateway.admin_addr);
    let profile = std::env::temp_dir().join(format!("wikigate-chromium-{}", std::process::id()));
    let screenshot = concat!(env!("CARGO_MANIFEST_DIR"), "/target/status-page.png");
    let chromium = |extra: &[&str]| {
        let mut command = tokio::process::Command::new("chromium");
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
            ])
            .args([
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .kill_on_drop(true);
        command
    };
    let dom = tokio::time::timeout(Duration::from_secs(60), chromium(&["--dump-dom"]).output())
        .await
        .expect("chromium answered within 60 s")
        .expect("chromium runs (scripts/test installs Debian's chromium)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for fragment in [
        r#"<b id="requests">9</b>"#,
        r#"<b id="saved">3</b>"#,
        r#"<b id="points-saved">11</b>"#,
        r#"<b id="upstream">4</b>"#,
        r#"<tr id="route-current"><td>current</td><td class="requests">3</td><td class="hits">2</td><td class="misses">1</td>"#,
        r#"<tr id="route-bulk"><td>bulk</td><td class="requests">2</td><td class="hits">1</td><td class="misses">1</td>"#,
        r#"<span id="cache-entries">3</span>"#,
        "<td>tiny</td><td>requests</td><td>1</td>",
        "no upstream hold",
    ] {
        assert!(
            dom.contains(fragment),
            "{fragment} not in the rendered page:\n{dom}"
        );
    }
    let shot = chromium(&[
        "--window-size=1100,1000",
        &format!("--screenshot={screenshot}"),
    ])
    .output();
    let _ = tokio::time::timeout(Duration::from_secs(60), shot).await;
    let _ = std::fs::remove_dir_all(&profile);
}
