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
//! Then a minute of API-token traffic against Atlassian's per-second burst buckets: four
//! services ask `GET /user/current` (each read a miss) for three times its bucket's rate (10 a
//! second), while a fifth reads another endpoint once a second. "Direct" sends them straight to
//! the site; through wikigate, calls are paced by the bucket its answers state. Reported: upstream
//! 429s (the target through wikigate: 0), 429s the clients saw, the p99 wait wikigate added,
//! and whether the other endpoint kept answering.
//!
//! Then account lookups, direct, through wikigate as a perfect URL cache (`cache.merge.routes =
//! []`) and through wikigate at its defaults (single lookups answered from per-account objects
//! and merged into bulk calls): a minute of four services looking up distinct accounts one at a
//! time at three times a burst bucket's rate (API tokens), and a minute of an OAuth app's page
//! renders, 20–50 accounts a page looked up at once, under the points quota.
//!
//! `cargo bench --bench quota_simulation` runs the hour and the minutes; under `cargo test`, ten
//! minutes of the hour, the burst minute, and 20 s of each account run.

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

mod support;

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
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 0\n[admin]\nlisten = \"127.0.0.1:0\"\n\
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
    let hourly = FakeQuota {
        points: QUOTA,
        mode: QuotaMode::Enforced,
        ..FakeQuota::default()
    };
    let fake = FakeConfluence::start_with(FakeOptions {
        quota: Some(hourly),
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
            let started = wikigate::start(&config).await;
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
    tokio::time::sleep(hourly.until_next_window()).await;

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
        let admin = gateway.admin_addr.to_string();
        figures.saved = support::metric_sum(&admin, "wikigate_quota_points_saved_total{").await;
        gateway.stop().await;
    }
    figures
}

/// What a minute of burst traffic came to.
#[derive(Debug, Default)]
struct Burst {
    asked: u64,
    ok: u64,
    /// 429s the services saw: upstream's (direct), or wikigate's past `burst_wait`.
    refused: u64,
    upstream_429: u64,
    /// Every answered call's time from asking to its answer, on the paused clock (what
    /// pacing added: loopback takes no virtual time).
    waits: Vec<Duration>,
    other_ok: u64,
    other: u64,
}

impl Burst {
    /// Counts one call of the measured endpoint: answered (after `took`), refused, or neither.
    fn answered(&mut self, status: StatusCode, took: Duration) {
        self.asked += 1;
        match status {
            StatusCode::OK => {
                self.ok += 1;
                self.waits.push(took);
            }
            StatusCode::TOO_MANY_REQUESTS => self.refused += 1,
            _ => {}
        }
    }
}

/// The bucket of the simulated site's endpoints: 10 calls a second.
const BUCKET: u32 = 10;

async fn burst_run(through_wikigate: bool, seconds: u64) -> Burst {
    let fake = FakeConfluence::start_with(FakeOptions {
        quota: None,
        bursts: Some(wikigate::fake::FakeBursts::new(BUCKET, BUCKET)),
        ..FakeOptions::default()
    })
    .await
    .expect("the fake starts");
    let gateway = match through_wikigate {
        false => None,
        true => {
            let config = config(&fake.url(), false)
                .validate()
                .expect("a valid config");
            Some(wikigate::start(&config).await.expect("starts"))
        }
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let origin = gateway
        .as_ref()
        .map_or_else(|| fake.url(), |g| format!("http://{}", g.addr));
    let user = DEMO_USERS[0];
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", user.email, user.api_token))
    );
    let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
    // 3× the bucket: 30 a second from four services, spread evenly.
    let every = Duration::from_secs(1) / (3 * BUCKET);
    let started = tokio::time::Instant::now();
    let mut n = 0u64;
    let ask = |url: String, key: &'static str, other: bool| {
        let (client, auth, sender) = (client.clone(), auth.clone(), sender.clone());
        tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            let (status, _) = get(&client, url, key, &auth).await;
            let _ = sender.send((other, status, asked.elapsed()));
        });
    };
    while started.elapsed() < Duration::from_secs(seconds) {
        let key = INTERACTIVE[(n % 4) as usize];
        ask(
            format!("{origin}/wiki/rest/api/user/current?n={n}"),
            key,
            false,
        );
        if n.is_multiple_of(u64::from(3 * BUCKET)) {
            let account = directory_account(0);
            let url = format!("{origin}/wiki/rest/api/user/memberof?accountId={account}");
            ask(url, BATCH, true);
        }
        n += 1;
        tokio::time::sleep_until(started + every * u32::try_from(n).unwrap_or(u32::MAX)).await;
    }
    drop(sender);
    let mut burst = Burst::default();
    while let Some((other, status, took)) = results.recv().await {
        if other {
            burst.other += 1;
            burst.other_ok += u64::from(status == StatusCode::OK);
            continue;
        }
        burst.answered(status, took);
    }
    burst.upstream_429 = fake.limit_refusals();
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    burst
}

