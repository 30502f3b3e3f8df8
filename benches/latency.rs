//! Latency of the three paths a read can take, against the in-process fake Confluence site on
//! loopback (answering like Atlassian's edge): straight to the upstream, through wikigate on a
//! miss (`Cache-Control: no-store` forces the fetch every time), and through wikigate on a
//! cache hit, by a client that asks for gzip as HTTP libraries do (so the upstream does the
//! same work on both the direct path and the miss). Also concurrent throughput of the direct
//! and the hit path.
//!
//! `cargo bench --bench latency` runs the full measurement (about 20 s);
//! under `cargo test` it runs a short smoke pass so that it cannot rot.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use support::percentile;
use wikigate::config::Config;
use wikigate::fake::{DEMO_USERS, FakeConfluence};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const TARGET: &str = "/wiki/rest/api/user/current";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sequential, concurrent_for) = if full {
        (5_000, Duration::from_secs(5))
    } else {
        (50, Duration::from_millis(200))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let fake = FakeConfluence::start_with(wikigate::fake::FakeOptions {
            // What is measured is wikigate; Atlassian's burst buckets would pace its misses.
            bursts: None,
            ..Default::default()
        }).await.unwrap();
        let config = Config::from_toml(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
            fake.url()
        ))
        .unwrap();
        let gateway = wikigate::start(&config).await.unwrap();
        let user = DEMO_USERS[0];
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.email, user.api_token))
        );
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let direct = fake.url();
        let via = format!("http://{}", gateway.addr);

        let modes = [(&direct, None), (&via, Some("no-store")), (&via, None)];
        // Warm every path (connection pools, allocator, the cache entry).
        for _ in 0..200.min(sequential) {
            for (origin, directive) in modes {
                get(&client, origin, &auth, directive).await;
            }
        }
        // Interleave the paths so that machine noise hits all alike.
        let mut samples = [(); 3].map(|_| Vec::with_capacity(sequential));
        for _ in 0..sequential {
            for (i, (origin, directive)) in modes.iter().enumerate() {
                samples[i].push(get(&client, origin, &auth, *directive).await);
            }
        }
        let [d, m, h] = samples.map(|mut s| percentiles(&mut s));
        println!("sequential GET {TARGET}, {sequential} requests per path, keep-alive, loopback");
        println!("  direct to upstream   p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs", d.0, d.1, d.2);
        println!("  wikigate, miss       p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs", m.0, m.1, m.2);
        println!("  wikigate, hit        p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs", h.0, h.1, h.2);
        println!("  added on a miss      p50 {:>7.1} µs  p99 {:>7.1} µs", m.0 - d.0, m.2 - d.2);

        for (name, origin) in [("direct", &direct), ("wikigate hit", &via)] {
            let rate = throughput(&client, origin, &auth, 32, concurrent_for).await;
            println!("  32 concurrent, {name:<13} {rate:>8.0} req/s");
        }
    });
}

async fn get(client: &HttpClient, origin: &str, auth: &str, cache_control: Option<&str>) -> f64 {
    let mut request = Request::get(format!("{origin}{TARGET}"))
        .header("authorization", auth)
        .header("accept-encoding", "gzip, deflate")
        .body(Full::new(Bytes::new()))
        .unwrap();
    if let Some(directive) = cache_control {
        request
            .headers_mut()
            .insert("cache-control", directive.parse().unwrap());
    }
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    started.elapsed().as_secs_f64() * 1e6
}

/// p50, p90, p99 in microseconds.
fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    let mut at = |q| percentile(samples, q);
    (at(0.50), at(0.90), at(0.99))
}

async fn throughput(
    client: &HttpClient,
    origin: &str,
    auth: &str,
    tasks: usize,
    run_for: Duration,
) -> f64 {
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (client, origin, auth) = (client.clone(), origin.to_owned(), auth.to_owned());
            tokio::spawn(async move {
                let mut done = 0u64;
                while started.elapsed() < run_for {
                    get(&client, &origin, &auth, None).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total as f64 / started.elapsed().as_secs_f64()
}
