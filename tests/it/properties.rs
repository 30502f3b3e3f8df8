//! Properties over generated input (proptest, on stable Rust — cargo-fuzz needs a nightly
//! toolchain, which this project's machines cannot fetch): the router, the path-parameter
//! decoder, the cache-key builder and the config parser never panic on arbitrary input, and the
//! cache key keeps its promises.

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use wikigate::config::Config;
use wikigate::routes;
use wikigate::{CacheKey, KeySecret, Partition};

const SECRET: [u8; 32] = [9; 32];
static KEY_SECRET: std::sync::LazyLock<KeySecret> =
    std::sync::LazyLock::new(|| KeySecret::derive(&SECRET));

fn any_path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("current".to_owned()),
        Just("property".to_owned()),
        Just("watch".to_owned()),
        Just("content".to_owned()),
        Just("..".to_owned()),
        Just("%2e%2E".to_owned()),
        Just("%2F".to_owned()),
        "[a-zA-Z0-9_%:.-]{0,12}",
        any::<String>(),
    ];
    proptest::collection::vec(segment, 0..5)
        .prop_map(|segments| format!("/wiki/rest/api/user/{}", segments.join("/")))
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::OPTIONS)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_router_never_panics_and_only_accepts_clean_parameters(method in method(), path in any_path()) {
        if let Ok(resolved) = routes::resolve(&method, &path) {
            for (_, value) in resolved.params() {
                prop_assert!(!value.is_empty());
                prop_assert!(!value.contains('/') && !value.contains('\\'));
                prop_assert!(value != "." && value != "..");
                prop_assert!(!value.chars().any(char::is_control));
            }
            if let Some(key) = resolved.param("key") {
                prop_assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
        }
    }

    #[test]
    fn query_order_and_expand_order_never_change_the_key(
        pairs in proptest::collection::vec(("[a-z]{1,6}", "[a-zA-Z0-9:]{0,6}"), 0..6),
        expand in proptest::collection::btree_set(prop_oneof![Just("operations"), Just("personalSpace"), Just("isExternalCollaborator")], 0..3),
        seed in any::<u64>(),
    ) {
        let resolved = routes::resolve(&Method::GET, "/wiki/rest/api/user").unwrap();
        let mut params: Vec<String> = pairs.iter().filter(|(n, _)| n != "expand").map(|(n, v)| format!("{n}={v}")).collect();
        let mut expand: Vec<&str> = expand.into_iter().collect();
        let key = |params: &[String], expand: &[&str]| {
            let mut all = params.to_vec();
            if !expand.is_empty() {
                all.push(format!("expand={}", expand.join(",")));
            }
            CacheKey::new(&KEY_SECRET, Partition::Anonymous, &resolved, Some(&all.join("&")), &[0, 0, 0])
        };
        let before = key(&params, &expand);
        // Deterministic shuffles from the seed.
        let mut state = seed | 1;
        let mut next = |n: usize| { state ^= state << 13; state ^= state >> 7; state ^= state << 17; (state % n.max(1) as u64) as usize };
        for i in (1..params.len()).rev() { let j = next(i + 1); params.swap(i, j); }
        for i in (1..expand.len()).rev() { let j = next(i + 1); expand.swap(i, j); }
        prop_assert_eq!(before, key(&params, &expand));
        // The same query sent in normal form (pairs in order, `expand` sorted) takes the key
        // builder's no-copy path, and must key the same.
        let mut normal: Vec<(&str, String)> = params.iter().map(|p| {
            let (n, v) = p.split_once('=').unwrap();
            (n, v.to_owned())
        }).collect();
        expand.sort_unstable();
        if !expand.is_empty() {
            normal.push(("expand", expand.join(",")));
        }
        normal.sort();
        let sent: Vec<String> = normal.iter().map(|(n, v)| format!("{n}={v}")).collect();
        prop_assert_eq!(before, key(&sent, &[]));
    }

    #[test]
    fn a_key_is_the_bytes_upstream_reads_whatever_their_encoding(
        a in proptest::collection::vec(any::<u8>(), 0..12),
        b in proptest::collection::vec(any::<u8>(), 0..12),
        first in proptest::collection::vec(any::<bool>(), 12),
        second in proptest::collection::vec(any::<bool>(), 12),
    ) {
        // Each byte in one of the forms that decode to it: literal (when it may be), `%XX`
        // upper or lower case, and a space as `+` or `%20`. Invalid UTF-8 included.
        let encode = |bytes: &[u8], choices: &[bool]| -> String {
            bytes.iter().zip(choices.iter().cycle()).map(|(&byte, &choice)| match byte {
                b' ' if choice => "+".to_owned(),
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' if choice => (byte as char).to_string(),
                _ if choice => format!("%{byte:02x}"),
                _ => format!("%{byte:02X}"),
            }).collect()
        };
        let resolved = routes::resolve(&Method::GET, "/wiki/rest/api/user").unwrap();
        let key = |value: String| {
            CacheKey::new(&KEY_SECRET, Partition::Anonymous, &resolved, Some(&format!("accountId={value}")), &[0, 0, 0])
        };
        prop_assert_eq!(key(encode(&a, &first)), key(encode(&a, &second)));
        if a != b {
            prop_assert_ne!(key(encode(&a, &first)), key(encode(&b, &second)));
        }
    }

    #[test]
    fn different_credentials_never_share_a_key(a in "[ -~]{1,40}", b in "[ -~]{1,40}", path in any_path(), query in "[a-z=&0-9]{0,20}") {
        prop_assume!(a != b && !a.to_ascii_lowercase().starts_with("jwt ") && !b.to_ascii_lowercase().starts_with("jwt "));
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        let (Ok(pa), Ok(pb)) = (Partition::of(&headers(&a), &SECRET, None), Partition::of(&headers(&b), &SECRET, None)) else {
            return Ok(());
        };
        if let Ok(resolved) = routes::resolve(&Method::GET, &path) {
            let ka = CacheKey::new(&KEY_SECRET, pa, &resolved, Some(&query), &[0, 0, 0]);
            let kb = CacheKey::new(&KEY_SECRET, pb, &resolved, Some(&query), &[0, 0, 0]);
            prop_assert_ne!(ka, kb);
            prop_assert_ne!(ka, CacheKey::new(&KEY_SECRET, Partition::Anonymous, &resolved, Some(&query), &[0, 0, 0]));
        }
    }

    #[test]
    fn the_config_parser_never_panics(text in any::<String>(), key in "[a-z_.]{1,30}", value in "[ -~]{0,30}") {
        let _ = Config::from_toml(&text);
        let _ = Config::from_toml(&format!("[upstream]\nurl = \"https://a.example\"\n{key} = \"{value}\"\n"));
        let _ = Config::from_toml(&format!("[upstream]\nurl = \"{value}\"\n"));
    }
}

