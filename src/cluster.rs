//! Multi-replica mode: several wikigate replicas made one gateway through Redis.
//!
//! - **Shared L2.** An L1 (moka) miss looks in Redis before going upstream; a stored answer is
//!   written to both, with the same lifetime. Redis keys are `{namespace}:e:{hex of the cache
//!   key}` — the cache key is already a hash over a keyed hash of the credential, so no
//!   credential, account id or path is in Redis in clear.
//! - **Generations in Redis.** Reads of routes that writes change (watches, properties) take
//!   their tag's generation from Redis (`{namespace}:g:{slot}`), and writes `INCR` it before
//!   their answer is sent: a write through any replica changes the key every replica computes
//!   next, so no replica can serve, or join a fetch of, a pre-write answer.
//! - **Acknowledged purges.** The generations every key holds besides those — the epoch (a
//!   whole purge) and each route's (`route:NAME`) — live in Redis too (`{namespace}:gens`), and
//!   each replica holds a copy, so that every replica computes the same keys (and finds what
//!   the others stored in L2). A purge raises one in Redis (`HINCRBY`), numbers itself
//!   (`{namespace}:purges`) and publishes both (`{namespace}:inv`); every replica, the purging
//!   one too, adopts the value (a maximum: applying one twice changes nothing) and acknowledges
//!   the number. Replicas announce themselves every 500 ms (`{namespace}:replicas`, expiring
//!   after 2 s); a purge is answered once every live replica has acknowledged it.
//! - **Cluster-wide limits.** The per-caller, global and per-method upstream limits run as one
//!   atomic GCRA Lua script in Redis (`EVALSHA`), with Redis's own clock; the pacing of
//!   Atlassian's burst buckets is a token bucket of their own (`{namespace}:k:b:{route}:{method}`,
//!   `BUCKET`: what is owed does not depend on the refill rate, which replicas learn as they
//!   go), which every answer that states its bucket tightens to what upstream says is left
//!   (`LEARN`), and which counts the bucket's
//!   answers for every replica's learning of its refill (`{namespace}:n:b:{route}:{method}`).
//!   Points spent per
//!   caller and UTC hour are counters (`{namespace}:p:{bucket}:{hour}`, `INCRBY`, expiring an
//!   hour after theirs), and so is the site's when `quota.points_per_hour` is counted down.
//!
//! Redis down (an operation failing or taking longer than `cluster.op_timeout`): the replica
//! marks the cluster down and keeps serving — L1 for routes no write changes; routes whose
//! generations live in Redis go upstream uncached (a replica that cannot read them cannot know
//! about writes through others); limits fall back to local ones divided by `cluster.replicas`.
//! A health task pings every 500 ms; when Redis answers again, the replica resubscribes and
//! adopts the cluster's generations before it serves from L1 again: a purge it missed while
//! cut off changes its keys then (and its L1 is dropped).
//!
//! **The era fences outages.** A slot counter in Redis can go backwards — Redis restarted
//! empty, or from a snapshot older than the last writes — or miss a write made while it was
//! unreachable (through a replica that could not `INCR` it, or one restarted since). Keys of
//! the routes those counters serve therefore also hold the cluster's *era* (`era` in
//! `{namespace}:gens`), and the reconnect's sync moves it on (`HINCRBY`, published like a
//! purge) whenever the reconnecting replica had been up before (an outage), missed a write's
//! `INCR`, or finds Redis is another process than at the last sync (`INFO server`'s `run_id`
//! against `{namespace}:server`). So after any outage no key from before it is reachable on any
//! replica (each adopts the era before it reads Redis counters again); a lookup whose era moved
//! while it read its counter bypasses the cache. Routes no write changes keep their entries.
//! What no replica can know: a write through a replica cut off from a Redis the others still
//! reach is invisible to them until that replica reconnects (within about a second of Redis
//! answering it again).
//!
//! **Versions side by side.** The keys of a namespace follow one layout, numbered
//! ([`LAYOUT`], in `{namespace}:layout`, written by the first replica to reach Redis): a
//! replica that finds another number treats the cluster as down (it serves alone, says why on
//! `/readyz`) rather than misread another version's keys. Cached entries carry their own
//! format number in their first bytes (`cache::entry::l2`): one of another format is a miss.
//! CHANGELOG.md says, per release, whether either changed.
//!
//! Coalescing stays per replica: a miss on two replicas at once makes two upstream calls.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ClusterConfig;

