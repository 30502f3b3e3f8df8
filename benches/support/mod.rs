//! What several benchmarks share. Each bench is a crate of its own (`mod support;`) and uses
//! only part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::num::NonZeroU32;
use std::time::Duration;

use wikigate::config::{ClassLimits, LimitsConfig, Rate};

/// `Authorization` of the fake site's first demo user, alice@example.com:alice-api-token.
pub const ALICE: &str = "Basic YWxpY2VAZXhhbXBsZS5jb206YWxpY2UtYXBpLXRva2Vu";

/// This process's resident memory, in bytes.
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
        },
    );
    config
}
