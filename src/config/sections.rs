//! The sections of the configuration file, one struct per table, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{KeyHash, RoutePolicies, Secret, UpstreamUrl, duration};

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
    /// How long a connection may stay quiet — no request under way, as while a client trickles
    /// a head or idles on keep-alive — before it is closed, within a quarter more (slowloris
    /// guard, `server`); also bounds a TLS handshake.
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
    /// Threads that serve the gateway listener, each a runtime of its own accepting on a
    /// socket of its own (`SO_REUSEPORT`: the kernel spreads connections over them), as
    /// HAProxy's and Pingora's threads do: a connection's work never crosses threads. Absent:
    /// one per CPU the process may use. `0`: served on the runtime wikigate was started on
    /// (when it is embedded; the in-process tests, whose clocks they pause).
    pub threads: Option<usize>,
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
            threads: None,
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
    pub merge: MergeConfig,
    pub refresh: RefreshConfig,
}

/// Refresh-ahead: entries read late in their life are fetched again in the background, within
/// the upstream budget (README, "Refresh-ahead").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// The routes whose entries are refreshed ahead (route names of `[cache.routes]`); `[]`
    /// turns it off.
    pub routes: Vec<String>,
    /// A read past this share of an entry's TTL (plus up to a tenth more, at random, so that
    /// replicas do not refresh in step) refreshes it.
    pub after: f64,
    /// A refresh takes a burst token only while its bucket holds at least this share of its
    /// size (it never waits for one), and a place upstream only when one is free.
    pub burst_share: f64,
    /// An entry that keeps coming back unchanged is kept fresh up to this many times its
    /// route's TTL; one that keeps changing, down to half of it.
    pub max_stretch: f64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            routes: crate::routes::Route::ALL
                .iter()
                .map(|route| route.name().to_owned())
                .collect(),
            after: 0.8,
            burst_share: 0.5,
            max_stretch: 2.0,
        }
    }
}

/// Single account lookups answered from per-account objects and merged into bulk calls
/// (README, "Account lookups").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// The single-lookup routes this applies to: `user` (`/user?accountId=`, with
    /// `/user/bulk`) and `email` (`/user/email?accountId=`, with `/user/email/bulk`). Leave a
    /// route out to answer its lookups one call each, from their own entries only.
    pub routes: Vec<String>,
    /// How long a lookup of a caller whose answers carry a points policy (OAuth, Forge and
    /// Connect apps) waits for others to share its bulk call. API-token callers never wait:
    /// their lookups merge only while a call would wait anyway (a burst token, a place
    /// upstream).
    #[serde(with = "duration")]
    pub window: Duration,
    /// The most accounts in one merged call (Atlassian's limit is 200).
    pub max_ids: usize,
    /// The longest `accountId` list in one merged call, in bytes (Atlassian has answered 400 to
    /// a request line of 200 long account ids).
    pub max_query_bytes: usize,
    /// How often a site's single and bulk answers are compared again.
    #[serde(with = "duration")]
    pub recheck: Duration,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            routes: vec!["user".to_owned(), "email".to_owned()],
            window: Duration::from_millis(2),
            max_ids: 200,
            max_query_bytes: 4096,
            recheck: Duration::from_secs(24 * 3600),
        }
    }
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
            merge: MergeConfig::default(),
            refresh: RefreshConfig::default(),
        }
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
    /// The time a burst bucket is assumed to take to refill from empty until its rate is
    /// stated (`X-RateLimit-FillRate`) or learned from answers: 10 s, Atlassian's documented
    /// burst period, slower than any bucket seen (a bucket's size is not its rate).
    #[serde(with = "duration", default = "defaults::burst_window")]
    pub burst_window: Duration,
}

mod defaults {
    use std::time::Duration;
    pub(super) fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn response_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub(super) fn request_timeout() -> Duration {
        Duration::from_secs(60)
    }
    pub(super) fn pool_idle_timeout() -> Duration {
        Duration::from_secs(90)
    }
    pub(super) fn pool_max_idle() -> usize {
        64
    }
    pub(super) fn max_in_flight() -> usize {
        32
    }
    pub(super) fn max_queued() -> usize {
        256
    }
    pub(super) fn max_queue_wait() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn burst_wait() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn burst_window() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn class() -> String {
        "default".to_owned()
    }
    pub(super) fn per() -> Duration {
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
    /// Access lines log the route's template (`/wiki/rest/api/user/{userId}/property/{key}`)
    /// instead of the path, so that no account id or property key is logged (a path no route
    /// matches is logged as `-`).
    pub redact_paths: bool,
    /// Which requests get an access line (while `level` lets the access log through).
    pub access: AccessLines,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".to_owned(),
            redact_paths: false,
            access: AccessLines::All,
        }
    }
}

/// Which requests get an access line: at tens of thousands of hits a second the line is the
/// largest single cost of a hit, and these keep the lines that matter (as HAProxy's
/// `option dontlog-normal`, nginx's `access_log … if=` and Envoy's access-log filters do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum AccessLines {
    /// Every request.
    #[default]
    All,
    /// Every request the cache did not answer at once: all but fresh hits and
    /// stale-while-revalidate hits (misses, coalesced and stale answers, bypasses, writes,
    /// refusals, errors — every request that spent or was refused an upstream call).
    ExceptHits,
    /// Answers with a status of 400 or more.
    Errors,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
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
