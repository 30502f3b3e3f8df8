//! Configuration: `file -> TOML table -> overrides -> RawConfig -> validate -> Config`.
//!
//! The file (if any) is read into a TOML table; command-line flags and their `WIKIGATE_*`
//! environment variables are written into that table as overrides; only then is it
//! deserialized into [`Config`]. So an override is checked exactly like a file value, and every
//! error names the key it is about (`server.listen: invalid socket address syntax`).
//!
//! Precedence, highest first: command-line flag, its `WIKIGATE_*` variable, the config file,
//! the built-in default.
//!
//! Invariants: unknown keys are errors; a [`Config`] can only be made by
//! [`RawConfig::validate`], so no code holds an unvalidated one (a test that changes a
//! setting changes a [`RawConfig`] and validates it again).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::routes::Route;

/// A validated configuration: what the gateway runs with. Read it as a [`RawConfig`] (it
/// dereferences to one); make one with [`RawConfig::validate`].
#[derive(Debug, Clone)]
pub struct Config(RawConfig);

impl std::ops::Deref for Config {
    type Target = RawConfig;

    fn deref(&self) -> &RawConfig {
        &self.0
    }
}

/// The whole configuration as written, not yet validated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub csrf: CsrfConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub callers: CallersConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub quota: QuotaConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// The keys a reload applies, as dotted prefixes; every other key needs a restart.
const RELOADABLE: [&str; 11] = [
    "callers",
    "auth",
    "limits",
    "quota",
    "csrf",
    "cache.routes",
    "cache.cache_not_found",
    "cache.not_found_ttl",
    "cache.ignored_cookies",
    "log.level",
    "server.tls",
];

/// Whether a reload (SIGHUP) applies `key`, a dotted path: callers and client keys, the
/// service-account credential, limits, the quota's settings, the CSRF allow-list, the cache's
/// per-route policies, 404s and ignored cookies, the log level, and the TLS certificate and
/// key (`auth.mode`, and turning TLS on or off, need a restart).
pub fn reloadable(key: &str) -> bool {
    let under = |prefix: &str| {
        key == prefix
            || key
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.'))
    };
    !under("auth.mode") && key != "server.tls" && RELOADABLE.iter().any(|p| under(p))
}

/// The dotted keys whose values differ between two configurations as TOML (a table key by
/// key; an array or a scalar as one value).
pub fn changed_between(a: &toml::Value, b: &toml::Value) -> Vec<String> {
    let mut changed = Vec::new();
    diff_values("", Some(a), Some(b), &mut changed);
    changed
}

impl Config {
    /// The effective configuration of a gateway that started with `self` and was reloaded
    /// with `running` since: the reloadable keys as `running` has them, every other as `self`
    /// has it. As TOML, secrets shown as `<redacted>`.
    pub fn effective(&self, running: &Config) -> String {
        let (Ok(mut started), Ok(now)) = (
            toml::Value::try_from(&self.0),
            toml::Value::try_from(&running.0),
        ) else {
            return String::new();
        };
        for key in self.changed_keys(running) {
            if reloadable(&key) {
                replace_path(&mut started, &key, lookup_path(&now, &key).cloned());
            }
        }
        toml::to_string_pretty(&started).unwrap_or_default()
    }

    /// The keys whose values differ between `self` and `other`, as dotted paths
    /// (`csrf.allowed_origins`, `cache.routes.user.ttl`): every value compared as TOML, and the
    /// secrets (shown as `<redacted>`) by value. Names only: never a value.
    pub fn changed_keys(&self, other: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        let (a, b) = (
            toml::Value::try_from(&self.0),
            toml::Value::try_from(&other.0),
        );
        if let (Ok(a), Ok(b)) = (a, b) {
            diff_values("", Some(&a), Some(&b), &mut changed);
        }
        let secrets = [
            ("admin.token", &self.admin.token, &other.admin.token),
            (
                "cache.key_secret",
                &self.cache.key_secret,
                &other.cache.key_secret,
            ),
        ];
        for (key, a, b) in secrets {
            if a != b && !changed.iter().any(|k| k == key) {
                changed.push(key.to_owned());
            }
        }
        changed.sort();
        changed
    }
}

