use super::*;

const LIFETIME: Lifetime = Lifetime {
    ttl: Duration::from_secs(60),
    stale_if_error: Duration::ZERO,
    stale_while_revalidate: Duration::ZERO,
    stale_on_low_quota: Duration::ZERO,
};

fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect()
}

/// An answer shaped like Atlassian's edge sends it: per-exchange headers and all.
fn edge_answer(body: &'static [u8], vary: &'static str) -> Buffered {
    let headers = request(&[
        ("content-type", "application/json;charset=UTF-8"),
        ("cache-control", "no-cache, no-store, no-transform"),
        ("vary", vary),
        ("x-aaccountid", "712020:a11ce"),
        ("atl-traceid", "5e1f0c0ffee"),
        ("atl-request-id", "b2d7-11"),
        ("x-arequestid", "f00d"),
        ("server-timing", "atl-edge;dur=42"),
        ("server", "AtlassianEdge"),
        ("date", "Mon, 30 Nov 2026 10:00:00 GMT"),
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains; preload",
        ),
        ("x-ratelimit-remaining", "995"),
        ("beta-ratelimit", "\"tenant-app-quota\";r=17842;t=2107"),
        ("retry-after", "0"),
    ]);
    Buffered::gzipped(
        StatusCode::OK,
        headers,
        Bytes::from_static(body),
        coding::gzip(body),
    )
}

fn hit(entry: &Entry, request_headers: &HeaderMap) -> Response<Body> {
    entry
        .respond(
            request_headers,
            false,
            HeaderValue::from_static("wikigate; hit"),
        )
        .expect("the entry holds an acceptable representation")
}

async fn body_of(response: Response<Body>) -> Bytes {
    use http_body_util::BodyExt as _;
    response.into_body().collect().await.unwrap().to_bytes()
}

#[test]
fn a_stored_answer_does_not_keep_the_buffers_it_was_read_into() {
    // hyper hands out the body and header values as slices of its read buffers.
    let read_buffer = Bytes::from(vec![b'x'; 64 * 1024]);
    let within = |p: *const u8| read_buffer.as_ptr_range().contains(&p);
    let mut headers = HeaderMap::new();
    let value = read_buffer.slice(0..8);
    headers.insert(
        "x-aaccountid",
        HeaderValue::from_maybe_shared(value).unwrap(),
    );
    let answer = Buffered::plain(StatusCode::OK, headers, read_buffer.slice(8..1208));
    let entry = Entry::new(answer, &HeaderMap::new(), LIFETIME, false, Coding::Identity);
    let body = entry.plain().unwrap();
    assert_eq!(body.len(), 1200);
    assert!(!within(body.as_ptr()));
    for (_, value) in entry.headers.iter() {
        assert!(!within(value.as_bytes().as_ptr()));
    }
}

#[test]
fn what_is_true_of_one_exchange_is_not_stored() {
    let entry = Entry::new(
        edge_answer(b"{}", "Accept-Encoding"),
        &HeaderMap::new(),
        LIFETIME,
        false,
        Coding::Gzip,
    );
    let response = hit(&entry, &request(&[("accept-encoding", "gzip")]));
    let headers = response.headers();
    for gone in [
        "atl-traceid",
        "atl-request-id",
        "x-arequestid",
        "server-timing",
        "server",
        "date",
        "x-ratelimit-remaining",
        "beta-ratelimit",
        "retry-after",
        "set-cookie",
    ] {
        assert!(!headers.contains_key(gone), "{gone} was replayed");
    }
    assert_eq!(headers["x-aaccountid"], "712020:a11ce");
    assert_eq!(headers["cache-control"], "private, max-age=60");
    assert_eq!(headers["vary"], "Accept-Encoding");
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["cache-status"], "wikigate; hit");
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains; preload"
    );
}

#[tokio::test]
async fn each_client_gets_a_representation_it_accepts_with_its_own_validator() {
    let body = br#"{"type":"known","accountId":"712020:a11ce","displayName":"Alice"}"#;
    let gzip_only = Entry::new(
        edge_answer(body, "Accept-Encoding"),
        &HeaderMap::new(),
        LIFETIME,
        false,
        Coding::Gzip,
    );
    let gzip_client = request(&[("accept-encoding", "gzip, deflate")]);
    let response = hit(&gzip_only, &gzip_client);
    let gzip_etag = response.headers()["etag"].clone();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = body_of(response).await;
    assert_eq!(coding::gunzip(&compressed, 1 << 20).unwrap(), &body[..]);
    // A plain client: the entry must gain the identity representation first.
    let plain_client = HeaderMap::new();
    assert!(matches!(
        gzip_only.respond(&plain_client, false, HeaderValue::from_static("x")),
        Err(Coding::Identity)
    ));
    let both = gzip_only
        .with_representation(Coding::Identity, 1 << 20)
        .unwrap();
    let response = hit(&both, &plain_client);
    assert!(!response.headers().contains_key("content-encoding"));
    let plain_etag = response.headers()["etag"].clone();
    assert_ne!(plain_etag, gzip_etag, "one validator per representation");
    assert_eq!(body_of(response).await, &body[..]);
    assert_eq!(
        hit(&both, &gzip_client).headers()["content-encoding"],
        "gzip"
    );
    // identity;q=0 on an identity-only entry: gzip is made for it.
    let identity_only = Entry::new(
        Buffered::plain(StatusCode::OK, HeaderMap::new(), Bytes::from_static(body)),
        &HeaderMap::new(),
        LIFETIME,
        false,
        Coding::Identity,
    );
    assert!(matches!(
        identity_only.respond(
            &request(&[("accept-encoding", "gzip, identity;q=0")]),
            false,
            HeaderValue::from_static("x")
        ),
        Err(Coding::Gzip)
    ));
    // …but a client that merely accepts gzip is served identity as it is.
    assert!(
        !hit(&identity_only, &gzip_client)
            .headers()
            .contains_key("content-encoding")
    );
    // HEAD carries the length of the representation it stands for.
    let head = both
        .respond(&gzip_client, true, HeaderValue::from_static("x"))
        .unwrap();
    assert_eq!(
        head.headers()["content-length"],
        both.bodies
            .get(Coding::Gzip)
            .unwrap()
            .len()
            .to_string()
            .as_str()
    );
}

