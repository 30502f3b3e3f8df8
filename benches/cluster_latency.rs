//! What a Redis L2 hit costs over an L1 hit: two replicas sharing a redis-server on loopback.
//! Replica A fills an entry; replica B reads it twice — the first read is an L2 hit (Redis),
//! the second an L1 hit (memory). Needs Debian's `redis-server` (scripts/test installs it).
//! `cargo bench --bench cluster_latency`; under `cargo test`, 50 rounds.

#[path = "../tests/shared/redis.rs"]
mod redis;
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis::Redis;
use support::percentile;
use wikigate::config::{RawConfig, Secret};
use wikigate::fake::{DEMO_USERS, FakeConfluence};

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn get(client: &HttpClient, url: &str, auth: &str) -> (f64, String) {
    let request = Request::get(url)
        .header("authorization", auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    let status = response
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    response.into_body().collect().await.unwrap();
    (started.elapsed().as_secs_f64() * 1e6, status)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 3_000 } else { 50 };
    let redis = Redis::start();
    let redis_url = redis.url();
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
        let replica = || {
            let mut config = RawConfig::from_toml(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
                fake.url()
            ))
            .unwrap();
            config.cache.key_secret = Some(Secret::new("bench-replicas-share-this"));
            config.cluster.redis_url = Some(redis_url.clone());
            config.cluster.replicas = 2;
            config.validate().unwrap()
        };
        let a = wikigate::start(&replica()).await.unwrap();
        let b = wikigate::start(&replica()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1200)).await; // both connect to Redis
        let user = DEMO_USERS[0];
        let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", user.email, user.api_token)));
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let (mut l2, mut l1) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        for round in 0..rounds + 50 {
            let target = format!("/wiki/rest/api/user?accountId={}&round={round}", user.account_id);
            get(&client, &format!("http://{}{target}", a.addr), &auth).await;
            let (t2, s2) = get(&client, &format!("http://{}{target}", b.addr), &auth).await;
            let (t1, s1) = get(&client, &format!("http://{}{target}", b.addr), &auth).await;
            assert_eq!((s2.as_str(), s1.as_str()), ("wikigate; hit; detail=l2", "wikigate; hit"));
            if round >= 50 {
                l2.push(t2);
                l1.push(t1);
            }
        }
        let (l2_50, l2_99) = (percentile(&mut l2, 0.5), percentile(&mut l2, 0.99));
        let (l1_50, l1_99) = (percentile(&mut l1, 0.5), percentile(&mut l1, 0.99));
        println!("{rounds} rounds, sequential, loopback Redis");
        println!("  L1 hit  p50 {l1_50:>7.1} µs  p99 {l1_99:>7.1} µs");
        println!("  L2 hit  p50 {l2_50:>7.1} µs  p99 {l2_99:>7.1} µs");
        println!("  an L2 hit costs {:.1} µs more at p50, {:.1} µs at p99", l2_50 - l1_50, l2_99 - l1_99);
    });
    drop(redis);
}