fn lookup_path<'a>(value: &'a toml::Value, path: &str) -> Option<&'a toml::Value> {
    path.split('.').try_fold(value, |value, key| value.get(key))
}

/// Sets (or, with `None`, removes) the value at a dotted `path` of a table.
fn replace_path(value: &mut toml::Value, path: &str, new: Option<toml::Value>) {
    let Some(table) = value.as_table_mut() else {
        return;
    };
    match path.split_once('.') {
        None => {
            match new {
                Some(new) => table.insert(path.to_owned(), new),
                None => table.remove(path),
            };
        }
        Some((key, rest)) => {
            let inner = table
                .entry(key)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            replace_path(inner, rest, new);
        }
    }
}

/// Collects the dotted keys under `path` whose values differ (a table key by key; an array or
/// a scalar as one value).
fn diff_values(
    path: &str,
    a: Option<&toml::Value>,
    b: Option<&toml::Value>,
    changed: &mut Vec<String>,
) {
    match (a, b) {
        (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let path = match path.is_empty() {
                    true => key.clone(),
                    false => format!("{path}.{key}"),
                };
                diff_values(&path, a.get(key), b.get(key), changed);
            }
        }
        (a, b) if a != b => changed.push(path.to_owned()),
        _ => {}
    }
}

/// Multi-replica mode through Redis; off without `redis_url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://host:6379/0`, or `rediss://…` for TLS. Put no password here: see
    /// `redis_password_env`.
    pub redis_url: Option<String>,
    /// The environment variable holding the Redis password (AUTH).
    pub redis_password_env: Option<String>,
    /// A PEM CA bundle for `rediss://` instead of the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key, so several gateways can share one Redis.
    pub namespace: String,
    /// How many replicas share the limits; while Redis is down each enforces 1/replicas.
    pub replicas: u32,
    /// The longest a Redis operation may take before Redis counts as down.
    #[serde(with = "duration")]
    pub op_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: None,
            redis_password_env: None,
            redis_ca_file: None,
            namespace: "wikigate".to_owned(),
            replicas: 1,
            op_timeout: Duration::from_millis(100),
        }
    }
}

/// OpenTelemetry trace export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (`http://collector:4318`); spans go to `{base}/v1/traces`. Unset:
    /// export only if `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans, unless `OTEL_SERVICE_NAME` is set.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "wikigate".to_owned(),
        }
    }
}

/// The client-facing listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's headers (slowloris guard).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body (408 after it).
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Largest request header section accepted, names and values (431 above it).
    pub max_header_bytes: usize,
    /// Largest request target accepted (414 above it).
    pub max_uri_bytes: usize,
    /// Most header fields in one request (431 above it). Above 100, hyper allocates a parse
    /// buffer of this size for every request (see `server::Http::from_config`).
    pub max_headers: usize,
    /// Most client connections open at once; above it new connections wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Most concurrent HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// TLS termination; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// The URL clients reach wikigate at (`https://wikigate.internal.example`). When set,
    /// absolute Confluence URLs in `_links` (`base`, `self`) of stored answers are rewritten to
    /// it, so clients that page with `base + next` stay on the gateway.
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            // A 200-account bulk lookup is about 9 KB of query.
            max_uri_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            http2_max_concurrent_streams: 256,
            tls: None,
            public_url: None,
        }
    }
}

/// Certificate chain and private key, both PEM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The operator-facing listener (health, readiness, cache administration).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for `/admin/*`; those endpoints are off without one.
    /// Prefer the `WIKIGATE_ADMIN_TOKEN` environment variable to writing it here.
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token: None,
        }
    }
}

