//! What wikigate refuses itself, and what it answers when upstream fails: the right status,
//! Confluence's error JSON, and no upstream request for anything refused.

use std::time::Duration;

use http::Method;
use wikigate::fake::Faults;

use crate::support::{API, Harness, TestClient, alice, basic, config_for, raw_exchange};

#[tokio::test]
async fn paths_outside_the_user_api_are_404_and_never_forwarded() {
    let h = Harness::start().await;
    for target in [
        "/",
        "/wiki",
        "/wiki/rest/api/user/",
        "/wiki/rest/api/user/nope/nope/nope",
        "/wiki/rest/api/user/bulk/property",
        "/admin",
    ] {
        h.client
            .get(target, Some(&basic(alice())))
            .await
            .assert_error(404);
    }
    // Below /wiki/ but outside the user API, reads are sent to the site (links relative to a
    // rewritten base lead there) and writes are 404: nothing is proxied.
    for target in [
        "/wiki/rest/api/content/123?expand=body",
        "/wiki/rest/api/users",
        "/wiki/spaces/~x",
    ] {
        let answer = h.client.get(target, Some(&basic(alice()))).await;
        assert_eq!(answer.status, 302, "{target}");
        assert_eq!(
            answer.headers["location"],
            format!("{}{target}", h.fake.url()).as_str()
        );
        h.client
            .request(Method::POST, target)
            .auth(alice())
            .send()
            .await
            .assert_error(404);
    }
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn undefined_methods_are_405_with_allow_and_never_forwarded() {
    let h = Harness::start().await;
    let cases = [
        (Method::TRACE, format!("{API}/current"), "GET, HEAD"),
        (Method::OPTIONS, format!("{API}/current"), "GET, HEAD"),
        (Method::POST, format!("{API}/current"), "GET, HEAD"),
        (
            Method::PATCH,
            format!("{API}/u1/property/k"),
            "GET, HEAD, PUT, POST, DELETE",
        ),
        (
            Method::PUT,
            format!("{API}/watch/content/1"),
            "GET, HEAD, POST, DELETE",
        ),
        (
            Method::DELETE,
            format!("{API}/bulk?accountId=x"),
            "GET, HEAD",
        ),
    ];
    for (method, target, allow) in cases {
        let answer = h
            .client
            .request(method.clone(), &target)
            .auth(alice())
            .send()
            .await;
        answer.assert_error(405);
        assert_eq!(answer.headers["allow"], allow, "{method} {target}");
    }
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn oversized_requests_get_413_414_431() {
    let h = Harness::start_with(|c| {
        c.server.max_body_bytes = 1024;
        c.server.max_uri_bytes = 512;
        c.server.max_header_bytes = 2048;
    })
    .await;
    let target = format!("{API}/{}/property/big", alice().account_id);
    let big = format!(r#"{{"value":{{"x":"{}"}}}}"#, "a".repeat(2000));
    let answer = h
        .client
        .request(Method::POST, &target)
        .auth(alice())
        .body(big)
        .send()
        .await;
    answer.assert_error(413);
    assert_eq!(answer.headers["connection"], "close");

    let long = format!("{API}?accountId={}", "a".repeat(600));
    h.client
        .get(&long, Some(&basic(alice())))
        .await
        .assert_error(414);

    let answer = h
        .client
        .request(Method::GET, &format!("{API}/current"))
        .auth(alice())
        .header("x-padding", &"p".repeat(3000))
        .send()
        .await;
    answer.assert_error(431);
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let h = Harness::start_with(|c| c.server.max_body_bytes = 1024).await;
    let chunk = "b".repeat(800);
    let chunks = format!("{:x}\r\n{chunk}\r\n", chunk.len()).repeat(3);
    let head = format!(
        "POST {API}/{}/property/big HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}",
        alice().account_id,
        basic(alice())
    );
    let answer = raw_exchange(h.gateway.addr, &head).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""statusCode":413"#), "{answer}");
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn upstream_unreachable_is_502_json() {
    // A port that was free a moment ago: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let config = config_for(&format!("http://{closed}"));
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let client = TestClient::new(format!("http://{}", gateway.addr));
    let answer = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    let json = answer.assert_error(502);
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{json}"
    );
}

#[tokio::test]
async fn upstream_slower_than_response_timeout_is_504_json() {
    let h = Harness::start_with(|c| c.upstream.response_timeout = Duration::from_millis(200)).await;
    h.fake.set_faults(Faults {
        delay: Duration::from_secs(3),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    let answer = h
        .client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    answer.assert_error(504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_request_body_is_408() {
    let h = Harness::start_with(|c| c.server.body_read_timeout = Duration::from_millis(200)).await;
    let head = format!(
        "PUT {API}/{}/property/k HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 100\r\n\r\n{{",
        alice().account_id,
        basic(alice())
    );
    let answer = raw_exchange(h.gateway.addr, &head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(h.fake.requests(), 0);
}
