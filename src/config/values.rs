//! The value types of the configuration: each parses (and refuses) its own text, so a value
//! that is held is valid — an upstream URL, a secret that never prints, a rate, a duration, the
//! per-route cache policies.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::routes::Route;

/// How one route's answers are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// How long an answer is fresh; `0s` disables caching for the route.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// After `ttl`, how long the expired answer may still be served when upstream fails
    /// (connect error, timeout, 5xx, 429): an hour unless told ([`STALE_IF_ERROR`]).
    #[serde(with = "duration", default = "stale_if_error")]
    pub stale_if_error: Duration,
    /// After `ttl`, how long the expired answer is served at once while one background
    /// request refreshes it.
    #[serde(with = "duration", default)]
    pub stale_while_revalidate: Duration,
    /// After `ttl`, how long the expired answer is served instead of spending points while
    /// the site's quota is under `quota.reserve` (or upstream says it is near its limit).
    #[serde(with = "duration", default)]
    pub stale_on_low_quota: Duration,
}

/// How long past its TTL an answer is served when upstream fails, unless a route says: what
/// operators turn on first in Varnish (grace) and nginx (`proxy_cache_use_stale`), so that a
/// site outage is served from a warm cache. Bounded: an hour-old user, membership or watch is
/// still the caller's own answer (entries never cross partitions), and an entry a write
/// invalidated is never served stale.
const STALE_IF_ERROR: Duration = Duration::from_secs(3600);

fn stale_if_error() -> Duration {
    STALE_IF_ERROR
}

impl RoutePolicy {
    const fn ttl(secs: u64) -> RoutePolicy {
        RoutePolicy {
            ttl: Duration::from_secs(secs),
            stale_if_error: STALE_IF_ERROR,
            stale_while_revalidate: Duration::ZERO,
            stale_on_low_quota: Duration::ZERO,
        }
    }
}

/// Per-route cache policies, one per GET route of the route table, written as a table keyed by
/// the route's name (`[cache.routes] user = { ttl = "5m" }`); a route left out keeps its
/// default (the route table's `default_ttl`), an unknown name is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicies([RoutePolicy; Route::ALL.len()]);

impl Default for RoutePolicies {
    fn default() -> Self {
        RoutePolicies(Route::ALL.map(|route| RoutePolicy::ttl(route.spec().default_ttl)))
    }
}

impl RoutePolicies {
    pub fn get(&self, route: Route) -> &RoutePolicy {
        &self.0[route.index()]
    }

    /// Sets every route's policy (tests, benchmarks).
    pub fn set_all(&mut self, policy: RoutePolicy) {
        self.0 = [policy; Route::ALL.len()];
    }

    /// Sets one route's policy.
    pub fn set(&mut self, route: Route, policy: RoutePolicy) {
        self.0[route.index()] = policy;
    }
}

impl Serialize for RoutePolicies {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(Route::ALL.len()))?;
        for route in Route::ALL {
            map.serialize_entry(route.name(), self.get(route))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for RoutePolicies {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RoutePolicies;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a table of route names to { ttl, stale_if_error, stale_while_revalidate }",
                )
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut policies = RoutePolicies::default();
                while let Some(name) = map.next_key::<String>()? {
                    let route = Route::named(&name).ok_or_else(|| {
                        let names: Vec<&str> = Route::ALL.iter().map(|r| r.name()).collect();
                        serde::de::Error::custom(format!(
                            "unknown route `{name}`, expected one of {}",
                            names.join(", ")
                        ))
                    })?;
                    policies.set(route, map.next_value()?);
                }
                Ok(policies)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The hash of a client key, written `blake3:<64 hex digits>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        KeyHash(*blake3::hash(key.as_bytes()).as_bytes())
    }
}

impl std::fmt::Display for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "blake3:{}", blake3::Hash::from(self.0).to_hex())
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let hex = text.strip_prefix("blake3:").ok_or_else(|| {
            serde::de::Error::custom("must start with `blake3:` (see `wikigate hash-key`)")
        })?;
        blake3::Hash::from_hex(hex)
            .map(|h| KeyHash(*h.as_bytes()))
            .map_err(|_| serde::de::Error::custom("must be `blake3:` and 64 hex digits"))
    }
}

/// A secret value: never printed, never logged. `check-config` shows `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret as `check-config --against` compares it: a BLAKE3 hash keyed with `key`,
    /// never the value.
    pub fn digest(&self, key: &[u8; 32]) -> String {
        digest(key, self.0.as_bytes())
    }
}

