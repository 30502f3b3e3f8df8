//! Cache keys: who is asking (the partition) and what they ask (route, parameters, query).
//!
//! Invariants:
//! - A [`CacheKey`] cannot be built without a [`Partition`]: every stored answer belongs to one
//!   caller, or — only for routes the route table declares shared — to everyone.
//! - The partition is a keyed BLAKE3 hash of the whole `Authorization` value
//!   ([`Credential`], made once per request: the caller's fingerprint is half of it); the
//!   credential itself is never stored, and without the secret the hash cannot be tested
//!   against guesses.
//! - The key also covers the generation of every tag the read observes, so a write (which
//!   bumps a generation) makes every earlier key unreachable, including keys of fetches still
//!   in flight: a request that starts after a write can never join or read a pre-write answer.
//! - The query is normalised for the key only (decoded to bytes as upstream reads it, pairs
//!   sorted, `expand` as a set): two queries share a key exactly when upstream reads them the
//!   same. The request forwarded upstream stays byte-for-byte as the client sent it.

use std::borrow::Cow;

use http::{HeaderMap, header};

use crate::caller::Credential;
use crate::routes::Resolved;

/// Whose answers a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Partition {
    /// Requests without credentials: all anonymous callers see the same answers.
    Anonymous,
    /// A caller, by the keyed hash of its `Authorization` values.
    Caller(Credential),
    /// Everyone: only for routes whose answer cannot depend on the caller.
    Shared,
}

/// Why a request is not answered from (or stored in) the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Connect JWTs are signed afresh for every call: a partition per token would never hit.
    Jwt,
    /// Cookie-authenticated reads are not cached.
    Cookie,
    /// The route's TTL is 0, or caching is off.
    Disabled,
    /// In a cluster whose Redis is unreachable, for a route whose generations live there.
    ClusterDown,
}

impl Bypass {
    pub fn as_str(self) -> &'static str {
        match self {
            Bypass::Jwt => "jwt",
            Bypass::Cookie => "cookie",
            Bypass::Disabled => "disabled",
            Bypass::ClusterDown => "cluster-down",
        }
    }
}

impl Partition {
    /// The partition of a request to a non-shared route, or why it bypasses the cache;
    /// `known`: the hash of the credential `headers` carry, when it was made already.
    pub fn of(
        headers: &HeaderMap,
        secret: &[u8; 32],
        known: Option<Credential>,
    ) -> Result<Partition, Bypass> {
        if headers.contains_key(header::COOKIE) {
            return Err(Bypass::Cookie);
        }
        let Some(first) = headers.get(header::AUTHORIZATION) else {
            return Ok(Partition::Anonymous);
        };
        let scheme = first
            .as_bytes()
            .split(|b| *b == b' ')
            .next()
            .unwrap_or_default();
        if scheme.eq_ignore_ascii_case(b"jwt") {
            return Err(Bypass::Jwt);
        }
        let credential = known.or_else(|| Credential::of(headers, secret));
        Ok(credential.map_or(Partition::Anonymous, Partition::Caller))
    }
}

/// A cache key: XXH3-128 over the partition, route, parameters, normalised query and tag
/// generations, under a secret of its own ([`KeySecret`]). Fixed-size, so comparing it is
/// cheap; 16 bytes, since the cache holds each key twice per entry.
///
/// XXH3 is not a cryptographic hash, and need not be here: nothing secret is hashed (the
/// partition in the input is already a keyed BLAKE3 hash of the credential), and what it must
/// resist — a caller choosing a URL whose key is another one's — takes the key's secret, which
/// never leaves the process: without it no key can be computed, let alone two made to meet;
/// by chance, two of 2^32 keys meet once in 2^64. It is a tenth of BLAKE3's cost per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheKey([u8; 16]);

