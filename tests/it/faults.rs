//! A misbehaving upstream: clear 502/504 in Confluence's shape, bounded memory, nothing broken
//! stored. The upstream here is a raw TCP server that does exactly the wrong thing asked of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{API, TestClient, alice, basic, config_for};

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    ResetBeforeHeaders,
    ResetMidBody,
    Garbage,
    ShortBody,
    SlowBody,
    /// A valid answer, then the connection closed without saying so (pooled connections die).
    CloseAfterEach,
    /// A valid 5 MB chunked answer.
    Huge,
    /// A valid answer whose body comes 200 ms after its head; counted in [`DRIBBLING`] from
    /// the request's head until the body's last byte.
    Dribble,
    /// `Content-Encoding: gzip` over a gzip stream cut short.
    CorruptGzip,
    /// To requests that accept gzip, 16 KB of gzip that inflate to 16 MB; to the others, a
    /// plain answer.
    GzipBomb,
}

const ANSWER: &str = r#"{"type":"known","accountId":"x","displayName":"X"}"#;

/// Exchanges [`Misbehaviour::Dribble`] has under way now, and the most it ever had at once.
static DRIBBLING: (AtomicU64, AtomicU64) = (AtomicU64::new(0), AtomicU64::new(0));

/// Starts the upstream; returns its URL and a count of requests it read.
async fn upstream(behaviour: Misbehaviour) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(serve(stream, behaviour, counter));
        }
    });
    (url, requests)
}

/// Reads a request head; `None` once the connection is gone.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).to_lowercase())
}

fn reset(stream: TcpStream) {
    // A zero linger makes close send RST; it is a non-zero linger that would block on drop.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn serve(mut stream: TcpStream, behaviour: Misbehaviour, requests: Arc<AtomicU64>) {
    loop {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        requests.fetch_add(1, Ordering::SeqCst);
        let ok = |len: usize| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n"
            )
        };
        match behaviour {
            Misbehaviour::ResetBeforeHeaders => return reset(stream),
            Misbehaviour::ResetMidBody => {
                let _ = stream
                    .write_all(format!("{}{}", ok(1000), &ANSWER[..20]).as_bytes())
                    .await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                return reset(stream);
            }
            Misbehaviour::Garbage => {
                let _ = stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
                return;
            }
            Misbehaviour::ShortBody => {
                let _ = stream
                    .write_all(format!("{}{}", ok(500), ANSWER).as_bytes())
                    .await;
                return;
            }
            Misbehaviour::SlowBody => {
                let _ = stream.write_all(ok(ANSWER.len()).as_bytes()).await;
                for byte in ANSWER.bytes() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                }
            }
            Misbehaviour::Dribble => {
                let now = DRIBBLING.0.fetch_add(1, Ordering::SeqCst) + 1;
                DRIBBLING.1.fetch_max(now, Ordering::SeqCst);
                let _ = stream.write_all(ok(ANSWER.len()).as_bytes()).await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                DRIBBLING.0.fetch_sub(1, Ordering::SeqCst);
                if stream.write_all(ANSWER.as_bytes()).await.is_err() {
                    return;
                }
            }
            Misbehaviour::CloseAfterEach => {
                let _ = stream
                    .write_all(format!("{}{ANSWER}", ok(ANSWER.len())).as_bytes())
                    .await;
                return;
            }
            Misbehaviour::Huge => {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
                for _ in 0..80 {
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n").await;
            }
            Misbehaviour::CorruptGzip => {
                let gzip = wikigate::gzip(ANSWER.repeat(20).as_bytes());
                let cut = &gzip[..gzip.len() / 2];
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                    cut.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(cut).await;
            }
            Misbehaviour::GzipBomb if head.contains("accept-encoding: gzip") => {
                static BOMB: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
                let bomb = BOMB.get_or_init(|| wikigate::gzip(&vec![0u8; 16 << 20]));
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
                    bomb.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(bomb).await;
            }
            Misbehaviour::GzipBomb => {
                let _ = stream
                    .write_all(format!("{}{ANSWER}", ok(ANSWER.len())).as_bytes())
                    .await;
            }
        }
    }
}

