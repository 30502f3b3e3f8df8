//! Metrics, the status page and traces, checked after known traffic.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::process::{Command, Stdio};
use std::time::Duration;

use http::Method;
use wikigate::config::{ClientConfig, KeyHash, Rate};

use crate::support::{
    API, Harness, Process, TestClient, alice, basic, bob, eventually, free_addr, ready,
};

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
            points: None,
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
        .get("/wiki/rest/api/user/no/such/path", Some(&basic(alice())))
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
            r#"wikigate_errors_total{route="unmatched",source="downstream"}"#,
            1.0,
        ),
        (
            r#"wikigate_errors_total{route="anonymous",source="downstream"}"#,
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
        (
            r#"wikigate_quota_points_saved_total{caller="class:default",route="current"}"#,
            6.0,
        ),
        (
            r#"wikigate_quota_points_spent_total{caller="class:default",route="current"}"#,
            3.0,
        ),
        (
            r#"wikigate_quota_points_spent_total{caller="class:default",route="watch_space"}"#,
            1.0,
        ),
        (
            r#"wikigate_quota_points_saved_total{caller="class:default",route="bulk"}"#,
            5.0,
        ),
        (
            r#"wikigate_quota_points_spent_total{caller="class:default",route="bulk"}"#,
            5.0,
        ),
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
        // current, anonymous, and the bulk lookup as two accounts plus its envelope.
        ("wikigate_cache_entries", 5.0),
        ("wikigate_requests_in_flight", 0.0),
        ("wikigate_upstream_holds", 0.0),
        (
            concat!(
                r#"wikigate_build_info{version=""#,
                env!("CARGO_PKG_VERSION"),
                r#""}"#
            ),
            1.0,
        ),
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
        r#"<span id="cache-entries">5</span>"#,
        "<td>tiny</td><td>requests</td><td>1</td>",
        "no upstream hold",
        // The fake's shadow policy, as charged for the same calls the gateway counted.
        r#"<span id="quota-remaining">100088</span> of 100100 points left (100.0%, shadow, tenant-app-quota)"#,
        r#"<tr><td>class:default</td><td class="spent">9</td><td class="saved">11</td></tr>"#,
        r#"<tr><td>tiny</td><td class="spent">3</td><td class="saved">0</td></tr>"#,
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

/// An OTLP/HTTP receiver: keeps every body POSTed to `/v1/traces`.
struct Receiver(std::sync::Mutex<Vec<bytes::Bytes>>);

impl wikigate::server::Handler for Receiver {
    fn call(
        receiver: &std::sync::Arc<Receiver>,
        request: http::Request<hyper::body::Incoming>,
        _conn: wikigate::server::ConnInfo,
    ) -> impl Future<Output = http::Response<wikigate::Body>> + Send + use<> {
        use http_body_util::BodyExt as _;
        let receiver = receiver.clone();
        async move {
            let path = request.uri().path().to_owned();
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            if path == "/v1/traces" {
                receiver.0.lock().unwrap().push(body);
            }
            let mut response = http::Response::new(wikigate::Body::empty());
            response.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            response
        }
    }
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_and_traceparent_is_propagated() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_addr = listener.local_addr().unwrap();
    let receiver = std::sync::Arc::new(Receiver(Default::default()));
    tokio::spawn(wikigate::server::serve(
        listener,
        wikigate::server::Http::plain(),
        receiver.clone(),
        std::future::pending(),
        Duration::from_secs(1),
    ));
    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let (fake_url, listen_flag, admin_flag) = (fake.url(), listen.to_string(), admin.to_string());
    let endpoint = format!("http://{receiver_addr}");
    let gateway = Process::start(
        &[
            "serve",
            "--upstream",
            &fake_url,
            "--listen",
            &listen_flag,
            "--admin-listen",
            &admin_flag,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "wikigate-under-test"),
        ],
    );
    let admin_client = TestClient::new(format!("http://{admin}"));
    eventually(Duration::from_secs(15), "ready", || ready(&admin_client)).await;
    let client = TestClient::new(format!("http://{listen}"));
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let answer = client
        .request(Method::GET, &format!("{API}/current"))
        .auth(alice())
        .header("traceparent", &traceparent)
        .send()
        .await;
    assert_eq!(answer.status, 200);
    // Upstream saw the same trace, with wikigate's span as the parent.
    let upstream_parent = fake.last().unwrap().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        upstream_parent.starts_with(&format!("00-{trace_id}-")),
        "{upstream_parent}"
    );
    assert!(
        !upstream_parent.contains("00f067aa0ba902b7"),
        "wikigate's own span is the parent"
    );

    // SIGTERM flushes the exporter.
    gateway.signal("TERM");
    let (exit, logs) = gateway.exit().await;
    assert!(exit.success(), "{exit}: {logs}");

    let bodies = receiver.0.lock().unwrap().clone();
    assert!(!bodies.is_empty(), "no OTLP export arrived");
    let mut found = false;
    for body in bodies {
        let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name");
            let service = service
                .and_then(|a| a.value.as_ref())
                .and_then(|v| v.value.clone());
            for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
                let attribute = |key: &str| {
                    span.attributes
                        .iter()
                        .find(|a| a.key == key)
                        .and_then(|a| a.value.as_ref())
                        .and_then(|v| v.value.clone())
                };
                if attribute("wikigate.operation")
                    != Some(Value::StringValue("getCurrentUser".into()))
                {
                    continue;
                }
                found = true;
                assert_eq!(
                    service,
                    Some(Value::StringValue("wikigate-under-test".into()))
                );
                assert_eq!(
                    hex(&span.trace_id),
                    trace_id,
                    "the client's trace continues"
                );
                assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
                assert_eq!(span.name, "GET /wiki/rest/api/user/current");
                assert_eq!(
                    attribute("http.route"),
                    Some(Value::StringValue("/wiki/rest/api/user/current".into()))
                );
                assert_eq!(
                    attribute("http.response.status_code"),
                    Some(Value::IntValue(200))
                );
                assert_eq!(
                    attribute("wikigate.cache"),
                    Some(Value::StringValue("wikigate; fwd=miss; stored".into()))
                );
                assert!(
                    matches!(attribute("wikigate.caller"), Some(Value::StringValue(c)) if c.starts_with("credential:"))
                );
                assert!(
                    matches!(attribute("wikigate.upstream_duration_ms"), Some(Value::DoubleValue(ms)) if ms > 0.0)
                );
                let all = format!("{:?}", span.attributes);
                assert!(
                    !all.contains(alice().api_token) && !all.contains("Basic "),
                    "a credential reached a span"
                );
            }
        }
    }
    assert!(found, "no span for the request was exported");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_helm_chart_ships_the_same_dashboard() {
    assert_eq!(
        include_str!("../../helm/wikigate/files/wikigate-dashboard.json"),
        include_str!("../../dashboards/wikigate.json"),
        "copy dashboards/wikigate.json to helm/wikigate/files/"
    );
}

