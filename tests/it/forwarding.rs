//! Every operation passes through, byte-for-byte where it matters, with clean headers.

use http::{HeaderValue, Method, StatusCode};
use serde_json::json;
use wikigate::fake::Faults;
use wikigate::routes::Operation;

use crate::support::{API, Harness, TestClient, alice, basic, bob};

#[tokio::test]
async fn all_21_operations_pass_through_the_gateway() {
    // Each operation as sent: no single lookup answered from, or compared with, a bulk one.
    let h = Harness::start_with(|c| c.cache.merge.routes.clear()).await;
    let (a, b) = (alice().account_id, bob().account_id);
    let prop = format!("{API}/{a}/property/color-scheme");
    let body = r#"{"value":{"mode":"dark"}}"#;

    // (operation, method, target, body, expected status)
    let steps: Vec<(Operation, Method, String, Option<&str>, u16)> = vec![
        (
            Operation::GetUser,
            Method::GET,
            format!("{API}?accountId={b}"),
            None,
            200,
        ),
        (
            Operation::GetAnonymousUser,
            Method::GET,
            format!("{API}/anonymous"),
            None,
            200,
        ),
        (
            Operation::GetCurrentUser,
            Method::GET,
            format!("{API}/current"),
            None,
            200,
        ),
        (
            Operation::GetGroupMembershipsForUser,
            Method::GET,
            format!("{API}/memberof?accountId={a}"),
            None,
            200,
        ),
        (
            Operation::GetBulkUserLookup,
            Method::GET,
            format!("{API}/bulk?accountId={a},{b}"),
            None,
            200,
        ),
        (
            Operation::GetPrivacyUnsafeUserEmail,
            Method::GET,
            format!("{API}/email?accountId={b}"),
            None,
            200,
        ),
        (
            Operation::GetPrivacyUnsafeUserEmailBulk,
            Method::GET,
            format!("{API}/email/bulk?accountId={a}&accountId={b}"),
            None,
            200,
        ),
        (
            Operation::AddContentWatcher,
            Method::POST,
            format!("{API}/watch/content/123"),
            None,
            204,
        ),
        (
            Operation::GetContentWatchStatus,
            Method::GET,
            format!("{API}/watch/content/123"),
            None,
            200,
        ),
        (
            Operation::RemoveContentWatcher,
            Method::DELETE,
            format!("{API}/watch/content/123"),
            None,
            204,
        ),
        (
            Operation::AddLabelWatcher,
            Method::POST,
            format!("{API}/watch/label/release"),
            None,
            204,
        ),
        (
            Operation::IsWatchingLabel,
            Method::GET,
            format!("{API}/watch/label/release"),
            None,
            200,
        ),
        (
            Operation::RemoveLabelWatcher,
            Method::DELETE,
            format!("{API}/watch/label/release"),
            None,
            204,
        ),
        (
            Operation::AddSpaceWatcher,
            Method::POST,
            format!("{API}/watch/space/ENG"),
            None,
            204,
        ),
        (
            Operation::IsWatchingSpace,
            Method::GET,
            format!("{API}/watch/space/ENG?accountId={a}"),
            None,
            200,
        ),
        (
            Operation::RemoveSpaceWatch,
            Method::DELETE,
            format!("{API}/watch/space/ENG"),
            None,
            204,
        ),
        (
            Operation::CreateUserProperty,
            Method::POST,
            prop.clone(),
            Some(body),
            201,
        ),
        (
            Operation::GetUserProperty,
            Method::GET,
            prop.clone(),
            None,
            200,
        ),
        (
            Operation::UpdateUserProperty,
            Method::PUT,
            prop.clone(),
            Some(r#"{"value":{"mode":"light"}}"#),
            204,
        ),
        (
            Operation::GetUserProperties,
            Method::GET,
            format!("{API}/{a}/property?start=0&limit=5"),
            None,
            200,
        ),
        (
            Operation::DeleteUserProperty,
            Method::DELETE,
            prop.clone(),
            None,
            204,
        ),
    ];
    assert_eq!(steps.len(), 21);
    for (operation, method, target, body, status) in steps {
        let mut request = h.client.request(method, &target).auth(alice());
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let answer = request.send().await;
        assert_eq!(
            answer.status.as_u16(),
            status,
            "{operation:?}: {:?}",
            answer.body
        );
        assert_eq!(
            h.fake.hits(operation),
            1,
            "{operation:?} reached upstream once"
        );
        if status == 200 || status == 201 {
            assert!(
                answer.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json"),
                "{operation:?}"
            );
            answer.json();
        }
    }

    // Bodies are upstream's, unchanged.
    let user = h
        .client
        .get(&format!("{API}?accountId={b}"), Some(&basic(alice())))
        .await
        .json();
    assert_eq!(user["accountId"], b);
    assert_eq!(user["email"], "bob@example.com");
    assert_eq!(user["_links"]["base"], format!("{}/wiki", h.fake.url()));
    let current = h
        .client
        .get(&format!("{API}/current"), Some(&basic(bob())))
        .await
        .json();
    assert_eq!(current["accountId"], bob().account_id);
    let watch = h
        .client
        .get(&format!("{API}/watch/space/ENG"), Some(&basic(alice())))
        .await
        .json();
    assert_eq!(watch, json!({ "watching": false }));
    let anon = h.client.get(&format!("{API}/anonymous"), None).await.json();
    assert_eq!(anon["type"], "anonymous");
    let emails = h
        .client
        .get(
            &format!("{API}/email/bulk?accountId={a}&accountId=nobody"),
            Some(&basic(alice())),
        )
        .await
        .json();
    assert_eq!(
        emails,
        json!([{ "accountId": a, "email": "alice@example.com" }])
    );
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let h = Harness::start().await;
    // 404 from the fake for a property that does not exist.
    let missing = h
        .client
        .get(
            &format!("{API}/{}/property/none", alice().account_id),
            Some(&basic(alice())),
        )
        .await;
    let json = missing.assert_error(404);
    assert_eq!(json["message"], "No property found with key: none");
    // 403: a non-admin asking for someone else's watch status.
    let forbidden = h
        .client
        .get(
            &format!("{API}/watch/space/ENG?accountId={}", alice().account_id),
            Some(&basic(bob())),
        )
        .await;
    forbidden.assert_error(403);
    // 409 on a second create.
    let prop = format!("{API}/{}/property/dup", alice().account_id);
    for expected in [201, 409] {
        let answer = h
            .client
            .request(Method::POST, &prop)
            .auth(alice())
            .header("content-type", "application/json")
            .body(r#"{"value":{}}"#)
            .send()
            .await;
        assert_eq!(answer.status.as_u16(), expected);
    }
    // A 503 storm upstream reaches the client as upstream's 503, with its body.
    h.fake.set_faults(Faults {
        fail_with: Some(StatusCode::SERVICE_UNAVAILABLE),
        ..Faults::default()
    });
    let answer = h
        .client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(answer.assert_error(503)["message"], "injected failure");
}

#[tokio::test]
async fn request_target_and_authorization_are_forwarded_byte_for_byte() {
    let h = Harness::start().await;
    let target = format!(
        "{API}?expand=operations,personalSpace&accountId={}&x=%2F%7e+a",
        bob().account_id
    );
    let auth = basic(alice());
    let answer = h.client.get(&target, Some(&auth)).await;
    assert_eq!(answer.status, 200);
    let seen = h.fake.last().unwrap();
    assert_eq!(seen.target, target);
    assert_eq!(seen.headers["authorization"], auth.as_str());
    assert_eq!(seen.headers["host"], h.fake.addr.to_string().as_str());
}

#[tokio::test]
async fn forwarding_headers_are_added_and_client_values_not_trusted() {
    let h = Harness::start().await;
    let untrusted = [
        ("x-forwarded-for", "10.1.2.3"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("via", "1.1 edge"),
        ("forwarded", "for=10.0.0.1;host=evil.example"),
        ("x-original-url", "/wiki/rest/api/user/watch/space/ENG"),
        ("x-rewrite-url", "/admin"),
        ("x-http-method-override", "DELETE"),
        ("x-forwarded-prefix", "/evil"),
    ];
    for method in [Method::POST, Method::GET] {
        let mut request = h
            .client
            .request(method.clone(), &format!("{API}/watch/space/ENG"))
            .auth(alice());
        for (name, value) in untrusted {
            request = request.header(name, value);
        }
        request.send().await;
        let seen = h.fake.last().unwrap();
        assert_eq!(seen.method, method);
        assert_eq!(seen.headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "http");
        assert_eq!(seen.headers["via"], "1.1 edge, 1.1 wikigate");
        for name in [
            "forwarded",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
            "x-forwarded-prefix",
        ] {
            assert!(!seen.headers.contains_key(name), "{name} reached upstream");
        }
        // A write carries the Host the client addressed; a read that may be stored carries
        // none (no public_url), so nothing client-chosen can shape a stored answer.
        let forwarded_host = seen.headers.get("x-forwarded-host");
        if method == Method::POST {
            assert_eq!(forwarded_host.unwrap(), h.gateway.addr.to_string().as_str());
        } else {
            assert!(forwarded_host.is_none(), "{forwarded_host:?}");
        }
    }
}

#[tokio::test]
async fn a_poisoned_host_header_cannot_change_what_is_stored_for_others() {
    // This fake builds its links from X-Forwarded-Host, as proxy-aware applications do.
    let options = wikigate::fake::FakeOptions {
        honour_forwarded_host: true,
        ..Default::default()
    };
    let h = Harness::start_on(options, |_| {}).await;
    let poisoned = h
        .client
        .request(Method::GET, &format!("{API}/anonymous"))
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "host=evil.example")
        .header("x-original-url", "/wiki/rest/api/user/current")
        .send()
        .await;
    assert_eq!(poisoned.status, 200);
    let shared = h
        .client
        .get(&format!("{API}/anonymous"), Some(&basic(bob())))
        .await;
    assert_eq!(shared.cache_status(), "wikigate; hit");
    let links = &shared.json()["_links"];
    assert_eq!(
        links["base"],
        format!("{}/wiki", h.fake.url()),
        "the shared entry was poisoned"
    );
    assert!(!String::from_utf8_lossy(&shared.body).contains("evil.example"));
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_in_both_directions() {
    let h = Harness::start().await;
    let mut response_headers = http::HeaderMap::new();
    response_headers.insert("connection", HeaderValue::from_static("x-upstream-private"));
    response_headers.insert("x-upstream-private", HeaderValue::from_static("1"));
    response_headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    response_headers.insert("upgrade", HeaderValue::from_static("h2c"));
    response_headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
    response_headers.insert("x-end-to-end", HeaderValue::from_static("kept"));
    h.fake.set_faults(Faults {
        response_headers,
        ..Faults::default()
    });

    let answer = h
        .client
        .request(Method::GET, &format!("{API}/current"))
        .auth(alice())
        .header("connection", "x-client-private")
        .header("x-client-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("upgrade", "websocket")
        .header("proxy-authorization", "Basic cHJveHk6cHJveHk=")
        .header("proxy-connection", "keep-alive")
        .header("x-end-to-end", "kept")
        .send()
        .await;
    assert_eq!(answer.status, 200);
    let seen = h.fake.last().unwrap();
    for name in [
        "x-client-private",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(!seen.headers.contains_key(name), "{name} reached upstream");
    }
    assert_eq!(seen.headers["x-end-to-end"], "kept");
    for name in [
        "x-upstream-private",
        "keep-alive",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(
            !answer.headers.contains_key(name),
            "{name} reached the client"
        );
    }
    assert_eq!(answer.headers["x-end-to-end"], "kept");
    assert_eq!(answer.headers["via"], "1.1 wikigate");
}

#[tokio::test]
async fn writes_get_the_xsrf_header_and_reads_do_not() {
    let h = Harness::start().await;
    // Straight to the fake, a watch without the header is refused: the XSRF check is real.
    let direct = TestClient::new(h.fake.url());
    let refused = direct
        .request(Method::POST, &format!("{API}/watch/space/ENG"))
        .auth(bob())
        .send()
        .await;
    assert_eq!(refused.assert_error(403)["message"], "XSRF check failed");

    // Through wikigate the same request succeeds, and a client-sent value is replaced.
    let answer = h
        .client
        .request(Method::POST, &format!("{API}/watch/space/ENG"))
        .auth(bob())
        .header("x-atlassian-token", "bogus")
        .send()
        .await;
    assert_eq!(answer.status, 204);
    let seen = h.fake.last().unwrap();
    let tokens: Vec<_> = seen.headers.get_all("x-atlassian-token").iter().collect();
    assert_eq!(tokens, ["no-check"]);

    h.client
        .get(&format!("{API}/watch/space/ENG"), Some(&basic(bob())))
        .await;
    assert!(
        !h.fake
            .last()
            .unwrap()
            .headers
            .contains_key("x-atlassian-token")
    );
}

#[tokio::test]
async fn head_is_forwarded_for_get_routes() {
    let h = Harness::start().await;
    let answer = h
        .client
        .request(Method::HEAD, &format!("{API}/current"))
        .auth(alice())
        .send()
        .await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 1);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served() {
    let h = Harness::start().await;
    let client = TestClient::h2c(format!("http://{}", h.gateway.addr));
    let answer = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["accountId"], alice().account_id);
    assert_eq!(h.fake.last().unwrap().headers["via"], "2 wikigate");
    // The host the h2 client addressed (its :authority) is forwarded on writes.
    let write = client
        .request(Method::POST, &format!("{API}/watch/space/H2"))
        .auth(alice())
        .send()
        .await;
    assert_eq!(write.status, 204);
    let seen = h.fake.last().unwrap();
    assert_eq!(
        seen.headers["x-forwarded-host"],
        h.gateway.addr.to_string().as_str()
    );
}

#[tokio::test]
async fn upstream_path_prefix_is_joined_with_the_request_target() {
    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    let config = crate::support::config_for(&format!("{}/ex/confluence/cloud-1234/", fake.url()));
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let client = TestClient::new(format!("http://{}", gateway.addr));
    client
        .get(
            &format!("{API}/current?expand=operations"),
            Some(&basic(alice())),
        )
        .await;
    assert_eq!(
        fake.last().unwrap().target,
        format!("/ex/confluence/cloud-1234{API}/current?expand=operations")
    );
}

/// A client's own `X-Request-Id` is kept: returned on the answer and sent upstream.
#[tokio::test]
async fn a_clients_request_id_is_returned_and_sent_upstream() {
    let h = Harness::start().await;
    let answer = h
        .client
        .request(Method::GET, &format!("{}/current", API))
        .auth(alice())
        .header("x-request-id", "checkout-7f3a")
        .send()
        .await;
    assert_eq!(answer.header("x-request-id"), "checkout-7f3a");
    assert_eq!(
        h.fake.last().unwrap().headers["x-request-id"],
        "checkout-7f3a"
    );
    // A hit is its own request: the id it was asked with, never the stored one's.
    let hit = h
        .client
        .request(Method::GET, &format!("{}/current", API))
        .auth(alice())
        .header("x-request-id", "checkout-7f3b")
        .send()
        .await;
    assert_eq!(hit.cache_status(), "wikigate; hit");
    assert_eq!(hit.header("x-request-id"), "checkout-7f3b");
}

/// `upstream.url` as Confluence states its base URL (ending in `/wiki`) reaches the same API,
/// not `/wiki/wiki/…`.
#[tokio::test]
async fn an_upstream_url_ending_in_wiki_reaches_the_api() {
    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    let config = crate::support::config_for(&format!("{}/wiki", fake.url()));
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let client = TestClient::new(format!("http://{}", gateway.addr));
    let answer = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(fake.last().unwrap().target, "/wiki/rest/api/user/current");
}

/// The gateway listener served by threads of their own (`server.threads`, one socket each):
/// one port, one cache, every connection answered, and all of it gone after a stop.
#[tokio::test]
async fn a_gateway_served_by_two_threads_answers_on_one_port_and_stops_whole() {
    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    let mut config = crate::support::config_for(&fake.url());
    config.server.threads = Some(2);
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let serving = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("wikigate-serv"))
            .count()
    };
    assert!(serving() >= 2, "{} serving threads", serving());
    let client = TestClient::new(format!("http://{}", gateway.addr));
    let first = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(first.status, 200);
    // A connection each: the kernel spreads them over both sockets; one cache serves them all.
    let answers = futures_util::future::join_all((0..16).map(|_| {
        let client = TestClient::new(format!("http://{}", gateway.addr));
        async move {
            client
                .request(Method::GET, &format!("{API}/current"))
                .auth(alice())
                .header("connection", "close")
                .send()
                .await
        }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.cache_status(),
            "wikigate; hit",
            "one cache across threads"
        );
    }
    assert_eq!(fake.hits(Operation::GetCurrentUser), 1);
    let addr = gateway.addr;
    gateway.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a socket still listens"
    );
}