mod model {
    //! The cache and its invalidation against a reference map: random sequences of property
    //! reads, listings, creates, updates and deletes by two callers through the gateway; every
    //! answer must be exactly what the map says, whatever was cached before.

    use std::collections::BTreeMap;
    use std::sync::LazyLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Method;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::support::{API, Harness, alice, bob};

    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    });
    // Cached 404s too, so that creates must invalidate negative answers as well.
    static HARNESS: LazyLock<Harness> =
        LazyLock::new(|| RUNTIME.block_on(Harness::start_with(|c| c.cache.cache_not_found = true)));
    static CASE: AtomicUsize = AtomicUsize::new(0);

    #[derive(Debug, Clone)]
    enum Op {
        Read {
            owner: usize,
            key: usize,
            as_admin: bool,
        },
        List {
            owner: usize,
        },
        Create {
            owner: usize,
            key: usize,
            value: u8,
        },
        Update {
            owner: usize,
            key: usize,
            value: u8,
        },
        Delete {
            owner: usize,
            key: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let (owner, key) = (0..2usize, 0..3usize);
        prop_oneof![
            3 => (owner.clone(), key.clone(), any::<bool>()).prop_map(|(owner, key, as_admin)| Op::Read { owner, key, as_admin }),
            1 => owner.clone().prop_map(|owner| Op::List { owner }),
            2 => (owner.clone(), key.clone(), any::<u8>()).prop_map(|(owner, key, value)| Op::Create { owner, key, value }),
            2 => (owner.clone(), key.clone(), any::<u8>()).prop_map(|(owner, key, value)| Op::Update { owner, key, value }),
            1 => (owner, key).prop_map(|(owner, key)| Op::Delete { owner, key }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn cached_answers_always_match_the_reference_map(ops in proptest::collection::vec(op(), 1..40)) {
            let case = CASE.fetch_add(1, Ordering::SeqCst);
            let h = &*HARNESS;
            let users = [alice(), bob()];
            let mut model: BTreeMap<(usize, String), u8> = BTreeMap::new();
            RUNTIME.block_on(async {
                for op in ops {
                    let key = |k: usize| format!("c{case}-k{k}");
                    let item = |owner: usize, k: usize| format!("{API}/{}/property/{}", users[owner].account_id, key(k));
                    let write = |method: Method, owner: usize, k: usize, value: Option<u8>| {
                        let mut request = h.client.request(method, &item(owner, k)).auth(users[owner]);
                        if let Some(value) = value {
                            request = request.body(json!({ "value": { "v": value } }).to_string());
                        }
                        request.send()
                    };
                    match op {
                        Op::Read { owner, key: k, as_admin } => {
                            let reader = if as_admin { alice() } else { users[owner] };
                            let answer = h.client.request(Method::GET, &item(owner, k)).auth(reader).send().await;
                            match model.get(&(owner, key(k))) {
                                Some(value) => {
                                    assert_eq!(answer.status, 200, "{op:?}");
                                    assert_eq!(answer.json()["value"]["v"], *value, "{op:?}: {}", answer.cache_status());
                                }
                                None => assert_eq!(answer.status, 404, "{op:?}: {}", answer.cache_status()),
                            }
                        }
                        Op::List { owner } => {
                            let answer = h.client
                                .request(Method::GET, &format!("{API}/{}/property?limit=25", users[owner].account_id))
                                .auth(users[owner])
                                .send()
                                .await;
                            let listed: Vec<String> = answer.json()["results"].as_array().unwrap().iter()
                                .filter_map(|r| r["key"].as_str())
                                .filter(|k| k.starts_with(&format!("c{case}-")))
                                .map(str::to_owned)
                                .collect();
                            let expected: Vec<String> = model.keys().filter(|(o, _)| *o == owner).map(|(_, k)| k.clone()).collect();
                            assert_eq!(listed, expected, "{op:?}");
                        }
                        Op::Create { owner, key: k, value } => {
                            let answer = write(Method::POST, owner, k, Some(value)).await;
                            let existed = model.contains_key(&(owner, key(k)));
                            assert_eq!(answer.status.as_u16(), if existed { 409 } else { 201 }, "{op:?}");
                            model.entry((owner, key(k))).or_insert(value);
                        }
                        Op::Update { owner, key: k, value } => {
                            let answer = write(Method::PUT, owner, k, Some(value)).await;
                            match model.get_mut(&(owner, key(k))) {
                                Some(stored) => {
                                    assert_eq!(answer.status, 204, "{op:?}");
                                    *stored = value;
                                }
                                None => assert_eq!(answer.status, 404, "{op:?}"),
                            }
                        }
                        Op::Delete { owner, key: k } => {
                            let answer = write(Method::DELETE, owner, k, None).await;
                            let existed = model.remove(&(owner, key(k))).is_some();
                            assert_eq!(answer.status.as_u16(), if existed { 204 } else { 404 }, "{op:?}");
                        }
                    }
                }
                // Leave nothing behind: listings hold at most 25 keys, and later cases list too.
                for (owner, key) in std::mem::take(&mut model).into_keys() {
                    let target = format!("{API}/{}/property/{key}", users[owner].account_id);
                    let answer = h.client.request(Method::DELETE, &target).auth(users[owner]).send().await;
                    assert_eq!(answer.status, 204);
                }
            });
        }
    }
}
