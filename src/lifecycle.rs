//! Starting, reloading and stopping wikigate: bind both listeners, serve, apply a new
//! configuration, drain on shutdown.
//!
//! Shutdown order: `/readyz` turns 503 and the gateway listener closes at once; in-flight
//! requests get up to `server.drain_timeout` to finish; only then does the admin listener stop,
//! so health checks keep answering (503) for the whole drain.
//!
//! Reload ([`Running::reload`]): everything the new configuration needs is built before
//! anything is replaced, so a reload applies whole or not at all; the keys
//! `config::reloadable` names are applied, every other changed key is reported as needing a
//! restart, and the effective configuration (`/admin/config`) follows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::access_log;
use crate::admin::Admin;
use crate::caller::Callers;
use crate::cluster::Listener;
use crate::config::{self, Config};
use crate::cookies::IgnoredCookies;
use crate::csrf::CsrfGuard;
use crate::gateway::Gateway;
use crate::limit::{Limits, Policy};
use crate::parts::{Parts, PartsError};
use crate::server::{self, Http, Listeners, TlsError};
use crate::telemetry;
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
    /// Boxed: two configurations, kept out of every future that holds a `Running`.
    reload: Box<Reload>,
}

/// What a reload may replace, the config it started from (what needs a restart is compared
/// with it) and the one in force (what a reload applies is compared with it).
struct Reload {
    parts: Parts,
    secret: [u8; 32],
    started: Config,
    running: parking_lot::Mutex<Config>,
    /// The TLS listener's acceptor, when TLS is on: certificate files are read again.
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    /// The effective configuration as TOML, which `/admin/config` shows.
    effective: Arc<ArcSwap<String>>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The keys whose new values are in force.
    pub applied: Vec<String>,
    /// The keys whose new values take effect only after a restart.
    pub restart: Vec<String>,
    /// `log.level` changed, but `RUST_LOG` stands over it.
    pub level_overridden: bool,
    /// What was read again from outside the configuration, changed or not: the TLS
    /// certificate and key, the service-account credential.
    pub reread: Vec<&'static str>,
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

    /// Applies what may change while running, without touching a connection: callers,
    /// client keys and the service-account credential, limits, the quota's settings, the CSRF
    /// allow-list, per-route cache policies, the keeping of 404s, the ignored cookies, the log
    /// level, and the TLS certificate and key (read again, also from new paths). Compares the
    /// whole new configuration with the running one: every other changed key is returned as
    /// needing a restart. Everything is built before anything is replaced, so on error nothing
    /// changes.
    pub fn reload(&self, config: &Config) -> Result<Reloaded, StartError> {
        let Reload {
            parts,
            secret,
            started,
            running,
            tls,
            effective,
        } = &*self.reload;
        let callers =
            Callers::new(config, *secret, &parts.quota.accounts).map_err(PartsError::from)?;
        let acceptor = match (tls, &config.server.tls) {
            (Some(_), Some(files)) => {
                Some(server::tls_acceptor(&files.cert_file, &files.key_file)?)
            }
            _ => None,
        };
        let mut running = running.lock();
        let applied: Vec<String> = config
            .changed_keys(&running)
            .into_iter()
            .filter(|key| config::reloadable(key))
            .collect();
        let restart: Vec<String> = config
            .changed_keys(started)
            .into_iter()
            .filter(|key| !config::reloadable(key))
            .collect();
        parts.callers.store(Arc::new(callers));
        parts.limits.reload(Policy::of(config));
        parts
            .quota
            .site
            .configure(config.quota.points_per_hour, config.quota.reserve);
        parts.cache.reload_policies(&config.cache);
        parts.csrf.store(Arc::new(CsrfGuard::new(&config.csrf)));
        parts
            .cookies
            .store(Arc::new(IgnoredCookies::new(&config.cache.ignored_cookies)));
        let mut reread = Vec::new();
        if let (Some(tls), Some(acceptor)) = (tls, acceptor) {
            tls.store(Arc::new(acceptor));
            reread.push("the TLS certificate and key (new handshakes use them)");
        }
        if config.auth.mode == config::AuthMode::ServiceAccount {
            reread.push("the service-account credential");
        }
        if applied.iter().any(|key| key == "log.access") {
            access_log::set_lines(config.log.access);
        }
        let level_overridden = applied.iter().any(|key| key == "log.level")
            && telemetry::set_level(&config.log.level) == telemetry::LevelChange::Overridden;
        *running = config.clone();
        effective.store(Arc::new(started.effective(config)));
        Ok(Reloaded {
            applied,
            restart,
            level_overridden,
            reread,
        })
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
pub(crate) fn check(config: &Config) -> Result<(), StartError> {
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
    let threads = config.server.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let bind_error = |addr| move |source| StartError::Bind { addr, source };
    let listeners = Listeners::bind(config.server.listen, threads)
        .await
        .map_err(bind_error(config.server.listen))?;
    let admin_listener = bind(config.admin.listen).await?;
    let addr = listeners
        .local_addr()
        .map_err(bind_error(config.server.listen))?;
    let admin_addr = local_addr(&admin_listener, config.admin.listen)?;

    let (draining, draining_rx) = watch::channel(false);
    let effective = Arc::new(ArcSwap::from_pointee(config.to_toml()));
    let reload = Box::new(Reload {
        parts: parts.clone(),
        secret,
        started: config.clone(),
        running: parking_lot::Mutex::new(config.clone()),
        tls: http.tls(),
        effective: effective.clone(),
    });
    let cluster = parts.cluster.clone();
    let admin = Arc::new(Admin::new(draining_rx.clone(), parts, config, effective));
    let drain = config.server.drain_timeout;
    let served = listeners
        .serve(http, gateway, draining_rx.clone(), drain)
        .await
        .map_err(bind_error(addr))?;
    let done = tokio::spawn(async move {
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(server::serve(
            admin_listener,
            Http::plain(),
            admin,
            server::became_true(admin_stop_rx),
            Duration::from_secs(1),
        ));
        served.wait().await;
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
