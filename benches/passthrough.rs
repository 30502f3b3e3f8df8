//! The pass-through (miss) path: latency wikigate adds over a direct request to the upstream,
//! and concurrent throughput, both against the in-process fake Confluence site on loopback.
//!
//! `cargo bench --bench passthrough` runs the full measurement (about 15 s);
//! under `cargo test` it runs a short smoke pass so that it cannot rot.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
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
        let fake = FakeConfluence::start().await.unwrap();
        let config = Config::from_toml(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
            fake.url()
        ))
        .unwrap();
        let gateway = wikigate::lifecycle::start(&config).await.unwrap();
        let user = DEMO_USERS[0];
        let auth = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.email, user.api_token))
        );
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let direct = fake.url();
        let via = format!("http://{}", gateway.addr);

        // Warm both paths (connection pools, allocator).
        for _ in 0..200.min(sequential) {
            get(&client, &direct, &auth).await;
            get(&client, &via, &auth).await;
        }
        // Interleave the two so that machine noise hits both alike.
        let (mut d, mut g) = (Vec::with_capacity(sequential), Vec::with_capacity(sequential));
        for _ in 0..sequential {
            d.push(get(&client, &direct, &auth).await);
            g.push(get(&client, &via, &auth).await);
        }
        let (d, g) = (percentiles(&mut d), percentiles(&mut g));
        println!("sequential GET {TARGET}, {sequential} requests each, keep-alive, loopback");
        println!("  direct to upstream   p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs", d.0, d.1, d.2);
        println!("  through wikigate     p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs", g.0, g.1, g.2);
        println!("  added by wikigate    p50 {:>7.1} µs  p99 {:>7.1} µs", g.0 - d.0, g.2 - d.2);

        for (name, origin) in [("direct", &direct), ("wikigate", &via)] {
            let rate = throughput(&client, origin, &auth, 32, concurrent_for).await;
            println!("  32 concurrent, {name:<9} {rate:>8.0} req/s");
        }
    });
}

async fn get(client: &HttpClient, origin: &str, auth: &str) -> f64 {
    let request = Request::get(format!("{origin}{TARGET}"))
        .header("authorization", auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    started.elapsed().as_secs_f64() * 1e6
}

/// p50, p90, p99 in microseconds.
fn percentiles(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
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
                    get(&client, &origin, &auth).await;
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