/// The response cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether GET answers are cached at all.
    pub enabled: bool,
    /// Memory budget: body + headers + key of every entry, in bytes.
    pub max_bytes: u64,
    /// Answers larger than this are streamed through and never stored.
    pub max_entry_bytes: usize,
    /// Secret keying the hash of credentials that partitions the cache. Random at each start
    /// when unset (replicas that share a cache need the same one). Prefer the
    /// `WIKIGATE_CACHE_KEY_SECRET` environment variable to writing it here.
    pub key_secret: Option<Secret>,
    /// Whether 404 answers are cached too, for `not_found_ttl`.
    pub cache_not_found: bool,
    #[serde(with = "duration")]
    pub not_found_ttl: Duration,
    /// How long a request waits for an identical one already fetching before it goes upstream
    /// itself.
    #[serde(with = "duration")]
    pub coalesce_timeout: Duration,
    /// Bulk lookups (`/user/bulk`, `/user/email/bulk`) are cached account by account, so a
    /// lookup asks upstream only for the accounts not cached yet.
    pub bulk_entities: bool,
    /// How long "no such (or no visible) account" from a bulk lookup is remembered.
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    /// Cookies that carry no identity (Atlassian's `atlassian.xsrf.token`, set afresh on every
    /// answer): removed from requests and answers, so they neither make a request bypass the
    /// cache nor keep an answer from being stored (`cookies`).
    pub ignored_cookies: Vec<String>,
    pub routes: RoutePolicies,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 256 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            key_secret: None,
            cache_not_found: false,
            not_found_ttl: Duration::from_secs(10),
            coalesce_timeout: Duration::from_secs(30),
            bulk_entities: true,
            negative_ttl: Duration::from_secs(30),
            ignored_cookies: vec!["atlassian.xsrf.token".to_owned()],
            routes: RoutePolicies::default(),
        }
    }
}

/// How one route's answers are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePolicy {
    /// How long an answer is fresh; `0s` disables caching for the route.
    #[serde(with = "duration")]
    pub ttl: Duration,
    /// After `ttl`, how long the expired answer may still be served when upstream fails.
    #[serde(with = "duration", default)]
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

impl RoutePolicy {
    const fn ttl(secs: u64) -> RoutePolicy {
        RoutePolicy {
            ttl: Duration::from_secs(secs),
            stale_if_error: Duration::ZERO,
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

/// Who is calling: gateway client keys and trusted proxies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallersConfig {
    /// The request header that carries a gateway client key.
    pub key_header: String,
    /// Peers (CIDRs) whose `X-Forwarded-For` is believed when keying callers by address.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Services known by a client key.
    pub clients: Vec<ClientConfig>,
}

impl Default for CallersConfig {
    fn default() -> Self {
        CallersConfig {
            key_header: "X-Wikigate-Key".to_owned(),
            trusted_proxies: Vec::new(),
            clients: Vec::new(),
        }
    }
}

/// One service that calls wikigate with a client key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Shown in logs and metrics.
    pub name: String,
    /// The quota class (`[limits.classes.NAME]`).
    #[serde(default = "defaults::class")]
    pub class: String,
    /// `wikigate hash-key` output for the client's key; the key itself is never configured.
    pub key_hash: KeyHash,
    /// Overrides the class's `requests` limit for this client.
    #[serde(default)]
    pub requests: Option<Rate>,
    /// Overrides the class's `upstream` limit for this client.
    #[serde(default)]
    pub upstream: Option<Rate>,
    /// Overrides the class's hourly points budget for this client.
    #[serde(default)]
    pub points: Option<PointsBudget>,
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

/// How callers' credentials reach upstream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// service-account: a file holding the upstream `Authorization` value (`Basic …`/`Bearer …`).
    pub credential_file: Option<PathBuf>,
    /// service-account: the environment variable holding it, when no file is given.
    pub credential_env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// The caller's `Authorization` goes upstream.
    #[default]
    Passthrough,
    /// Callers present client keys; wikigate sends its own credential upstream.
    ServiceAccount,
}

/// A GCRA rate: `rate` requests per `per`, bursts up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub rate: std::num::NonZeroU32,
    #[serde(with = "duration", default = "defaults::per")]
    pub per: Duration,
    /// Defaults to `rate`.
    #[serde(default)]
    pub burst: Option<std::num::NonZeroU32>,
}

impl Rate {
    pub fn burst(&self) -> std::num::NonZeroU32 {
        self.burst.unwrap_or(self.rate)
    }
}

