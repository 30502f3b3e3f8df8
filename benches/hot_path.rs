//! Micro-benchmarks of what every cached read does, for whoever changes the hot path next.
//!
//! - `route`: matching a request path against the route table (fixed and parameterised).
//! - `cache_key`: the caller's partition (keyed BLAKE3 of `Authorization`) and the key over
//!   route, parameters, normalised query and generations.
//! - `limiter`: one `requests` limit check for a known caller (governor GCRA, keyed).
//! - `hit`: one GET answered from the cache by the gateway service, over an in-memory duplex
//!   stream with hyper on both ends — the whole hit path without sockets or the kernel — and,
//!   as its ceiling, the same exchange with a bare hyper service answering the same body;
//!   and the gateway alone (`Gateway::handle` called in-process, no HTTP codec at all).
//!
//! `cargo bench --bench hot_path`; under `cargo test` each runs once (criterion's test mode).

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{ALICE, default_class_limits, limits};
use wikigate::Callers;
use wikigate::Gateway;
use wikigate::Parts;
use wikigate::config::Config;
use wikigate::fake::FakeConfluence;
use wikigate::routes::resolve;
use wikigate::server::{ConnInfo, Handler};
use wikigate::{CacheKey, KeySecret, Partition};

const CURRENT: &str = "/wiki/rest/api/user/current";
const QUERY: &str = "expand=operations,personalSpace";

fn authorization() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static(ALICE));
    headers
}

fn route(c: &mut Criterion) {
    c.bench_function("route/fixed", |b| {
        b.iter(|| resolve(black_box(&Method::GET), black_box(CURRENT)))
    });
    c.bench_function("route/parameters", |b| {
        b.iter(|| {
            resolve(
                black_box(&Method::GET),
                black_box("/wiki/rest/api/user/557058:a11ce/property/team-settings"),
            )
        })
    });
}

fn cache_key(c: &mut Criterion) {
    let headers = authorization();
    let secret = [7; 32];
    let resolved = resolve(&Method::GET, CURRENT).expect("a route");
    c.bench_function("cache_key/partition", |b| {
        b.iter(|| Partition::of(black_box(&headers), &secret, None))
    });
    let partition = Partition::of(&headers, &secret, None).expect("a partition");
    let key_secret = KeySecret::derive(&secret);
    for (name, query) in [
        ("cache_key/key", QUERY),
        (
            "cache_key/key, expand out of order",
            "expand=personalSpace,operations",
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                CacheKey::new(
                    &key_secret,
                    partition,
                    &resolved,
                    black_box(Some(query)),
                    &[1, 2, 3],
                )
            })
        });
    }
}

fn limiter(c: &mut Criterion) {
    let limits = limits(&default_class_limits(1_000_000_000, false));
    let gateway_config =
        Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"\n").expect("a config");
    let accounts = wikigate::Accounts::default();
    let callers = Callers::new(&gateway_config, [7; 32], &accounts).expect("callers");
    let caller = callers
        .identify(&authorization(), "127.0.0.1".parse().expect("an address"))
        .expect("a caller");
    c.bench_function("limiter/check", |b| {
        b.iter(|| limits.check_request(black_box(&caller)))
    });
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// A client connection to `handler` over an in-memory duplex stream.
async fn connect<H: Handler>(handler: Arc<H>) -> Sender {
    let conn = ConnInfo {
        peer: "127.0.0.1:40000".parse().expect("an address"),
        tls: false,
    };
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let answer = H::call(&handler, request, conn);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .expect("a client connection");
    tokio::spawn(connection);
    sender
}

/// The ceiling: answers every request with the same body, and nothing else.
struct Bare(Bytes);

impl Handler for Bare {
    fn call(
        bare: &Arc<Bare>,
        _request: Request<hyper::body::Incoming>,
        _conn: ConnInfo,
    ) -> impl Future<Output = http::Response<wikigate::Body>> + Send + use<> {
        let mut response = http::Response::new(wikigate::Body::full(bare.0.clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        std::future::ready(response)
    }
}

fn hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let sender = runtime.block_on(async {
        let fake = FakeConfluence::start_with(wikigate::fake::FakeOptions {
            // What is measured is wikigate; Atlassian's burst buckets would pace its misses.
            bursts: None,
            ..Default::default()
        })
        .await
        .expect("the fake site");
        let config = Config::from_toml(&format!(
            "[upstream]\nurl = \"{}\"\n[log]\nlevel = \"warn\"\n",
            fake.url()
        ))
        .expect("a config");
        let (parts, _) = Parts::build(&config).expect("parts");
        let gateway = Arc::new(Gateway::new(&config, parts).expect("a gateway"));
        // The fake stays up for the whole benchmark: the first request fills the cache.
        std::mem::forget(fake);
        (gateway.clone(), connect(gateway).await)
    });
    let (gateway, mut sender) = sender;
    let request = || {
        Request::get(format!("{CURRENT}?{QUERY}"))
            .header(header::HOST, "wikigate.test")
            .header(header::AUTHORIZATION, ALICE)
            .body(Empty::<Bytes>::new())
            .expect("a request")
    };
    let body = runtime.block_on(async {
        let response = sender.send_request(request()).await.expect("an answer");
        assert!(response.status().is_success());
        response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
    });
    let mut bare = runtime.block_on(connect(Arc::new(Bare(body))));
    c.bench_function("hit/bare hyper service, same body", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    let response = bare.send_request(request()).await.expect("an answer");
                    black_box(response.into_body().collect().await.expect("a body"));
                }
                started.elapsed()
            })
        })
    });
    c.bench_function("hit/in-process", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    let response = sender.send_request(request()).await.expect("an answer");
                    let cache_status = response.headers().get("cache-status").cloned();
                    let body = response.into_body().collect().await.expect("a body");
                    black_box(body);
                    assert_eq!(
                        cache_status.as_ref().map(HeaderValue::as_bytes),
                        Some(&b"wikigate; hit"[..])
                    );
                }
                started.elapsed()
            })
        })
    });
    let conn = ConnInfo {
        peer: "127.0.0.1:40000".parse().expect("an address"),
        tls: false,
    };
    c.bench_function("hit/Gateway::handle, no HTTP", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    let response = gateway.handle(request(), conn).await;
                    assert_eq!(
                        response
                            .headers()
                            .get("cache-status")
                            .map(HeaderValue::as_bytes),
                        Some(&b"wikigate; hit"[..])
                    );
                    black_box(response.into_body().collect().await.expect("a body"));
                }
                started.elapsed()
            })
        })
    });
}

criterion_group!(benches, route, cache_key, limiter, hit);
criterion_main!(benches);