/// The alerting rules pass `promtool check rules`, their unit tests pass `promtool test
/// rules`, the chart ships them as they are, and every metric they read is one wikigate
/// exposes (README's table is kept equal to the exposition by another test).
#[test]
fn the_alert_rules_pass_promtool_and_read_only_metrics_that_exist() {
    assert_eq!(
        include_str!("../../helm/wikigate/files/wikigate-alerts.yaml"),
        include_str!("../../dashboards/wikigate-alerts.yaml"),
        "copy dashboards/wikigate-alerts.yaml to helm/wikigate/files/"
    );
    let dashboards = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    for args in [
        ["check", "rules", "wikigate-alerts.yaml"],
        ["test", "rules", "wikigate-alerts.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dashboards)
            .output()
            .expect("promtool is installed (scripts/test installs Debian's prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = include_str!("../../dashboards/wikigate-alerts.yaml");
    let readme = include_str!("../../README.md");
    let mut read = 0;
    for (at, _) in rules.match_indices("wikigate_") {
        let name: String = rules[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.ends_with('_') || rules[..at].ends_with('#') {
            continue;
        }
        assert!(
            readme.contains(&format!("| `{name}` |")),
            "the rules read {name}, which wikigate does not expose"
        );
        read += 1;
    }
    assert!(read >= 6, "{read} metric names read");
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let h = scripted_traffic().await;
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let exposition = String::from_utf8(admin.get("/metrics", None).await.body.to_vec()).unwrap();
    let families: std::collections::HashSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../dashboards/wikigate.json"))
            .expect("dashboard is JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (start, _) in expr.match_indices("wikigate_") {
                let name: String = expr[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(name.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
                assert!(
                    families.contains(family),
                    "panel {:?} queries {name}, which wikigate does not export",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    assert!(queried >= 20, "{queried}");
}

/// README's metrics table lists every family `/metrics` exposes, with the labels its samples
/// carry, and nothing that is not exposed.
#[tokio::test]
async fn the_readme_metrics_table_matches_the_exposition() {
    use std::collections::{BTreeMap, BTreeSet};
    let h = scripted_traffic().await;
    let admin = TestClient::new(format!("http://{}", h.gateway.admin_addr));
    let exposition = String::from_utf8(admin.get("/metrics", None).await.body.to_vec()).unwrap();
    let mut exposed: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            exposed.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| exposed.contains_key(*f)))
                .unwrap_or(&name)
                .to_owned();
            let labels = line
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(labels, _)| labels)
                .unwrap_or_default();
            let entry = exposed.entry(family).or_default();
            for label in labels.split(',').filter(|l| !l.is_empty()) {
                let key = label.split('=').next().unwrap().to_owned();
                if key != "le" {
                    entry.1.insert(key);
                }
            }
        }
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut documented: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for row in readme.lines().filter(|l| l.starts_with("| `wikigate_")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let labels = cells[3]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        documented.insert(name, (cells[2].to_owned(), labels));
    }
    let mut wrong = Vec::new();
    for (name, (kind, labels)) in &exposed {
        let kind = if kind == "unknown" {
            "gauge"
        } else {
            kind.as_str()
        };
        let labels = labels.iter().cloned().collect::<Vec<_>>().join(", ");
        match documented.get(name) {
            None => wrong.push(format!("missing: | `{name}` | {kind} | {labels} | … |")),
            Some((documented_kind, documented_labels)) => {
                let documented_labels = documented_labels.iter().cloned().collect::<Vec<_>>();
                if documented_kind != kind
                    || (!labels.is_empty() && documented_labels.join(", ") != labels)
                {
                    wrong.push(format!(
                        "differs: `{name}`: exposed {kind} [{labels}], README {documented_kind} [{}]",
                        documented_labels.join(", ")
                    ));
                }
            }
        }
    }
    for name in documented.keys() {
        if !exposed.contains_key(name) {
            wrong.push(format!("not exposed: `{name}`"));
        }
    }
    assert!(
        wrong.is_empty(),
        "README's metrics table:\n{}",
        wrong.join("\n")
    );
}

/// A real Prometheus scraping `targets` (job name, admin address) every second, stopped when
/// dropped.
struct Prometheus {
    child: std::process::Child,
    client: TestClient,
    _dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(targets: &[(&str, std::net::SocketAddr)]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "wikigate-prometheus-{}-{}",
            std::process::id(),
            targets[0].1.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = "global:\n  scrape_interval: 1s\nscrape_configs:\n".to_owned();
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let listen = free_addr();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (scripts/test installs Debian's prometheus)");
        Prometheus {
            child,
            client: TestClient::new(format!("http://{listen}")),
            _dir: dir,
        }
    }

    /// The values of an instant query (`None`: Prometheus refused it, with its reason).
    async fn query(&self, expr: &str) -> Result<Vec<f64>, String> {
        let encoded =
            percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let answer = self
            .client
            .request(Method::GET, &format!("/api/v1/query?query={encoded}"))
            .try_send()
            .await
            .ok_or("Prometheus did not answer")?;
        let body: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        let result = &body["data"]["result"];
        let values = match body["data"]["resultType"].as_str() {
            Some("vector") => result
                .as_array()
                .unwrap()
                .iter()
                .map(|sample| sample["value"][1].as_str().unwrap().parse().unwrap())
                .collect(),
            Some("scalar") => vec![result[1].as_str().unwrap().parse().unwrap()],
            other => return Err(format!("result type {other:?}")),
        };
        Ok(values)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Every panel of the dashboard shows a number — 0 when nothing happened — on a gateway that
/// has served nothing and on one that has served known traffic, as a real Prometheus scraping
/// both evaluates the panels' queries.
#[tokio::test]
async fn every_dashboard_panel_shows_a_number_on_a_quiet_gateway_and_a_busy_one() {
    let quiet = Harness::start().await;
    let busy = scripted_traffic().await;
    // Counters whose label values the configuration knows start at 0, before any event.
    let admin = TestClient::new(format!("http://{}", quiet.gateway.admin_addr));
    let exposition = String::from_utf8(admin.get("/metrics", None).await.body.to_vec()).unwrap();
    for series in [
        r#"wikigate_errors_total{route="user",source="upstream"} 0"#,
        r#"wikigate_errors_total{route="unmatched",source="downstream"} 0"#,
        r#"wikigate_rate_limited_total{caller="class:default",limit="upstream-burst"} 0"#,
        r#"wikigate_rate_limited_total{caller="unknown",limit="upstream-concurrency"} 0"#,
    ] {
        assert!(exposition.contains(series), "{series} in:\n{exposition}");
    }
    let prometheus = Prometheus::start(&[
        ("quiet", quiet.gateway.admin_addr),
        ("busy", busy.gateway.admin_addr),
    ]);
    // Enough scrapes of both for rate() and increase() to have two samples.
    eventually(Duration::from_secs(30), "scraped", || async {
        prometheus
            .query("count_over_time(up{job=~\"quiet|busy\"}[1m])")
            .await
            .is_ok_and(|counts| counts.len() == 2 && counts.iter().all(|n| *n >= 3.0))
    })
    .await;
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../dashboards/wikigate.json")).unwrap();
    let mut blank = Vec::new();
    for job in ["quiet", "busy"] {
        for panel in dashboard["panels"].as_array().unwrap() {
            // A figure that does not exist until upstream states it (a points quota, a burst
            // bucket) is not 0: such a panel says so in words instead (Grafana's `noValue`).
            let says_why = panel["fieldConfig"]["defaults"]["noValue"].is_string();
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$job", job)
                    .replace("$__rate_interval", "1m");
                match prometheus.query(&expr).await {
                    Ok(values) if values.iter().all(|v| v.is_finite()) && !values.is_empty() => {}
                    Ok(values) if values.is_empty() && says_why => {}
                    other => blank.push(format!(
                        "{job}: {:?} {expr}: {other:?}",
                        panel["title"].as_str().unwrap()
                    )),
                }
            }
        }
    }
    assert!(
        blank.is_empty(),
        "panels without a number:\n{}",
        blank.join("\n")
    );
}