/// Rate limits and upstream back-pressure.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The class of callers not known by a client key.
    pub default_class: String,
    /// One budget for all upstream traffic; keep it below the site's Atlassian limit.
    pub upstream_global: Option<Rate>,
    /// Upper bound on an upstream hold, whatever `Retry-After` says.
    #[serde(with = "duration")]
    pub max_hold: Duration,
    pub classes: std::collections::BTreeMap<String, ClassLimits>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let mut classes = std::collections::BTreeMap::new();
        classes.insert("default".to_owned(), ClassLimits::default());
        LimitsConfig {
            default_class: "default".to_owned(),
            upstream_global: None,
            max_hold: Duration::from_secs(300),
            classes,
        }
    }
}

/// The limits of one quota class; an absent limit is no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassLimits {
    /// All requests of a caller, cache hits included.
    pub requests: Option<Rate>,
    /// Requests of a caller that go upstream (misses, writes, bypasses).
    pub upstream: Option<Rate>,
    /// Atlassian quota points each caller of the class may spend per UTC hour.
    pub points: Option<PointsBudget>,
    /// Who keeps working when the site's quota runs low: under `quota.reserve`, the classes
    /// of lower priority are refused upstream calls first; the highest never by the reserve.
    pub priority: i32,
}

/// An hourly points budget: `{ per_hour = 20000 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsBudget {
    pub per_hour: std::num::NonZeroU32,
}

/// Atlassian's points quota: the site's budget when upstream states none, the reserve kept
/// for the highest priorities, and per-method budgets for API-token sites.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// The site's points per hour while upstream's answers state no policy of their own.
    pub points_per_hour: Option<u64>,
    /// A share of the hour's quota (0 to 1): under it, or while upstream says it is near its
    /// limit, lower priorities' upstream calls are refused, lowest first, and routes with
    /// `stale_on_low_quota` answer from expired entries.
    pub reserve: f64,
    /// Budgets for all upstream calls of one method, so that a shared gateway never trips an
    /// API-token site's per-method token buckets. Off unless set.
    pub methods: MethodBudgets,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            points_per_hour: None,
            reserve: 0.2,
            methods: MethodBudgets::default(),
        }
    }
}

/// Per-method upstream budgets (HEAD counts as GET). Atlassian publishes about 100 requests
/// a second for GET and POST and 50 for PUT and DELETE.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodBudgets {
    pub get: Option<Rate>,
    pub post: Option<Rate>,
    pub put: Option<Rate>,
    pub delete: Option<Rate>,
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

/// The Confluence site wikigate forwards to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `https://SITE.atlassian.net` or `https://api.atlassian.com/ex/confluence/{cloudId}`.
    pub url: UpstreamUrl,
    /// Time to establish a TCP connection.
    #[serde(with = "duration", default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the response's headers.
    #[serde(with = "duration", default = "defaults::response_timeout")]
    pub response_timeout: Duration,
    /// Time for the whole exchange, body included.
    #[serde(with = "duration", default = "defaults::request_timeout")]
    pub request_timeout: Duration,
    /// Extra PEM CA bundle trusted besides the public web roots (private PKI, tests).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Idle pooled connections are closed after this long.
    #[serde(with = "duration", default = "defaults::pool_idle_timeout")]
    pub pool_idle_timeout: Duration,
    /// Most idle pooled connections kept to the upstream.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// Most requests upstream at once (Envoy's `max_requests`); coalesced misses count once.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// Most requests waiting for one of those places; past it, 503 at once.
    #[serde(default = "defaults::max_queued")]
    pub max_queued: usize,
    /// Longest a request waits for a place before 503.
    #[serde(with = "duration", default = "defaults::max_queue_wait")]
    pub max_queue_wait: Duration,
    /// Longest an upstream call waits for its share of a burst bucket's refill (the bucket of
    /// its endpoint and method, as Atlassian states it) before it is refused with 429.
    #[serde(with = "duration", default = "defaults::burst_wait")]
    pub burst_wait: Duration,
    /// The time in which a burst bucket refills from empty (Atlassian's are per second).
    #[serde(with = "duration", default = "defaults::burst_window")]
    pub burst_window: Duration,
}