/// A secret's keyed digest as `/admin/config?digests` shows it: `<blake3:HEX>`.
pub(crate) fn digest(key: &[u8; 32], secret: &[u8]) -> String {
    format!("<blake3:{}>", blake3::keyed_hash(key, secret).to_hex())
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = String::deserialize(d)?;
        if value.len() < 16 {
            return Err(serde::de::Error::custom(
                "must be at least 16 characters long",
            ));
        }
        Ok(Secret(value))
    }
}

/// A parsed upstream base URL: scheme, authority and an optional path prefix without a
/// trailing slash. Incoming paths (`/wiki/rest/api/user/…`) are appended to the prefix
/// unchanged, so a prefix that ends in `/wiki` — Confluence's own "base URL", which operators
/// paste — is taken off (else every call would go to `/wiki/wiki/…`), and [`Config::warnings`]
/// says so.
///
/// [`Config::warnings`]: super::Config::warnings
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    prefix: String,
    /// The `/wiki` the URL ended in was taken off.
    took_off_wiki: bool,
}

impl UpstreamUrl {
    pub fn scheme(&self) -> &http::uri::Scheme {
        &self.scheme
    }

    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// The path prefix, empty or starting with `/` and without a trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the URL as written ended in `/wiki`, which was taken off.
    pub fn took_off_wiki(&self) -> bool {
        self.took_off_wiki
    }

    /// Whether callers' credentials would cross a network in clear: `http://` to a host that
    /// is not this machine's loopback.
    pub fn in_clear(&self) -> bool {
        if self.scheme != http::uri::Scheme::HTTP {
            return false;
        }
        let host = self.authority.host();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.to_ascii_lowercase().ends_with(".localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        !loopback
    }
}

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or("needs a scheme (https://…)")?;
        if scheme != http::uri::Scheme::HTTPS && scheme != http::uri::Scheme::HTTP {
            return Err(format!("scheme must be https or http, not {scheme}"));
        }
        let authority = parts.authority.ok_or("needs a host")?;
        if authority.as_str().contains('@') {
            return Err("must not carry credentials".to_owned());
        }
        let path_and_query = parts.path_and_query;
        if path_and_query.as_ref().and_then(|p| p.query()).is_some() {
            return Err("must not carry a query".to_owned());
        }
        let path = path_and_query.as_ref().map_or("", |p| p.path());
        let prefix = path.trim_end_matches('/');
        let (prefix, took_off_wiki) = match prefix.strip_suffix("/wiki") {
            Some(site) => (site, true),
            None => (prefix, false),
        };
        Ok(UpstreamUrl {
            scheme,
            authority,
            prefix: prefix.trim_end_matches('/').to_owned(),
            took_off_wiki,
        })
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Durations written as `250ms`, `5s`, `2m` or `1h`, at most a year.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// The longest duration any key accepts: longer ones are typos, and would overflow the
    /// clock arithmetic that deadlines and expiries are made of.
    pub const MAX: Duration = Duration::from_secs(365 * 24 * 3600);

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{s}` needs a unit: ms, s, m or h"))?;
        let (number, unit) = s.split_at(split);
        let too_long = || format!("`{s}` is too long (at most {})", format(&MAX));
        let n: u64 = number
            .parse()
            .map_err(|e: std::num::ParseIntError| match e.kind() {
                std::num::IntErrorKind::PosOverflow => too_long(),
                _ => format!("`{s}` is not a duration like 250ms, 5s, 2m, 1h"),
            })?;
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(format!("`{s}` has an unknown unit; use ms, s, m or h")),
        };
        let duration = n
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .filter(|d| *d <= MAX)
            .ok_or_else(too_long)?;
        Ok(duration)
    }

    pub fn format(d: &Duration) -> String {
        let ms = d.as_millis();
        if !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else {
            format!("{}s", ms / 1000)
        }
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
