//! What an upstream answer says about Atlassian's limits: every rate-limit header read in
//! one place, into one bounded value ([`Hints`]) that the quota, the limits and the holds
//! consume.
//!
//! The headers:
//! - `Retry-After` (seconds or an HTTP date; `Beta-Retry-After` in shadow mode): how long to
//!   wait after a refusal;
//! - `X-RateLimit-Reset`: an RFC 3339 time (`yyyy-MM-ddTHH:mmZ` on 429s) or, from some
//!   proxies, seconds;
//! - `X-RateLimit-NearLimit: true`: under 20 % of the points quota left;
//! - `RateLimit-Reason` on a 429: which limit refused ([`Reason`]);
//! - `RateLimit-Policy` + `RateLimit` (enforced) and their `Beta-` forms (shadow): the points
//!   policies, each a structured-field list whose entries pair by name ([`Policy`]);
//! - `X-RateLimit-Limit` + `X-RateLimit-Remaining`: a bucket's size and what is left of it
//!   ([`Bucket`]); `X-RateLimit-FillRate` per `X-RateLimit-Interval-Seconds`, where the edge
//!   states them (Atlassian's Data Center edge does, its Cloud edge does not), its refill
//!   ([`Fill`]).
//!
//! Structured fields (RFC 9651) are read by `members`, tolerantly, rather than by the `sfv`
//! crate: `sfv` refuses a whole field for one malformed member, as the RFC says a strict
//! parser must, and the field logs show Atlassian's headers imperfect (a member without a
//! name, a missing parameter); reading what can be read keeps the other policies. Quoted
//! strings are honoured (a separator inside one is text).
//!
//! Invariants: reading never fails and never panics, whatever the values (huge, zero,
//! negative, not numbers, repeated, not text): what cannot be read is absent. Every duration
//! handed out is bounded before any time arithmetic meets it: a wait lies within
//! [[`MIN_WAIT`], [`MAX_WAIT`]] (so `Retry-After: 0` never invites a tight loop, and
//! `Retry-After: 9223372036854775807` waits an hour), a reset within [0, [`MAX_WAIT`]], a
//! policy's window within [1 s, [`MAX_WINDOW`]] and its reset within its window.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName};

/// The longest wait or reset upstream is believed about: Atlassian's quota window, after
/// which every one of its limits has started afresh.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(3600);

/// The shortest wait a refusal makes (`Retry-After: 0`, a date in the past).
pub(crate) const MIN_WAIT: Duration = Duration::from_secs(1);

/// The longest window a points policy is believed to state (`w`).
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(86_400);

static RETRY_AFTER: HeaderName = http::header::RETRY_AFTER;
static BETA_RETRY_AFTER: HeaderName = HeaderName::from_static("beta-retry-after");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static X_RATELIMIT_NEARLIMIT: HeaderName = HeaderName::from_static("x-ratelimit-nearlimit");
static X_BETA_RATELIMIT_NEARLIMIT: HeaderName =
    HeaderName::from_static("x-beta-ratelimit-nearlimit");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_FILLRATE: HeaderName = HeaderName::from_static("x-ratelimit-fillrate");
static X_RATELIMIT_INTERVAL: HeaderName = HeaderName::from_static("x-ratelimit-interval-seconds");
static RATELIMIT_REASON: HeaderName = HeaderName::from_static("ratelimit-reason");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static BETA_RATELIMIT_POLICY: HeaderName = HeaderName::from_static("beta-ratelimit-policy");
static BETA_RATELIMIT: HeaderName = HeaderName::from_static("beta-ratelimit");

/// Which of Atlassian's limits refused a request (`RateLimit-Reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The hourly points quota (`…-quota-tenant-based`, `…-quota-global-based`).
    Quota,
    /// A per-second burst bucket (`confluence-burst-based`).
    Burst,
    /// A per-resource write limit (`…-per-…-on-write`).
    Write,
    /// A reason this version does not know.
    Other,
}

impl Reason {
    fn of(value: &str) -> Reason {
        let value = value.trim().to_ascii_lowercase();
        if value.contains("quota") {
            Reason::Quota
        } else if value.contains("burst") {
            Reason::Burst
        } else if value.ends_with("on-write") {
            Reason::Write
        } else {
            Reason::Other
        }
    }
}

/// Whether a policy is enforced or only reported (shadow mode, the `Beta-` forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforced,
    Shadow,
}

