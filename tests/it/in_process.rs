//! The gateway driven in-process (`Gateway::handle`), with request bodies no HTTP client would
//! send on cue: one that stalls, one that never stops. Time is tokio's paused clock. The
//! upstream is still the fake site on a socket: what is exercised is the gateway's own reading.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use wikigate::Gateway;
use wikigate::Parts;
use wikigate::config::RawConfig;
use wikigate::fake::FakeConfluence;
use wikigate::routes::Operation;
use wikigate::server::ConnInfo;

use crate::support::{API, alice, basic, config_for};

/// A request body that yields `chunks` chunks of `size` bytes, then stalls forever (or, with
/// `endless`, never runs out); `read` counts the bytes taken from it.
struct Body {
    chunks: usize,
    size: usize,
    endless: bool,
    read: Arc<AtomicUsize>,
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.chunks == 0 && !self.endless {
            return Poll::Pending;
        }
        self.chunks = self.chunks.saturating_sub(1);
        self.read.fetch_add(self.size, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.size])))))
    }
}

async fn gateway(tweak: impl FnOnce(&mut RawConfig)) -> (Gateway, FakeConfluence) {
    let fake = FakeConfluence::start().await.expect("the fake starts");
    let mut config = config_for(&fake.url());
    tweak(&mut config);
    let config = config.validate().expect("a valid config");
    let (parts, _) = Parts::build(&config).expect("parts");
    (Gateway::new(&config, parts).expect("a gateway"), fake)
}

fn put(body: Body) -> Request<Body> {
    Request::builder()
        .method(Method::PUT)
        .uri(format!("{API}/{}/property/team", alice().account_id))
        .header(header::HOST, "wikigate.test")
        .header(header::AUTHORIZATION, basic(alice()))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-atlassian-token", "no-check")
        .body(body)
        .expect("a request")
}

const CONN: ConnInfo = ConnInfo {
    peer: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        40000,
    )),
    tls: false,
};

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_is_408_at_body_read_timeout() {
    let (gateway, fake) = gateway(|c| c.server.body_read_timeout = Duration::from_secs(5)).await;
    let read = Arc::new(AtomicUsize::new(0));
    let body = Body {
        chunks: 1,
        size: 10,
        endless: false,
        read: read.clone(),
    };
    let started = tokio::time::Instant::now();
    let response = gateway.handle(put(body), CONN).await;
    assert_eq!(response.status(), 408);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let json: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(json["statusCode"], 408, "Confluence's error shape: {json}");
    assert_eq!(read.load(Ordering::SeqCst), 10);
    assert_eq!(fake.hits(Operation::UpdateUserProperty), 0);
}

#[tokio::test(start_paused = true)]
async fn an_endless_body_is_413_and_never_read_far_past_the_limit() {
    let (gateway, fake) = gateway(|c| c.server.max_body_bytes = 64 * 1024).await;
    let read = Arc::new(AtomicUsize::new(0));
    let body = Body {
        chunks: 0,
        size: 1024,
        endless: true,
        read: read.clone(),
    };
    let response = gateway.handle(put(body), CONN).await;
    assert_eq!(response.status(), 413);
    let read = read.load(Ordering::SeqCst);
    assert!(
        (64 * 1024..=65 * 1024).contains(&read),
        "read {read} bytes of an endless body"
    );
    assert_eq!(fake.hits(Operation::UpdateUserProperty), 0);
}

/// An empty request body that says when it was dropped.
struct Watched(Arc<std::sync::atomic::AtomicBool>);

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(None)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_hit_is_answered_before_its_future_is_polled_and_keeps_nothing_of_the_request() {
    use futures_util::FutureExt as _;
    let (gateway, fake) = gateway(|_| {}).await;
    let get = |dropped: &Arc<std::sync::atomic::AtomicBool>| {
        Request::builder()
            .uri(format!("{API}/current"))
            .header(header::HOST, "wikigate.test")
            .header(header::AUTHORIZATION, basic(alice()))
            .header(header::ACCEPT_ENCODING, "gzip, deflate")
            .body(Watched(dropped.clone()))
            .expect("a request")
    };
    let first = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stored = gateway.handle(get(&first), CONN).await;
    assert_eq!(stored.status(), 200);
    assert_eq!(fake.hits(Operation::GetCurrentUser), 1);

    let second = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answer = gateway.handle(get(&second), CONN);
    // Before the future is polled: the request (whose head, off the wire, shares the
    // connection's read buffer) is gone already.
    assert!(
        second.load(Ordering::SeqCst),
        "the request outlived the call"
    );
    let hit = answer
        .now_or_never()
        .expect("a hit's answer is ready at once");
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["cache-status"], "wikigate; hit");
    assert_eq!(hit.headers()[header::CONTENT_ENCODING], "gzip");
    assert!(hit.headers().contains_key("x-request-id"));
    assert_eq!(
        fake.hits(Operation::GetCurrentUser),
        1,
        "no second trip upstream"
    );
}
