//! Who is calling, and whose credential goes upstream.
//!
//! A caller is resolved once per request, in this order:
//! 1. a gateway client key (`callers.key_header`) from the configured clients — an unknown key
//!    is 401;
//! 2. the credential: Connect JWTs by their (unverified) `iss` claim, since they are signed
//!    afresh for every call; any other `Authorization` by the cache's keyed hash of it;
//! 3. the client address — `X-Forwarded-For` believed only from `callers.trusted_proxies`.
//!
//! In `service-account` mode a client key is required (401 without one, never forwarded), and
//! the caller's `Authorization` and `Cookie` are replaced by wikigate's own credential, so every
//! caller shares one cache partition and the Atlassian credential never leaves wikigate.
//!
//! Invariants: what logs and metrics see of a caller is its client name, class, `app:ISS`, a
//! short fingerprint prefix or an address — never a credential or a raw key. Client keys are
//! only ever compared as hashes. The `iss` of a JWT keys limits only, never the cache. A
//! credential has one keyed hash ([`Credential`]), made once per request: the cache partitions
//! by it and a caller's fingerprint is its first half.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use http::header::{self, GetAll, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use crate::config::{AuthMode, CallersConfig, Config, KeyHash};
use crate::error::GatewayError;
use crate::quota::{Account, Accounts};

/// A caller as limits, logs and metrics know it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: CallerId,
    /// The credential the request arrived with, when the caller is known by it.
    pub credential: Option<Credential>,
    /// The quota class.
    pub class: Arc<str>,
    /// The points this caller spends and saves (its client's, or its class's).
    pub account: Arc<Account>,
}

/// The keyed BLAKE3 hash of a request's credential: every `Authorization` value, in order,
/// under the partition secret. Without the secret it cannot be tested against guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Credential([u8; 32]);

impl Credential {
    /// The credential `headers` carry; `None` without `Authorization`.
    pub fn of(headers: &HeaderMap, secret: &[u8; 32]) -> Option<Credential> {
        Credential::of_values(&headers.get_all(header::AUTHORIZATION), secret)
    }

    /// The credential of a request's `Authorization` values; `None` without any.
    fn of_values(authorization: &GetAll<'_, HeaderValue>, secret: &[u8; 32]) -> Option<Credential> {
        let mut values = authorization.iter();
        let first = values.next()?;
        let Some(second) = values.next() else {
            // The usual single field: the one-call hash, without a 2 KB incremental hasher.
            return Some(Credential(
                *blake3::keyed_hash(secret, first.as_bytes()).as_bytes(),
            ));
        };
        // Several Authorization fields are unusual; they all belong to the credential.
        let mut hasher = blake3::Hasher::new_keyed(secret);
        hasher.update(first.as_bytes());
        for more in std::iter::once(second).chain(values) {
            hasher.update(b"\n");
            hasher.update(more.as_bytes());
        }
        Some(Credential(*hasher.finalize().as_bytes()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The caller's fingerprint: the first half.
    fn fingerprint(&self) -> [u8; 16] {
        let mut fingerprint = [0; 16];
        fingerprint.copy_from_slice(&self.0[..16]);
        fingerprint
    }
}

/// The identity limits are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerId {
    /// A configured client, by its name: unique, and the same on every replica and across
    /// reloads whatever the order of `callers.clients`.
    Client(Arc<str>),
    /// A credential or a Connect app, by a 16-byte keyed hash.
    Credential([u8; 16]),
    /// An address.
    Address(IpAddr),
}

/// The caller's name for logs: the client name, `credential:…` (8 hex digits of the keyed
/// hash) or the address.
impl std::fmt::Display for CallerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerId::Client(name) => f.write_str(name),
            CallerId::Credential(hash) => write!(
                f,
                "credential:{:02x}{:02x}{:02x}{:02x}",
                hash[0], hash[1], hash[2], hash[3]
            ),
            CallerId::Address(ip) => write!(f, "{ip}"),
        }
    }
}

impl CallerId {
    /// The name of this caller's buckets in a store shared by every replica: stable and
    /// unique, with nothing in clear (`c:` a client, `k:` a credential, `a:` an address).
    pub fn bucket(&self) -> String {
        let (kind, hash) = match self {
            CallerId::Client(name) => ("c", blake3::hash(name.as_bytes())),
            CallerId::Credential(fingerprint) => ("k", blake3::hash(fingerprint)),
            CallerId::Address(ip) => ("a", blake3::hash(ip.to_string().as_bytes())),
        };
        format!("{kind}:{}", &hash.to_hex()[..32])
    }
}

/// The same caller: the same identity in the same class (its account follows from both).
impl PartialEq for Caller {
    fn eq(&self, other: &Caller) -> bool {
        self.id == other.id && self.class == other.class
    }
}

