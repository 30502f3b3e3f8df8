//! Quota saved by answering bulk lookups account by account.
//!
//! Replays the same bulk-heavy workload twice against the fake Confluence site — 10 000
//! `/user/bulk` lookups of 1–50 accounts drawn from a Zipf distribution (s = 1) over 5 000
//! accounts — once with whole-answer caching only and once with the per-account cache, and
//! reports the upstream requests and user objects each needed.
//! `cargo bench --bench bulk_workload`; under `cargo test`, 300 lookups.

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use wikigate::config::RawConfig;
use wikigate::fake::{DEMO_USERS, DIRECTORY_SIZE, FakeConfluence, directory_account};
use wikigate::routes::Operation;

/// Deterministic xorshift, so both runs replay the same workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The workload: lists of account indexes.
fn workload(lookups: usize) -> Vec<Vec<usize>> {
    let weights: Vec<f64> = (1..=DIRECTORY_SIZE).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(DIRECTORY_SIZE);
    let mut acc = 0.0;
    for w in weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    (0..lookups)
        .map(|_| {
            let n = 1 + (rng.next() % 50) as usize;
            (0..n)
                .map(|_| {
                    let u = rng.unit();
                    cdf.partition_point(|c| *c < u).min(DIRECTORY_SIZE - 1)
                })
                .collect()
        })
        .collect()
}

struct Outcome {
    requests: u64,
    objects: u64,
    seconds: f64,
}

async fn replay(lists: &[Vec<usize>], per_account: bool) -> Outcome {
    let fake = FakeConfluence::start_with(wikigate::fake::FakeOptions {
        // What is measured is wikigate; Atlassian's burst buckets would pace its misses.
        bursts: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = RawConfig::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
        fake.url()
    ))
    .unwrap();
    config.cache.bulk_entities = per_account;
    let config = config.validate().unwrap();
    let gateway = wikigate::start(&config).await.unwrap();
    let user = DEMO_USERS[0];
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", user.email, user.api_token))
    );
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = std::time::Instant::now();
    for list in lists {
        let ids: Vec<String> = list.iter().map(|i| directory_account(*i)).collect();
        let uri = format!(
            "http://{}/wiki/rest/api/user/bulk?accountId={}",
            gateway.addr,
            ids.join(",")
        );
        let request = Request::get(uri)
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    gateway.stop().await;
    Outcome {
        requests: fake.hits(Operation::GetBulkUserLookup),
        objects: fake.bulk_objects(),
        seconds,
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let lists = workload(if full { 10_000 } else { 300 });
    let asked: usize = lists.iter().map(Vec::len).sum();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let whole = runtime.block_on(replay(&lists, false));
    let per_account = runtime.block_on(replay(&lists, true));
    println!(
        "{} bulk lookups of 1-50 accounts (Zipf s=1 over {DIRECTORY_SIZE}), {asked} account ids in all",
        lists.len()
    );
    for (name, o) in [
        ("whole-answer cache", &whole),
        ("per-account cache", &per_account),
    ] {
        println!(
            "  {name:<19} upstream requests {:>6}   user objects fetched {:>7}   ({:.1} s)",
            o.requests, o.objects, o.seconds
        );
    }
    println!(
        "  per-account cache fetched {:.1} % of the user objects and made {:.1} % of the requests",
        per_account.objects as f64 * 100.0 / whole.objects.max(1) as f64,
        per_account.requests as f64 * 100.0 / whole.requests.max(1) as f64
    );
    assert!(per_account.objects <= whole.objects);
}
