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
//!
//! The parts: this file (loading, merging files, validation), `sections` (one struct per
//! table, with its defaults), `values` (value types that parse and refuse their own text),
//! `reload` (the keys SIGHUP applies, the keys two configurations differ in).

mod reload;
mod sections;
#[cfg(test)]
mod tests;
mod values;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use reload::{changed_between, reloadable, with_digests};
pub use sections::{
    AccessLines, AdminConfig, AuthConfig, AuthMode, CacheConfig, CallersConfig, ClassLimits,
    ClientConfig, ClusterConfig, CsrfConfig, LimitsConfig, LogConfig, LogFormat, MergeConfig,
    MethodBudgets, PointsBudget, QuotaConfig, Rate, RefreshConfig, ServerConfig, TelemetryConfig,
    TlsConfig, UpstreamConfig,
};
pub(crate) use values::digest;
pub use values::{KeyHash, RoutePolicies, RoutePolicy, Secret, UpstreamUrl, duration};

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
    /// by table; `[[callers.clients]]` merge by name; any other array is replaced whole),
    /// applies the overrides, and validates.
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

    /// What is accepted but probably not meant, each naming its key: `check-config` prints
    /// these to standard error, `serve` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let url = &self.0.upstream.url;
        let mut warnings = Vec::new();
        if url.took_off_wiki() {
            warnings.push(format!(
                "upstream.url: the /wiki it ended in was taken off (the site is {url}; wikigate \
                 forwards /wiki/rest/api/… below it)"
            ));
        }
        if url.in_clear() {
            warnings.push(format!(
                "upstream.url: {url} is plain http to a host that is not loopback: callers' \
                 credentials would cross the network in clear (use https://)"
            ));
        }
        warnings
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
        let merge = &self.cache.merge;
        for (i, name) in merge.routes.iter().enumerate() {
            if !["user", "email"].contains(&name.as_str()) {
                return Err(ConfigError::invalid(
                    &format!("cache.merge.routes[{i}]"),
                    format!("`{name}` is not a route with bulk lookups: user or email"),
                ));
            }
        }
        if !(1..=200).contains(&merge.max_ids) {
            return Err(ConfigError::invalid(
                "cache.merge.max_ids",
                "must be between 1 and 200",
            ));
        }
        if merge.max_query_bytes < 256 {
            return Err(ConfigError::invalid(
                "cache.merge.max_query_bytes",
                "must be at least 256",
            ));
        }
        if merge.window > Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "cache.merge.window",
                "must be at most 100ms: every merged lookup of a points caller waits it",
            ));
        }
        if merge.recheck < Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "cache.merge.recheck",
                "must be at least 1m",
            ));
        }
        let refresh = &self.cache.refresh;
        for (i, name) in refresh.routes.iter().enumerate() {
            if crate::routes::Route::named(name).is_none() {
                return Err(ConfigError::invalid(
                    &format!("cache.refresh.routes[{i}]"),
                    format!("`{name}` is not a route name of [cache.routes]"),
                ));
            }
        }
        if !(0.1..1.0).contains(&refresh.after) {
            return Err(ConfigError::invalid(
                "cache.refresh.after",
                "must be a share of the TTL, at least 0.1 and less than 1",
            ));
        }
        if !(0.0..=1.0).contains(&refresh.burst_share) {
            return Err(ConfigError::invalid(
                "cache.refresh.burst_share",
                "must be between 0 and 1",
            ));
        }
        if !(1.0..=100.0).contains(&refresh.max_stretch) {
            return Err(ConfigError::invalid(
                "cache.refresh.max_stretch",
                "must be between 1 (never stretched) and 100",
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

/// Merges `layer` into `base`: tables key by key; `[[callers.clients]]` by `name` (a client
/// of the same name replaced whole, new ones added after); everything else, other arrays
/// too, replaced.
fn merge_tables(base: &mut toml::Table, layer: toml::Table) {
    merge_at("", base, layer);
}

fn merge_at(path: &str, base: &mut toml::Table, layer: toml::Table) {
    for (key, value) in layer {
        let here = match path {
            "" => key.clone(),
            _ => format!("{path}.{key}"),
        };
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                merge_at(&here, below, above);
            }
            (Some(toml::Value::Array(below)), toml::Value::Array(above))
                if here == "callers.clients" =>
            {
                for client in above {
                    let name = client.get("name").cloned();
                    match below
                        .iter_mut()
                        .find(|c| name.is_some() && c.get("name") == name.as_ref())
                    {
                        Some(same) => *same = client,
                        None => below.push(client),
                    }
                }
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