impl Eq for Caller {}

impl Caller {
    /// The caller's name for metrics, from a bounded set: a configured client's name, or the
    /// quota class of everyone else (`class:NAME`).
    pub fn metric_label(&self) -> &str {
        self.account.label()
    }
}

struct Client {
    name: Arc<str>,
    class: Arc<str>,
    account: Arc<Account>,
}

/// Why the service-account credential cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read auth.credential_file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("environment variable {0} (auth.credential_env) is not set")]
    EnvUnset(String),
    #[error("the service-account credential is not a valid header value")]
    NotAHeaderValue,
    #[error(
        "the service-account credential must be a whole Authorization value, \"Basic \" + base64 of email:api-token or \"Bearer \" + a token; it starts with neither"
    )]
    NoScheme,
    #[error(
        "the service-account credential is \"Basic \" + something that is not base64: it must be \"Basic \" + base64 of email:api-token (e.g. `printf %s me@example.com:TOKEN | base64 -w0`)"
    )]
    BasicNotBase64,
    #[error(
        "the service-account credential's Basic value decodes to no email:api-token pair (no colon): it must be \"Basic \" + base64 of email:api-token"
    )]
    BasicNoColon,
}

/// Caller identification and the auth mode, built once from the config.
pub struct Callers {
    key_header: HeaderName,
    clients: Vec<Client>,
    by_key: HashMap<KeyHash, usize>,
    trusted: Vec<IpNet>,
    default_class: Arc<str>,
    /// The account of every caller without a client key.
    default_account: Arc<Account>,
    secret: [u8; 32],
    /// `Some` in service-account mode: the `Authorization` value sent upstream.
    service_credential: Option<HeaderValue>,
}

impl Callers {
    /// `secret` is the cache's partition secret, so a caller's fingerprint is the same keyed
    /// hash the cache partitions by; `accounts` holds every caller's points.
    pub fn new(
        config: &Config,
        secret: [u8; 32],
        accounts: &Accounts,
    ) -> Result<Callers, AuthSetupError> {
        let CallersConfig {
            key_header,
            trusted_proxies,
            clients,
        } = &config.callers;
        let service_credential = match config.auth.mode {
            AuthMode::Passthrough => None,
            AuthMode::ServiceAccount => Some(load_credential(config)?),
        };
        Ok(Callers {
            key_header: HeaderName::from_bytes(key_header.as_bytes())
                .expect("validated header name"),
            clients: clients
                .iter()
                .map(|c| Client {
                    name: c.name.as_str().into(),
                    class: c.class.as_str().into(),
                    account: accounts.get(&c.name),
                })
                .collect(),
            by_key: clients
                .iter()
                .enumerate()
                .map(|(i, c)| (c.key_hash, i))
                .collect(),
            trusted: trusted_proxies.clone(),
            default_class: config.limits.default_class.as_str().into(),
            default_account: accounts.get(&format!("class:{}", config.limits.default_class)),
            secret,
            service_credential,
        })
    }

    /// The service-account credential in force, as a digest keyed with `key` (`None` in
    /// passthrough mode): what `/admin/config?digests` shows of it.
    pub(crate) fn credential_digest(&self, key: &[u8; 32]) -> Option<String> {
        self.service_credential
            .as_ref()
            .map(|value| crate::config::digest(key, value.as_bytes()))
    }

    /// Identifies the caller of a request that arrived from `peer`.
    pub fn identify(&self, headers: &HeaderMap, peer: IpAddr) -> Result<Caller, GatewayError> {
        if let Some(key) = headers.get(&self.key_header) {
            let hash = KeyHash::of(key.to_str().unwrap_or_default());
            let index = *self
                .by_key
                .get(&hash)
                .ok_or(GatewayError::Unauthorized("unknown gateway client key"))?;
            let client = &self.clients[index];
            return Ok(Caller {
                id: CallerId::Client(client.name.clone()),
                credential: None,
                class: client.class.clone(),
                account: client.account.clone(),
            });
        }
        if self.service_credential.is_some() {
            return Err(GatewayError::Unauthorized(
                "this gateway needs a client key (service-account mode)",
            ));
        }
        let (id, credential) = match self.fingerprint(headers, peer) {
            Some((fingerprint, credential)) => (CallerId::Credential(fingerprint), credential),
            None => (CallerId::Address(self.client_address(headers, peer)), None),
        };
        Ok(Caller {
            id,
            credential,
            class: self.default_class.clone(),
            account: self.default_account.clone(),
        })
    }

