//! Confluence as its edge really answers (gzip when asked, a fresh XSRF cookie on every
//! answer, per-request ids, `no-store`), and clients as they really ask (gzip by default):
//! the cache stores, one entry serves every encoding, bulk lookups work, links always work.

use http::{HeaderValue, Method};
use serde_json::Value;
use wikigate::fake::{FakeOptions, Shape, directory_account};
use wikigate::routes::Operation;

use crate::support::{API, Answer, Harness, TestClient, alice, basic, bob};

/// A GET of every cacheable route, as alice.
fn every_read() -> Vec<String> {
    let (a, b) = (alice().account_id, bob().account_id);
    vec![
        format!("{API}?accountId={a}&expand=operations,personalSpace"),
        format!("{API}/current"),
        format!("{API}/anonymous"),
        format!("{API}/memberof?accountId={a}"),
        format!("{API}/email?accountId={b}"),
        format!("{API}/watch/content/77"),
        format!("{API}/watch/label/news"),
        format!("{API}/watch/space/ENG"),
        format!("{API}/{a}/property"),
    ]
}

/// Headers Atlassian's edge sends that describe one exchange only.
const PER_EXCHANGE: [&str; 6] = [
    "atl-traceid",
    "atl-request-id",
    "x-arequestid",
    "server-timing",
    "server",
    "set-cookie",
];