/// The atomic GCRA: KEYS[1] the bucket; ARGV[1] the emission interval (µs), ARGV[2] the burst.
/// Returns {allowed (1|0), wait µs when refused, remaining when allowed}.
/// The layout of this version's keys in Redis: raised whenever a key's meaning changes, so
/// that replicas of two versions never misread each other's (see the module doc).
const LAYOUT: u32 = 1;

const GCRA: &str = include_str!("cluster/gcra.lua");

#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    #[error("cluster.redis_url: {0}")]
    Url(String),
    #[error("environment variable {0} (cluster.redis_password_env) is not set")]
    PasswordEnv(String),
    #[error("cannot read cluster.redis_ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
}

/// One of Atlassian's burst buckets, paced across replicas: the tokens owed (taken beyond
/// the bucket's size, and refilling at one per interval) as of an instant, a hash of `owed` and
/// `at`. Unlike a GCRA's arrival time, what is owed does not depend on the interval, which
/// changes as a replica learns the bucket's rate. KEYS[1] the bucket; ARGV[1] the interval
/// (µs), ARGV[2] the size. Returns {allowed (1|0), wait µs when refused, tokens left when
/// allowed}.
const BUCKET: &str = include_str!("cluster/bucket.lua");

/// A burst bucket told what upstream says is left of it: it owes at least `size − remaining`
/// tokens now, never less than it did (a stale answer never frees tokens); an answer that spent a token is counted, and its place in the count
/// returned (0 when not counted), which is how every replica learns the bucket's refill from
/// all replicas' calls. KEYS[1] the bucket, KEYS[2] its count of answers; ARGV[1] the
/// interval (µs), ARGV[2] the size, ARGV[3] what is left, ARGV[4] `1` to count the answer.
const LEARN: &str = include_str!("cluster/learn.lua");

/// What the cluster's GCRA decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u32 },
    Refused { wait: Duration },
}

/// The purge script: raises one shared generation, numbers the purge, and tells every replica.
/// KEYS[1] the generations, KEYS[2] the purge counter, KEYS[3] the channel; ARGV[1] the field.
const PURGE: &str = include_str!("cluster/purge.lua");

/// The sync script: raises the shared generations to at least a replica's own (a Redis that
/// lost them, or a purge made while cut off from it, must not move keys backwards) and tells
/// every replica about what it raised; then, when the replica asks (it was cut off after being
/// up, or counted a write it could not record) or Redis is not the process it was (another
/// `run_id`: restarted, perhaps from an old snapshot), moves the era on; returns the
/// generations and the latest purge's number.
/// KEYS[1] the generations, KEYS[2] the purge counter, KEYS[3] the channel, KEYS[4] the
/// `run_id` Redis had at the last sync; ARGV[1] 1 to fence, ARGV[2] the `run_id` now, then
/// field, value…
const SYNC: &str = include_str!("cluster/sync.lua");

/// The heartbeat: this replica is alive for ARGV[3] ms more and has applied purges up to
/// ARGV[2]. KEYS[1] the live replicas (a sorted set by expiry), KEYS[2] what each applied.
const HEARTBEAT: &str = include_str!("cluster/heartbeat.lua");

/// How many live replicas there are and how many have applied purge ARGV[1]; expired
/// replicas are forgotten first. KEYS as for the heartbeat.
const CONFIRM: &str = include_str!("cluster/confirm.lua");

/// How often a replica announces itself, and how long an announcement lasts.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);
const HEARTBEAT_LASTS: Duration = Duration::from_secs(2);

/// A purge on the invalidation channel: purge `number` set shared generation `field`
/// (`epoch` or `route:NAME`) to `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Purged {
    pub number: u64,
    pub value: u64,
    pub field: String,
}