    /// A JWT's `iss` claim (or, unreadable, the peer) under the keyed hash; any other
    /// credential's own hash, which it comes with. `None` without `Authorization`.
    fn fingerprint(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Option<([u8; 16], Option<Credential>)> {
        let values = headers.get_all(header::AUTHORIZATION);
        let authorization = values.iter().next()?;
        let keyed = |label: &[u8], value: &[u8]| {
            let mut hasher = blake3::Hasher::new_keyed(&self.secret);
            hasher.update(label).update(value);
            let mut fingerprint = [0; 16];
            fingerprint.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
            fingerprint
        };
        let fingerprint = match connect_app(authorization) {
            Some(iss) => keyed(b"app\n", iss.as_bytes()),
            // A JWT whose claim cannot be read is keyed by address, not by its (unique) token.
            None if is_jwt(authorization) => keyed(b"ip\n", peer.to_string().as_bytes()),
            None => {
                let credential = Credential::of_values(&values, &self.secret)?;
                return Some((credential.fingerprint(), Some(credential)));
            }
        };
        Some((fingerprint, None))
    }

    /// The client's address: the peer, or — when the peer is a trusted proxy — the nearest
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_address(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|entry| entry.trim().parse().ok())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.is_trusted(*ip))
            .unwrap_or(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Service-account mode: replaces the caller's credentials with wikigate's own. Returns
    /// the hash of the credential the request now carries when it is known without hashing
    /// again: the one `caller` arrived with, unless it was replaced.
    pub fn apply_auth_mode(&self, headers: &mut HeaderMap, caller: &Caller) -> Option<Credential> {
        // A request carries the key header exactly when its caller is a client: `identify`
        // looks for it first, and a key that names no client is refused.
        if matches!(caller.id, CallerId::Client(_)) {
            headers.remove(&self.key_header);
        }
        match &self.service_credential {
            Some(credential) => {
                headers.remove(header::COOKIE);
                headers.insert(header::AUTHORIZATION, credential.clone());
                None
            }
            None => caller.credential,
        }
    }

    /// The upstream credential a request will carry (after [`Callers::apply_auth_mode`]),
    /// as upstream holds know it: its fingerprint, or all zeros for anonymous requests;
    /// `known`: its hash, when it was made already.
    pub fn hold_key(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        known: Option<Credential>,
    ) -> [u8; 16] {
        if let Some(credential) = known {
            return credential.fingerprint();
        }
        self.fingerprint(headers, peer)
            .map_or([0; 16], |(fingerprint, _)| fingerprint)
    }
}

fn is_jwt(authorization: &HeaderValue) -> bool {
    authorization
        .as_bytes()
        .get(..4)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"jwt "))
}

/// The unverified `iss` claim of a Connect JWT (`Authorization: JWT header.claims.signature`).
fn connect_app(authorization: &HeaderValue) -> Option<String> {
    if !is_jwt(authorization) {
        return None;
    }
    let token = authorization.to_str().ok()?[4..].trim();
    let claims = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims["iss"]
        .as_str()
        .filter(|iss| !iss.is_empty())
        .map(str::to_owned)
}

/// The service-account credential as `check-config --against` compares it: its digest keyed
/// with `key` (`None` in passthrough mode, or when it cannot be read).
pub(crate) fn credential_digest(config: &Config, key: &[u8; 32]) -> Option<String> {
    match config.auth.mode {
        AuthMode::Passthrough => None,
        AuthMode::ServiceAccount => load_credential(config)
            .ok()
            .map(|value| crate::config::digest(key, value.as_bytes())),
    }
}