/// One points policy as an answer states it: what `RateLimit-Policy` says of it, and what
/// `RateLimit`'s entry of the same name says. Either may be missing: the policy header has
/// been seen to vanish once `r=0`, and `r` only appears once about 80 % is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    /// Points per window (`q`), and the window (`w`, an hour when unstated), when
    /// `RateLimit-Policy` states the policy.
    pub quota: Option<(u64, Duration)>,
    /// Points left (`r`) and time to the window's reset (`t`, within the window), when
    /// `RateLimit` says them.
    pub remaining: Option<u64>,
    pub reset_in: Option<Duration>,
}

/// A bucket as `X-RateLimit-Limit` and `X-RateLimit-Remaining` state it, with its refill
/// where the edge states that too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub limit: u64,
    pub remaining: u64,
    pub fill: Option<Fill>,
}

/// A bucket's refill as `X-RateLimit-FillRate` (`tokens`, at least 1) per
/// `X-RateLimit-Interval-Seconds` (`every`, within [1 s, [`MAX_WAIT`]]) state it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub tokens: u64,
    pub every: Duration,
}

impl Fill {
    /// Tokens a second.
    pub fn per_second(&self) -> f64 {
        self.tokens as f64 / self.every.as_secs_f64()
    }
}

/// Everything one upstream answer says about Atlassian's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// `Retry-After` (else `Beta-Retry-After`), within [[`MIN_WAIT`], [`MAX_WAIT`]].
    pub retry_after: Option<Duration>,
    /// `X-RateLimit-Reset`, within [0, [`MAX_WAIT`]].
    pub reset_in: Option<Duration>,
    /// `X-RateLimit-NearLimit: true` (enforced policies), `X-Beta-RateLimit-NearLimit: true`
    /// (shadow ones).
    pub near_limit: bool,
    pub shadow_near_limit: bool,
    /// `RateLimit-Reason`.
    pub reason: Option<Reason>,
    /// The enforced policies, then the shadow ones.
    pub policies: Vec<Policy>,
    /// `X-RateLimit-Limit` / `-Remaining`.
    pub bucket: Option<Bucket>,
}

impl Hints {
    /// Reads an answer's headers.
    pub fn read(headers: &HeaderMap) -> Hints {
        let retry_after =
            retry_after(headers, &RETRY_AFTER).or_else(|| retry_after(headers, &BETA_RETRY_AFTER));
        let reset_in = texts(headers, &X_RATELIMIT_RESET).find_map(until);
        let flag = |name| texts(headers, name).any(|v| v.trim().eq_ignore_ascii_case("true"));
        let near_limit = flag(&X_RATELIMIT_NEARLIMIT);
        let shadow_near_limit = flag(&X_BETA_RATELIMIT_NEARLIMIT);
        let reason = texts(headers, &RATELIMIT_REASON).next().map(Reason::of);
        let mut policies = policies_in(headers, &RATELIMIT_POLICY, &RATELIMIT, Mode::Enforced);
        policies.extend(policies_in(
            headers,
            &BETA_RATELIMIT_POLICY,
            &BETA_RATELIMIT,
            Mode::Shadow,
        ));
        let number = |name| texts(headers, name).find_map(|v| v.trim().parse::<u64>().ok());
        let fill = match (number(&X_RATELIMIT_FILLRATE), number(&X_RATELIMIT_INTERVAL)) {
            (Some(tokens), Some(secs)) if tokens > 0 && secs > 0 => Some(Fill {
                tokens: tokens.min(u64::from(u32::MAX)),
                every: Duration::from_secs(secs).min(MAX_WAIT),
            }),
            _ => None,
        };
        let bucket = match (number(&X_RATELIMIT_LIMIT), number(&X_RATELIMIT_REMAINING)) {
            (Some(limit), Some(remaining)) => Some(Bucket {
                limit,
                remaining,
                fill,
            }),
            _ => None,
        };
        Hints {
            retry_after,
            reset_in,
            near_limit,
            shadow_near_limit,
            reason,
            policies,
            bucket,
        }
    }
}

/// The text values of every field named `name` (values that are not text are skipped).
fn texts<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
}

/// The first readable `Retry-After`-style field: seconds, or an HTTP date; bounded as a wait.
fn retry_after(headers: &HeaderMap, name: &HeaderName) -> Option<Duration> {
    texts(headers, name)
        .find_map(|value| {
            let value = value.trim();
            match value.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                Err(_) => {
                    let at = httpdate::parse_http_date(value).ok()?;
                    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
                }
            }
        })
        .map(wait)
}