#[tokio::test]
async fn every_read_is_stored_despite_the_edges_cookie_and_no_store() {
    let h = Harness::start().await;
    // The fake answers like the edge: check that it does, so this test means something.
    let direct = TestClient::new(h.fake.url())
        .request(Method::GET, &format!("{API}/current"))
        .auth(alice())
        .header("accept-encoding", "gzip")
        .send()
        .await;
    assert_eq!(direct.headers["content-encoding"], "gzip");
    assert!(
        direct.headers["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("atlassian.xsrf.token=")
    );
    assert_eq!(
        direct.headers["cache-control"],
        "no-cache, no-store, no-transform"
    );
    for target in every_read() {
        let miss = h.client.get_gzip(&target, alice()).await;
        assert_eq!(miss.status, 200, "{target}");
        assert!(
            miss.cache_status().contains("stored"),
            "{target}: {}",
            miss.cache_status()
        );
        assert!(
            !miss.headers.contains_key("set-cookie"),
            "{target}: the XSRF cookie crossed"
        );
        // The miss was one exchange with Atlassian: its ids come along (support asks for them).
        for name in ["atl-traceid", "x-arequestid"] {
            assert!(
                miss.headers.contains_key(name),
                "{target}: a miss lost {name}"
            );
        }
        let hit = h.client.get_gzip(&target, alice()).await;
        assert_eq!(hit.cache_status(), "wikigate; hit", "{target}");
        assert_eq!(hit.json(), miss.json(), "{target}");
        for name in PER_EXCHANGE {
            assert!(
                !hit.headers.contains_key(name),
                "{target}: a hit replayed {name}"
            );
        }
        if !target.ends_with("/anonymous") {
            assert_eq!(hit.viewer(), alice().account_id, "{target}");
        }
        assert_eq!(
            hit.headers["strict-transport-security"],
            "max-age=63072000; includeSubDomains; preload"
        );
    }
}

#[tokio::test]
async fn misses_and_writes_carry_the_ids_of_their_own_exchange_with_atlassian() {
    let h = Harness::start().await;
    let ids = |answer: &Answer| {
        ["atl-traceid", "x-arequestid"].map(|name| answer.header(name).to_owned())
    };
    let first = h
        .client
        .get_gzip(&format!("{API}/watch/space/OPS"), alice())
        .await;
    let other = h
        .client
        .get_gzip(&format!("{API}/watch/space/ENG"), alice())
        .await;
    assert!(
        ids(&first).iter().all(|id| id.len() >= 24),
        "{:?}",
        ids(&first)
    );
    assert_ne!(ids(&first), ids(&other), "each miss its own exchange's");
    let write = h
        .client
        .request(Method::POST, &format!("{API}/watch/space/OPS"))
        .auth(alice())
        .send()
        .await;
    assert_eq!(write.status, 204);
    assert!(write.headers.contains_key("atl-traceid"));
    let again = h
        .client
        .get_gzip(&format!("{API}/watch/space/OPS"), alice())
        .await;
    assert!(
        again.cache_status().contains("fwd=miss"),
        "{}",
        again.cache_status()
    );
    assert_ne!(
        ids(&again),
        ids(&first),
        "the write's refetch is a new exchange"
    );
    let hit = h
        .client
        .get_gzip(&format!("{API}/watch/space/OPS"), alice())
        .await;
    assert_eq!(hit.cache_status(), "wikigate; hit");
    assert!(!hit.headers.contains_key("atl-traceid"));
}

#[tokio::test]
async fn one_entry_serves_gzip_and_plain_clients_each_in_an_encoding_it_accepts() {
    let h = Harness::start().await;
    let target = format!("{API}?accountId={}&expand=operations", bob().account_id);
    let read = |accept_encoding: Option<&'static str>| {
        let mut request = h.client.request(Method::GET, &target).auth(alice());
        if let Some(value) = accept_encoding {
            request = request.header("accept-encoding", value);
        }
        request.send()
    };
    let gzip = read(Some("gzip, deflate, br")).await;
    let plain = read(None).await;
    let gzip_again = read(Some("gzip")).await;
    assert_eq!(
        h.fake.hits(Operation::GetUser),
        1,
        "a gzip, a plain and a gzip read make one upstream call"
    );
    assert_eq!(
        h.fake.last().unwrap().headers["accept-encoding"],
        "gzip",
        "wikigate asks upstream for gzip whatever the client asked"
    );
    assert_eq!(gzip.headers["content-encoding"], "gzip");
    assert!(!plain.headers.contains_key("content-encoding"));
    assert_eq!(gzip_again.headers["content-encoding"], "gzip");
    assert_eq!(gzip.json(), plain.json());
    assert!(plain.body.len() > gzip.body.len(), "gzip is smaller");
    for answer in [&gzip, &plain, &gzip_again] {
        assert_eq!(answer.headers["vary"], "Accept-Encoding");
        assert_eq!(
            answer.headers["content-length"],
            answer.body.len().to_string().as_str()
        );
    }
    assert_ne!(
        gzip.headers["etag"], plain.headers["etag"],
        "a strong validator differs per content coding"
    );
    assert_eq!(gzip.headers["etag"], gzip_again.headers["etag"]);

    // q-values, identity;q=0 and *.
    for (accept, coded) in [
        ("gzip;q=0, deflate", false),
        ("br", false),
        ("", false),
        ("gzip, identity;q=0", true),
        ("*", true),
        ("*;q=0, identity", false),
        ("identity;q=0.5, gzip;q=0.4", false),
    ] {
        let answer = read(Some(accept)).await;
        assert_eq!(
            answer.headers.contains_key("content-encoding"),
            coded,
            "Accept-Encoding: {accept:?}"
        );
        assert_eq!(answer.json(), plain.json(), "Accept-Encoding: {accept:?}");
    }
    // HEAD: the length of the representation that GET would send.
    for (accept, length) in [("gzip", gzip.body.len()), ("identity", plain.body.len())] {
        let head = h
            .client
            .request(Method::HEAD, &target)
            .auth(alice())
            .header("accept-encoding", accept)
            .send()
            .await;
        assert_eq!(
            head.headers["content-length"],
            length.to_string().as_str(),
            "{accept}"
        );
    }
    // Either validator revalidates (both stand for the same content).
    for etag in [&gzip.headers["etag"], &plain.headers["etag"]] {
        let answer = h
            .client
            .request(Method::GET, &target)
            .auth(alice())
            .header("accept-encoding", "gzip")
            .header("if-none-match", etag.to_str().unwrap())
            .send()
            .await;
        assert_eq!(answer.status, 304);
        assert!(answer.body.is_empty());
    }
    assert_eq!(h.fake.hits(Operation::GetUser), 1);
}

#[tokio::test]
async fn bulk_lookups_work_for_gzip_clients_and_carry_upstreams_envelope_exactly() {
    let h = Harness::start().await;
    let ids: Vec<String> = (0..4).map(directory_account).collect();
    let direct = TestClient::new(h.fake.url());
    for (route, partial) in [("bulk", 2), ("email/bulk", 3)] {
        let target = |n: usize| format!("{API}/{route}?accountId={}", ids[..n].join(","));
        // Cold, partially cached, all cached: each equals upstream's own answer.
        for (n, status) in [
            (partial, "wikigate; fwd=miss; stored"),
            (4, "fwd=partial"),
            (4, "wikigate; hit"),
        ] {
            let through = h.client.get_gzip(&target(n), alice()).await;
            assert_eq!(through.status, 200, "{route}: {:?}", through.body);
            assert!(
                through.cache_status().contains(status),
                "{}",
                through.cache_status()
            );
            let upstream = direct.get_gzip(&target(n), alice()).await;
            assert_eq!(upstream.headers["content-encoding"], "gzip");
            assert_eq!(through.json(), upstream.json(), "{route} {n}");
        }
    }
    // The edge's bulk envelope has no `_links.self`: nor has the assembled one.
    let answer = h
        .client
        .get_gzip(&format!("{API}/bulk?accountId={}", ids[0]), alice())
        .await
        .json();
    assert_eq!(answer["_links"]["self"], Value::Null);
    let keys: Vec<&str> = answer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["results", "start", "limit", "size", "_links"]);
}

