//! A compressed hour of Atlassian's points quota: interactive services and batch jobs that
//! together ask for twice what the site may spend, through wikigate with its quota features
//! off and on.
//!
//! The fake site enforces an hourly points quota (36 000 points: 10 a second) and answers
//! 429 with `RateLimit-Reason` once it is spent. Over one UTC hour, every second:
//! - four interactive services (class `interactive`) each read a user — 80 % from 50 hot
//!   accounts, 20 % from 1 000 others — 3 points upstream on a miss, nothing on a hit;
//! - one batch job (class `batch`) looks up a page of 20 directory accounts every 4 s that no
//!   one read before (41 points each, 10.25 a second).
//!
//! Asked for uncached, that is ~22 points a second: twice the quota. "Direct" sends the same
//! requests straight to the site; "off" runs wikigate with its defaults (one priority, no
//! reserve, no stale answers on low quota); "on" gives the
//! interactive class priority over batch with a reserve of 25 %, a batch points budget of
//! 30 000 an hour, and `stale_on_low_quota = 1h` on the user route. The run is on tokio's
//! paused clock over real loopback sockets: an hour takes a few seconds.
//!
//! `cargo bench --bench quota_simulation` runs the hour; under `cargo test`, ten minutes of it.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use wikigate::config::{KeyHash, RawConfig};
use wikigate::fake::{
    DEMO_USERS, FakeConfluence, FakeOptions, FakeQuota, QuotaMode, directory_account,
};
use wikigate::quota;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const QUOTA: u64 = 36_000;
const INTERACTIVE: [&str; 4] = [
    "ui-1-key-0123456789",
    "ui-2-key-0123456789",
    "ui-3-key-0123456789",
    "ui-4-key-0123456789",
];
const BATCH: &str = "batch-key-0123456789";

/// What one run came to.
#[derive(Debug, Default)]
struct Figures {
    interactive: u64,
    interactive_ok: u64,
    batch: u64,
    batch_refused: u64,
    upstream_429: u64,
    stale: u64,
    spent: u64,
    saved: u64,
}

fn config(upstream: &str, features: bool) -> RawConfig {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{upstream}\"\n[log]\nlevel = \"error\"\n"
    );
    for (i, key) in INTERACTIVE.iter().enumerate() {
        toml += &format!(
            "[[callers.clients]]\nname = \"ui-{i}\"\nclass = \"interactive\"\nkey_hash = \"{}\"\n",
            KeyHash::of(key)
        );
    }
    toml += &format!(
        "[[callers.clients]]\nname = \"batch\"\nclass = \"batch\"\nkey_hash = \"{}\"\n",
        KeyHash::of(BATCH)
    );
    if features {
        toml += "[limits.classes.default]\n[limits.classes.interactive]\npriority = 10\n\
                 [limits.classes.batch]\npriority = 0\npoints = { per_hour = 30000 }\n\
                 [quota]\nreserve = 0.25\n\
                 [cache.routes]\nuser = { ttl = \"5m\", stale_on_low_quota = \"1h\" }\n";
    } else {
        toml += "[limits.classes.default]\n[limits.classes.interactive]\n[limits.classes.batch]\n\
                 [quota]\nreserve = 0.0\n";
    }
    RawConfig::from_toml(&toml).expect("a valid config")
}

/// A deterministic stream of fractions in [0, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

async fn get(client: &HttpClient, url: String, key: &str, auth: &str) -> (StatusCode, String) {
    let request = Request::get(url)
        .header("authorization", auth)
        .header("x-wikigate-key", key)
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let response = client.request(request).await.expect("an answer");
    let status = response.status();
    let cache = response
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    response.into_body().collect().await.expect("a body");
    (status, cache)
}

/// How the callers reach the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Off,
    On,
}

