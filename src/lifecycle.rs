//! Starting and stopping wikigate: bind both listeners, serve, drain on shutdown.
//!
//! Shutdown order: `/readyz` turns 503 and the gateway listener closes at once; in-flight
//! requests get up to `server.drain_timeout` to finish; only then does the admin listener stop,
//! so health checks keep answering (503) for the whole drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::caller::Callers;
use crate::cluster::Listener;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::limit::{Limits, Policy};
use crate::parts::{Parts, PartsError};
use crate::server::{self, Http, TlsError};
use crate::upstream::UpstreamSetupError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    #[error(transparent)]
    Parts(#[from] PartsError),
}

/// A running gateway.
pub struct Running {
    /// Where the gateway listens (the real port when the config said port 0).
    pub addr: SocketAddr,
    /// Where the admin endpoints listen.
    pub admin_addr: SocketAddr,
    draining: watch::Sender<bool>,
    done: JoinHandle<()>,
    reload: Reload,
}

/// What a reload may replace, and the config it started from (for what needs a restart).
struct Reload {
    parts: Parts,
    secret: [u8; 32],
    started: Config,
}

impl Running {
    /// Begins a graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.draining.send_replace(true);
    }

    /// Waits until both listeners have stopped.
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    /// Applies a new configuration's callers, client keys, limits and cache TTLs without
    /// touching a connection. Returns the changed keys that only take effect after a restart
    /// (listeners, TLS, upstream, cache size and secret, cluster). On error nothing changes.
    pub fn reload(&self, config: &Config) -> Result<Vec<&'static str>, StartError> {
        let Reload {
            parts,
            secret,
            started,
        } = &self.reload;
        let callers =
            Callers::new(config, *secret, &parts.quota.accounts).map_err(PartsError::from)?;
        parts.callers.store(Arc::new(callers));
        parts.limits.reload(Policy::of(config));
        parts
            .quota
            .site
            .configure(config.quota.points_per_hour, config.quota.reserve);
        parts.cache.reload_policies(config.cache.routes.clone());
        let restart_only: [(&'static str, bool); 8] = [
            ("server", differs(&started.server, &config.server)),
            ("admin.listen", started.admin.listen != config.admin.listen),
            ("admin.token", started.admin.token != config.admin.token),
            ("upstream", differs(&started.upstream, &config.upstream)),
            (
                "cache.max_bytes",
                started.cache.max_bytes != config.cache.max_bytes,
            ),
            (
                "cache.key_secret",
                started.cache.key_secret != config.cache.key_secret,
            ),
            ("cluster", differs(&started.cluster, &config.cluster)),
            ("auth.mode", started.auth.mode != config.auth.mode),
        ];
        Ok(restart_only
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(key, _)| key)
            .collect())
    }

    /// Shuts down and waits.
    pub async fn stop(self) {
        self.shutdown();
        self.wait().await;
    }
}

/// Builds everything [`start`] builds before it binds a listener — callers (a service-account
/// credential read), the upstream client (a CA bundle), the cluster (its URL and CA), TLS (the
/// certificate and key parsed) — and drops it: `check-config` refuses what `serve` would.
pub fn check(config: &Config) -> Result<(), StartError> {
    let (parts, _) = Parts::build(config)?;
    Gateway::new(config, parts)?;
    Http::from_config(&config.server)?;
    Ok(())
}

/// Binds the listeners and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let (parts, secret) = Parts::build(config)?;
    if let Some(cluster) = &parts.cluster {
        let listener: Arc<dyn Listener> = parts.cache.clone();
        cluster.spawn(Arc::downgrade(&listener));
    }
    spawn_reclaim(Arc::downgrade(&parts.limits));
    let gateway = Arc::new(Gateway::new(config, parts.clone())?);
    let http = Http::from_config(&config.server)?;
    let listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.admin.listen).await?;
    let addr = local_addr(&listener, config.server.listen)?;
    let admin_addr = local_addr(&admin_listener, config.admin.listen)?;

    let (draining, draining_rx) = watch::channel(false);
    let reload = Reload {
        parts: parts.clone(),
        secret,
        started: config.clone(),
    };
    let cluster = parts.cluster.clone();
    let admin = Arc::new(Admin::new(
        draining_rx.clone(),
        parts,
        config.admin.token.as_ref(),
    ));
    let drain = config.server.drain_timeout;
    let done = tokio::spawn(async move {
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            Http::plain(),
            admin,
            became_true(admin_stop_rx),
            Duration::from_secs(1),
        ));
        server::serve(listener, http, gateway, became_true(draining_rx), drain).await;
        // Purges stop waiting for this replica now rather than when its announcement expires.
        if let Some(cluster) = cluster {
            cluster.leave().await;
        }
        admin_stop.send_replace(true);
        let _ = admin_task.await;
    });
    tracing::info!(%addr, %admin_addr, upstream = %config.upstream.url, "wikigate listening");
    Ok(Running {
        addr,
        admin_addr,
        draining,
        done,
        reload,
    })
}

/// Whether two config sections differ (compared as TOML).
fn differs<T: serde::Serialize>(a: &T, b: &T) -> bool {
    toml::Value::try_from(a).ok() != toml::Value::try_from(b).ok()
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })
}

/// Reclaims idle callers' limiter state every 30 s, for as long as the gateway lives.
fn spawn_reclaim(limits: std::sync::Weak<Limits>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        every.tick().await;
        loop {
            every.tick().await;
            match limits.upgrade() {
                Some(limits) => limits.reclaim(),
                None => return,
            }
        }
    });
}

async fn became_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
