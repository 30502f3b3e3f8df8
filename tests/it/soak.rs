//! A bounded soak (`WIKIGATE_SOAK_SECS`, default 60 s; loopback only; ends by itself): many
//! callers mix reads and writes across the routes while the fake upstream turns slow and
//! fails, and the promises are checked all along — no body for the wrong caller, no read older
//! than an acknowledged write, memory flat after warm-up, no task or connection left behind.
//! Ignored by plain `cargo test`; `scripts/test` runs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use wikigate::config::RoutePolicy;
use wikigate::fake::{DemoUser, Faults, directory_account};

use crate::support::{API, Harness, alice, basic, bob};

fn resident_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / 1048576.0
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long: scripts/test runs it"]
async fn soak_keeps_every_promise_under_faults() {
    let seconds: u64 = std::env::var("WIKIGATE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let h = Arc::new(
        Harness::start_with(|c| {
            c.cache.routes.set_all(RoutePolicy {
                ttl: Duration::from_secs(2),
                stale_if_error: Duration::from_secs(3),
                stale_while_revalidate: Duration::ZERO,
                stale_on_low_quota: Duration::ZERO,
            });
        })
        .await,
    );
    let fds_before = open_fds();
    let users: [&'static DemoUser; 2] = [alice(), bob()];
    let keys = ["k0", "k1"];
    // Acknowledged floor per (user, key): the version of the last write whose answer arrived.
    let floors: Arc<Vec<AtomicU64>> = Arc::new((0..4).map(|_| AtomicU64::new(0)).collect());
    for user in users {
        for key in keys {
            let created = h
                .client
                .request(
                    Method::POST,
                    &format!("{API}/{}/property/{key}", user.account_id),
                )
                .auth(user)
                .body(json!({ "value": { "v": 0 } }).to_string())
                .send()
                .await;
            assert_eq!(created.status, 201);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (served, wrong_caller, stale, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();

    // Writers: one per (user, key), so upstream applies versions in order.
    for (index, (user, key)) in users
        .iter()
        .flat_map(|u| keys.iter().map(move |k| (*u, *k)))
        .enumerate()
    {
        let (h, stop, floors) = (h.clone(), stop.clone(), floors.clone());
        tasks.push(tokio::spawn(async move {
            let mut version = 0;
            while !stop.load(Ordering::SeqCst) {
                version += 1;
                let answer = h
                    .client
                    .request(
                        Method::PUT,
                        &format!("{API}/{}/property/{key}", user.account_id),
                    )
                    .auth(user)
                    .body(json!({ "value": { "v": version } }).to_string())
                    .send()
                    .await;
                if answer.status == StatusCode::NO_CONTENT {
                    floors[index].store(version, Ordering::SeqCst);
                } else {
                    // Refused upstream (injected 5xx): not applied, so the next try reuses it.
                    version -= 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    // Readers: every GET route, as alice, bob or nobody.
    for reader in 0..6u64 {
        let (h, stop, floors) = (h.clone(), stop.clone(), floors.clone());
        let (served, wrong_caller, stale, errors) = (
            served.clone(),
            wrong_caller.clone(),
            stale.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9 + reader * 7919);
            while !stop.load(Ordering::SeqCst) {
                let user = users[rng.below(2)];
                let other = users[rng.below(2)].account_id;
                let (property, index) = (keys[rng.below(2)], rng.below(2));
                let owner = users[index];
                let targets = [
                    format!("{API}/current"),
                    format!("{API}?accountId={other}"),
                    format!("{API}/memberof?accountId={other}"),
                    format!(
                        "{API}/bulk?accountId={},{}",
                        directory_account(rng.below(300)),
                        other
                    ),
                    format!("{API}/email?accountId={other}"),
                    format!(
                        "{API}/email/bulk?accountId={other},{}",
                        directory_account(rng.below(300))
                    ),
                    format!("{API}/watch/space/S{}", rng.below(5)),
                    format!("{API}/{}/property", user.account_id),
                    format!("{API}/{}/property/{property}", owner.account_id),
                ];
                let target = &targets[rng.below(targets.len())];
                // alice (an admin) may read bob's properties; bob reads only his own.
                let user = if target.contains("/property/") && owner.account_id != user.account_id {
                    alice()
                } else {
                    user
                };
                let floor_index = index * 2 + keys.iter().position(|k| *k == property).unwrap();
                let floor = floors[floor_index].load(Ordering::SeqCst);
                let answer = h.client.get(target, Some(&basic(user))).await;
                if !answer.status.is_success() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                served.fetch_add(1, Ordering::Relaxed);
                let viewer = answer.viewer();
                if !viewer.is_empty() && viewer != user.account_id {
                    wrong_caller.fetch_add(1, Ordering::SeqCst);
                }
                if target.contains("/property/") {
                    let seen = answer.json()["value"]["v"].as_u64().unwrap_or(0);
                    if seen < floor {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    // The upstream turns slow, then failing, then well again, at random.
    let faults = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut rng = Rng(42);
            while !stop.load(Ordering::SeqCst) {
                let faults = match rng.below(4) {
                    0 => Faults {
                        delay: Duration::from_millis(80),
                        ..Faults::default()
                    },
                    1 => Faults {
                        fail_with: Some(StatusCode::SERVICE_UNAVAILABLE),
                        ..Faults::default()
                    },
                    _ => Faults::default(),
                };
                h.fake.set_faults(faults);
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            h.fake.set_faults(Faults::default());
        })
    };

    let started = Instant::now();
    // Entries live TTL + stale window (5 s): after that, what the cache holds is steady.
    let warm_up = Duration::from_secs((seconds / 4).max(8));
    let (mut samples, mut fds) = (Vec::new(), Vec::new());
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if started.elapsed() > warm_up {
            samples.push(resident_mib());
            fds.push(open_fds());
        }
    }
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    faults.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (first, last, peak) = (
        samples[0],
        *samples.last().unwrap(),
        samples.iter().copied().fold(0.0, f64::max),
    );
    let (fds_warm, fds_peak) = (fds[0], fds.iter().copied().max().unwrap_or(0));
    println!(
        "soak {seconds} s: {} answers served, {} errors (injected faults), resident {first:.1} MiB after warm-up, {last:.1} MiB at the end, peak {peak:.1} MiB; open fds {fds_before} at start, {fds_warm} after warm-up, {fds_peak} peak, {} at the end",
        served.load(Ordering::SeqCst),
        errors.load(Ordering::SeqCst),
        open_fds()
    );
    assert_eq!(
        wrong_caller.load(Ordering::SeqCst),
        0,
        "a body was served to the wrong caller"
    );
    assert_eq!(
        stale.load(Ordering::SeqCst),
        0,
        "a read older than an acknowledged write"
    );
    assert!(served.load(Ordering::SeqCst) > 1000);
    assert!(
        last < first * 1.25 + 16.0,
        "resident memory grew from {first:.1} to {last:.1} MiB"
    );
    // Pooled keep-alive connections stay open by design; a leak would keep growing.
    assert!(
        open_fds() <= fds_warm + 8 && fds_peak <= fds_warm + 16,
        "connections leaked: {fds_warm} -> {fds_peak} -> {}",
        open_fds()
    );
}