mod defaults {
    use std::time::Duration;
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn response_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub fn pool_max_idle() -> usize {
        64
    }
    pub fn max_in_flight() -> usize {
        32
    }
    pub fn max_queued() -> usize {
        256
    }
    pub fn max_queue_wait() -> Duration {
        Duration::from_secs(2)
    }
    pub fn burst_wait() -> Duration {
        Duration::from_secs(2)
    }
    pub fn burst_window() -> Duration {
        Duration::from_secs(1)
    }
    pub fn class() -> String {
        "default".to_owned()
    }
    pub fn per() -> Duration {
        Duration::from_secs(1)
    }
}

/// The CSRF guard that takes over from Confluence's XSRF check (see `upstream`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsrfConfig {
    /// Origins (`scheme://host[:port]`) whose browser writes are accepted. Writes carrying any
    /// other `Origin` are refused with 403. Empty: every write that carries `Origin` is refused.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `wikigate=debug,hyper=info`); `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A parsed upstream base URL: scheme, authority and an optional path prefix without a
/// trailing slash. Incoming paths are appended to the prefix unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    prefix: String,
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
        Ok(UpstreamUrl {
            scheme,
            authority,
            prefix: path.trim_end_matches('/').to_owned(),
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

/// Why a configuration was refused. Every variant names the file or the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    FileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        /// Where the parser stopped, 1-based, as an editor counts (columns in characters).
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// A TOML syntax error in `text` (read from `path`), at the line and column it names.
    fn syntax(path: &Path, text: &str, error: &toml::de::Error) -> Self {
        let at = error.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..at).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit_once('\n')
            .map_or(before, |(_, last)| last)
            .chars()
            .count()
            + 1;
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: error.message().to_owned(),
        }
    }

    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Values given on the command line or in `WIKIGATE_*` variables, keyed by config path.
#[derive(Debug, Default, Clone)]
pub struct Overrides(Vec<(&'static str, String)>);

impl Overrides {
    /// Sets `key` (a dotted config path such as `server.listen`) to a string value.
    pub fn set(&mut self, key: &'static str, value: Option<impl Into<String>>) -> &mut Self {
        if let Some(value) = value {
            self.0.push((key, value.into()));
        }
        self
    }
}

impl Config {
    /// Loads the files (none, one, or several merged in order: a later file's keys win, table
    /// by table; an array is replaced whole), applies the overrides, and validates.
    pub fn load(files: &[PathBuf], overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::FileRead {
                path: path.to_owned(),
                source,
            })?;
            let layer = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::syntax(path, &text, &e))?;
            merge_tables(&mut table, layer);
        }
        for (key, value) in &overrides.0 {
            set_path(&mut table, key, toml::Value::String(value.clone()));
        }
        RawConfig::from_table(table)?.validate()
    }

    /// Parses and validates TOML text (no file, no overrides); used by tests and the demo.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        RawConfig::from_toml(text)?.validate()
    }

    /// The configuration as written, to change and validate again.
    pub fn into_raw(self) -> RawConfig {
        self.0
    }

    /// The effective configuration as TOML, as `check-config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.0).expect("config serializes to TOML")
    }
}