fn burst_table(direct: &Burst, through: &mut Burst, seconds: u64) {
    println!();
    println!(
        "{seconds} s of API-token traffic at 3× a {BUCKET}/s burst bucket on one endpoint, 1/s on another"
    );
    println!("| | direct to the site | through wikigate |");
    println!("|---|---|---|");
    through.waits.sort();
    let p99 = through
        .waits
        .get(through.waits.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default();
    let rows: [(&str, String, String); 5] = [
        (
            "upstream 429s",
            direct.upstream_429.to_string(),
            through.upstream_429.to_string(),
        ),
        (
            "answered 200",
            format!("{} of {}", direct.ok, direct.asked),
            format!("{} of {}", through.ok, through.asked),
        ),
        (
            "429s the services saw",
            direct.refused.to_string(),
            through.refused.to_string(),
        ),
        (
            "p99 wait added (answered calls)",
            "0 ms".to_owned(),
            format!("{} ms", p99.as_millis()),
        ),
        (
            "the other endpoint answered",
            format!("{} of {}", direct.other_ok, direct.other),
            format!("{} of {}", through.other_ok, through.other),
        ),
    ];
    for (name, direct, through) in rows {
        println!("| {name} | {direct} | {through} |");
    }
}

/// How account lookups reach the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookups {
    Direct,
    /// wikigate with `cache.merge.routes = []`: a perfect URL cache, one call per miss.
    UrlCache,
    /// wikigate at its defaults: lookups answered from per-account objects, merged.
    Merged,
}

impl Lookups {
    const ALL: [Lookups; 3] = [Lookups::Direct, Lookups::UrlCache, Lookups::Merged];

    fn name(self) -> &'static str {
        match self {
            Lookups::Direct => "direct to the site",
            Lookups::UrlCache => "wikigate, merging off (a URL cache)",
            Lookups::Merged => "wikigate, merging on (the default)",
        }
    }
}

/// The fake and, unless direct, wikigate in front of it; the base URL to ask.
async fn lookup_site(
    path: Lookups,
    options: FakeOptions,
) -> (FakeConfluence, Option<wikigate::Running>, String) {
    let fake = FakeConfluence::start_with(options)
        .await
        .expect("the fake starts");
    let gateway = match path {
        Lookups::Direct => None,
        Lookups::UrlCache | Lookups::Merged => {
            let mut config = config(&fake.url(), false);
            if path == Lookups::UrlCache {
                config.cache.merge.routes.clear();
            }
            let config = config.validate().expect("a valid config");
            Some(wikigate::start(&config).await.expect("starts"))
        }
    };
    let origin = gateway
        .as_ref()
        .map_or_else(|| fake.url(), |g| format!("http://{}", g.addr));
    (fake, gateway, origin)
}