fn load_credential(config: &Config) -> Result<HeaderValue, AuthSetupError> {
    let raw = match (&config.auth.credential_file, &config.auth.credential_env) {
        (Some(path), _) => {
            std::fs::read_to_string(path).map_err(|source| AuthSetupError::File {
                path: path.display().to_string(),
                source,
            })?
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| AuthSetupError::EnvUnset(var.clone()))?
        }
        (None, None) => return Err(AuthSetupError::NotAHeaderValue),
    };
    let raw = raw.trim();
    // A raw `email:token` (or a bare token) would be sent as it is and refused upstream on
    // every call, quietly: only the schemes Confluence takes are accepted.
    let scheme = raw.split_once(' ').map(|(scheme, _)| scheme);
    if !scheme.is_some_and(|s| s.eq_ignore_ascii_case("basic") || s.eq_ignore_ascii_case("bearer"))
    {
        return Err(AuthSetupError::NoScheme);
    }
    if let Some((scheme, rest)) = raw.split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
    {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| AuthSetupError::BasicNotBase64)?;
        if !decoded.contains(&b':') {
            return Err(AuthSetupError::BasicNoColon);
        }
    }
    let mut value = HeaderValue::from_str(raw).map_err(|_| AuthSetupError::NotAHeaderValue)?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callers(extra: &str) -> Callers {
        let config =
            Config::from_toml(&format!("[upstream]\nurl = \"https://a.example\"\n{extra}"))
                .unwrap();
        Callers::new(&config, [3; 32], &Accounts::default()).unwrap()
    }

    fn jwt(iss: &str) -> HeaderValue {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"iss":"{iss}","qsh":"x","exp":1}}"#));
        HeaderValue::from_str(&format!("JWT eyJhbGciOiJIUzI1NiJ9.{claims}.sig")).unwrap()
    }

    #[test]
    fn connect_jwts_are_keyed_by_their_app_not_their_token() {
        let c = callers("");
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut a = HeaderMap::new();
        a.insert(header::AUTHORIZATION, jwt("com.example.app"));
        let mut b = HeaderMap::new();
        let other_token = format!("{}x", jwt("com.example.app").to_str().unwrap());
        b.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&other_token).unwrap(),
        );
        assert_eq!(c.identify(&a, peer).unwrap(), c.identify(&b, peer).unwrap());
        let mut other_app = HeaderMap::new();
        other_app.insert(header::AUTHORIZATION, jwt("com.example.other"));
        assert_ne!(
            c.identify(&a, peer).unwrap(),
            c.identify(&other_app, peer).unwrap()
        );
    }

    #[test]
    fn a_credential_hashes_every_authorization_field_as_it_always_has() {
        // Partitions (and so cache keys in Redis) must not change between versions.
        let secret = [3; 32];
        let keyed = |parts: &[&[u8]]| {
            let mut hasher = blake3::Hasher::new_keyed(&secret);
            for (n, part) in parts.iter().enumerate() {
                if n > 0 {
                    hasher.update(b"\n");
                }
                hasher.update(part);
            }
            Credential(*hasher.finalize().as_bytes())
        };
        let mut headers = HeaderMap::new();
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        assert_eq!(
            Credential::of(&headers, &secret),
            Some(keyed(&[b"Basic YTpi"]))
        );
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.append(header::AUTHORIZATION, HeaderValue::from_static("x"));
        assert_eq!(
            Credential::of(&headers, &secret),
            Some(keyed(&[b"Basic YTpi", b"Bearer t", b"x"]))
        );
        assert_eq!(Credential::of(&HeaderMap::new(), &secret), None);
    }

    #[test]
    fn a_credential_is_hashed_once_and_only_passed_on_while_it_is_sent() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YTpi"),
        );
        let c = callers("");
        let caller = c.identify(&headers, peer).unwrap();
        let credential = Credential::of(&headers, &[3; 32]).unwrap();
        assert_eq!(caller.credential, Some(credential));
        assert_eq!(caller.id, CallerId::Credential(credential.fingerprint()));
        assert_eq!(c.apply_auth_mode(&mut headers, &caller), Some(credential));
        assert_eq!(
            c.hold_key(&headers, peer, Some(credential)),
            c.hold_key(&headers, peer, None)
        );
        // A JWT's fingerprint is its app's, which must never partition the cache.
        let mut app = HeaderMap::new();
        app.insert(header::AUTHORIZATION, jwt("com.example.app"));
        assert_eq!(c.identify(&app, peer).unwrap().credential, None);
        // Service-account mode replaces the credential: the caller's is not the one sent.
        let file = std::env::temp_dir().join(format!("wikigate-credential-{}", std::process::id()));
        std::fs::write(&file, "Basic c2VydmljZTp0").unwrap();
        let service = callers(&format!(
            "[auth]\nmode = \"service-account\"\ncredential_file = \"{}\"\n\
             [[callers.clients]]\nname = \"billing\"\nkey_hash = \"{}\"\n",
            file.display(),
            KeyHash::of("k-0123456789abcdef")
        ));
        std::fs::remove_file(&file).unwrap();
        assert_eq!(service.apply_auth_mode(&mut headers, &caller), None);
        assert_eq!(headers[header::AUTHORIZATION], "Basic c2VydmljZTp0");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let c = callers("[callers]\ntrusted_proxies = [\"10.0.0.0/8\"]\n");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 10.1.1.1"),
        );
        let untrusted: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(c.client_address(&headers, untrusted), untrusted);
        let proxy: IpAddr = "10.2.2.2".parse().unwrap();
        assert_eq!(
            c.client_address(&headers, proxy),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn client_keys_are_matched_by_hash() {
        let hash = KeyHash::of("k-0123456789abcdef");
        let c = callers(&format!(
            "[[callers.clients]]\nname = \"billing\"\nkey_hash = \"{hash}\"\n"
        ));
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-wikigate-key",
            HeaderValue::from_static("k-0123456789abcdef"),
        );
        let caller = c.identify(&headers, peer).unwrap();
        assert_eq!(caller.id.to_string(), "billing");
        headers.insert("x-wikigate-key", HeaderValue::from_static("wrong"));
        assert_eq!(c.identify(&headers, peer).unwrap_err().status(), 401);
    }
}