impl RawConfig {
    /// Parses TOML text (no file, no overrides), not yet validated.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError::syntax(Path::new("<inline>"), text, &e))?;
        RawConfig::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<RawConfig, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            // toml appends "in `table`" lines that repeat the path; keep the first line.
            let message = e.into_inner().to_string();
            let message = message.lines().next().unwrap_or_default().trim().to_owned();
            // serde reports a missing key at its parent; name the key itself.
            match message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                Some(field) if path == "." => ConfigError::invalid(field, "is required"),
                Some(field) => ConfigError::invalid(&format!("{path}.{field}"), "is required"),
                None => ConfigError::invalid(&path, message),
            }
        })
    }

    /// The cross-field and range checks that types alone cannot express; the only way to a
    /// [`Config`].
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.check_times()?;
        self.check_sizes()?;
        self.check_cache()?;
        self.check_callers()?;
        self.check_cluster()?;
        self.check_addresses()?;
        self.check_files()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        Ok(Config(self))
    }

    fn check_times(&self) -> Result<(), ConfigError> {
        let positive = [
            ("server.drain_timeout", self.server.drain_timeout),
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.body_read_timeout", self.server.body_read_timeout),
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.response_timeout", self.upstream.response_timeout),
            ("upstream.request_timeout", self.upstream.request_timeout),
            ("upstream.burst_window", self.upstream.burst_window),
            ("cache.coalesce_timeout", self.cache.coalesce_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        if self.upstream.request_timeout < self.upstream.response_timeout {
            return Err(ConfigError::invalid(
                "upstream.request_timeout",
                "must not be shorter than upstream.response_timeout",
            ));
        }
        Ok(())
    }

    fn check_sizes(&self) -> Result<(), ConfigError> {
        let sizes = [
            ("server.max_body_bytes", self.server.max_body_bytes),
            ("server.max_header_bytes", self.server.max_header_bytes),
            ("server.max_uri_bytes", self.server.max_uri_bytes),
            ("server.max_headers", self.server.max_headers),
            ("server.max_connections", self.server.max_connections),
            ("upstream.max_in_flight", self.upstream.max_in_flight),
            (
                "server.http2_max_concurrent_streams",
                self.server.http2_max_concurrent_streams as usize,
            ),
        ];
        for (key, value) in sizes {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be greater than zero"));
            }
        }
        Ok(())
    }

    fn check_cache(&self) -> Result<(), ConfigError> {
        if self.cache.max_entry_bytes as u64 > self.cache.max_bytes {
            return Err(ConfigError::invalid(
                "cache.max_entry_bytes",
                "must not exceed cache.max_bytes",
            ));
        }
        for (i, name) in self.cache.ignored_cookies.iter().enumerate() {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !token {
                return Err(ConfigError::invalid(
                    &format!("cache.ignored_cookies[{i}]"),
                    format!("`{name}` is not a cookie name"),
                ));
            }
        }
        Ok(())
    }

    fn check_cluster(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.cluster.redis_url else {
            return Ok(());
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                "cluster.redis_url",
                "must start with redis:// or rediss://",
            ));
        }
        if self.cache.key_secret.is_none() {
            return Err(ConfigError::invalid(
                "cache.key_secret",
                "replicas sharing a cache need the same key secret (or WIKIGATE_CACHE_KEY_SECRET)",
            ));
        }
        if self.cluster.replicas == 0 || self.cluster.op_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "cluster.replicas",
                "replicas and op_timeout must be greater than zero",
            ));
        }
        Ok(())
    }

    /// The public URL, the listeners and the browser origins allowed to write.
    fn check_addresses(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.server.public_url {
            let uri: http::Uri = url.parse().map_err(|_| {
                ConfigError::invalid("server.public_url", format!("`{url}` is not a URL"))
            })?;
            if uri.scheme().is_none() || uri.authority().is_none() || uri.query().is_some() {
                return Err(ConfigError::invalid(
                    "server.public_url",
                    "must be an absolute http(s) URL without a query",
                ));
            }
        }
        if self.server.listen == self.admin.listen && self.server.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin.listen",
                "must differ from server.listen",
            ));
        }
        for (i, origin) in self.csrf.allowed_origins.iter().enumerate() {
            let key = format!("csrf.allowed_origins[{i}]");
            let uri: http::Uri = origin
                .parse()
                .map_err(|_| ConfigError::invalid(&key, format!("`{origin}` is not an origin")))?;
            let is_origin = uri.scheme().is_some()
                && uri.authority().is_some()
                && matches!(uri.path(), "" | "/")
                && uri.query().is_none()
                && !origin.ends_with('/');
            if !is_origin {
                return Err(ConfigError::invalid(
                    &key,
                    format!("`{origin}` is not an origin (scheme://host[:port])"),
                ));
            }
        }
        Ok(())
    }

    /// Files the configuration names exist (whether they parse, `lifecycle::check` tells).
    fn check_files(&self) -> Result<(), ConfigError> {
        let tls = self.server.tls.iter().flat_map(|tls| {
            [
                ("server.tls.cert_file", &tls.cert_file),
                ("server.tls.key_file", &tls.key_file),
            ]
        });
        let ca = self
            .upstream
            .ca_file
            .iter()
            .map(|ca| ("upstream.ca_file", ca));
        for (key, path) in tls.chain(ca) {
            if !path.is_file() {
                return Err(ConfigError::invalid(
                    key,
                    format!("{} is not a readable file", path.display()),
                ));
            }
        }
        Ok(())
    }

    fn check_callers(&self) -> Result<(), ConfigError> {
        if http::HeaderName::from_bytes(self.callers.key_header.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                "callers.key_header",
                "is not a header name",
            ));
        }
        let class_known = |class: &str| self.limits.classes.contains_key(class);
        if !class_known(&self.limits.default_class) {
            return Err(ConfigError::invalid(
                "limits.default_class",
                format!("no [limits.classes.{}]", self.limits.default_class),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, client) in self.callers.clients.iter().enumerate() {
            let key = |field: &str| format!("callers.clients[{i}].{field}");
            if client.name.is_empty() || !names.insert(client.name.as_str()) {
                return Err(ConfigError::invalid(
                    &key("name"),
                    "must be present and unique",
                ));
            }
            if !hashes.insert(client.key_hash) {
                return Err(ConfigError::invalid(
                    &key("key_hash"),
                    "is used by two clients",
                ));
            }
            if !class_known(&client.class) {
                return Err(ConfigError::invalid(
                    &key("class"),
                    format!("no [limits.classes.{}]", client.class),
                ));
            }
        }
        self.check_rates()?;
        if !(0.0..1.0).contains(&self.quota.reserve) {
            return Err(ConfigError::invalid(
                "quota.reserve",
                "must be a share of the quota, at least 0 and below 1",
            ));
        }
        if self.auth.mode == AuthMode::ServiceAccount {
            if self.callers.clients.is_empty() {
                return Err(ConfigError::invalid(
                    "callers.clients",
                    "service-account mode needs at least one client key",
                ));
            }
            if self.auth.credential_file.is_none() && self.auth.credential_env.is_none() {
                return Err(ConfigError::invalid(
                    "auth.credential_file",
                    "service-account mode needs credential_file or credential_env",
                ));
            }
        }
        Ok(())
    }

    fn check_rates(&self) -> Result<(), ConfigError> {
        let methods = &self.quota.methods;
        let rates = self
            .limits
            .classes
            .iter()
            .flat_map(|(name, c)| {
                [
                    (format!("limits.classes.{name}.requests"), c.requests),
                    (format!("limits.classes.{name}.upstream"), c.upstream),
                ]
            })
            .chain([
                (
                    "limits.upstream_global".to_owned(),
                    self.limits.upstream_global,
                ),
                ("quota.methods.get".to_owned(), methods.get),
                ("quota.methods.post".to_owned(), methods.post),
                ("quota.methods.put".to_owned(), methods.put),
                ("quota.methods.delete".to_owned(), methods.delete),
            ]);
        for (key, rate) in rates {
            if rate.is_some_and(|r| r.per.is_zero()) {
                return Err(ConfigError::invalid(&key, "per must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// Merges `layer` into `base`: tables key by key, everything else (arrays too) replaced.
fn merge_tables(base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                merge_tables(below, above);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let mut keys = dotted.split('.').peekable();
    let mut current = table;
    while let Some(key) = keys.next() {
        if keys.peek().is_none() {
            current.insert(key.to_owned(), value);
            return;
        }
        let entry = current
            .entry(key.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        current = entry.as_table_mut().expect("just made a table");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_applies_the_documented_keys_and_nothing_else() {
        for key in [
            "callers.clients",
            "auth.credential_env",
            "limits.classes.default.requests",
            "quota.reserve",
            "csrf.allowed_origins",
            "cache.routes.user.ttl",
            "cache.cache_not_found",
            "cache.ignored_cookies",
            "log.level",
            "server.tls.cert_file",
        ] {
            assert!(reloadable(key), "{key}");
        }
        for key in [
            "auth.mode",
            "server.tls",
            "server.listen",
            "cache.max_bytes",
            "cache.routesx",
            "log.format",
            "upstream.url",
            "admin.token",
            "cluster.redis_url",
        ] {
            assert!(!reloadable(key), "{key}");
        }
    }

    #[test]
    fn the_effective_config_takes_reloaded_keys_only() {
        let started = RawConfig::from_toml(
            "[upstream]\nurl = \"https://a.example\"\n[csrf]\nallowed_origins = [\"https://x.example\"]\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        let mut running = (*started).clone();
        running.csrf.allowed_origins.clear();
        running.server.max_body_bytes = 7;
        let running = running.validate().unwrap();
        let effective: toml::Table = toml::from_str(&started.effective(&running)).unwrap();
        assert_eq!(
            effective["csrf"]["allowed_origins"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert_ne!(effective["server"]["max_body_bytes"].as_integer(), Some(7));
        assert_eq!(
            started.changed_keys(&running),
            ["csrf.allowed_origins", "server.max_body_bytes"]
        );
    }

    const MINIMAL: &str = "[upstream]\nurl = \"https://example.atlassian.net\"\n";

    #[test]
    fn defaults_fill_everything_but_the_upstream() {
        let config = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.server.max_body_bytes, 1 << 20);
        assert_eq!(config.upstream.url.prefix(), "");
    }

    #[test]
    fn upstream_url_keeps_its_path_prefix() {
        let url: UpstreamUrl = "https://api.atlassian.com/ex/confluence/abc-123/"
            .parse()
            .unwrap();
        assert_eq!(url.prefix(), "/ex/confluence/abc-123");
        assert_eq!(url.authority().as_str(), "api.atlassian.com");
        for bad in [
            "api.atlassian.com",
            "ftp://x.example",
            "https://u:p@x.example",
            "https://x.example/?a=1",
        ] {
            assert!(bad.parse::<UpstreamUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"nope\"\n", "server.listen"),
            ("[server]\nlsten = \"1.2.3.4:1\"\n", "server"),
            (
                "[upstream]\nurl = \"https://a.example\"\nconnect_timeout = \"5 parsecs\"\n",
                "upstream.connect_timeout",
            ),
            (
                "[upstream]\nconnect_timeout = \"5s\"\n",
                "upstream.url: is required",
            ),
            ("[server]\nmax_body_bytes = -1\n", "server.max_body_bytes"),
            ("", "upstream: is required"),
            (
                "[csrf]\nallowed_origins = [\"https://a.example/path\"]\n",
                "csrf.allowed_origins[0]",
            ),
        ];
        for (text, key) in cases {
            let text = if text.contains("[upstream]") || text.is_empty() {
                text.to_owned()
            } else {
                format!("{text}{MINIMAL}")
            };
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn overrides_win_over_the_file_and_are_validated() {
        let dir = std::env::temp_dir().join(format!("wikigate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            format!("[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL}"),
        )
        .unwrap();
        let mut overrides = Overrides::default();
        overrides.set("server.listen", Some("127.0.0.1:2"));
        let config = Config::load(std::slice::from_ref(&file), &overrides).unwrap();
        assert_eq!(config.server.listen.port(), 2);
        let mut bad = Overrides::default();
        bad.set("upstream.url", Some("not a url"));
        let err = Config::load(std::slice::from_ref(&file), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("upstream.url"), "{err}");
    }

    #[test]
    fn durations_round_trip() {
        for s in ["250ms", "5s", "2m", "1h", "90s"] {
            let d = duration::parse(s).unwrap();
            assert_eq!(duration::parse(&duration::format(&d)).unwrap(), d);
        }
        assert!(duration::parse("5").is_err());
        assert!(duration::parse("s").is_err());
        assert!(duration::parse("5d").is_err());
        assert_eq!(duration::parse("8760h"), Ok(duration::MAX));
    }

    #[test]
    fn durations_that_overflow_are_refused_naming_the_key() {
        for too_long in [
            "9999999999999999h",
            "99999999999999999999999s",
            "8761h",
            "5124095576030431h",
        ] {
            assert!(
                duration::parse(too_long).unwrap_err().contains("too long"),
                "{too_long}"
            );
            let text = format!("[cache.routes]\nuser = {{ ttl = \"{too_long}\" }}\n{MINIMAL}");
            let err = Config::from_toml(&text).unwrap_err().to_string();
            assert!(err.starts_with("cache.routes.user.ttl: "), "{err}");
            assert!(err.contains("too long"), "{err}");
        }
    }
}
