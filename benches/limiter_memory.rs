//! Memory per tracked caller in the keyed rate limiters, and that idle callers are reclaimed.
//!
//! Tracks 100 000 distinct callers (as many credential fingerprints), measures resident memory
//! before and after, lets every bucket refill, reclaims, and measures again.
//! `cargo bench --bench limiter_memory`; under `cargo test` it runs with 1 000 callers.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{default_class_limits, limits, resident_bytes};
use wikigate::{Caller, CallerId};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let callers: u32 = if full { 100_000 } else { 1_000 };
    let limits = limits(&default_class_limits(1000, true));
    let class: Arc<str> = Arc::from("default");
    let account = wikigate::Accounts::default().get("class:default");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = resident_bytes();
    for i in 0..callers {
        let mut fingerprint = [0u8; 16];
        fingerprint[..4].copy_from_slice(&i.to_le_bytes());
        let caller = Caller {
            id: CallerId::Credential(fingerprint),
            credential: None,
            class: class.clone(),
            account: account.clone(),
        };
        limits.check_request(&caller).unwrap();
        runtime
            .block_on(limits.admit_upstream(&caller, &fingerprint, None, &http::Method::GET, None))
            .map(drop)
            .unwrap();
    }
    let tracked = limits.tracked_callers();
    let after = resident_bytes();
    // Every bucket refills within 1 s at 1000/s; then nothing distinguishes them from new ones.
    std::thread::sleep(Duration::from_millis(1100));
    limits.reclaim();
    let reclaimed = resident_bytes();

    let per_caller = after.saturating_sub(before) as f64 / f64::from(callers);
    println!("{callers} callers, requests + upstream limits each ({tracked} limiter entries)");
    println!("  resident before   {:>8.1} MiB", before as f64 / 1048576.0);
    println!(
        "  resident tracking {:>8.1} MiB  ({per_caller:.0} bytes per caller, both limits)",
        after as f64 / 1048576.0
    );
    println!(
        "  after reclaim     {:>8.1} MiB  ({} limiter entries left)",
        reclaimed as f64 / 1048576.0,
        limits.tracked_callers()
    );
    assert_eq!(
        limits.tracked_callers(),
        0,
        "idle callers were not reclaimed"
    );
}
