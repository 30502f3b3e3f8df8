//! The admin listener: operator endpoints, on an address of their own.
//!
//! Endpoints:
//! - `GET /` — the status page (HTML, refreshing itself).
//! - `GET /metrics` — Prometheus/OpenMetrics text exposition of every `wikigate_*` metric.
//! - `GET /healthz` — 200 while the process serves at all (liveness).
//! - `GET /readyz` — 200 while accepting traffic and able to serve it; 503 once draining has
//!   begun (so a load balancer stops sending new requests before the gateway stops accepting
//!   them), while the admission path's state cannot be had, or while requests keep failing
//!   inside wikigate with no upstream call completing (`metrics::NOT_READY_AFTER` in a row).
//! - `DELETE /admin/cache` — drop every cached answer.
//! - `DELETE /admin/cache?tag=TAG` — invalidate one tag (`watch:space:KEY`,
//!   `property:USER:KEY`, `properties:USER`, `route:NAME`, …).
//! - `GET /admin/cache/stats` — entries, weighted bytes, hits, misses, stale, coalesced, …
//! - `GET /admin/config` — the effective configuration as TOML (what is in force after the
//!   reloads since the start), secrets shown as `<redacted>`; with `?digests`, each secret as a
//!   BLAKE3 digest keyed with this process's random key (`X-Wikigate-Digest-Key`), and the
//!   service-account credential's digest in `X-Wikigate-Credential-Digest`: what
//!   `check-config --against` compares, never a value.
//!
//! Invariant: `/admin/*` needs `Authorization: Bearer <admin.token>` (401 otherwise) and does
//! not exist (404) when no token is configured. The token is kept only as a hash and compared
//! in constant time. Everything else is 404 in Confluence's error shape.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::watch;

use crate::body::Body;
use crate::cache::Purge;
use crate::cluster::Health;
use crate::config::Config;
use crate::error::error_response;
use crate::metrics::Snapshot;
use crate::parts::Parts;
use crate::routes::Tag;
use crate::server::{ConnInfo, Handler};
use crate::status_page;

/// How long readiness waits for each lock of the admission path.
const LOCK_PROBE: std::time::Duration = std::time::Duration::from_millis(250);

pub(crate) struct Admin {
    draining: watch::Receiver<bool>,
    parts: Parts,
    started: Instant,
    /// BLAKE3 of the token; `blake3::Hash` compares in constant time.
    token: Option<blake3::Hash>,
    /// The effective configuration as TOML (a reload replaces it).
    config: Arc<ArcSwap<String>>,
    /// The key of the secrets' digests, random for this process, and the digests of the
    /// secrets in force (they need a restart to change).
    digest_key: [u8; 32],
    digests: Vec<(&'static str, String)>,
}

impl Admin {
    /// `draining` turns true when shutdown begins; `started_with`: the configuration the
    /// gateway started with (its admin token and secrets); `config`: the effective
    /// configuration as TOML, which reloads replace.
    pub(crate) fn new(
        draining: watch::Receiver<bool>,
        parts: Parts,
        started_with: &Config,
        config: Arc<ArcSwap<String>>,
    ) -> Admin {
        use ring::rand::SecureRandom as _;
        let mut digest_key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut digest_key)
            .expect("the operating system provides randomness");
        Admin {
            draining,
            parts,
            started: Instant::now(),
            token: started_with
                .admin
                .token
                .as_ref()
                .map(|t| blake3::hash(t.expose().as_bytes())),
            config,
            digests: started_with.secret_digests(&digest_key),
            digest_key,
        }
    }

