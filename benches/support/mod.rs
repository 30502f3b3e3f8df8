//! What several benchmarks share. Each bench is a crate of its own (`mod support;`) and uses
//! only part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use wikigate::config::{ClassLimits, LimitsConfig, QuotaConfig, Rate};
use wikigate::{Limits, Policy};

/// `Authorization` of the fake site's first demo user, alice@example.com:alice-api-token.
pub const ALICE: &str = "Basic YWxpY2VAZXhhbXBsZS5jb206YWxpY2UtYXBpLXRva2Vu";

/// This process's resident memory, in bytes.
/// Has the allocator return the pages freed so far, from the calling thread's heap and those
/// abandoned by exited threads (mimalloc returns freed pages on its own, a short delay after
/// they fall free, at its next call from the thread that owns them: a process idle right after
/// a burst keeps them resident until its next request).
pub fn return_freed_pages() {
    // SAFETY: mi_collect takes no arguments that point anywhere; it walks mimalloc's own heaps.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    }
}

pub fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Limits whose `default` class allows `per_second` requests, and as many upstream calls when
/// `upstream` is set.
pub fn default_class_limits(per_second: u32, upstream: bool) -> LimitsConfig {
    let rate = Rate {
        rate: NonZeroU32::new(per_second).expect("a non-zero rate"),
        per: Duration::from_secs(1),
        burst: None,
    };
    let mut config = LimitsConfig::default();
    config.classes.insert(
        "default".to_owned(),
        ClassLimits {
            requests: Some(rate),
            upstream: upstream.then_some(rate),
            ..ClassLimits::default()
        },
    );
    config
}

/// Limits made from `config` alone (no clients, the default quota settings, no cluster).
pub fn limits(config: &LimitsConfig) -> Limits {
    let policy = Policy {
        limits: config,
        quota: &QuotaConfig::default(),
        clients: &[],
        burst: (Duration::from_secs(1), Duration::from_secs(2)),
    };
    Limits::new(policy, None, Arc::default())
}

/// The global allocator of a memory benchmark: the binary's (mimalloc), counting the bytes
/// live on the heap, so that a benchmark can tell what its data costs apart from what the allocator keeps
/// (resident memory also counts freed memory not yet returned, which varies run to run).
pub struct CountingAllocator;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// The one `unsafe` in the package: a global allocator is an unsafe trait by nature.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on unchanged.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, std::sync::atomic::Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc`, passed on unchanged.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// Bytes live on the heap now (with [`CountingAllocator`] as the global allocator).
pub fn live_heap_bytes() -> u64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as u64
}

/// The `q` quantile (0–1) of `samples`, nearest rank; sorts them.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)]
}

/// The sum of the samples of every `/metrics` line of the admin listener at `admin` that starts
/// with `prefix` (a family and the opening of its labels: `wikigate_refreshes_total{`).
pub async fn metric_sum(admin: &str, prefix: &str) -> u64 {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = http::Request::get(format!("http://{admin}/metrics"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
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
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