/// Four services of one credential (a service account) look up distinct accounts one at a
/// time, at three times the rate of the site's burst bucket (10 tokens, 10 a second, per
/// endpoint), with no points quota (API tokens): each lookup a miss.
async fn distinct_lookups(path: Lookups, seconds: u64) -> Burst {
    let (fake, gateway, origin) = lookup_site(
        path,
        FakeOptions {
            quota: None,
            bursts: Some(wikigate::fake::FakeBursts::new(BUCKET, BUCKET)),
            ..FakeOptions::default()
        },
    )
    .await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let auth = support::ALICE.to_owned();
    let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
    let every = Duration::from_secs(1) / (3 * BUCKET);
    let started = tokio::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let key = INTERACTIVE[(n % 4) as usize];
        let account = directory_account(n as usize % wikigate::fake::DIRECTORY_SIZE);
        let url = format!("{origin}/wiki/rest/api/user?accountId={account}");
        let (client, auth, sender) = (client.clone(), auth.clone(), sender.clone());
        tokio::spawn(async move {
            let asked = tokio::time::Instant::now();
            let (status, _) = get(&client, url, key, &auth).await;
            let _ = sender.send((status, asked.elapsed()));
        });
        n += 1;
        tokio::time::sleep_until(started + every * u32::try_from(n).unwrap_or(u32::MAX)).await;
    }
    drop(sender);
    let mut burst = Burst::default();
    while let Some((status, took)) = results.recv().await {
        burst.answered(status, took);
    }
    burst.upstream_429 = fake.limit_refusals();
    burst.other = fake.requests();
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    burst
}

/// What page renders of an OAuth app (its answers carry a points policy) came to.
#[derive(Debug, Default)]
struct Renders {
    lookups: u64,
    ok: u64,
    /// Points the site charged.
    spent: u64,
    calls: u64,
    /// Every lookup's time from asking to its answer, on the paused clock.
    took: Vec<Duration>,
}

/// Every 250 ms a page renders, naming 20 to 50 accounts drawn from 2 000 (a few hot, most
/// not), all looked up at once, one lookup each.
async fn page_renders(path: Lookups, seconds: u64) -> Renders {
    let (fake, gateway, origin) = lookup_site(path, FakeOptions::default()).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let auth = support::ALICE.to_owned();
    let mut random = Lcg(7);
    let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
    let started = tokio::time::Instant::now();
    let mut page = 0u32;
    while started.elapsed() < Duration::from_secs(seconds) {
        let names = 20 + (random.next() * 31.0) as usize;
        for _ in 0..names {
            // A third of the names from 50 hot accounts, the rest from 2 000.
            let account = match random.next() < 0.33 {
                true => (random.next() * 50.0) as usize,
                false => (random.next() * 2_000.0) as usize,
            };
            let url = format!(
                "{origin}/wiki/rest/api/user?accountId={}",
                directory_account(account)
            );
            let (client, auth, sender) = (client.clone(), auth.clone(), sender.clone());
            tokio::spawn(async move {
                let asked = tokio::time::Instant::now();
                let (status, _) = get(&client, url, INTERACTIVE[0], &auth).await;
                let _ = sender.send((status, asked.elapsed()));
            });
        }
        page += 1;
        tokio::time::sleep_until(started + Duration::from_millis(250) * page).await;
    }
    drop(sender);
    let mut renders = Renders::default();
    while let Some((status, took)) = results.recv().await {
        renders.lookups += 1;
        renders.ok += u64::from(status == StatusCode::OK);
        renders.took.push(took);
    }
    renders.took.sort();
    renders.spent = fake.quota_totals().0;
    renders.calls = fake.requests();
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    renders
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted
        .get(sorted.len().saturating_sub(1) * p / 100)
        .copied()
        .unwrap_or_default()
}