async fn run(path: Path, seconds: u64) -> Figures {
    let fake = FakeConfluence::start_with(FakeOptions {
        quota: Some(FakeQuota {
            points: QUOTA,
            window: quota::HOUR,
            mode: QuotaMode::Enforced,
            quirks: false,
        }),
        ..FakeOptions::default()
    })
    .await
    .expect("the fake starts");
    let gateway = match path {
        Path::Direct => None,
        Path::Off | Path::On => {
            let config = config(&fake.url(), path == Path::On)
                .validate()
                .expect("a valid config");
            let started = wikigate::lifecycle::start(&config).await;
            Some(started.expect("the gateway starts"))
        }
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let origin = gateway
        .as_ref()
        .map_or_else(|| fake.url(), |g| format!("http://{}", g.addr));
    let basic = |n: usize| {
        let user = DEMO_USERS[n];
        let pair = format!("{}:{}", user.email, user.api_token);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    let (services, jobs) = (basic(0), basic(1));
    // The hour starts at the top of a UTC hour, as Atlassian's quota window does.
    let (_, left) = quota::hour(tokio::time::Instant::now());
    tokio::time::sleep(left).await;

    let mut figures = Figures::default();
    let mut random = Lcg(42);
    let mut next_account = 1_000;
    for second in 0..seconds {
        let tick = tokio::time::Instant::now();
        for key in INTERACTIVE {
            let account = if random.next() < 0.8 {
                (random.next() * 50.0) as usize
            } else {
                50 + (random.next() * 1_000.0) as usize
            };
            let url = format!(
                "{origin}/wiki/rest/api/user?accountId={}",
                directory_account(account)
            );
            let (status, cache) = get(&client, url, key, &services).await;
            figures.interactive += 1;
            figures.interactive_ok += u64::from(status == StatusCode::OK);
            figures.stale += u64::from(cache.contains("detail=quota"));
        }
        if second % 4 == 0 {
            let ids: Vec<String> = (next_account..next_account + 20)
                .map(|n| directory_account(n % wikigate::fake::DIRECTORY_SIZE))
                .collect();
            next_account += 20;
            let url = format!(
                "{origin}/wiki/rest/api/user/bulk?accountId={}",
                ids.join(",")
            );
            let (status, _) = get(&client, url, BATCH, &jobs).await;
            figures.batch += 1;
            figures.batch_refused += u64::from(status == StatusCode::TOO_MANY_REQUESTS);
        }
        tokio::time::sleep_until(tick + Duration::from_secs(1)).await;
    }
    let (spent, upstream_429) = fake.quota_totals();
    figures.spent = spent;
    figures.upstream_429 = upstream_429;
    if let Some(gateway) = gateway {
        figures.saved = saved_points(&gateway.admin_addr.to_string(), &client).await;
        gateway.stop().await;
    }
    figures
}

/// The sum of `wikigate_quota_points_saved_total` over every caller and route.
async fn saved_points(admin: &str, client: &HttpClient) -> u64 {
    let request = Request::get(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let response = client.request(request).await.expect("an answer");
    let text = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|line| line.starts_with("wikigate_quota_points_saved_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let seconds = if full { 3600 } else { 600 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let started = std::time::Instant::now();
    let direct = runtime.block_on(run(Path::Direct, seconds));
    let off = runtime.block_on(run(Path::Off, seconds));
    let on = runtime.block_on(run(Path::On, seconds));
    println!(
        "{seconds} s of simulated time (quota {QUOTA} points/h, demand ~2×), {:.1} s of real time",
        started.elapsed().as_secs_f64()
    );
    println!(
        "| | direct to the site | wikigate, quota features off | wikigate, quota features on |"
    );
    println!("|---|---|---|---|");
    let pct = |ok: u64, all: u64| 100.0 * ok as f64 / all.max(1) as f64;
    let row = |name: &str, cell: &dyn Fn(&Figures) -> String| {
        println!(
            "| {name} | {} | {} | {} |",
            cell(&direct),
            cell(&off),
            cell(&on)
        );
    };
    row("upstream 429s", &|f| f.upstream_429.to_string());
    row("interactive success", &|f| {
        format!(
            "{:.2} % of {}",
            pct(f.interactive_ok, f.interactive),
            f.interactive
        )
    });
    row("batch refused (429)", &|f| {
        format!("{} of {}", f.batch_refused, f.batch)
    });
    row("reads served stale (low quota)", &|f| f.stale.to_string());
    row("points spent", &|f| f.spent.to_string());
    row("points saved", &|f| f.saved.to_string());
    row("quota left unspent", &|f| {
        QUOTA.saturating_sub(f.spent).to_string()
    });
    if full {
        assert_eq!(
            on.upstream_429, 0,
            "with the quota features, Confluence never refuses"
        );
        assert!(
            pct(on.interactive_ok, on.interactive) >= 99.0,
            "interactive services keep working"
        );
    }
}