#[tokio::test]
async fn the_xsrf_cookie_never_crosses_and_other_cookies_keep_their_meaning() {
    let h = Harness::start().await;
    let target = format!("{API}/current");
    // A client with a cookie jar sends back the token it was never given: still cached, and
    // upstream gets no cookie.
    let jar = || {
        h.client
            .request(Method::GET, &target)
            .auth(alice())
            .header("cookie", "atlassian.xsrf.token=c0ffee_lin")
            .send()
    };
    assert!(jar().await.cache_status().contains("stored"));
    assert!(!h.fake.last().unwrap().headers.contains_key("cookie"));
    assert_eq!(jar().await.cache_status(), "wikigate; hit");
    // A write's answer and a bypassed read's answer lose the token too.
    let write = h
        .client
        .request(Method::POST, &format!("{API}/watch/space/ENG"))
        .auth(alice())
        .header("cookie", "atlassian.xsrf.token=c0ffee_lin")
        .send()
        .await;
    assert_eq!(write.status, 204);
    assert!(!write.headers.contains_key("set-cookie"));
    assert!(!h.fake.last().unwrap().headers.contains_key("cookie"));
    let session = h
        .client
        .request(Method::GET, &target)
        .auth(alice())
        .header(
            "cookie",
            "atlassian.xsrf.token=c0ffee_lin; tenant.session.token=s",
        )
        .send()
        .await;
    assert_eq!(
        session.cache_status(),
        "wikigate; fwd=bypass; detail=cookie"
    );
    assert!(!session.headers.contains_key("set-cookie"));
    assert_eq!(
        h.fake.last().unwrap().headers["cookie"],
        "tenant.session.token=s",
        "the identity cookie still goes upstream, the token does not"
    );
}

#[tokio::test]
async fn with_public_url_every_link_works_for_gzip_and_plain_clients() {
    let (h, public) = Harness::with_public_url().await;
    let site = format!("{}/wiki", h.fake.url());
    let a = alice().account_id;
    let client = &h.client;
    for gzip in [true, false] {
        let get = |target: String| async move {
            let mut request = client.request(Method::GET, &target).auth(alice());
            if gzip {
                request = request.header("accept-encoding", "gzip");
            }
            request.send().await
        };
        let user = get(format!("{API}?accountId={a}&expand=personalSpace")).await;
        assert_eq!(user.headers.contains_key("content-encoding"), gzip);
        let user = user.json();
        assert_eq!(user["_links"]["base"], format!("{public}/wiki"));
        let self_link = user["_links"]["self"].as_str().unwrap();
        assert_eq!(
            self_link,
            format!("{public}/wiki/rest/api/user?accountId={a}")
        );
        let space = &user["personalSpace"]["_links"];
        assert_eq!(
            space["self"],
            format!("{site}/rest/api/space/~{a}"),
            "stays on the site"
        );
        // base + webui lands on wikigate, which sends it to the site.
        let webui = space["webui"].as_str().unwrap();
        let landed = get(format!("/wiki{webui}")).await;
        assert_eq!(landed.status, 302);
        assert_eq!(
            landed.headers["location"],
            format!("{site}{webui}").as_str()
        );
        // The avatar path is relative to the origin: the same.
        let avatar = user["profilePicture"]["path"].as_str().unwrap();
        assert_eq!(
            get(avatar.to_owned()).await.headers["location"],
            format!("{}{avatar}", h.fake.url()).as_str()
        );
        // Following self works.
        let followed = get(self_link.strip_prefix(&public).unwrap().to_owned()).await;
        assert_eq!(followed.status, 200);
        // Groups keep their own self on the site; paging stays on wikigate.
        let mut next = Some(format!("{API}/memberof?accountId={a}&limit=1"));
        let mut pages = 0;
        while let Some(target) = next.take() {
            let page = get(target).await;
            assert_eq!(page.status, 200);
            let page = page.json();
            for group in page["results"].as_array().unwrap() {
                let group_self = group["_links"]["self"].as_str().unwrap();
                assert!(
                    group_self.starts_with(&format!("{site}/rest/api/group/")),
                    "{group_self}"
                );
            }
            pages += 1;
            next = page["_links"]["next"].as_str().map(|n| {
                let url = format!("{}{n}", page["_links"]["base"].as_str().unwrap());
                assert!(url.starts_with(&public), "paging left the gateway: {url}");
                url.strip_prefix(&public).unwrap().to_owned()
            });
        }
        assert_eq!(pages, alice().groups.len());
        // Bulk results name the user API: on wikigate, from the cache and from upstream alike.
        for _ in 0..2 {
            let bulk = get(format!("{API}/bulk?accountId={a},{}", bob().account_id)).await;
            let bulk = bulk.json();
            assert_eq!(bulk["_links"]["base"], format!("{public}/wiki"));
            for user in bulk["results"].as_array().unwrap() {
                let user_self = user["_links"]["self"].as_str().unwrap();
                assert!(
                    user_self.starts_with(&format!("{public}{API}?accountId=")),
                    "{user_self}"
                );
            }
        }
    }
}