/// A wait upstream stated, within [[`MIN_WAIT`], [`MAX_WAIT`]].
pub(crate) fn wait(stated: Duration) -> Duration {
    stated.clamp(MIN_WAIT, MAX_WAIT)
}

/// Seconds, or the time until an RFC 3339 UTC timestamp, within [0, [`MAX_WAIT`]].
fn until(value: &str) -> Option<Duration> {
    let value = value.trim();
    let left = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = crate::rfc3339::parse(value)?;
            at.duration_since(SystemTime::now()).unwrap_or_default()
        }
    };
    Some(left.min(MAX_WAIT))
}

/// The policies `policy_header` and `state_header` name, each with what both say of it
/// (entries pair by name; an unnamed state pairs with a lone policy).
fn policies_in(
    headers: &HeaderMap,
    policy_header: &HeaderName,
    state_header: &HeaderName,
    mode: Mode,
) -> Vec<Policy> {
    let stated: Vec<Member> = texts(headers, policy_header).flat_map(members).collect();
    let mut states: Vec<Member> = texts(headers, state_header).flat_map(members).collect();
    if let ([policy], [state]) = (stated.as_slice(), states.as_mut_slice())
        && state.name.is_empty()
    {
        state.name.clone_from(&policy.name);
    }
    let mut policies: Vec<Policy> = stated
        .iter()
        .filter(|member| !member.name.is_empty())
        .map(|member| {
            let quota = member.param("q").map(|q| {
                let window = Duration::from_secs(member.param("w").unwrap_or(3600))
                    .clamp(Duration::from_secs(1), MAX_WINDOW);
                (q, window)
            });
            Policy {
                name: member.name.clone(),
                mode,
                quota,
                remaining: None,
                reset_in: None,
            }
        })
        .collect();
    for state in states.into_iter().filter(|s| !s.name.is_empty()) {
        let index = match policies.iter().position(|p| p.name == state.name) {
            Some(index) => index,
            None => {
                policies.push(Policy {
                    name: state.name.clone(),
                    mode,
                    quota: None,
                    remaining: None,
                    reset_in: None,
                });
                policies.len() - 1
            }
        };
        let policy = &mut policies[index];
        let window = policy.quota.map_or(MAX_WINDOW, |(_, w)| w);
        policy.remaining = policy.remaining.or(state.param("r"));
        policy.reset_in = policy.reset_in.or(state
            .param("t")
            .map(|t| Duration::from_secs(t.min(window.as_secs()))));
    }
    policies
}

/// One member of a structured-field list (RFC 9651): its name (a string or token) and its
/// integer parameters.
#[derive(Debug, Default)]
struct Member {
    name: String,
    params: Vec<(String, u64)>,
}