impl Purged {
    fn decode(text: &str) -> Option<Purged> {
        let mut parts = text.strip_prefix("gen:")?.splitn(3, ':');
        Some(Purged {
            number: parts.next()?.parse().ok()?,
            value: parts.next()?.parse().ok()?,
            field: parts.next()?.to_owned(),
        })
    }
}

/// Whether every live replica applied a purge before it was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirmation {
    pub replicas: u64,
    pub applied: u64,
}

/// The cache, as the cluster sees it: generations to adopt.
pub trait Listener: Send + Sync + 'static {
    /// The shared generations this replica keys with (`epoch`, `route:NAME`).
    fn generations(&self) -> Vec<(String, u64)>;
    /// Adopts shared generations (a purge, or the cluster's after a reconnect): each only ever
    /// goes up.
    fn adopt(&self, generations: &[(String, u64)]);
}

/// How often, at most, a Redis that stays unreachable is logged again.
const TROUBLE_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why Redis is not answering, since when, and when that was last logged (`None`: not yet,
/// as before the first attempt).
struct Trouble {
    reason: String,
    since: Instant,
    logged: Option<Instant>,
}

/// What a replica knows of Redis, for `/readyz` and the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// Not answering: the last failure's reason (refused, AUTH, TLS, timeout, …), and for how
    /// long.
    Down {
        reason: String,
        for_: Duration,
    },
}

/// A Redis failure in a few words an operator can act on, with what Redis or the system said
/// (never a credential: errors do not carry the password).
fn describe(error: &redis::RedisError) -> String {
    let text = error.to_string();
    let lower = text.to_ascii_lowercase();
    let kind = if error.kind() == redis::ErrorKind::AuthenticationFailed
        || lower.contains("noauth")
        || lower.contains("wrongpass")
        || lower.contains("invalid password")
    {
        "AUTH refused"
    } else if error.is_connection_refusal() {
        "connection refused"
    } else if error.is_timeout() {
        "timed out"
    } else if lower.contains("tls") || lower.contains("certificate") || lower.contains("handshake")
    {
        "TLS failed"
    } else if lower.contains("lookup") || lower.contains("resolve") || lower.contains("dns") {
        "host not found"
    } else {
        "failed"
    };
    format!("{kind}: {text}")
}

pub struct Cluster {
    client: redis::Client,
    conn: ConnectionManager,
    namespace: String,
    op_timeout: Duration,
    replicas: u32,
    up: AtomicBool,
    /// This replica's name in the live set: random, for this process.
    id: String,
    /// The highest purge number this replica has applied.
    applied: AtomicU64,
    /// Whether Redis was ever up for this replica: a reconnect after that follows an outage.
    was_up: AtomicBool,
    /// A write's invalidation did not reach Redis since the last sync.
    missed_write: AtomicBool,
    /// Why Redis is not answering, while it is not (`None` while it is up).
    trouble: parking_lot::Mutex<Option<Trouble>>,
    gcra: redis::Script,
    bucket: redis::Script,
    learn: redis::Script,
    purge: redis::Script,
    sync: redis::Script,
    heartbeat: redis::Script,
    confirm: redis::Script,
}

