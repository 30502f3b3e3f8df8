use super::tally::{LATENCY_BOUNDS_NS, quantile_us};
use super::*;
use http::Method;

#[test]
fn internal_failures_in_a_row_make_the_gateway_unready_until_upstream_answers() {
    let metrics = Metrics::default();
    for _ in 1..NOT_READY_AFTER {
        metrics.error(Some(Route::User), ErrorSource::Internal);
    }
    metrics.error(None, ErrorSource::Upstream);
    assert_eq!(metrics.failing_inside(), None, "not yet");
    metrics.error(Some(Route::User), ErrorSource::Internal);
    assert_eq!(metrics.failing_inside(), Some(NOT_READY_AFTER));
    metrics.upstream(Route::User, Ok(StatusCode::OK), Duration::from_millis(3));
    assert_eq!(metrics.failing_inside(), None, "an upstream call completed");
    metrics.upstream(Route::User, Err("timeout"), Duration::from_millis(3));
    assert_eq!(metrics.failing_inside(), None);
}

#[test]
fn quantiles_come_from_the_bucket_bounds() {
    let mut counts = [0u64; LATENCY_BOUNDS_NS.len() + 1];
    assert_eq!(quantile_us(&counts, 0.5), None);
    for (bucket, n) in [(0, 98), (3, 1), (5, 1)] {
        counts[bucket] = n;
    }
    assert_eq!(quantile_us(&counts, 0.50), Some(100));
    assert_eq!(quantile_us(&counts, 0.99), Some(800));
    assert_eq!(quantile_us(&counts, 1.0), Some(3_200));
}

#[test]
fn every_view_reads_the_same_counters() {
    let quota = Arc::new(Quota::default());
    let metrics = Metrics::new(quota.clone());
    let account = quota.accounts.get("class:default");
    let record = |cache, status, micros| {
        if cache == CacheLabel::Hit {
            account.save(Route::Current, 3, tokio::time::Instant::now());
        }
        RequestRecord {
            route: Some(Route::Current),
            method: Method::GET,
            status,
            cache,
            saved: cache == CacheLabel::Hit,
            duration: Duration::from_micros(micros),
        }
    };
    metrics.request(&record(CacheLabel::Hit, StatusCode::OK, 150));
    metrics.request(&record(CacheLabel::Hit, StatusCode::OK, 150));
    metrics.request(&record(CacheLabel::Hit, StatusCode::NOT_MODIFIED, 50));
    metrics.request(&record(CacheLabel::Miss, StatusCode::OK, 30_000_000));
    let snapshot = Snapshot::default();
    let text = metrics.encode(&snapshot, false);
    for line in [
        r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="hit"} 2"#,
        r#"wikigate_requests_total{route="current",method="GET",status_class="3xx",cache="hit"} 1"#,
        r#"wikigate_requests_total{route="current",method="GET",status_class="2xx",cache="miss"} 1"#,
        r#"wikigate_upstream_requests_saved_total{route="current"} 3"#,
        r#"wikigate_quota_points_saved_total{caller="class:default",route="current"} 9"#,
        r#"wikigate_quota_points_spent_total{caller="class:default",route="current"} 0"#,
        r#"wikigate_quota_caller_points_this_hour{caller="class:default",kind="saved"} 9"#,
        // Buckets are cumulative: 50 µs ≤ 100 µs, 150 µs ≤ 200 µs, 30 s only in +Inf.
        r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="0.0001"} 1"#,
        r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="0.0002"} 3"#,
        r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="26.2144"} 3"#,
        r#"wikigate_request_duration_seconds_bucket{route="current",method="GET",le="+Inf"} 4"#,
        r#"wikigate_request_duration_seconds_count{route="current",method="GET"} 4"#,
        r#"wikigate_request_duration_seconds_sum{route="current",method="GET"} 30.00035"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    let status = metrics.status(&snapshot);
    assert_eq!(
        (status.requests, status.saved, status.points_saved),
        (4, 3, 9)
    );
    assert_eq!(status.routes[0].hits, 3);
    assert_eq!(metrics.cache_stats().hits, 3);
    assert_eq!(metrics.cache_stats().misses, 1);
}
