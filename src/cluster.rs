//! Multi-replica mode: several wikigate replicas made one gateway through Redis.
//!
//! - **Shared L2.** An L1 (moka) miss looks in Redis before going upstream; a stored answer is
//!   written to both, with the same lifetime. Redis keys are `{namespace}:e:{hex of the cache
//!   key}` — the cache key is already a hash over a keyed hash of the credential, so no
//!   credential, account id or path is in Redis in clear.
//! - **Generations in Redis.** Reads of routes that writes change (watches, properties) take
//!   their tag's generation from Redis (`{namespace}:g:{slot}`), and writes `INCR` it before
//!   their answer is sent: a write through any replica changes the key every replica computes
//!   next, so no replica can serve, or join a fetch of, a pre-write answer. Invalidations and
//!   purges are also published (`{namespace}:inv`) so that other replicas drop dead L1 entries
//!   and apply operator purges.
//! - **Cluster-wide limits.** The per-caller and global upstream limits run as one atomic GCRA
//!   Lua script in Redis (`EVALSHA`), with Redis's own clock.
//!
//! Redis down (an operation failing or taking longer than `cluster.op_timeout`): the replica
//! marks the cluster down and keeps serving — L1 for routes no write changes; routes whose
//! generations live in Redis go upstream uncached (a replica that cannot read them cannot know
//! about writes through others); limits fall back to local ones divided by `cluster.replicas`.
//! A health task pings every 500 ms; when Redis answers again, the replica drops its whole L1
//! (it may have missed invalidations and purges while cut off), resubscribes, and carries on.
//!
//! Coalescing stays per replica: a miss on two replicas at once makes two upstream calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ClusterConfig;

/// The atomic GCRA: KEYS[1] the bucket; ARGV[1] the emission interval (µs), ARGV[2] the burst.
/// Returns {allowed (1|0), wait µs when refused, remaining when allowed}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if now < tat - tolerance then
  return {0, tat - tolerance - now, 0}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now + tolerance) / 1000) + 1000)
return {1, 0, math.floor((tolerance - (new_tat - now)) / interval) + 1}
";

#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    #[error("cluster.redis_url: {0}")]
    Url(String),
    #[error("cannot read cluster.redis_ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
}

/// What the cluster's GCRA decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed { remaining: u32 },
    Refused { wait: Duration },
}

/// A message on the invalidation channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A tag's generation slot was bumped.
    Slot(usize),
    /// `route:{name}` was purged.
    Route(String),
    /// Everything was purged.
    Epoch,
}

impl Invalidation {
    fn encode(&self) -> String {
        match self {
            Invalidation::Slot(slot) => format!("slot:{slot}"),
            Invalidation::Route(name) => format!("route:{name}"),
            Invalidation::Epoch => "epoch".to_owned(),
        }
    }

    fn decode(text: &str) -> Option<Invalidation> {
        if text == "epoch" {
            return Some(Invalidation::Epoch);
        }
        if let Some(slot) = text.strip_prefix("slot:") {
            return slot.parse().ok().map(Invalidation::Slot);
        }
        text.strip_prefix("route:")
            .map(|name| Invalidation::Route(name.to_owned()))
    }
}

/// Receives what other replicas publish, and learns when Redis came back.
pub trait Listener: Send + Sync + 'static {
    fn invalidated(&self, invalidation: Invalidation);
    /// Redis is reachable again after an outage: drop whatever may have been missed.
    fn reconnected(&self);
}

pub struct Cluster {
    client: redis::Client,
    conn: ConnectionManager,
    namespace: String,
    op_timeout: Duration,
    replicas: u32,
    up: AtomicBool,
    gcra: redis::Script,
}