    /// `/admin/config?digests`: the effective configuration with each secret's keyed digest,
    /// the key and the credential's digest in headers.
    fn config_with_digests(&self) -> Response<Body> {
        let text = self.config.load();
        let Ok(table) = text.parse::<toml::Table>() else {
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the configuration does not parse",
            );
        };
        let mut value = toml::Value::Table(table);
        crate::config::with_digests(&mut value, &self.digests);
        let mut response = body(
            StatusCode::OK,
            "application/toml; charset=utf-8",
            toml::to_string_pretty(&value).unwrap_or_default(),
        );
        let headers = response.headers_mut();
        let hex = blake3::Hash::from_bytes(self.digest_key).to_hex();
        if let Ok(key) = HeaderValue::from_str(hex.as_str()) {
            headers.insert("x-wikigate-digest-key", key);
        }
        let credential = self
            .parts
            .callers
            .load()
            .credential_digest(&self.digest_key);
        if let Some(digest) = credential.and_then(|d| HeaderValue::from_str(&d).ok()) {
            headers.insert("x-wikigate-credential-digest", digest);
        }
        response
    }

    /// The refusal for a request to `/admin/*`, or `None` when it may proceed.
    fn refusal(&self, request: &Request<Incoming>) -> Option<Response<Body>> {
        let Some(expected) = self.token else {
            return Some(error_response(
                StatusCode::NOT_FOUND,
                "admin endpoints are off: set admin.token or WIKIGATE_ADMIN_TOKEN",
            ));
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| blake3::hash(t.trim().as_bytes()));
        if presented == Some(expected) {
            return None;
        }
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            "a valid admin bearer token is required",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"wikigate-admin\""),
        );
        Some(response)
    }

    async fn cache_endpoint(&self, request: &Request<Incoming>) -> Response<Body> {
        match (request.method(), request.uri().path()) {
            (&Method::DELETE, "/admin/cache") => {
                let tag = request.uri().query().and_then(|q| {
                    crate::query::pairs(q)
                        .find(|(k, _)| k.as_ref() == b"tag")
                        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                });
                let tag = match tag.as_deref().map(str::parse::<Tag>).transpose() {
                    Ok(tag) => tag,
                    Err(unknown) => {
                        return error_response(StatusCode::BAD_REQUEST, &unknown.to_string());
                    }
                };
                let purge = self.parts.cache.purge(tag.as_ref()).await;
                let mut report = match &tag {
                    Some(tag) => serde_json::json!({ "invalidated": tag.to_string() }),
                    None => serde_json::json!({ "purged": "all" }),
                };
                let status = match purge {
                    Purge::Done => StatusCode::OK,
                    Purge::Confirmed(confirmation) => {
                        report["replicas"] = confirmation.replicas.into();
                        report["applied"] = confirmation.applied.into();
                        if confirmation.applied >= confirmation.replicas {
                            StatusCode::OK
                        } else {
                            report["message"] =
                                "not every live replica applied the purge in time".into();
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    }
                    Purge::ThisReplicaOnly => {
                        report["message"] =
                            "Redis is unreachable: purged on this replica only".into();
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                json(status, report)
            }
            (&Method::GET, "/admin/cache/stats") => json(StatusCode::OK, self.parts.cache.stats()),
            (&Method::GET, "/admin/config")
                if request
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "digests")) =>
            {
                self.config_with_digests()
            }
            (&Method::GET, "/admin/config") => body(
                StatusCode::OK,
                "application/toml; charset=utf-8",
                String::clone(&self.config.load()),
            ),
            (_, "/admin/config") => not_allowed("GET, HEAD"),
            (_, "/admin/cache") => not_allowed("DELETE"),
            (_, "/admin/cache/stats") => not_allowed("GET, HEAD"),
            _ => error_response(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

impl Handler for Admin {
    fn call(
        admin: &Arc<Admin>,
        request: Request<Incoming>,
        _conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        let admin = admin.clone();
        async move { admin.answer(request).await }
    }
}

impl Admin {
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path();
        if path.starts_with("/admin/") {
            if let Some(refusal) = self.refusal(&request) {
                return refusal;
            }
            return self.cache_endpoint(&request).await;
        }
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        match path {
            "/" => {
                let status = self.parts.metrics.status(&self.snapshot());
                let page = status_page::render(&status, self.started.elapsed());
                body(StatusCode::OK, "text/html; charset=utf-8", page)
            }
            "/metrics" => {
                let openmetrics = request
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                let text = self.parts.metrics.encode(&self.snapshot(), openmetrics);
                let content_type = if openmetrics {
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                } else {
                    "text/plain; version=0.0.4; charset=utf-8"
                };
                body(StatusCode::OK, content_type, text)
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readiness(),
            _ => error_response(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

impl Admin {
    /// `/readyz`: 503 while draining, while the admission path is stuck, or while requests
    /// keep failing inside wikigate; else 200, saying how Redis is.
    fn readiness(&self) -> Response<Body> {
        if let Some(why) = self.not_ready() {
            return body(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                why,
            );
        }
        match self
            .parts
            .cluster
            .as_ref()
            .map(|c| (c.health(), c.replicas()))
        {
            None => text(StatusCode::OK, "ready\n"),
            Some((Health::Up, _)) => text(StatusCode::OK, "ready\nredis: up\n"),
            // Still ready: the replica serves from L1 and upstream meanwhile.
            Some((Health::Down { reason, for_ }, replicas)) => body(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!(
                    "ready\nredis: down for {}s: {reason} (serving from L1 and upstream; limits local, 1/{replicas} each)\n",
                    for_.as_secs()
                ),
            ),
        }
    }

    /// Why the gateway is not ready, or `None` when it is (`/readyz`, `wikigate_ready`).
    fn not_ready(&self) -> Option<String> {
        if *self.draining.borrow() {
            return Some("draining\n".to_owned());
        }
        if !self.parts.limits.responsive(LOCK_PROBE) {
            return Some(
                "not ready: the upstream admission state is stuck (see the log)\n".to_owned(),
            );
        }
        let streak = self.parts.metrics.failing_inside()?;
        Some(format!(
            "not ready: the last {streak} requests failed inside wikigate, none reached upstream since (see the log)\n"
        ))
    }

    fn snapshot(&self) -> Snapshot {
        let (cache_entries, cache_bytes, cache_max_bytes) = self.parts.cache.size();
        let (holds, longest_hold) = self.parts.limits.holds();
        let (upstream_in_flight, upstream_queued) = self.parts.gate.load();
        Snapshot {
            cache_entries,
            cache_bytes,
            cache_max_bytes,
            holds,
            longest_hold,
            redis: self.parts.cluster.as_ref().map(|c| c.health()),
            bursts: self.parts.limits.bursts(),
            upstream_in_flight,
            upstream_queued,
            ready: self.not_ready().is_none(),
            shapes: self
                .parts
                .cache
                .shapes()
                .into_iter()
                .map(|(route, expand, agreement)| (route.name(), expand, agreement.as_str()))
                .collect(),
        }
    }
}

fn body(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(Body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