impl std::hash::Hash for CacheKey {
    /// Its first 8 bytes: a key is uniformly distributed already (see [`KeyHashing`]).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// Hashing for maps of [`CacheKey`]s: the key's own first 8 bytes, since it is a keyed hash
/// already (a second, SipHash over it, cost every lookup ~400 instructions and added nothing).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyHashing;

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// See [`KeyHashing`]; anything but a [`CacheKey`] is folded in, FNV-1a style.
#[derive(Debug)]
pub(crate) struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

/// The secret [`CacheKey`]s are hashed under, derived from the partition secret (so replicas
/// sharing `cache.key_secret` make the same keys, and Redis entries are found by each).
pub struct KeySecret(Box<[u8; 192]>);

impl KeySecret {
    pub fn derive(partition_secret: &[u8; 32]) -> KeySecret {
        let mut secret = Box::new([0; 192]);
        blake3::Hasher::new_derive_key("wikigate cache key v1")
            .update(partition_secret)
            .finalize_xof()
            .fill(&mut secret[..]);
        KeySecret(secret)
    }
}

impl CacheKey {
    pub fn new(
        secret: &KeySecret,
        partition: Partition,
        resolved: &Resolved<'_>,
        query: Option<&str>,
        generations: &[u64],
    ) -> CacheKey {
        let mut input = KeyInput::new(partition);
        input.field(resolved.route().name().as_bytes());
        for (_, value) in resolved.params() {
            input.field(value.as_bytes());
        }
        input.0.push(b'?');
        let mark = input.0.len();
        if !input.query_as_sent(query.unwrap_or("")) {
            input.0.truncate(mark);
            for (name, value) in normalized_query(query) {
                input.field(&name);
                input.field(&value);
            }
        }
        input.finish(secret, generations)
    }

    /// The key of one account's object in a bulk lookup (`id` empty: the lookup's envelope).
    pub(crate) fn account(
        secret: &KeySecret,
        partition: Partition,
        route: crate::routes::Route,
        expand: &str,
        id: &str,
        generations: &[u64],
    ) -> CacheKey {
        let mut input = KeyInput::new(partition);
        input.field(b"account");
        input.field(route.name().as_bytes());
        input.field(expand.as_bytes());
        input.field(id.as_bytes());
        input.finish(secret, generations)
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

/// What a key hashes, gathered first and hashed in one call.
struct KeyInput(Vec<u8>);

impl KeyInput {
    fn new(partition: Partition) -> KeyInput {
        let mut input = Vec::with_capacity(256);
        match partition {
            Partition::Anonymous => input.push(b'a'),
            Partition::Shared => input.push(b's'),
            Partition::Caller(credential) => {
                input.push(b'c');
                input.extend_from_slice(credential.as_bytes());
            }
        }
        KeyInput(input)
    }

    /// Length-prefixed, so that no two different field lists hash the same input.
    fn field(&mut self, bytes: &[u8]) {
        self.0
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// Adds the query's pairs as sent, when that is already their normal form (nothing
    /// escaped, no empty pair, pairs in order, at most one `expand` and that one in normal
    /// form), as [`normalized_query`] would give them: the usual case, without the allocations
    /// and the sort that normalising makes. `false` (with part of the query added) otherwise.
    fn query_as_sent(&mut self, query: &str) -> bool {
        if query.is_empty() {
            return true;
        }
        let mut previous: Option<(&str, &str)> = None;
        let mut expand = false;
        for pair in query.split('&') {
            if pair.is_empty() || pair.bytes().any(|b| matches!(b, b'+' | b'%')) {
                return false;
            }
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if previous.is_some_and(|previous| previous > (name, value)) {
                return false;
            }
            if name == "expand" {
                if expand || !is_normal_expand(value.as_bytes()) {
                    return false;
                }
                expand = true;
            }
            self.field(name.as_bytes());
            self.field(value.as_bytes());
            previous = Some((name, value));
        }
        true
    }

    fn finish(mut self, secret: &KeySecret, generations: &[u64]) -> CacheKey {
        self.0.push(b'#');
        for generation in generations {
            self.0.extend_from_slice(&generation.to_le_bytes());
        }
        let hash = xxhash_rust::xxh3::xxh3_128_with_secret(&self.0, &secret.0[..]);
        CacheKey(hash.to_le_bytes())
    }
}

/// The query's pairs, decoded to bytes (`query`: a `+` is a space) and sorted; all `expand`
/// values merged into one sorted, de-duplicated, comma-joined value. Empty pairs are dropped.
pub(super) fn normalized_query(query: Option<&str>) -> Vec<crate::query::Pair<'_>> {
    let mut pairs = Vec::new();
    let mut expand: Vec<Cow<'_, [u8]>> = Vec::new();
    // The one `expand` value, when it was sent as it is (the usual case): kept borrowed if it
    // is already in normal form.
    let mut expand_as_sent: Option<&[u8]> = None;
    for (name, value) in crate::query::pairs(query.unwrap_or("")) {
        if name.as_ref() != b"expand" {
            pairs.push((name, value));
            continue;
        }
        match value {
            Cow::Borrowed(v) if expand.is_empty() && expand_as_sent.is_none() => {
                expand_as_sent = Some(v);
            }
            value => {
                // More than one `expand`, or escaped: gather them all as owned items.
                if let Some(sent) = expand_as_sent.take() {
                    expand.extend(expand_items(sent).map(|v| Cow::Owned(v.to_vec())));
                }
                expand.extend(expand_items(&value).map(|v| Cow::Owned(v.to_vec())));
            }
        }
    }
    if let Some(sent) = expand_as_sent {
        if is_normal_expand(sent) {
            pairs.push((Cow::Borrowed(b"expand".as_slice()), Cow::Borrowed(sent)));
        } else {
            expand.extend(expand_items(sent).map(Cow::Borrowed));
        }
    }
    if !expand.is_empty() {
        expand.sort();
        expand.dedup();
        pairs.push((
            Cow::Borrowed(b"expand".as_slice()),
            Cow::Owned(expand.join(&b","[..])),
        ));
    }
    pairs.sort();
    pairs
}

/// The non-empty, trimmed items of an `expand` value.
fn expand_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|v| !v.is_empty())
}

/// Whether an `expand` value is already what normalising it would make: non-empty, untrimmed
/// items in strictly ascending order.
fn is_normal_expand(value: &[u8]) -> bool {
    let mut previous: Option<&[u8]> = None;
    for item in value.split(|b| *b == b',') {
        if item.is_empty() || item.trim_ascii() != item || previous.is_some_and(|p| p >= item) {
            return false;
        }
        previous = Some(item);
    }
    previous.is_some()
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Method};