impl Member {
    fn param(&self, key: &str) -> Option<u64> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// The members of a structured-field list, read tolerantly: separators inside quoted strings
/// are text; a parameter that is not a non-negative integer is skipped.
fn members(value: &str) -> Vec<Member> {
    split_outside_quotes(value, ',')
        .into_iter()
        .filter_map(|member| {
            let mut parts = split_outside_quotes(member, ';').into_iter().map(str::trim);
            let first = parts.next()?;
            // An entry with no name starts with its first parameter.
            let (name, first) = match !first.starts_with('"') && first.contains('=') {
                true => (String::new(), Some(first)),
                false => (unquote(first), None),
            };
            let params = first
                .into_iter()
                .chain(parts)
                .filter_map(|param| {
                    let (key, value) = param.split_once('=')?;
                    let value = value.trim().parse::<u64>().ok()?;
                    Some((key.trim().to_ascii_lowercase(), value))
                })
                .collect::<Vec<_>>();
            (!name.is_empty() || !params.is_empty()).then_some(Member { name, params })
        })
        .collect()
}

fn split_outside_quotes(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (at, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&value[start..at]);
                start = at + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn unquote(name: &str) -> String {
    let name = name.trim();
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => name.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn retry_after_is_bounded_both_ways() {
        let read = |value| Hints::read(&headers(&[("retry-after", value)])).retry_after;
        assert_eq!(
            read("9223372036854775807"),
            Some(MAX_WAIT),
            "the field's value"
        );
        assert_eq!(read("18446744073709551616"), None, "past u64: not a number");
        assert_eq!(read("0"), Some(MIN_WAIT), "never a tight loop");
        assert_eq!(read("30"), Some(Duration::from_secs(30)));
        assert_eq!(read("-5"), None);
        assert_eq!(read("soon"), None);
        assert_eq!(read("Thu, 01 Jan 1970 00:00:00 GMT"), Some(MIN_WAIT));
        assert_eq!(read("Fri, 31 Dec 9999 23:59:59 GMT"), Some(MAX_WAIT));
        let repeated = headers(&[("retry-after", "later"), ("retry-after", "7")]);
        assert_eq!(
            Hints::read(&repeated).retry_after,
            Some(Duration::from_secs(7)),
            "the first readable one"
        );
        let beta = headers(&[("beta-retry-after", "12")]);
        assert_eq!(
            Hints::read(&beta).retry_after,
            Some(Duration::from_secs(12))
        );
    }

    #[test]
    fn the_reset_is_read_in_every_form_atlassian_sends() {
        let read = |value| Hints::read(&headers(&[("x-ratelimit-reset", value)])).reset_in;
        assert_eq!(read("7"), Some(Duration::from_secs(7)));
        assert_eq!(read("99999999999999"), Some(MAX_WAIT));
        assert_eq!(
            read("2000-01-01T00:00Z"),
            Some(Duration::ZERO),
            "a past minute"
        );
        assert_eq!(read("9999-12-31T23:59Z"), Some(MAX_WAIT));
        let soon = crate::rfc3339::millis(SystemTime::now() + Duration::from_secs(90));
        let left = read(&soon).unwrap();
        assert!(left > Duration::from_secs(85) && left <= Duration::from_secs(90));
        assert_eq!(read("2026-12-03T10:00+01:00"), None, "only UTC");
    }

    #[test]
    fn reasons_name_the_limit() {
        let read = |value| Hints::read(&headers(&[("ratelimit-reason", value)])).reason;
        assert_eq!(read("confluence-quota-tenant-based"), Some(Reason::Quota));
        assert_eq!(read("confluence-quota-global-based"), Some(Reason::Quota));
        assert_eq!(read("confluence-burst-based"), Some(Reason::Burst));
        assert_eq!(read("jira-burst-based"), Some(Reason::Burst));
        assert_eq!(read("confluence-per-content-on-write"), Some(Reason::Write));
        assert_eq!(read("something-new"), Some(Reason::Other));
        assert_eq!(Hints::read(&HeaderMap::new()).reason, None);
    }

    #[test]
    fn policies_pair_with_their_state_by_name_in_any_order() {
        let hints = Hints::read(&headers(&[
            (
                "ratelimit-policy",
                "\"global-app-quota\";q=65000;w=3600, \"tenant-app-quota\";q=100100;w=3600",
            ),
            ("ratelimit", "\"global-app-quota\";r=500;t=600"),
            ("beta-ratelimit-policy", "\"tenant-app-quota\";q=10;w=60"),
            ("beta-ratelimit", "\"tenant-app-quota\";r=3;t=99999"),
        ]));
        let by = |name: &str, mode| {
            hints
                .policies
                .iter()
                .find(|p| p.name == name && p.mode == mode)
                .unwrap()
                .clone()
        };
        let hour = Duration::from_secs(3600);
        let global = by("global-app-quota", Mode::Enforced);
        assert_eq!(
            (global.quota, global.remaining, global.reset_in),
            (
                Some((65_000, hour)),
                Some(500),
                Some(Duration::from_secs(600))
            )
        );
        let tenant = by("tenant-app-quota", Mode::Enforced);
        assert_eq!(
            (tenant.quota, tenant.remaining),
            (Some((100_100, hour)), None)
        );
        let shadow = by("tenant-app-quota", Mode::Shadow);
        assert_eq!(
            shadow.reset_in,
            Some(Duration::from_secs(60)),
            "a reset is within its window"
        );
    }

    #[test]
    fn separators_inside_quoted_names_are_text() {
        let hints = Hints::read(&headers(&[
            ("ratelimit-policy", "\"odd,name;q=1\";q=10;w=60"),
            ("ratelimit", "\"odd,name;q=1\";r=4;t=30"),
        ]));
        assert_eq!(hints.policies.len(), 1);
        assert_eq!(hints.policies[0].name, "odd,name;q=1");
        assert_eq!(
            (hints.policies[0].quota, hints.policies[0].remaining),
            (Some((10, Duration::from_secs(60))), Some(4))
        );
    }

    #[test]
    fn a_state_without_its_policy_is_still_read() {
        // The policy header vanished once r=0: the state names the policy on its own.
        let hints = Hints::read(&headers(&[("ratelimit", "\"tenant-app-quota\";r=0;t=120")]));
        assert_eq!(
            hints.policies,
            [Policy {
                name: "tenant-app-quota".to_owned(),
                mode: Mode::Enforced,
                quota: None,
                remaining: Some(0),
                reset_in: Some(Duration::from_secs(120)),
            }]
        );
        // An unnamed state pairs with a lone policy.
        let hints = Hints::read(&headers(&[
            ("ratelimit-policy", "\"tenant-app-quota\";q=100;w=60"),
            ("ratelimit", "r=7;t=9"),
        ]));
        assert_eq!(hints.policies[0].remaining, Some(7));
    }

    #[test]
    fn a_bucket_needs_both_figures() {
        let bucket = Hints::read(&headers(&[
            ("x-ratelimit-limit", "350"),
            ("x-ratelimit-remaining", "349"),
        ]))
        .bucket;
        assert_eq!(
            bucket,
            Some(Bucket {
                limit: 350,
                remaining: 349,
                fill: None,
            })
        );
        let half = Hints::read(&headers(&[("x-ratelimit-limit", "350")]));
        assert_eq!(half.bucket, None);
    }

    #[test]
    fn a_stated_refill_is_read_and_bounded() {
        let read = |fill: &str, every: &str| {
            Hints::read(&headers(&[
                ("x-ratelimit-limit", "10"),
                ("x-ratelimit-remaining", "3"),
                ("x-ratelimit-fillrate", fill),
                ("x-ratelimit-interval-seconds", every),
            ]))
            .bucket
            .and_then(|b| b.fill)
        };
        let fill = read("5", "2").unwrap();
        assert_eq!(fill.per_second(), 2.5);
        assert_eq!(read("0", "1"), None, "no refill is no statement");
        assert_eq!(read("5", "0"), None);
        assert_eq!(read("5", "x"), None);
        let long = read("1", "18446744073709551615").unwrap();
        assert_eq!(long.every, MAX_WAIT);
    }

    /// Values upstream could send for any limit header: numbers of every size and sign,
    /// dates past and future in both formats, structured lists, and junk.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just("9223372036854775807".to_owned()),
            Just("18446744073709551615".to_owned()),
            Just("0".to_owned()),
            (0u64..253_402_300_000).prop_map(|secs| {
                let at = std::time::UNIX_EPOCH + Duration::from_secs(secs);
                httpdate::fmt_http_date(at)
            }),
            (0u64..253_402_300_000).prop_map(|secs| {
                crate::rfc3339::millis(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            }),
            (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(q, r, t)| format!(
                "\"tenant-app-quota\";q={q};w={r};r={r};t={t}, \"global-app-quota\";q={t}"
            )),
            "[ -~]{0,40}",
        ]
    }

    const NAMES: [&str; 13] = [
        "retry-after",
        "beta-retry-after",
        "x-ratelimit-reset",
        "x-ratelimit-nearlimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-fillrate",
        "x-ratelimit-interval-seconds",
        "ratelimit-reason",
        "ratelimit-policy",
        "ratelimit",
        "beta-ratelimit-policy",
        "beta-ratelimit",
    ];

    /// Up to a dozen limit headers, repeated or not, with any of those values.
    pub(crate) fn any_limit_headers() -> impl Strategy<Value = HeaderMap> {
        prop::collection::vec((0..NAMES.len(), value()), 0..12).prop_map(|fields| {
            let mut map = HeaderMap::new();
            for (name, value) in &fields {
                if let Ok(value) = HeaderValue::from_str(value) {
                    map.append(HeaderName::from_static(NAMES[*name]), value);
                }
            }
            map
        })
    }

    proptest! {
        #[test]
        fn any_limit_headers_read_into_bounded_hints(map in any_limit_headers()) {
            let hints = Hints::read(&map);
            if let Some(wait) = hints.retry_after {
                prop_assert!((MIN_WAIT..=MAX_WAIT).contains(&wait));
            }
            if let Some(reset) = hints.reset_in {
                prop_assert!(reset <= MAX_WAIT);
            }
            for policy in &hints.policies {
                let window = policy.quota.map_or(MAX_WINDOW, |(_, w)| w);
                prop_assert!(window >= Duration::from_secs(1));
                prop_assert!(window <= MAX_WINDOW);
                if let Some(reset) = policy.reset_in {
                    prop_assert!(reset <= window);
                }
            }
            if let Some(fill) = hints.bucket.and_then(|b| b.fill) {
                prop_assert!(fill.per_second() > 0.0 && fill.per_second().is_finite());
                prop_assert!(fill.every >= Duration::from_secs(1) && fill.every <= MAX_WAIT);
            }
        }
    }
}
