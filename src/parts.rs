//! The state a gateway is made of, shared by both listeners: the cache, the callers, the
//! limits, the quota, the metrics, the cluster, the links, the upstream gate, the write guard
//! and the ignored cookies. The gateway and the admin endpoints take it;
//! `lifecycle` builds it, reloads what may be reloaded, and owns nothing else of it.
//!
//! Invariant: one `Parts` per running gateway; everything in it is shared (`Arc`), never
//! copied, so that the admin endpoints see the very cache and metrics the gateway uses.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::cache::{self, Cache};
use crate::caller::{AuthSetupError, Callers};
use crate::cluster::{Cluster, ClusterSetupError};
use crate::config::Config;
use crate::cookies::IgnoredCookies;
use crate::csrf::CsrfGuard;
use crate::limit::{LimitKind, Limits, Policy};
use crate::links::Links;
use crate::metrics::Metrics;
use crate::quota::Quota;
use crate::upstream::{self, Gate};

/// Why the parts could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PartsError {
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error(transparent)]
    Cluster(#[from] ClusterSetupError),
}

/// The shared components that the gateway and the admin endpoints both use.
#[derive(Clone)]
pub struct Parts {
    pub cache: Arc<Cache>,
    /// Replaced whole by a reload.
    pub callers: Arc<ArcSwap<Callers>>,
    pub limits: Arc<Limits>,
    /// Atlassian's points: the site's standing, every caller's account.
    pub quota: Arc<Quota>,
    pub metrics: Arc<Metrics>,
    /// Redis, in multi-replica mode.
    pub cluster: Option<Arc<Cluster>>,
    /// `_links` rewriting and the redirects that go with it.
    pub links: Arc<Links>,
    /// The cap on requests upstream at once.
    pub gate: Arc<Gate>,
    /// The write guard (`csrf.allowed_origins`); replaced whole by a reload.
    pub csrf: Arc<ArcSwap<CsrfGuard>>,
    /// The cookies that never cross (`cache.ignored_cookies`); replaced whole by a reload.
    pub cookies: Arc<ArcSwap<IgnoredCookies>>,
}

impl Parts {
    /// The state a gateway is made of, and the partition secret it was keyed with; nothing
    /// is spawned or bound yet. (`start` uses it, and the in-process benchmarks.)
    pub fn build(config: &Config) -> Result<(Parts, [u8; 32]), PartsError> {
        let quota = Arc::new(Quota::new(
            config.quota.points_per_hour,
            config.quota.reserve,
        ));
        let metrics = Arc::new(Metrics::new(quota.clone()));
        let limits: Vec<&'static str> = LimitKind::ALL
            .iter()
            .map(|kind| kind.as_str())
            .chain([upstream::CONCURRENCY_LIMIT])
            .collect();
        // The labels `Caller::metric_label` gives: a client's name, else the default class's
        // account, else (not identified) "unknown".
        let default_class = format!("class:{}", config.limits.default_class);
        let callers = config.callers.clients.iter().map(|c| c.name.as_str());
        let others = [default_class.as_str(), "unknown"];
        metrics.expect_refusals(callers.chain(others), &limits);
        let secret = cache::partition_secret(&config.cache);
        let cluster = match config.cluster.redis_url {
            Some(_) => Some(Cluster::new(&config.cluster)?),
            None => None,
        };
        let links = Arc::new(Links::new(
            config.server.public_url.as_deref(),
            &config.upstream.url,
        ));
        let cache = Cache::new(
            &config.cache,
            links.clone(),
            secret,
            metrics.clone(),
            quota.clone(),
        )
        .with_cluster(cluster.clone());
        let callers = Callers::new(config, secret, &quota.accounts)?;
        let parts = Parts {
            cache: Arc::new(cache),
            callers: Arc::new(ArcSwap::from_pointee(callers)),
            limits: Arc::new(Limits::new(
                Policy::of(config),
                cluster.clone(),
                quota.clone(),
            )),
            quota,
            metrics,
            cluster,
            links,
            gate: Arc::new(Gate::new(&config.upstream)),
            csrf: Arc::new(ArcSwap::from_pointee(CsrfGuard::new(&config.csrf))),
            cookies: Arc::new(ArcSwap::from_pointee(IgnoredCookies::new(
                &config.cache.ignored_cookies,
            ))),
        };
        Ok((parts, secret))
    }
}
