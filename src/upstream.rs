//! The client side: pooled connections to the Confluence site, over rustls, with timeouts.
//!
//! Invariants:
//! - TLS uses the public web roots plus, optionally, one configured CA bundle; nothing else is
//!   trusted, and certificate checks cannot be switched off.
//! - Every exchange is bounded: connect by `connect_timeout`, response headers by
//!   `response_timeout`, the whole exchange (body included) by `request_timeout`.
//! - Failures become [`GatewayError`]s with the right status: 504 for timeouts (connect or
//!   response), 502 for everything else.
//! - At most `upstream.max_in_flight` requests are upstream at once ([`Gate`], Envoy's circuit
//!   breaker): up to `max_queued` more wait in order for a place, each at most
//!   `max_queue_wait`; past either, 503 `upstream-concurrency` at once. A place is held until
//!   the answer's head has arrived, and given back however the request ends (cancelled too).

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, uri::PathAndQuery};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{UpstreamConfig, UpstreamUrl};
use crate::error::{GatewayError, Refusal};

/// The pooled client for one upstream site.
#[derive(Clone)]
pub(crate) struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    url: Arc<UpstreamUrl>,
    response_timeout: Duration,
    request_timeout: Duration,
    gate: Arc<Gate>,
}

/// The cap on requests upstream at once, with a bounded queue.
#[derive(Debug)]
pub struct Gate {
    places: Arc<Semaphore>,
    max_in_flight: usize,
    max_queued: usize,
    max_wait: Duration,
    queued: AtomicUsize,
}

/// A request's place upstream; given back when dropped.
#[derive(Debug)]
pub struct Place(#[expect(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

/// Counts a request in the queue while it waits, however the wait ends.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The name of the gate's refusals (`X-Wikigate-Limit`, the `limit` label).
pub(crate) const CONCURRENCY_LIMIT: &str = "upstream-concurrency";

/// How long a request refused by the gate is told to wait.
const GATE_RETRY: Duration = Duration::from_secs(1);

impl Gate {
    pub fn new(config: &UpstreamConfig) -> Gate {
        Gate {
            places: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            max_queued: config.max_queued,
            max_wait: config.max_queue_wait,
            queued: AtomicUsize::new(0),
        }
    }

    /// A place upstream now, if one is free (a call nobody waits for never queues).
    pub fn try_enter(&self) -> Option<Place> {
        self.places.clone().try_acquire_owned().ok().map(Place)
    }

    /// A place upstream: at once, or after waiting in the queue; refused (503) when the queue
    /// is full or the wait ran out.
    pub async fn enter(&self) -> Result<Place, GatewayError> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(Place(permit));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse());
        }
        let queued = Queued(&self.queued);
        let permit = tokio::time::timeout(self.max_wait, self.places.clone().acquire_owned()).await;
        drop(queued);
        match permit {
            Ok(Ok(permit)) => Ok(Place(permit)),
            _ => Err(self.refuse()),
        }
    }

    fn refuse(&self) -> GatewayError {
        GatewayError::Overloaded(Refusal {
            limit: CONCURRENCY_LIMIT,
            description: "wikigate's cap on requests upstream at once (upstream.max_in_flight)",
            retry_after: GATE_RETRY,
            headers: Vec::new(),
        })
    }

    /// Requests upstream now, and requests waiting for a place.
    pub fn load(&self) -> (usize, usize) {
        (
            self.max_in_flight - self.places.available_permits(),
            self.queued.load(Ordering::Acquire),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("cannot read upstream.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS client setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl Upstream {
    /// `gate`: the cap on requests upstream at once, shared with what reports it.
    pub(crate) fn new(
        config: &UpstreamConfig,
        gate: Arc<Gate>,
    ) -> Result<Upstream, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &config.ca_file {
            let ca_error = |message: String| UpstreamSetupError::CaFile {
                path: path.display().to_string(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ca_error(e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ca_error("no usable CA certificate".to_owned()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Upstream {
            client,
            url: Arc::new(config.url.clone()),
            response_timeout: config.response_timeout,
            request_timeout: config.request_timeout,
            gate,
        })
    }

    /// The upstream URI for an incoming request target: the configured prefix joined with the
    /// target, which is kept byte-for-byte (Connect JWT signatures hash it).
    pub(crate) fn target(&self, path_and_query: &PathAndQuery) -> Result<Uri, GatewayError> {
        let path_and_query = if self.url.prefix().is_empty() {
            path_and_query.clone()
        } else {
            let joined = format!("{}{}", self.url.prefix(), path_and_query.as_str());
            PathAndQuery::try_from(joined)
                .map_err(|e| GatewayError::UpstreamProtocol(format!("bad upstream target: {e}")))?
        };
        Uri::builder()
            .scheme(self.url.scheme().clone())
            .authority(self.url.authority().clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| GatewayError::UpstreamProtocol(format!("bad upstream target: {e}")))
    }

    /// The deadline for an exchange starting now.
    pub(crate) fn deadline(&self) -> Instant {
        Instant::now() + self.request_timeout
    }

    /// A place upstream, which [`Upstream::send`] needs (see [`Gate::enter`]).
    pub(crate) async fn enter(&self) -> Result<Place, GatewayError> {
        self.gate.enter().await
    }

    /// A place upstream now, if one is free.
    pub(crate) fn try_enter(&self) -> Option<Place> {
        self.gate.try_enter()
    }

    /// Sends a request, holding a place upstream, and waits for the response's headers, at
    /// most until `response_timeout` or `deadline`, whichever is sooner.
    pub(crate) async fn send(
        &self,
        _place: &Place,
        request: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, GatewayError> {
        let started = Instant::now();
        let headers_by = deadline.min(started + self.response_timeout);
        match tokio::time::timeout_at(headers_by, self.client.request(request)).await {
            Err(_) => Err(GatewayError::UpstreamTimeout(format!(
                "no response headers within {:?}",
                headers_by.saturating_duration_since(started)
            ))),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Maps a client error to 502 or 504, keeping the root cause in the message.
fn classify(error: &hyper_util::client::legacy::Error) -> GatewayError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = error.source();
    let mut root = error.to_string();
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return GatewayError::UpstreamTimeout(format!("connect: {io}"));
        }
        root = e.to_string();
        cause = e.source();
    }
    if error.is_connect() {
        GatewayError::UpstreamConnect(root)
    } else {
        GatewayError::UpstreamProtocol(root)
    }
}