/// Runs a read/write mix of four callers and returns (reads, reads that went upstream).
async fn mixed_workload(shape: Shape) -> (u64, u64) {
    let h = Harness::start_on(
        FakeOptions {
            shape,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let users = [alice(), bob()];
    let callers: Vec<(&wikigate::fake::DemoUser, Option<&'static str>)> = vec![
        (alice(), Some("gzip, deflate")),
        (alice(), None),
        (bob(), Some("gzip, deflate, br")),
        (bob(), None),
    ];
    let mut reads = 0;
    let before = h.fake.requests();
    let mut writes = 0;
    for round in 0..12 {
        for (i, (user, accept)) in callers.iter().enumerate() {
            let other = users[(i + 1) % 2];
            let targets = [
                format!("{API}/current"),
                format!("{API}?accountId={}", other.account_id),
                format!("{API}/memberof?accountId={}", user.account_id),
                format!("{API}/watch/space/S{}", round % 3),
                format!("{API}/{}/property", user.account_id),
                format!(
                    "{API}/bulk?accountId={},{}",
                    user.account_id, other.account_id
                ),
            ];
            for target in &targets {
                let mut request = h.client.request(Method::GET, target).auth(user);
                if let Some(accept) = accept {
                    request = request.header("accept-encoding", accept);
                }
                let answer: Answer = request.send().await;
                assert_eq!(answer.status, 200, "{target}");
                reads += 1;
            }
            if round % 4 == i % 4 {
                let method = if round % 8 < 4 {
                    Method::POST
                } else {
                    Method::DELETE
                };
                let write = h
                    .client
                    .request(method, &format!("{API}/watch/space/S{}", round % 3))
                    .auth(user)
                    .send()
                    .await;
                assert_eq!(write.status, 204);
                writes += 1;
            }
        }
    }
    let upstream = h.fake.requests() - before - writes;
    (reads, upstream)
}

#[tokio::test]
async fn the_edges_headers_cost_no_quota_saving_on_a_mixed_workload() {
    let (reads, plain) = mixed_workload(Shape::Plain).await;
    let (_, edge) = mixed_workload(Shape::Edge).await;
    assert_eq!(
        edge, plain,
        "reads that went upstream: edge {edge}, plain {plain}"
    );
    let saved = 1.0 - edge as f64 / reads as f64;
    assert!(
        saved > 0.6,
        "only {:.0} % of {reads} reads saved",
        saved * 100.0
    );
}

#[tokio::test]
async fn answers_of_a_plain_upstream_are_served_gzip_to_clients_that_refuse_identity() {
    let h = Harness::start_on(
        FakeOptions {
            shape: Shape::Plain,
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let target = format!("{API}/current");
    let plain = h.client.get(&target, Some(&basic(alice()))).await;
    assert!(!plain.headers.contains_key("content-encoding"));
    let strict = h
        .client
        .request(Method::GET, &target)
        .auth(alice())
        .header("accept-encoding", "gzip, identity;q=0")
        .send()
        .await;
    assert_eq!(
        strict.headers["content-encoding"],
        HeaderValue::from_static("gzip")
    );
    assert_eq!(strict.json(), plain.json());
    assert_eq!(strict.cache_status(), "wikigate; hit");
    assert_eq!(h.fake.hits(Operation::GetCurrentUser), 1);
}