    use super::*;
    use crate::routes::resolve;

    const SECRET: [u8; 32] = [7; 32];

    fn key(partition: Partition, path: &str, query: Option<&str>) -> CacheKey {
        let resolved = resolve(&Method::GET, path).unwrap();
        CacheKey::new(
            &KeySecret::derive(&SECRET),
            partition,
            &resolved,
            query,
            &[0],
        )
    }

    fn auth(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn query_order_and_expand_order_do_not_change_the_key() {
        let p = Partition::Anonymous;
        let path = "/wiki/rest/api/user";
        let a = key(p, path, Some("accountId=x&expand=operations,personalSpace"));
        let b = key(
            p,
            path,
            Some("expand=personalSpace&accountId=x&expand=operations"),
        );
        let c = key(
            p,
            path,
            Some("expand=personalSpace,operations,operations&accountId=x&"),
        );
        let d = key(
            p,
            path,
            Some("accountId=%78&expand=personalSpace%2Coperations"),
        );
        assert!(a == b && b == c && c == d);
        assert_ne!(
            a,
            key(p, path, Some("accountId=y&expand=operations,personalSpace"))
        );
        assert_ne!(a, key(p, path, Some("accountId=x&expand=operations")));
        // Order of a list that is not a set matters (bulk results come in request order).
        assert_ne!(
            key(p, "/wiki/rest/api/user/bulk", Some("accountId=a,b")),
            key(p, "/wiki/rest/api/user/bulk", Some("accountId=b,a"))
        );
    }

    #[test]
    fn an_expand_already_in_normal_form_is_not_copied() {
        let pairs = normalized_query(Some("expand=operations,personalSpace&accountId=x"));
        assert!(matches!(
            pairs[1].1,
            Cow::Borrowed(b"operations,personalSpace")
        ));
        for (query, expand) in [
            ("expand=b,a", "a,b"),
            ("expand=a,a", "a"),
            ("expand=a,%20b", "a,b"),
            ("expand=a&expand=b", "a,b"),
            ("expand=b&expand=a,c", "a,b,c"),
            ("expand=", ""),
        ] {
            let pairs = normalized_query(Some(query));
            let found = pairs
                .iter()
                .find(|(n, _)| n.as_ref() == b"expand")
                .map(|(_, v)| v.as_ref());
            assert_eq!(found.unwrap_or(b""), expand.as_bytes(), "{query}");
        }
    }

    #[test]
    fn a_query_sent_in_normal_form_keys_as_its_normalisation() {
        let p = Partition::Anonymous;
        let path = "/wiki/rest/api/user";
        let resolved = resolve(&Method::GET, path).unwrap();
        // The key as normalising every query makes it.
        let normalised = |query: &str| {
            let mut input = KeyInput::new(p);
            input.field(resolved.route().name().as_bytes());
            input.0.push(b'?');
            for (name, value) in normalized_query(Some(query)) {
                input.field(&name);
                input.field(&value);
            }
            input.finish(&KeySecret::derive(&SECRET), &[0])
        };
        for query in [
            "",
            "accountId=x",
            "accountId=x&expand=operations,personalSpace",
            "a&b=",
            "a=1&a=1&b=2",
            // Not in normal form, some found out after pairs were added.
            "accountId=x&expand=personalSpace,operations",
            "b=1&a=2",
            "a=1&&b=2",
            "a=x+y",
            "a=%78",
            "expand=a&expand=b",
            "expand=",
            "accountId=x&",
        ] {
            assert_eq!(key(p, path, Some(query)), normalised(query), "{query:?}");
        }
        assert_eq!(key(p, path, None), normalised(""));
    }

    #[test]
    fn partitions_separate_callers_and_hide_the_credential() {
        let alice = Partition::of(&auth("Basic YWxpY2U6dA=="), &SECRET, None).unwrap();
        let bob = Partition::of(&auth("Basic Ym9iOnQ="), &SECRET, None).unwrap();
        assert_ne!(alice, bob);
        assert_eq!(
            alice,
            Partition::of(&auth("Basic YWxpY2U6dA=="), &SECRET, None).unwrap()
        );
        // Another secret, another hash: the partition cannot be tested offline.
        assert_ne!(
            alice,
            Partition::of(&auth("Basic YWxpY2U6dA=="), &[8; 32], None).unwrap()
        );
        let path = "/wiki/rest/api/user/current";
        assert_ne!(key(alice, path, None), key(bob, path, None));
        assert_ne!(
            key(alice, path, None),
            key(Partition::Anonymous, path, None)
        );
        assert_eq!(
            Partition::of(&HeaderMap::new(), &SECRET, None),
            Ok(Partition::Anonymous)
        );
    }

    #[test]
    fn jwt_and_cookie_requests_bypass() {
        assert_eq!(
            Partition::of(&auth("JWT eyJhbGciOi"), &SECRET, None),
            Err(Bypass::Jwt)
        );
        let mut cookie = auth("Basic YWxpY2U6dA==");
        cookie.insert(
            header::COOKIE,
            HeaderValue::from_static("tenant.session.token=x"),
        );
        assert_eq!(Partition::of(&cookie, &SECRET, None), Err(Bypass::Cookie));
    }

    #[test]
    fn a_credential_hashed_already_is_the_partition_hashing_makes() {
        let headers = auth("Basic YWxpY2U6dA==");
        let known = Credential::of(&headers, &SECRET);
        assert_eq!(
            Partition::of(&headers, &SECRET, known),
            Partition::of(&headers, &SECRET, None)
        );
        // Known or not, a JWT and a cookie still keep a request out of the cache.
        let jwt = auth("JWT eyJhbGciOi");
        let known = Credential::of(&jwt, &SECRET);
        assert_eq!(Partition::of(&jwt, &SECRET, known), Err(Bypass::Jwt));
    }

    #[test]
    fn generations_are_part_of_the_key() {
        let resolved = resolve(&Method::GET, "/wiki/rest/api/user/watch/space/ENG").unwrap();
        let (p, secret) = (Partition::Anonymous, KeySecret::derive(&SECRET));
        assert_ne!(
            CacheKey::new(&secret, p, &resolved, None, &[1, 5]),
            CacheKey::new(&secret, p, &resolved, None, &[1, 6])
        );
    }

    #[test]
    fn queries_upstream_reads_differently_have_different_keys() {
        let p = Partition::Anonymous;
        let path = "/wiki/rest/api/user";
        let k = |q| key(p, path, Some(q));
        assert_ne!(k("accountId=a+b"), k("accountId=a%2Bb"), "+ is a space");
        assert_eq!(k("accountId=a+b"), k("accountId=a%20b"));
        assert_ne!(
            k("accountId=%FF"),
            k("accountId=%FE"),
            "bytes, not lossy text"
        );
        assert_ne!(k("accountId=%FF"), k("accountId=%EF%BF%BD"));
    }

    #[test]
    fn keys_depend_on_the_secret_replicas_share() {
        let resolved = resolve(&Method::GET, "/wiki/rest/api/user/current").unwrap();
        let key = |secret: &[u8; 32]| {
            let secret = KeySecret::derive(secret);
            CacheKey::new(&secret, Partition::Shared, &resolved, None, &[0])
        };
        assert_eq!(key(&SECRET), key(&SECRET), "another replica, the same key");
        assert_ne!(key(&SECRET), key(&[8; 32]));
    }

    #[test]
    fn parameters_cannot_run_into_each_other() {
        let p = Partition::Anonymous;
        assert_ne!(
            key(p, "/wiki/rest/api/user/ab/property/c", None),
            key(p, "/wiki/rest/api/user/a/property/bc", None)
        );
    }
}
