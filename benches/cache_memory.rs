//! Memory of a full cache, and coalescing under a cold stampede.
//!
//! 1. Fills the cache through the gateway with 100 000 distinct realistic answers: the fake
//!    directory's accounts with `expand=operations,personalSpace` (about 1.2 KB of JSON, from
//!    an upstream that answers like Atlassian's edge: gzip, its cookie, per-request ids), each
//!    asked with its own extra query parameter so that every request is its own entry, by a
//!    client that asks for gzip as HTTP libraries do (`CLIENT=plain`: one that does not;
//!    `ANSWERS=small`: the accounts without `expand`, about 575 bytes, where the fixed cost of
//!    an entry shows most). It reports the growth of resident memory per stored answer and
//!    against the JSON stored.
//! 2. Sends 1 000 concurrent identical GETs for an entry nobody asked for yet and counts the
//!    requests that reached upstream. Target: 1, all 1 000 answered 200.
//!
//! `cargo bench --bench cache_memory`; under `cargo test` it runs with 2 000 entries and 100
//! concurrent requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::future::join_all;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use support::{
    ALICE, CountingAllocator, live_heap_bytes, metric_sum, resident_bytes, return_freed_pages,
};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;
use wikigate::config::Config;
use wikigate::fake::{FakeConfluence, directory_account};
use wikigate::routes::Operation;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Accounts in the fake site's directory.
const DIRECTORY: usize = 5_000;

/// GETs `url` (asking for gzip when `gzip`) and returns the length of its JSON, decoded.
async fn get(client: &HttpClient, url: String, gzip: bool) -> usize {
    let mut request = Request::get(url).header(http::header::AUTHORIZATION, ALICE);
    if gzip {
        request = request.header(http::header::ACCEPT_ENCODING, "gzip, deflate");
    }
    let response = client
        .request(request.body(Empty::new()).expect("a request"))
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
    let coded = response
        .headers()
        .contains_key(http::header::CONTENT_ENCODING);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    match coded {
        true => wikigate::gunzip(&body, 1 << 20).expect("gzip").len(),
        false => body.len(),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let gzip = std::env::var("CLIENT").map_or(true, |c| c != "plain");
    let expand = match std::env::var("ANSWERS").as_deref() {
        Ok("small") => "",
        _ => "&expand=operations,personalSpace",
    };
    let (entries, stampede) = if full { (100_000, 1_000) } else { (2_000, 100) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let fake = FakeConfluence::start_with(wikigate::fake::FakeOptions {
            // What is measured is wikigate; Atlassian's burst buckets would pace its misses.
            bursts: None,
            ..Default::default()
        }).await.expect("the fake site");
        let config = Config::from_toml(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 0\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n[cache]\nmax_bytes = 268435456\n[log]\nlevel = \"warn\"\n",
            fake.url()
        ))
        .expect("a config");
        let gateway = wikigate::start(&config).await.expect("the gateway");
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let base = format!("http://{}/wiki/rest/api/user", gateway.addr);
        let url = move |n: usize, tag: &str| {
            format!(
                "{base}?accountId={}{expand}&{tag}={n}",
                directory_account(n % DIRECTORY)
            )
        };

        // Warm-up: connection pools, the runtime's threads, the allocator's arenas.
        for n in 0..200 {
            get(&client, url(n, "warm"), gzip).await;
        }
        let before = resident_bytes();
        let heap_before = live_heap_bytes();
        let payload = Arc::new(AtomicU64::new(0));
        let workers = 32;
        join_all((0..workers).map(|w| {
            let (client, payload, url) = (client.clone(), payload.clone(), url.clone());
            async move {
                for n in (w..entries).step_by(workers) {
                    let len = get(&client, url(n, "entry"), gzip).await;
                    payload.fetch_add(len as u64, Ordering::Relaxed);
                }
            }
        }))
        .await;
        let admin = gateway.admin_addr.to_string();
        let stats = format!(
            "wikigate_cache_entries {}, wikigate_cache_weighted_bytes {}",
            metric_sum(&admin, "wikigate_cache_entries ").await,
            metric_sum(&admin, "wikigate_cache_weighted_bytes ").await
        );
        let after = resident_bytes();
        // mimalloc returns a thread's freed pages from that thread: a few tasks, which the
        // runtime's idle workers pick up, and the main thread ask for it (no thread is sure
        // to be reached, so this bounds the figure from above).
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let barrier = Arc::new(tokio::sync::Barrier::new(threads));
        join_all((0..threads).map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                return_freed_pages();
                barrier.wait().await;
            })
        }))
        .await;
        return_freed_pages();
        let collected = resident_bytes();
        let heap = live_heap_bytes().saturating_sub(heap_before);
        let payload = payload.load(Ordering::Relaxed);
        let grown = after.saturating_sub(before);
        let client_kind = if gzip { "gzip" } else { "plain" };
        println!(
            "{entries} cached answers for a {client_kind} client, {:.0} bytes of JSON on average",
            payload as f64 / entries as f64
        );
        println!("  JSON stored               {:>8.1} MiB", payload as f64 / 1048576.0);
        let retained = collected.saturating_sub(before);
        for (what, bytes) in [
            ("live heap growth", heap),
            ("resident growth", grown),
            ("resident, freed returned", retained),
        ] {
            println!(
                "  {what:<26}{:>8.1} MiB  ({:.0} bytes per stored answer, {:.2}× the JSON)",
                bytes as f64 / 1048576.0,
                bytes as f64 / entries as f64,
                bytes as f64 / payload as f64
            );
        }
        println!("  cache's own               {stats}");

        // A stampede on a key nobody asked for: one fetch, everyone answered.
        let upstream_before = fake.hits(Operation::GetUser);
        let answered = join_all((0..stampede).map(|_| get(&client, url(0, "cold"), gzip)))
            .await
            .len();
        let upstream = fake.hits(Operation::GetUser) - upstream_before;
        println!("{stampede} concurrent cold identical GETs: {answered} answered, {upstream} upstream request(s)");
        assert_eq!(upstream, 1, "the stampede was not coalesced");
        gateway.stop().await;
    });
}