#[test]
fn if_none_match_gets_304_without_body_for_either_representation() {
    let entry = Entry::new(
        edge_answer(b"{\"watching\":true}", "Accept-Encoding"),
        &HeaderMap::new(),
        LIFETIME,
        false,
        Coding::Gzip,
    );
    for etag in [Coding::Identity, Coding::Gzip].map(|c| entry.etags.get(c)) {
        let mut request = request(&[("accept-encoding", "gzip")]);
        request.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", {}", etag.to_str().unwrap())).unwrap(),
        );
        let response = hit(&entry, &request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert!(!response.headers().contains_key(header::CONTENT_TYPE));
        assert_eq!(response.headers()["vary"], "Accept-Encoding");
    }
    let mut request = request(&[("accept-encoding", "gzip")]);
    request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
    assert_eq!(hit(&entry, &request).status(), StatusCode::OK);
}

#[test]
fn entries_survive_the_trip_through_l2() {
    let original = Entry::new(
        edge_answer(
            b"{\"accountId\":\"712020:a\"}",
            "Accept-Encoding, Accept-Language",
        )
        .priced(5),
        &request(&[("accept-language", "de")]),
        LIFETIME,
        false,
        Coding::Gzip,
    );
    let copy = Entry::decode(&original.encode()).unwrap();
    assert_eq!(copy.status, original.status);
    assert_eq!(
        copy.bodies.get(Coding::Gzip),
        original.bodies.get(Coding::Gzip)
    );
    assert_eq!(copy.etags, original.etags);
    assert_eq!(**copy.headers, **original.headers);
    assert_eq!(
        (copy.lifetime(), copy.points),
        (original.lifetime(), original.points)
    );
    assert!(copy.is_fresh(Instant::now()));
    // The variant travels too: a request with other values does not match it.
    assert!(copy.matches_vary(&request(&[("accept-language", "de")])));
    assert!(!copy.matches_vary(&request(&[("accept-language", "fr")])));
    assert!(Entry::decode(b"WGE2\x00").is_none());
    assert!(Entry::decode(&original.encode()[..40]).is_none());
}

#[test]
fn accept_encoding_in_upstreams_vary_does_not_split_entries_other_names_do() {
    let entry = |vary| {
        Entry::new(
            edge_answer(b"{}", vary),
            &request(&[("accept-language", "de"), ("accept-encoding", "gzip")]),
            LIFETIME,
            false,
            Coding::Gzip,
        )
    };
    let plain = entry("Accept-Encoding");
    assert!(plain.matches_vary(&HeaderMap::new()));
    assert!(plain.matches_vary(&request(&[("accept-encoding", "br")])));
    let by_language = entry("accept-encoding, Accept-Language");
    assert!(by_language.matches_vary(&request(&[("accept-language", "de")])));
    assert!(!by_language.matches_vary(&request(&[("accept-language", "fr")])));
    assert_eq!(
        hit(
            &by_language,
            &request(&[("accept-encoding", "gzip"), ("accept-language", "de")])
        )
        .headers()["vary"],
        "Accept-Encoding, accept-language"
    );
}

#[test]
fn buffered_answers_are_served_in_an_encoding_the_client_accepts() {
    let answer = edge_answer(b"{\"statusCode\":500}", "Accept-Encoding");
    let plain = answer.to_response(false, Accepts::IDENTITY);
    assert!(!plain.headers().contains_key("content-encoding"));
    let mut gzip_client = HeaderMap::new();
    gzip_client.insert("accept-encoding", HeaderValue::from_static("gzip"));
    let gzip = answer.to_response(false, Accepts::of(&gzip_client));
    assert_eq!(gzip.headers()["content-encoding"], "gzip");
    let mut rewritten = answer.clone();
    rewritten.set_body(Bytes::from_static(b"{}"));
    gzip_client.insert(
        "accept-encoding",
        HeaderValue::from_static("gzip, identity;q=0"),
    );
    assert_eq!(
        rewritten
            .to_response(false, Accepts::of(&gzip_client))
            .headers()["content-encoding"],
        "gzip"
    );
}