async fn gateway_for(
    behaviour: Misbehaviour,
    tweak: impl FnOnce(&mut wikigate::config::RawConfig),
) -> (wikigate::Running, TestClient, Arc<AtomicU64>) {
    let (url, requests) = upstream(behaviour).await;
    let mut config = config_for(&url);
    tweak(&mut config);
    let gateway = wikigate::start(&config.validate().unwrap()).await.unwrap();
    let client = TestClient::new(format!("http://{}", gateway.addr));
    (gateway, client, requests)
}

#[tokio::test(start_paused = true)]
async fn broken_upstream_answers_are_502_in_confluence_shape_and_never_stored() {
    for behaviour in [
        Misbehaviour::ResetBeforeHeaders,
        Misbehaviour::ResetMidBody,
        Misbehaviour::Garbage,
        Misbehaviour::ShortBody,
    ] {
        let (_gateway, client, requests) = gateway_for(behaviour, |_| {}).await;
        for _ in 0..2 {
            let answer = client
                .get(&format!("{API}/current"), Some(&basic(alice())))
                .await;
            let json = answer.assert_error(502);
            assert!(
                json["message"].as_str().unwrap().contains("upstream"),
                "{behaviour:?}: {json}"
            );
        }
        assert!(
            requests.load(Ordering::SeqCst) >= 2,
            "{behaviour:?}: the broken answer was stored"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_slower_than_the_request_timeout_is_504() {
    let (_gateway, client, _) = gateway_for(Misbehaviour::SlowBody, |c| {
        c.upstream.response_timeout = Duration::from_millis(400);
        c.upstream.request_timeout = Duration::from_millis(600);
    })
    .await;
    let started = tokio::time::Instant::now();
    client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await
        .assert_error(504);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(600),
        "504 at request_timeout"
    );
    // Streamed (uncached) answers are cut off at the deadline instead: the client sees a
    // truncated message, never a complete-looking short one.
    let streamed = client
        .request(http::Method::GET, &format!("{API}/current"))
        .auth(alice())
        .header("cookie", "bypass=1")
        .try_send()
        .await;
    assert!(streamed.is_none(), "a truncated stream looked complete");
}

#[tokio::test(start_paused = true)]
async fn upstream_closing_pooled_connections_is_survived() {
    let (_gateway, client, requests) = gateway_for(Misbehaviour::CloseAfterEach, |c| {
        c.cache.enabled = false;
    })
    .await;
    for _ in 0..10 {
        let answer = client
            .get(&format!("{API}/current"), Some(&basic(alice())))
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.json()["accountId"], "x");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(requests.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn an_answer_far_larger_than_max_entry_bytes_is_streamed_whole_and_not_stored() {
    let (_gateway, client, requests) =
        gateway_for(Misbehaviour::Huge, |c| c.cache.max_entry_bytes = 64 * 1024).await;
    for _ in 0..2 {
        let answer = client
            .get(&format!("{API}/current"), Some(&basic(alice())))
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.len(), 80 * 64 * 1024, "streamed whole");
        assert!(
            answer.cache_status().contains("too-large"),
            "{}",
            answer.cache_status()
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2, "not stored");
}

#[tokio::test]
async fn a_corrupt_gzip_answer_is_502_and_never_stored() {
    let (_gateway, client, requests) = gateway_for(Misbehaviour::CorruptGzip, |_| {}).await;
    for accept in ["gzip", "identity"] {
        let answer = client
            .request(http::Method::GET, &format!("{API}/current"))
            .auth(alice())
            .header("accept-encoding", accept)
            .send()
            .await;
        let json = answer.assert_error(502);
        assert!(json["message"].as_str().unwrap().contains("gzip"), "{json}");
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2, "nothing was stored");
}

#[tokio::test]
async fn a_gzip_bomb_never_inflates_past_max_entry_bytes() {
    let (_gateway, client, requests) = gateway_for(Misbehaviour::GzipBomb, |c| {
        c.cache.max_entry_bytes = 256 * 1024
    })
    .await;
    // A client that takes gzip gets the gzip as it came, streamed, and nothing is stored.
    for _ in 0..2 {
        let answer = client
            .request(http::Method::GET, &format!("{API}/current"))
            .auth(alice())
            .header("accept-encoding", "gzip")
            .send()
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["content-encoding"], "gzip");
        assert!(
            answer.cache_status().contains("too-large"),
            "{}",
            answer.cache_status()
        );
        assert!(
            answer.body.len() < 256 * 1024,
            "{} bytes",
            answer.body.len()
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // One that does not is never sent the gzip, nor an inflated bomb: wikigate asks again
    // without gzip.
    let answer = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(answer.status, 200);
    assert!(!answer.headers.contains_key("content-encoding"));
    assert_eq!(answer.json()["accountId"], "x");
    assert_eq!(requests.load(Ordering::SeqCst), 4);
}

/// `upstream.max_in_flight` counts an exchange until its body has arrived (read whole for the
/// cache, or streamed through to the client), not until its head: with slow bodies upstream
/// never has more requests at once than the cap allows.
#[tokio::test]
async fn the_concurrency_cap_holds_a_place_until_the_body_has_arrived() {
    // Small answers are read whole; with max_entry_bytes under the answer's size they are
    // streamed through to the client, who holds the place until it has read the body.
    for max_entry_bytes in [64 * 1024, 16] {
        let (_gateway, client, requests) = gateway_for(Misbehaviour::Dribble, |c| {
            c.upstream.max_in_flight = 4;
            c.cache.max_entry_bytes = max_entry_bytes;
        })
        .await;
        DRIBBLING.1.store(0, Ordering::SeqCst);
        let tasks: Vec<_> = (0..12)
            .map(|n| {
                let client = client.clone();
                tokio::spawn(async move {
                    let path = format!("{API}/current?n={n}");
                    client.get(&path, Some(&basic(alice()))).await
                })
            })
            .collect();
        for task in tasks {
            let answer = task.await.unwrap();
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            assert_eq!(answer.decoded(), ANSWER.as_bytes());
        }
        assert_eq!(requests.load(Ordering::SeqCst), 12);
        let peak = DRIBBLING.1.load(Ordering::SeqCst);
        assert!(
            (1..=4).contains(&peak),
            "{peak} at once upstream (max_entry_bytes {max_entry_bytes})"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_streaming_past_the_header_read_timeout_is_not_cut_off_and_the_idle_connection_is_closed_after()
 {
    let (gateway, _, _) = gateway_for(Misbehaviour::SlowBody, |c| {
        c.server.header_read_timeout = Duration::from_millis(300);
        c.upstream.response_timeout = Duration::from_secs(20);
        c.upstream.request_timeout = Duration::from_secs(20);
    })
    .await;
    // A read that bypasses the cache (a cookie) is streamed as upstream sends it: a byte
    // every 100 ms, ~5 s in all, on a keep-alive connection.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    let request = format!(
        "GET {API}/current HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nCookie: bypass=1\r\n\r\n",
        basic(alice())
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the idle connection was closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(ANSWER), "the body was cut off: {answer}");
    // Closed once quiet for the timeout after the body ended: 1–1.25 × it.
    let body = Duration::from_millis(100) * u32::try_from(ANSWER.len()).unwrap();
    let idle = started.elapsed() - body;
    assert!(
        idle >= Duration::from_millis(300) && idle <= Duration::from_millis(400),
        "closed {idle:?} after the body ended"
    );
}
