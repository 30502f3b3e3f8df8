//! Listeners: accept TCP (optionally TLS) connections and serve HTTP/1.1 and HTTP/2 on them.
//!
//! One accept loop per listener, shared by the gateway, the admin endpoints and the fake
//! Confluence site; what is served is a [`Handler`]. The gateway's listener is one socket per
//! serving thread ([`Listeners`]): each thread a runtime of its own with an accept loop of its
//! own, so that a connection, its requests and their wake-ups stay on one thread.
//!
//! The slowloris guard is wikigate's own, not hyper's per-head timer (which arms a boxed timer
//! and makes an extra read for every request: ~1 500 instructions and a syscall a hit): each
//! connection counts requests begun and ended, and a watch that looks every quarter of
//! `server.header_read_timeout` closes a connection once it has seen it quiet — nothing under
//! way, nothing begun — for the whole timeout. So a client that trickles a head, or idles
//! on a keep-alive connection, is cut off between 1 and 1.25 × the timeout after the last
//! request ended (or the connection opened), and a request under way is never cut off by
//! it: a request counts as under way until its answer's body has ended.
//!
//! Shutdown follows hyper-util's graceful pattern: when the shutdown future completes the
//! listener is dropped (no new connections), every open connection is told to finish its
//! in-flight requests and close, and [`serve`] returns once they have or the drain timeout
//! passed, whichever comes first. In-flight requests are never cut short before the deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;
use crate::config::ServerConfig;

/// What is known about the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Something that answers requests. Errors are answered, never returned: a handler decides
/// the response for every request it is given.
pub trait Handler: Send + Sync + 'static {
    /// The answer to `request`. What a handler can answer without waiting it answers before
    /// returning, the future ready: the request, whose head shares the connection's read
    /// buffer, is gone before the connection reads again, and the buffer is reused instead of
    /// replaced.
    fn call(
        handler: &Arc<Self>,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + use<Self>;
}

/// A request body the gateway can read: hyper's [`Incoming`] off the wire, or any
/// [`hyper::body::Body`] of bytes handed to it in-process (tests, benchmarks).
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static
{
}

/// The error type bodies are read with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTP settings for one listener.
#[derive(Clone)]
pub struct Http {
    builder: auto::Builder<TokioExecutor>,
    /// Open connections allowed at once; `None`: unlimited.
    connections: Option<Arc<tokio::sync::Semaphore>>,
    /// Replaced whole by a reload (certificate files re-read); connections keep the one they
    /// were accepted with.
    tls: Option<Arc<ArcSwap<TlsAcceptor>>>,
    /// How long a connection may stay quiet — no request under way — before it is closed;
    /// also the bound on a TLS handshake.
    header_read_timeout: Duration,
}

/// The header count hyper's HTTP/1 parser accepts unless told otherwise.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

impl Http {
    /// Settings from the gateway's `[server]` section: limits, timeouts, optional TLS.
    pub fn from_config(config: &ServerConfig) -> Result<Http, TlsError> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            // The guard is this module's (`watch_idle`), cheaper per request.
            .header_read_timeout(None::<Duration>)
            .keep_alive(true)
            // A head and a body of a few hundred bytes go out in one buffer, one `write(2)`:
            // copying the body costs less than the kernel's second iovec (3 % CPU per hit).
            .writev(false)
            // hyper's own buffer bounds the request line plus headers; the gateway answers
            // the configured limits itself (414/431 in Confluence's shape) below this ceiling.
            .max_buf_size((config.max_uri_bytes + config.max_header_bytes + 4096).max(8192));
        // Up to hyper's default of 100 headers, hyper parses into a buffer on the stack; any
        // explicit count makes it allocate and fill one per request. So the count is handed to
        // hyper only above its default: the gateway answers counts up to hyper's limit itself
        // (431 in Confluence's shape), hyper refuses anything beyond with its bare 431.
        if config.max_headers > HYPER_DEFAULT_MAX_HEADERS {
            http1.max_headers(config.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.http2_max_concurrent_streams)
            .max_header_list_size(
                u32::try_from(config.max_header_bytes + config.max_uri_bytes).unwrap_or(u32::MAX),
            )
            .max_pending_accept_reset_streams(Some(50))
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let tls = match &config.tls {
            Some(tls) => Some(Arc::new(ArcSwap::from_pointee(tls_acceptor(
                &tls.cert_file,
                &tls.key_file,
            )?))),
            None => None,
        };
        Ok(Http {
            builder,
            connections: Some(Arc::new(tokio::sync::Semaphore::new(
                config.max_connections,
            ))),
            tls,
            header_read_timeout: config.header_read_timeout,
        })
    }

