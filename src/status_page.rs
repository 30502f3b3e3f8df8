//! The admin listener's status page (`GET /`): one self-contained HTML document, rendered on the
//! server from [`Status`], refreshing itself every 5 s — no scripts, no external assets, so it
//! works on a machine without internet and in any browser.
//!
//! Invariant: every value from outside the binary (client names) is HTML-escaped.

use std::fmt::Write as _;
use std::time::Duration;

use crate::cluster::Health;
use crate::metrics::{Snapshot, Status};

/// The page for `status`, `uptime` after start.
pub(crate) fn render(status: &Status, uptime: Duration) -> String {
    let hits: u64 = status.routes.iter().map(|r| r.hits).sum();
    let misses: u64 = status.routes.iter().map(|r| r.misses).sum();
    let snapshot = &status.snapshot;
    let mut html = String::with_capacity(8 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>wikigate status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}}
h1{{font-size:1.4em;margin:0 0 .2em}} h2{{font-size:1.1em;margin:1.4em 0 .4em}}
.muted{{color:#777}} .tiles{{display:flex;flex-wrap:wrap;gap:.8em}}
.tile{{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:10em}}
.tile b{{display:block;font-size:1.6em}} table{{border-collapse:collapse;background:#fff}}
th,td{{border:1px solid #ddd;padding:.3em .7em;text-align:right}} th{{background:#eee}}
td:first-child,th:first-child{{text-align:left}} .bar{{background:#e5e5e5;width:20em;height:.8em;border-radius:4px;margin:.3em 0 .8em}}
.bar span{{display:block;height:100%;background:#3a7;border-radius:4px}} .held{{color:#b30}}
</style></head><body>
<h1>wikigate</h1>
<div class="muted">version {version} · up {uptime} · refreshes every 5 s</div>
<h2>Summary</h2>
<div class="tiles">
<div class="tile">requests<b id="requests">{requests}</b></div>
<div class="tile">hit ratio<b id="hit-ratio">{hit_ratio}</b></div>
<div class="tile">upstream calls saved<b id="saved">{saved}</b></div>
<div class="tile">quota points saved<b id="points-saved">{points}</b></div>
<div class="tile">upstream calls made<b id="upstream">{upstream}</b></div>
</div>
"#,
        version = env!("CARGO_PKG_VERSION"),
        uptime = human(uptime),
        requests = status.requests,
        hit_ratio = ratio(hits, hits + misses),
        saved = status.saved,
        points = status.points_saved,
        upstream = status.upstream,
    );
    quota_section(&mut html, status);
    routes_table(&mut html, status);
    accounts(&mut html, status);
    refreshes(&mut html, status);
    memory_bar(&mut html, snapshot);
    limited_table(&mut html, status);
    bursts(&mut html, snapshot);
    redis(&mut html, snapshot);
    holds(&mut html, snapshot);
    html
}

/// Whether the replicas share state through Redis, and why not when they cannot.
fn redis(html: &mut String, snapshot: &Snapshot) {
    let line = match &snapshot.redis {
        None => {
            "<div id=\"redis\" class=\"muted\">single replica: no Redis configured</div>".to_owned()
        }
        Some(Health::Up) => {
            "<div id=\"redis\">Redis up: cache generations, purges and limits shared</div>"
                .to_owned()
        }
        Some(Health::Down { reason, for_ }) => format!(
            "<div id=\"redis\" class=\"held\">Redis down for {}: {} — serving from L1 and upstream, limits local</div>",
            human(*for_),
            escape(reason)
        ),
    };
    let _ = write!(html, "<h2>Cluster</h2>\n{line}\n");
}

/// The site's points quota as it stands, and who spent and saved points this hour.
fn quota_section(html: &mut String, status: &Status) {
    html.push_str("<h2>Atlassian quota</h2>\n");
    match &status.site {
        None => html.push_str(
            "<div id=\"site-quota\" class=\"muted\">no quota stated: Confluence sent no RateLimit headers and quota.points_per_hour is not set</div>\n",
        ),
        Some(site) => {
            let lasts = match site.exhaustion_in {
                Some(left) if left < site.reset_in => {
                    format!("<span class=\"held\">runs out in {}</span>", human(left))
                }
                Some(_) | None => "lasts to the reset".to_owned(),
            };
            let burn = site
                .burn_per_hour
                .map_or_else(|| "–".to_owned(), |b| format!("{b:.0} points/h"));
            let low = if status.low_quota {
                " · <span class=\"held\">under the reserve: lower priorities refused, stale answers on low-quota routes</span>"
            } else {
                ""
            };
            let (left, share) = match site.remaining {
                Some(remaining) => (
                    remaining.to_string(),
                    percent(remaining, site.quota),
                ),
                // Atlassian states what is left only once about 80 % is used.
                None => ("over 20 % ".to_owned(), "100%".to_owned()),
            };
            let _ = write!(
                html,
                "<div id=\"site-quota\"><span id=\"quota-remaining\">{left}</span> of {} points left ({share}, {}, {}) · resets in {} · burning {burn} · {lasts}{low}</div>\n<div class=\"bar\"><span style=\"width:{share}\"></span></div>\n",
                site.quota,
                site.source.as_str(),
                escape(&site.policy),
                human(site.reset_in),
            );
        }
    }
    html.push_str("<table id=\"callers\"><tr><th>caller (this hour)</th><th>points spent</th><th>points saved</th></tr>\n");
    for caller in &status.callers {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td class=\"spent\">{}</td><td class=\"saved\">{}</td></tr>",
            escape(&caller.caller),
            caller.spent_hour,
            caller.saved_hour,
        );
    }
    if status.callers.is_empty() {
        html.push_str(
            "<tr><td colspan=\"4\" class=\"muted\">no points spent or saved this hour</td></tr>\n",
        );
    }
    html.push_str("</table>\n");
}

/// Per route: requests, hits, misses, stale answers, hit ratio, latency.
fn routes_table(html: &mut String, status: &Status) {
    html.push_str("<h2>Routes</h2>\n<table id=\"routes\"><tr><th>route</th><th>requests</th><th>hits</th><th>misses</th><th>stale</th><th>hit ratio</th><th>p50</th><th>p99</th></tr>\n");
    for route in &status.routes {
        let _ = writeln!(
            html,
            "<tr id=\"route-{name}\"><td>{name}</td><td class=\"requests\">{}</td><td class=\"hits\">{}</td><td class=\"misses\">{}</td><td class=\"stale\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            route.requests,
            route.hits,
            route.misses,
            route.stale,
            ratio(route.hits, route.hits + route.misses),
            latency(route.p50_us),
            latency(route.p99_us),
            name = route.route,
        );
    }
    if status.routes.is_empty() {
        html.push_str("<tr><td colspan=\"8\" class=\"muted\">no requests yet</td></tr>\n");
    }
    html.push_str("</table>\n");
}

/// Single account lookups answered by merging and by reuse, and whether this site's single and
/// bulk answers agree (without which neither happens).
fn accounts(html: &mut String, status: &Status) {
    html.push_str("<h2>Account lookups</h2>\n<table id=\"accounts\"><tr><th>route</th><th>merged</th><th>bulk calls</th><th>reused</th><th>points saved</th></tr>\n");
    for route in &status.accounts {
        let _ = writeln!(
            html,
            "<tr id=\"accounts-{name}\"><td>{name}</td><td class=\"merged\">{}</td><td class=\"calls\">{}</td><td class=\"reused\">{}</td><td class=\"points\">{}</td></tr>",
            route.merged,
            route.calls,
            route.reused,
            route.points_saved,
            name = route.route,
        );
    }
    html.push_str("</table>\n<table id=\"shapes\"><tr><th>route</th><th>expand</th><th>single and bulk answers</th></tr>\n");
    for (route, expand, state) in &status.snapshot.shapes {
        let _ = writeln!(
            html,
            "<tr><td>{route}</td><td>{}</td><td class=\"{state}\">{state}</td></tr>",
            escape(if expand.is_empty() { "(none)" } else { expand }),
        );
    }
    if status.snapshot.shapes.is_empty() {
        html.push_str("<tr><td colspan=\"3\" class=\"muted\">not compared yet: no single lookup has missed</td></tr>\n");
    }
    html.push_str("</table>\n");
}

/// Refreshes ahead of expiry: what they found, spent and saved.
fn refreshes(html: &mut String, status: &Status) {
    html.push_str("<h2>Refresh-ahead</h2>\n<table id=\"refreshes\"><tr><th>route</th><th>changed</th><th>unchanged</th><th>failed</th><th>skipped for budget</th><th>points</th><th>reads saved from a miss</th></tr>\n");
    for r in &status.refreshes {
        let [changed, unchanged, failed, skipped] = r.results;
        let _ = writeln!(
            html,
            "<tr id=\"refresh-{name}\"><td>{name}</td><td>{changed}</td><td>{unchanged}</td><td>{failed}</td><td class=\"skipped\">{skipped}</td><td class=\"points\">{}</td><td class=\"saved\">{}</td></tr>",
            r.points,
            r.saved,
            name = r.route,
        );
    }
    if status.refreshes.is_empty() {
        html.push_str("<tr><td colspan=\"7\" class=\"muted\">no entry refreshed ahead of expiry yet</td></tr>\n");
    }
    html.push_str("</table>\n");
}

/// The cache's bytes against its budget.
fn memory_bar(html: &mut String, snapshot: &Snapshot) {
    let memory_share = percent(snapshot.cache_bytes, snapshot.cache_max_bytes);
    let _ = write!(
        html,
        "<h2>Cache memory</h2>\n<div><span id=\"cache-entries\">{}</span> entries, <span id=\"cache-bytes\">{}</span> of {} ({memory_share})</div>\n<div class=\"bar\"><span style=\"width:{memory_share}\"></span></div>\n",
        snapshot.cache_entries,
        bytes(snapshot.cache_bytes),
        bytes(snapshot.cache_max_bytes),
    );
}

/// The callers refused most, and by which limit.
fn limited_table(html: &mut String, status: &Status) {
    html.push_str("<h2>Top rate-limited callers</h2>\n<table id=\"limited\"><tr><th>caller</th><th>limit</th><th>refused</th></tr>\n");
    for (caller, limit, count) in &status.limited {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{limit}</td><td>{count}</td></tr>",
            escape(caller)
        );
    }
    if status.limited.is_empty() {
        html.push_str("<tr><td colspan=\"4\" class=\"muted\">nobody has been limited</td></tr>\n");
    }
    html.push_str("</table>\n");
}

/// Whether Confluence holds wikigate off, and the links to the machine-readable endpoints.
/// Atlassian's per-second burst buckets as wikigate learned them, and the requests upstream.
fn bursts(html: &mut String, snapshot: &Snapshot) {
    let _ = write!(
        html,
        "<h2>Upstream pace</h2>\n<div id=\"upstream-load\">{} upstream now, {} waiting for a place</div>\n<table id=\"bursts\"><tr><th>burst bucket</th><th>left</th><th>size</th><th>refill a second</th></tr>\n",
        snapshot.upstream_in_flight, snapshot.upstream_queued,
    );
    for bucket in &snapshot.bursts {
        let _ = writeln!(
            html,
            "<tr><td>{} {}</td><td>{:.0}</td><td>{}</td><td>{:.2} ({})</td></tr>",
            bucket.id.method(),
            bucket.id.route.name(),
            bucket.remaining.floor(),
            bucket.limit,
            bucket.refill.per_second(),
            bucket.refill.source(),
        );
    }
    if snapshot.bursts.is_empty() {
        html.push_str(
            "<tr><td colspan=\"4\" class=\"muted\">Confluence has stated no burst bucket (X-RateLimit-Limit)</td></tr>\n",
        );
    }
    html.push_str("</table>\n");
}

fn holds(html: &mut String, snapshot: &Snapshot) {
    let hold = if snapshot.holds == 0 {
        "<div id=\"holds\">no upstream hold: Confluence has not asked wikigate to back off</div>"
            .to_owned()
    } else {
        format!(
            "<div id=\"holds\" class=\"held\">{} credential(s) held off by Confluence (429), longest for {} more</div>",
            snapshot.holds,
            human(snapshot.longest_hold)
        )
    };
    let _ = write!(
        html,
        "<h2>Upstream holds</h2>\n{hold}\n<p class=\"muted\">Metrics: <a href=\"/metrics\">/metrics</a> · health: <a href=\"/healthz\">/healthz</a> · readiness: <a href=\"/readyz\">/readyz</a></p>\n</body></html>\n"
    );
}

fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "0%".to_owned()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

fn latency(micros: Option<u64>) -> String {
    match micros {
        None => "–".to_owned(),
        Some(u64::MAX) => "> 5 s".to_owned(),
        Some(us) if us < 1_000 => format!("≤ {us} µs"),
        Some(us) => format!("≤ {} ms", us / 1_000),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_names_are_escaped() {
        assert_eq!(
            escape("<b>\"x\"&'y'"),
            "&lt;b&gt;&quot;x&quot;&amp;&#39;y&#39;"
        );
    }
}