/// Account lookups: distinct ones under a burst bucket, and page renders under the points
/// quota, direct, through a URL cache, and merged. Returns (distinct, renders) through the
/// default gateway, and the renders' one-by-one and URL-cache spend, for the checks.
fn account_lookups(
    runtime: &tokio::runtime::Runtime,
    seconds: u64,
) -> (Burst, Renders, Renders, Renders) {
    let mut distinct: Vec<Burst> = Lookups::ALL
        .iter()
        .map(|path| runtime.block_on(distinct_lookups(*path, seconds)))
        .collect();
    println!();
    println!(
        "{seconds} s of distinct single account lookups (API tokens) at 3× a {BUCKET}/s burst bucket"
    );
    println!(
        "| | {} | {} | {} |",
        Lookups::ALL[0].name(),
        Lookups::ALL[1].name(),
        Lookups::ALL[2].name()
    );
    println!("|---|---|---|---|");
    for burst in &mut distinct {
        burst.waits.sort();
    }
    let row = |name: &str, cell: &dyn Fn(&Burst) -> String| {
        let cells: Vec<String> = distinct.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("answered 200", &|b| {
        format!(
            "{} of {} ({:.1} %)",
            b.ok,
            b.asked,
            100.0 * b.ok as f64 / b.asked.max(1) as f64
        )
    });
    row("upstream calls", &|b| b.other.to_string());
    row("upstream 429s", &|b| b.upstream_429.to_string());
    row("429s the services saw", &|b| b.refused.to_string());
    row("p99 wait (answered)", &|b| {
        format!("{} ms", percentile(&b.waits, 99).as_millis())
    });

    let renders: Vec<Renders> = Lookups::ALL
        .iter()
        .map(|path| runtime.block_on(page_renders(*path, seconds)))
        .collect();
    println!();
    println!("{seconds} s of page renders (an OAuth app: 20–50 accounts a page, 4 pages a second)");
    println!(
        "| | {} | {} | {} |",
        Lookups::ALL[0].name(),
        Lookups::ALL[1].name(),
        Lookups::ALL[2].name()
    );
    println!("|---|---|---|---|");
    let row = |name: &str, cell: &dyn Fn(&Renders) -> String| {
        let cells: Vec<String> = renders.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("lookups answered 200", &|r| {
        format!("{} of {}", r.ok, r.lookups)
    });
    row("upstream calls", &|r| r.calls.to_string());
    row("points spent", &|r| r.spent.to_string());
    row("points ÷ one call per lookup", &|r| {
        format!("{:.2}", r.spent as f64 / (3 * r.lookups.max(1)) as f64)
    });
    row("median time to answer", &|r| {
        format!("{:.1} ms", percentile(&r.took, 50).as_secs_f64() * 1e3)
    });
    row("p99 time to answer", &|r| {
        format!("{:.1} ms", percentile(&r.took, 99).as_secs_f64() * 1e3)
    });
    let mut distinct = distinct.into_iter();
    let mut renders = renders.into_iter();
    let (_, _, merged) = (distinct.next(), distinct.next(), distinct.next());
    let (direct, url_cache, merged_renders) = (renders.next(), renders.next(), renders.next());
    (
        merged.expect("three runs"),
        direct.expect("three runs"),
        url_cache.expect("three runs"),
        merged_renders.expect("three runs"),
    )
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
    let burst_seconds = 60;
    let burst_direct = runtime.block_on(burst_run(false, burst_seconds));
    let mut burst_through = runtime.block_on(burst_run(true, burst_seconds));
    burst_table(&burst_direct, &mut burst_through, burst_seconds);
    assert_eq!(
        burst_through.upstream_429, 0,
        "paced by its bucket, no call collects a 429"
    );
    assert_eq!(
        burst_through.other_ok, burst_through.other,
        "the other endpoint kept answering"
    );
    assert!(
        burst_through
            .waits
            .iter()
            .all(|wait| *wait <= Duration::from_millis(2_100)),
        "no answered call waited past burst_wait"
    );
    let lookup_seconds = if full { 60 } else { 20 };
    let (distinct, direct_renders, url_cache, merged) = account_lookups(&runtime, lookup_seconds);
    assert_eq!(
        distinct.upstream_429, 0,
        "merged lookups collect no upstream 429"
    );
    assert!(
        distinct.ok * 100 >= distinct.asked * 99,
        "at least 99 % of distinct lookups answered: {} of {}",
        distinct.ok,
        distinct.asked
    );
    assert!(
        percentile(&distinct.waits, 99) <= Duration::from_millis(2_100),
        "p99 added wait within burst_wait"
    );
    assert!(
        merged.spent * 100 <= direct_renders.lookups * 3 * 70,
        "points ≤ 0.70 × one call per lookup"
    );
    assert!(
        merged.spent < url_cache.spent,
        "below a perfect URL cache's spend"
    );
    assert!(
        percentile(&merged.took, 50) <= Duration::from_millis(5),
        "median added latency ≤ 5 ms"
    );
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
