//! The CSRF guard: writes that could come from a browser's ambient credentials never reach
//! upstream with `X-Atlassian-Token: no-check`.

use http::Method;
use wikigate::routes::Operation;

use crate::support::{API, Harness, alice, basic};

fn watch() -> String {
    format!("{API}/watch/space/ENG")
}

#[tokio::test]
async fn cookie_authenticated_write_is_refused_and_never_forwarded() {
    let h = Harness::start().await;
    for method in [Method::POST, Method::DELETE] {
        let answer = h
            .client
            .request(method, &watch())
            .header("cookie", "tenant.session.token=abc")
            .send()
            .await;
        answer.assert_error(403);
    }
    let answer = h
        .client
        .request(
            Method::PUT,
            &format!("{API}/{}/property/k", alice().account_id),
        )
        .header("cookie", "tenant.session.token=abc")
        .body(r#"{"value":{}}"#)
        .send()
        .await;
    answer.assert_error(403);
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn write_without_any_credential_is_unauthorized_and_never_forwarded() {
    let h = Harness::start().await;
    let answer = h.client.request(Method::POST, &watch()).send().await;
    answer.assert_error(401);
    assert!(answer.headers.contains_key("www-authenticate"));
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn write_from_an_origin_not_allowed_is_refused() {
    let h =
        Harness::start_with(|c| c.csrf.allowed_origins = vec!["https://intranet.example".into()])
            .await;
    for origin in ["https://evil.example", "null", "http://intranet.example"] {
        let answer = h
            .client
            .request(Method::POST, &watch())
            .auth(alice())
            .header("origin", origin)
            .send()
            .await;
        answer.assert_error(403);
    }
    assert_eq!(h.fake.requests(), 0);
    let answer = h
        .client
        .request(Method::POST, &watch())
        .auth(alice())
        .header("origin", "https://intranet.example")
        .header("sec-fetch-site", "same-site")
        .send()
        .await;
    assert_eq!(answer.status, 204);
    assert_eq!(h.fake.hits(Operation::AddSpaceWatcher), 1);
    // No CORS headers are ever added.
    assert!(
        answer
            .headers
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-"))
    );
}

#[tokio::test]
async fn cross_site_fetch_metadata_is_refused_even_with_authorization() {
    let h = Harness::start().await;
    let answer = h
        .client
        .request(Method::DELETE, &watch())
        .auth(alice())
        .header("sec-fetch-site", "cross-site")
        .send()
        .await;
    answer.assert_error(403);
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn connection_header_cannot_strip_authorization_past_the_guard() {
    let h = Harness::start().await;
    // Hop-by-hop stripping runs before the guard, so naming Authorization in Connection
    // leaves a cookie-only write, which is refused.
    let answer = h
        .client
        .request(Method::POST, &watch())
        .header("authorization", &basic(alice()))
        .header("cookie", "tenant.session.token=abc")
        .header("connection", "authorization")
        .send()
        .await;
    answer.assert_error(403);
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn reads_are_not_guarded() {
    let h = Harness::start_with(|c| c.csrf.allowed_origins = vec![]).await;
    let answer = h
        .client
        .request(Method::GET, &format!("{API}/anonymous"))
        .header("origin", "https://elsewhere.example")
        .header("cookie", "tenant.session.token=abc")
        .send()
        .await;
    assert_eq!(answer.status, 200);
}