impl Cluster {
    /// Connects lazily: a replica starts and serves even while Redis is down.
    pub fn new(config: &ClusterConfig) -> Result<Arc<Cluster>, ClusterSetupError> {
        let url = config.redis_url.as_deref().unwrap_or_default();
        let mut info: redis::ConnectionInfo = url
            .into_connection_info()
            .map_err(|e| ClusterSetupError::Url(e.to_string()))?;
        if let Some(var) = &config.redis_password_env {
            // Unset, Redis would refuse every command (NOAUTH) and the cluster stay down,
            // quietly: refused here, as an unset auth.credential_env is.
            let password = std::env::var(var)
                .ok()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ClusterSetupError::PasswordEnv(var.clone()))?;
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        // rustls needs a process-wide crypto provider for Redis's TLS connections.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &config.redis_ca_file {
            Some(path) => {
                let root_cert =
                    std::fs::read(path).map_err(|source| ClusterSetupError::CaFile {
                        path: path.display().to_string(),
                        source,
                    })?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(info, certificates)
            }
            None => redis::Client::open(info),
        }
        .map_err(|e| ClusterSetupError::Url(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(|e| ClusterSetupError::Url(e.to_string()))?;
        Ok(Arc::new(Cluster {
            client,
            conn,
            namespace: config.namespace.clone(),
            op_timeout: config.op_timeout,
            replicas: config.replicas.max(1),
            up: AtomicBool::new(false),
            id: replica_id(),
            applied: AtomicU64::new(0),
            was_up: AtomicBool::new(false),
            missed_write: AtomicBool::new(false),
            trouble: parking_lot::Mutex::new(Some(Trouble {
                reason: "not reached yet".to_owned(),
                since: Instant::now(),
                logged: None,
            })),
            gcra: redis::Script::new(GCRA),
            bucket: redis::Script::new(BUCKET),
            learn: redis::Script::new(LEARN),
            purge: redis::Script::new(PURGE),
            sync: redis::Script::new(SYNC),
            heartbeat: redis::Script::new(HEARTBEAT),
            confirm: redis::Script::new(CONFIRM),
        }))
    }

    /// Whether Redis answered the last operation or health check.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// The replica count local fallback limits are divided by.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Runs one Redis operation under the operation timeout; any failure marks the cluster
    /// down (the health task brings it back) and yields `None`.
    async fn run<T, F, Fut>(&self, operation: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        self.timed(operation).await
    }

    /// One Redis operation under the operation timeout, also while the cluster is down (the
    /// reconnect's own steps); a failure marks it down.
    async fn timed<T, F, Fut>(&self, operation: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.op_timeout, operation(self.conn.clone())).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.mark_down(describe(&error));
                None
            }
            Err(_) => {
                self.mark_down(self.timed_out());
                None
            }
        }
    }

    fn timed_out(&self) -> String {
        format!(
            "timed out: no answer within cluster.op_timeout ({:?})",
            self.op_timeout
        )
    }

    /// Redis failed: the cluster is down. The first failure of an outage (or of the first
    /// attempt) is logged with its reason; while it lasts, at most once a
    /// [`TROUBLE_LOG_EVERY`].
    fn mark_down(&self, reason: String) {
        self.up.store(false, Ordering::Release);
        let now = Instant::now();
        let mut trouble = self.trouble.lock();
        let trouble = trouble.get_or_insert_with(|| Trouble {
            reason: String::new(),
            since: now,
            logged: None,
        });
        trouble.reason = reason;
        match trouble.logged {
            None => tracing::warn!(
                reason = %trouble.reason,
                "redis unreachable: serving from L1 and upstream, limits local"
            ),
            Some(at) if now.duration_since(at) >= TROUBLE_LOG_EVERY => tracing::warn!(
                reason = %trouble.reason,
                down_for_s = now.duration_since(trouble.since).as_secs(),
                "redis still unreachable: serving from L1 and upstream, limits local"
            ),
            Some(_) => return,
        }
        trouble.logged = Some(now);
    }

    /// What this replica knows of Redis now.
    pub fn health(&self) -> Health {
        match (self.is_up(), &*self.trouble.lock()) {
            (true, _) | (false, None) => Health::Up,
            (false, Some(trouble)) => Health::Down {
                reason: trouble.reason.clone(),
                for_: trouble.since.elapsed(),
            },
        }
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.namespace)
    }

    /// The generation of a tag slot, `None` when Redis cannot say.
    pub async fn generation(&self, slot: usize) -> Option<u64> {
        let key = self.key("g", &slot.to_string());
        self.run(|mut c| async move { c.get::<_, Option<u64>>(key).await })
            .await
            .map(|g| g.unwrap_or(0))
    }

    /// Bumps tag slots in Redis (every replica reads them on every lookup of their routes);
    /// false when Redis was not reached, which the next reconnect fences (a new era).
    pub async fn bump(&self, slots: &[usize]) -> bool {
        let mut pipe = redis::pipe();
        for slot in slots {
            pipe.incr(self.key("g", &slot.to_string()), 1).ignore();
        }
        let reached = self
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
            .is_some();
        if !reached {
            self.missed_write.store(true, Ordering::Release);
        }
        reached
    }

    /// Raises the shared generation `field` (`epoch`, `route:NAME`) for every replica: the new
    /// value and the purge's number, which [`Cluster::confirm`] waits on. `None` when Redis was
    /// not reached.
    pub async fn purge(&self, field: &str) -> Option<(u64, u64)> {
        let keys = [
            self.key("gens", "all"),
            self.key("purges", "all"),
            self.key("inv", "all"),
        ];
        self.run(|mut c| async move {
            self.purge
                .key(&keys[0])
                .key(&keys[1])
                .key(&keys[2])
                .arg(field)
                .invoke_async(&mut c)
                .await
        })
        .await
    }

    /// Records that this replica applied purge `number`, and tells Redis at once.
    pub async fn applied(&self, number: u64) {
        self.applied.fetch_max(number, Ordering::AcqRel);
        self.announce().await;
    }

    /// This replica is alive, and how far it applied purges.
    async fn announce(&self) {
        let keys = [self.key("replicas", "all"), self.key("applied", "all")];
        let applied = self.applied.load(Ordering::Acquire);
        let lasts = HEARTBEAT_LASTS.as_millis() as u64;
        self.run(|mut c| async move {
            self.heartbeat
                .key(&keys[0])
                .key(&keys[1])
                .arg(&self.id)
                .arg(applied)
                .arg(lasts)
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Waits until every live replica has applied purge `number` (a replica that stopped
    /// announcing itself leaves the live set within 2 s), at most until `deadline`.
    pub async fn confirm(&self, number: u64, deadline: Instant) -> Option<Confirmation> {
        let keys = [self.key("replicas", "all"), self.key("applied", "all")];
        let keys = &keys;
        loop {
            let (replicas, applied): (u64, u64) = self
                .run(|mut c| async move {
                    self.confirm
                        .key(&keys[0])
                        .key(&keys[1])
                        .arg(number)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            let confirmation = Confirmation { replicas, applied };
            if applied >= replicas || Instant::now() >= deadline {
                return Some(confirmation);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How long a purge may wait for the replicas: one announcement's lifetime and a margin.
    pub fn confirm_within(&self) -> Duration {
        HEARTBEAT_LASTS + HEARTBEAT_EVERY
    }

    /// Leaves the live set (a replica shutting down): purges stop waiting for it at once.
    pub async fn leave(&self) {
        let keys = [self.key("replicas", "all"), self.key("applied", "all")];
        let id = self.id.clone();
        self.run(|mut c| async move {
            redis::pipe()
                .zrem(&keys[0], &id)
                .ignore()
                .hdel(&keys[1], &id)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// An L2 entry, by cache key.
    pub async fn get(&self, key: &[u8; 16]) -> Option<Vec<u8>> {
        let key = self.key("e", &hex(key));
        self.run(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await })
            .await
            .flatten()
    }

    /// Writes an L2 entry that expires after `ttl`.
    pub async fn set(&self, key: &[u8; 16], value: Vec<u8>, ttl: Duration) {
        let key = self.key("e", &hex(key));
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(|mut c| async move { c.pset_ex::<_, _, ()>(key, value, millis).await })
            .await;
    }

    /// One GCRA decision for `bucket` (`rate` per `per`, `burst`), across every replica.
    pub async fn gcra(&self, bucket: &str, interval: Duration, burst: u32) -> Option<Decision> {
        self.decide(&self.gcra, self.key("l", bucket), interval, burst)
            .await
    }

    /// Takes a token of the burst bucket `bucket` (`size` tokens, one back per `interval`),
    /// across every replica.
    pub async fn pace(&self, bucket: &str, interval: Duration, size: u32) -> Option<Decision> {
        self.decide(&self.bucket, self.key("k", bucket), interval, size)
            .await
    }

    async fn decide(
        &self,
        script: &redis::Script,
        key: String,
        interval: Duration,
        burst: u32,
    ) -> Option<Decision> {
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let (allowed, wait_us, remaining): (i64, i64, i64) = self
            .run(|mut c| async move {
                script
                    .key(key)
                    .arg(interval_us)
                    .arg(burst)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Some(if allowed == 1 {
            Decision::Allowed {
                remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            }
        } else {
            Decision::Refused {
                wait: Duration::from_micros(u64::try_from(wait_us.max(0)).unwrap_or(0)),
            }
        })
    }

    /// Tells the burst bucket `bucket` (`burst` tokens, one back per `interval`) that upstream says
    /// `remaining` are left: it never has more than that from now on. An answer that `spent`
    /// a token is counted across replicas: its place in the count (`None` when not counted
    /// or Redis did not answer).
    pub async fn learn(
        &self,
        bucket: &str,
        interval: Duration,
        burst: u64,
        remaining: u64,
        spent: bool,
    ) -> Option<u64> {
        let key = self.key("k", bucket);
        let count = self.key("n", bucket);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let seq = self
            .run(|mut c| async move {
                self.learn
                    .key(key)
                    .key(count)
                    .arg(interval_us)
                    .arg(burst)
                    .arg(remaining.min(burst))
                    .arg(u8::from(spent))
                    .invoke_async::<u64>(&mut c)
                    .await
            })
            .await?;
        (seq > 0).then_some(seq)
    }

    /// Points `bucket` spent in the UTC hour `hour`, across every replica.
    pub async fn points(&self, bucket: &str, hour: u64) -> Option<u64> {
        let key = self.key("p", &format!("{bucket}:{hour}"));
        self.run(|mut c| async move { c.get::<_, Option<u64>>(key).await })
            .await
            .map(|spent| spent.unwrap_or(0))
    }

    /// Adds `points` to what `bucket` spent in `hour`; the new total. The count outlives its
    /// hour by one more, then expires.
    pub async fn spend_points(&self, bucket: &str, hour: u64, points: u32) -> Option<u64> {
        let key = self.key("p", &format!("{bucket}:{hour}"));
        let mut pipe = redis::pipe();
        pipe.atomic().incr(&key, points).expire(&key, 7200).ignore();
        self.run(|mut c| async move { pipe.query_async::<(u64,)>(&mut c).await })
            .await
            .map(|(total,)| total)
    }

    /// Starts the health check and the subscription; both end when `listener` is gone.
    pub fn spawn(self: &Arc<Self>, listener: Weak<dyn Listener>) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(500));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(listener) = listener.upgrade() else {
                    return;
                };
                if this.is_up() {
                    this.announce().await;
                    continue;
                }
                if this.reconnect(listener).await {
                    tracing::info!("redis reachable: cluster mode restored");
                }
            }
        });
    }

    /// Pings and subscribes; on success adopts the cluster's generations, marks the cluster up
    /// and announces itself, and applies purges as they come until the subscription breaks.
    async fn reconnect(self: &Arc<Self>, listener: Arc<dyn Listener>) -> bool {
        let mut conn = self.conn.clone();
        let ping_command = redis::cmd("PING");
        let ping = tokio::time::timeout(
            self.op_timeout,
            ping_command.query_async::<String>(&mut conn),
        );
        match ping.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                self.mark_down(describe(&error));
                return false;
            }
            Err(_) => {
                self.mark_down(self.timed_out());
                return false;
            }
        }
        match self.layout().await {
            Some(theirs) if theirs == LAYOUT => {}
            Some(theirs) => {
                self.mark_down(format!(
                    "Redis holds layout {theirs} of another wikigate version (this one is {LAYOUT}): \
                     give each version its own cluster.namespace"
                ));
                return false;
            }
            None => return false,
        }
        let pubsub = tokio::time::timeout(self.op_timeout * 5, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.key("inv", "all")).await?;
            redis::RedisResult::Ok(pubsub)
        });
        let pubsub = match pubsub.await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(error)) => {
                self.mark_down(format!("subscribing: {}", describe(&error)));
                return false;
            }
            Err(_) => {
                self.mark_down(format!("subscribing: {}", self.timed_out()));
                return false;
            }
        };
        // Purges missed while cut off are adopted before serving from L1 again; after an
        // outage (or a write Redis never counted, or a Redis that is not the one it was), the
        // era moves on before any key with a Redis counter is computed again.
        let fence =
            self.was_up.load(Ordering::Acquire) || self.missed_write.swap(false, Ordering::AcqRel);
        let run_id = self.run_id().await.unwrap_or_default();
        let Some((generations, purges)) = self.sync(&listener.generations(), fence, &run_id).await
        else {
            if fence {
                self.missed_write.store(true, Ordering::Release);
            }
            return false;
        };
        listener.adopt(&generations);
        self.applied.fetch_max(purges, Ordering::AcqRel);
        self.was_up.store(true, Ordering::Release);
        *self.trouble.lock() = None;
        self.up.store(true, Ordering::Release);
        self.announce().await;
        let this = self.clone();
        let listener = Arc::downgrade(&listener);
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(listener) = listener.upgrade() else {
                    return;
                };
                if let Some(purged) = message
                    .get_payload::<String>()
                    .ok()
                    .and_then(|text| Purged::decode(&text))
                {
                    listener.adopt(&[(purged.field, purged.value)]);
                    this.applied(purged.number).await;
                }
            }
            this.mark_down("subscription lost".to_owned());
        });
        true
    }

    /// The layout of the namespace's keys in Redis: this version's, written by the first
    /// replica to reach it, or another version's; `None` when Redis does not answer.
    async fn layout(&self) -> Option<u32> {
        let key = self.key("layout", "all");
        self.timed(|mut c| async move {
            let _: bool = c.set_nx(&key, LAYOUT).await?;
            c.get::<_, u32>(&key).await
        })
        .await
    }

    /// Which Redis process answers (`INFO server`'s `run_id`); `None` when it does not say
    /// (the sync then treats it as a new one).
    async fn run_id(&self) -> Option<String> {
        let info: String = self
            .timed(
                |mut c| async move { redis::cmd("INFO").arg("server").query_async(&mut c).await },
            )
            .await?;
        info.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
    }

    /// The cluster's shared generations, raised to at least `local` first (and the era moved
    /// on when `fence`, or when Redis's `run_id` changed), and the number of the latest purge.
    async fn sync(
        &self,
        local: &[(String, u64)],
        fence: bool,
        run_id: &str,
    ) -> Option<(Vec<(String, u64)>, u64)> {
        let keys = [
            self.key("gens", "all"),
            self.key("purges", "all"),
            self.key("inv", "all"),
            self.key("server", "all"),
        ];
        let (fields, purges): (Vec<(String, u64)>, u64) = self
            .timed(|mut c| async move {
                let mut invocation = self.sync.key(&keys[0]);
                invocation.key(&keys[1]).key(&keys[2]).key(&keys[3]);
                invocation.arg(u8::from(fence)).arg(run_id);
                for (field, value) in local {
                    invocation.arg(field).arg(value);
                }
                invocation.invoke_async(&mut c).await
            })
            .await?;
        Some((fields, purges))
    }
}

/// A random name for this replica.
fn replica_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the operating system provides randomness");
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

use redis::IntoConnectionInfo as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_messages_are_read_as_the_script_writes_them() {
        assert_eq!(
            Purged::decode("gen:17:4:route:memberof"),
            Some(Purged {
                number: 17,
                value: 4,
                field: "route:memberof".to_owned(),
            })
        );
        assert_eq!(Purged::decode("gen:1:1:epoch").unwrap().field, "epoch");
        for nonsense in ["epoch", "slot:3", "gen:x:1:epoch", "gen:1"] {
            assert_eq!(Purged::decode(nonsense), None, "{nonsense}");
        }
    }
}