    /// Plain HTTP/1.1 + h2c with hyper's defaults (admin endpoints, the fake site).
    pub fn plain() -> Http {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None::<Duration>);
        builder.http2().timer(TokioTimer::new());
        Http {
            builder,
            connections: None,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
        }
    }

    /// The same settings, terminating TLS with `acceptor`.
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Http {
        self.tls = Some(Arc::new(ArcSwap::from_pointee(acceptor)));
        self
    }

    /// Where a reload puts a new acceptor (new certificates), when TLS is on.
    pub fn tls(&self) -> Option<Arc<ArcSwap<TlsAcceptor>>> {
        self.tls.clone()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {message}")]
    Certificate { path: String, message: String },
    #[error("cannot read TLS private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("TLS certificate and key do not fit together: {0}")]
    Config(#[from] rustls::Error),
}

/// A rustls acceptor for PEM files, offering h2 and http/1.1 by ALPN.
pub fn tls_acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificate {
            path: cert_file.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Certificate {
            path: cert_file.display().to_string(),
            message: "no certificate found".to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.display().to_string(),
        message: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains for at most `drain`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    http: Http,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // At the connection cap, stop accepting: new connections wait in the backlog.
        let permit = match &http.connections {
            Some(connections) => tokio::select! {
                permit = connections.clone().acquire_owned() => Some(permit.expect("never closed")),
                () = &mut shutdown => break,
            },
            None => None,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let connection =
                        serve_connection(http.clone(), stream, peer, handler.clone(), graceful.watcher());
                    tokio::spawn(async move {
                        let _permit = permit;
                        connection.await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors or a similar transient failure: back off
                    // instead of spinning, and keep serving the connections already open.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open,
            ?drain,
            "drain timeout passed with connections still open"
        );
    }
}

/// One accepted connection, served until it closes or the drain ends it; with TLS, after a
/// handshake bounded by `handshake_timeout`.
async fn serve_connection<H: Handler>(
    http: Http,
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    watcher: Watcher,
) {
    let _ = stream.set_nodelay(true);
    let conn = ConnInfo {
        peer,
        tls: http.tls.is_some(),
    };
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            let busy = Busy::start(&activity);
            let answer = H::call(&handler, req, conn);
            async move {
                let mut response = answer.await;
                response.body_mut().hold(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let quiet = watch_idle(&activity, http.header_read_timeout);
    let served = async {
        match &http.tls {
            None => {
                let io = TokioIo::new(stream);
                watcher
                    .watch(http.builder.serve_connection(io, service).into_owned())
                    .await
            }
            Some(acceptor) => {
                let acceptor = acceptor.load_full();
                let handshake =
                    tokio::time::timeout(http.header_read_timeout, acceptor.accept(stream));
                let stream = match handshake.await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return Ok(());
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return Ok(());
                    }
                };
                let io = TokioIo::new(stream);
                watcher
                    .watch(http.builder.serve_connection(io, service).into_owned())
                    .await
            }
        }
    };
    let result = tokio::select! {
        result = served => result,
        () = quiet => {
            tracing::debug!(%peer, "connection closed: no request within the header read timeout");
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What a connection has done, for the slowloris guard ([`watch_idle`]).
#[derive(Debug, Default)]
struct Activity {
    /// Requests begun and ended so far: it moves whenever the connection does anything.
    events: AtomicU64,
    /// Requests under way: begun, and their answer's body not yet ended.
    busy: AtomicU64,
}

/// A request under way on its connection, until dropped (with its answer's body).
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: &Arc<Activity>) -> Busy {
        activity.events.fetch_add(1, Ordering::Relaxed);
        activity.busy.fetch_add(1, Ordering::Relaxed);
        Busy(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// Looks at a connection's activity this many times per `header_read_timeout`.
const LOOKS_PER_TIMEOUT: u32 = 4;

/// Completes once `activity` has been quiet — no request under way, none begun or ended —
/// at every look for a whole `timeout`: between 1 and 1.25 × `timeout` after the last
/// request ended, or exactly `timeout` after the connection opened if none began.
async fn watch_idle(activity: &Activity, timeout: Duration) {
    let every = timeout / LOOKS_PER_TIMEOUT;
    let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    looks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut quiet) = (0, 0);
    loop {
        looks.tick().await;
        let events = activity.events.load(Ordering::Relaxed);
        if events != seen || activity.busy.load(Ordering::Relaxed) > 0 {
            (seen, quiet) = (events, 0);
            continue;
        }
        quiet += 1;
        if quiet == LOOKS_PER_TIMEOUT {
            return;
        }
    }
}

/// The gateway listener: served where wikigate was started, or by threads of its own.
pub(crate) enum Listeners {
    Here(TcpListener),
    /// One socket per thread, all bound to one address with `SO_REUSEPORT`; each listens once
    /// its thread's runtime runs.
    Threads(Vec<TcpSocket>),
}

impl Listeners {
    /// Binds `addr` for `threads` threads (`0`: served here).
    pub(crate) async fn bind(addr: SocketAddr, threads: usize) -> std::io::Result<Listeners> {
        if threads == 0 {
            return TcpListener::bind(addr).await.map(Listeners::Here);
        }
        let socket = |addr: SocketAddr| {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            Ok::<_, std::io::Error>(socket)
        };
        let first = socket(addr)?;
        // Port 0: the others take the port the first was given.
        let addr = first.local_addr()?;
        let mut sockets = vec![first];
        for _ in 1..threads {
            sockets.push(socket(addr)?);
        }
        Ok(Listeners::Threads(sockets))
    }

    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Listeners::Here(listener) => listener.local_addr(),
            Listeners::Threads(sockets) => sockets[0].local_addr(),
        }
    }

    /// Serves `handler` on every socket until `draining` turns true, each then drained for at
    /// most `drain`. Returns `Err` at once if a socket cannot listen.
    ///
    /// A thread's runtime outlives its own drain, until every thread has drained: what a
    /// runtime spawned serves the others' requests too (upstream connections, in the shared
    /// pool, run on the runtime that opened them), and goes with the runtime.
    pub(crate) async fn serve<H: Handler>(
        self,
        http: Http,
        handler: Arc<H>,
        draining: watch::Receiver<bool>,
        drain: Duration,
    ) -> std::io::Result<Served> {
        let sockets = match self {
            Listeners::Here(listener) => {
                let served =
                    tokio::spawn(serve(listener, http, handler, became_true(draining), drain));
                return Ok(Served::Here(served));
            }
            Listeners::Threads(sockets) => sockets,
        };
        let (release, released) = watch::channel(false);
        let mut threads = Vec::with_capacity(sockets.len());
        for (n, socket) in sockets.into_iter().enumerate() {
            let (listening, listening_rx) = tokio::sync::oneshot::channel();
            let (drained, drained_rx) = tokio::sync::oneshot::channel::<()>();
            let (exited, exited_rx) = tokio::sync::oneshot::channel::<()>();
            let (http, handler) = (http.clone(), handler.clone());
            let (draining, released) = (draining.clone(), released.clone());
            std::thread::Builder::new()
                .name(format!("wikigate-serve-{n}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => return drop(listening.send(Err(e))),
                    };
                    runtime.block_on(async move {
                        let listener = match socket.listen(1024) {
                            Ok(listener) => listener,
                            Err(e) => return drop(listening.send(Err(e))),
                        };
                        let _ = listening.send(Ok(()));
                        serve(listener, http, handler, became_true(draining), drain).await;
                        drop(drained);
                        became_true(released).await;
                    });
                    drop(runtime);
                    drop(exited);
                })?;
            listening_rx
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("a serving thread stopped")))?;
            threads.push((drained_rx, exited_rx));
        }
        Ok(Served::Threads { threads, release })
    }
}

/// The gateway listener being served.
pub(crate) enum Served {
    Here(tokio::task::JoinHandle<()>),
    Threads {
        /// Each thread's: drained, exited.
        threads: Vec<(
            tokio::sync::oneshot::Receiver<()>,
            tokio::sync::oneshot::Receiver<()>,
        )>,
        /// Lets the threads' runtimes go, once all have drained.
        release: watch::Sender<bool>,
    },
}

impl Served {
    /// Returns once every accept loop has drained (and every serving thread has ended).
    pub(crate) async fn wait(self) {
        match self {
            Served::Here(served) => {
                let _ = served.await;
            }
            Served::Threads { threads, release } => {
                let (drained, exited): (Vec<_>, Vec<_>) = threads.into_iter().unzip();
                for drained in drained {
                    let _ = drained.await;
                }
                release.send_replace(true);
                for exited in exited {
                    let _ = exited.await;
                }
            }
        }
    }
}

/// Completes once `flag` is true (or its sender is gone).
pub(crate) async fn became_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|set| *set).await;
}