impl Cluster {
    /// Connects lazily: a replica starts and serves even while Redis is down.
    pub fn new(config: &ClusterConfig) -> Result<Arc<Cluster>, ClusterSetupError> {
        let url = config.redis_url.as_deref().unwrap_or_default();
        let mut info: redis::ConnectionInfo = url
            .into_connection_info()
            .map_err(|e| ClusterSetupError::Url(e.to_string()))?;
        if let Some(var) = &config.redis_password_env
            && let Ok(password) = std::env::var(var)
        {
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
            gcra: redis::Script::new(GCRA),
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
        match tokio::time::timeout(self.op_timeout, operation(self.conn.clone())).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.mark_down(&error.to_string());
                None
            }
            Err(_) => {
                self.mark_down("operation timed out");
                None
            }
        }
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                why,
                "redis unreachable: serving from L1 and upstream, limits local"
            );
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

    /// Bumps tag slots in Redis and tells the other replicas; false when Redis was not reached.
    pub async fn bump(&self, slots: &[usize]) -> bool {
        let mut pipe = redis::pipe();
        for slot in slots {
            pipe.incr(self.key("g", &slot.to_string()), 1).ignore();
            pipe.publish(self.key("inv", "all"), Invalidation::Slot(*slot).encode())
                .ignore();
        }
        self.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await
            .is_some()
    }

    /// Tells the other replicas about an operator's purge.
    pub async fn publish(&self, invalidation: Invalidation) {
        let channel = self.key("inv", "all");
        let message = invalidation.encode();
        self.run(|mut c| async move { c.publish::<_, _, ()>(channel, message).await })
            .await;
    }

    /// An L2 entry, by cache key.
    pub async fn get(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        let key = self.key("e", &hex(key));
        self.run(|mut c| async move { c.get::<_, Option<Vec<u8>>>(key).await })
            .await
            .flatten()
    }

    /// Writes an L2 entry that expires after `ttl`.
    pub async fn set(&self, key: &[u8; 32], value: Vec<u8>, ttl: Duration) {
        let key = self.key("e", &hex(key));
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(|mut c| async move { c.pset_ex::<_, _, ()>(key, value, millis).await })
            .await;
    }

    /// One GCRA decision for `bucket` (`rate` per `per`, `burst`), across every replica.
    pub async fn gcra(&self, bucket: &str, interval: Duration, burst: u32) -> Option<Decision> {
        let key = self.key("l", bucket);
        let interval_us = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let (allowed, wait_us, remaining): (i64, i64, i64) = self
            .run(|mut c| async move {
                self.gcra
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
                    continue;
                }
                if this.reconnect(listener).await {
                    tracing::info!("redis reachable: cluster mode restored");
                }
            }
        });
    }

    /// Pings and subscribes; on success marks the cluster up, drops the L1 and starts
    /// forwarding invalidations until the subscription breaks.
    async fn reconnect(self: &Arc<Self>, listener: Arc<dyn Listener>) -> bool {
        let mut conn = self.conn.clone();
        let ping_command = redis::cmd("PING");
        let ping = tokio::time::timeout(
            self.op_timeout,
            ping_command.query_async::<String>(&mut conn),
        );
        if !matches!(ping.await, Ok(Ok(_))) {
            return false;
        }
        let pubsub = tokio::time::timeout(self.op_timeout * 5, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.key("inv", "all")).await?;
            redis::RedisResult::Ok(pubsub)
        });
        let Ok(Ok(pubsub)) = pubsub.await else {
            return false;
        };
        // Whatever was missed while cut off is dropped before serving from L1 again.
        listener.reconnected();
        self.up.store(true, Ordering::Release);
        let this = self.clone();
        let listener = Arc::downgrade(&listener);
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(listener) = listener.upgrade() else {
                    return;
                };
                if let Some(invalidation) = message
                    .get_payload::<String>()
                    .ok()
                    .and_then(|text| Invalidation::decode(&text))
                {
                    listener.invalidated(invalidation);
                }
            }
            this.mark_down("subscription lost");
        });
        true
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

use redis::IntoConnectionInfo as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip() {
        for invalidation in [
            Invalidation::Slot(42),
            Invalidation::Route("memberof".into()),
            Invalidation::Epoch,
        ] {
            assert_eq!(
                Invalidation::decode(&invalidation.encode()),
                Some(invalidation)
            );
        }
        assert_eq!(Invalidation::decode("nonsense"), None);
    }
}
