//! What a reload changes: the keys SIGHUP applies ([`reloadable`]), the keys two
//! configurations differ in, and the effective configuration after reloads.

use super::Config;

/// The keys a reload applies, as dotted prefixes; every other key needs a restart.
const RELOADABLE: [&str; 12] = [
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
    "log.access",
    "server.tls",
];

/// Whether a reload (SIGHUP) applies `key`, a dotted path: callers and client keys, the
/// service-account credential, limits, the quota's settings, the CSRF allow-list, the cache's
/// per-route policies, 404s and ignored cookies, the log level and which requests it logs,
/// and the TLS certificate and key (`auth.mode`, and turning TLS on or off, need a restart).
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

impl Config {
    /// Each secret of the configuration that is set, by key, as a digest keyed with `key`
    /// (for `check-config --against`, which compares secrets without seeing them).
    pub fn secret_digests(&self, key: &[u8; 32]) -> Vec<(&'static str, String)> {
        [
            ("admin.token", &self.admin.token),
            ("cache.key_secret", &self.cache.key_secret),
        ]
        .into_iter()
        .filter_map(|(name, secret)| Some((name, secret.as_ref()?.digest(key))))
        .collect()
    }
}

/// Writes each of `digests` (a dotted key and a secret's digest) into a configuration as TOML,
/// in place of its `<redacted>`.
pub fn with_digests(value: &mut toml::Value, digests: &[(&str, String)]) {
    for (key, digest) in digests {
        replace_path(value, key, Some(toml::Value::String(digest.clone())));
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
