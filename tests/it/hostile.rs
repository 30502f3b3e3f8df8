//! Hostile clients: every one answered with the right status (in Confluence's error JSON where
//! wikigate answers), never a panic or a hang, nothing leaked, nothing forwarded that should not
//! be. Framing attacks are sent on raw sockets.

use std::time::Duration;

use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{API, Harness, TestClient, alice, basic, raw_exchange};

fn watch() -> String {
    format!("{API}/watch/space/ENG")
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_the_connection_closed() {
    let h = Harness::start().await;
    let auth = basic(alice());
    let smuggled = "GET /wiki/rest/api/user/current HTTP/1.1\r\nHost: x\r\n\r\n";
    // Content-Length with Transfer-Encoding: hyper frames the request by the chunked encoding
    // (RFC 9112 §6.3), answers it, and closes the connection — so the bytes after it are never
    // read as a second request, and upstream gets wikigate's own framing.
    let both = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        watch()
    );
    let answer = raw_exchange(h.gateway.addr, &both).await;
    assert_eq!(
        answer.matches("HTTP/1.1 ").count(),
        1,
        "a smuggled request was answered: {answer:?}"
    );
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(h.fake.requests(), 1);
    let seen = h.fake.last().unwrap();
    assert!(!seen.headers.contains_key("transfer-encoding") && seen.body.is_empty());
    let cases = [
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\n{smuggled}",
            watch()
        ),
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}",
            watch()
        ),
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}",
            watch()
        ),
        format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}",
            watch()
        ),
    ];
    for request in cases {
        let answer = raw_exchange(h.gateway.addr, &request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{request:?} got {answer:?}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "a smuggled request was answered: {answer:?}"
        );
    }
    assert_eq!(
        h.fake.requests(),
        1,
        "none of the refused ones reached upstream"
    );
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let h = Harness::start().await;
    let cases: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /wiki/rest/api/user/a\x00b/property HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /wiki/rest/api/user/current HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n",
        b"GET /wiki/rest/api/user/current HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ];
    for request in cases {
        let answer = raw_exchange(h.gateway.addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{:?} got {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn path_tricks_are_400_in_confluence_shape_and_never_forwarded() {
    let h = Harness::start().await;
    for target in [
        format!("{API}/%zz/property"),
        format!("{API}/watch/space/ab%4"),
        format!("{API}/a%2Fb/property"),
        format!("{API}/a%2fb/property/k"),
        format!("{API}/%2e%2e/property"),
        format!("{API}/../property"),
        format!("{API}/%ff%fe/property"),
        format!("{API}/watch/label/%00"),
        format!("{API}/u/property/a%20b"),
        format!("{API}/u/property/bad.key"),
    ] {
        h.client
            .get(&target, Some(&basic(alice())))
            .await
            .assert_error(400);
    }
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn too_many_headers_is_431_in_confluence_shape() {
    let h = Harness::start_with(|c| c.server.max_headers = 20).await;
    let mut request = h
        .client
        .request(Method::GET, &format!("{API}/current"))
        .auth(alice());
    for i in 0..30 {
        request = request.header(&format!("x-filler-{i}"), "1");
    }
    request.send().await.assert_error(431);
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test]
async fn http_1_0_without_host_is_served_and_closed() {
    let h = Harness::start().await;
    let answer = raw_exchange(
        h.gateway.addr,
        format!("GET {API}/anonymous HTTP/1.0\r\n\r\n"),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    assert!(answer.contains("\"type\":\"anonymous\""), "{answer}");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let h = Harness::start().await;
    let auth = basic(alice());
    let pipelined = format!(
        "GET {API}/anonymous HTTP/1.1\r\nHost: x\r\n\r\nGET {API}/current HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"
    );
    let answer = raw_exchange(h.gateway.addr, pipelined).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    let anonymous = answer.find("\"type\":\"anonymous\"").unwrap();
    let alice_at = answer.find(alice().account_id).unwrap();
    assert!(anonymous < alice_at, "answers out of order");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_does_not_stall_others() {
    let h = Harness::start().await;
    let mut greedy = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let flood = format!("GET {API}/anonymous HTTP/1.1\r\nHost: x\r\n\r\n").repeat(2000);
    // Written from a task: the gateway stops reading once its answers back up, which is the point.
    let writer = tokio::spawn(async move {
        let _ =
            tokio::time::timeout(Duration::from_secs(3), greedy.write_all(flood.as_bytes())).await;
        greedy
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = tokio::time::timeout(
        Duration::from_secs(2),
        h.client
            .get(&format!("{API}/current"), Some(&basic(alice()))),
    )
    .await
    .expect("another client was served while one stopped reading");
    assert_eq!(other.status, 200);
    drop(writer.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn slowloris_headers_are_cut_off() {
    let h =
        Harness::start_with(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /wiki/rest/api/user/current HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buffer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "the connection stayed open");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(h.fake.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn connections_above_the_cap_wait_until_one_closes() {
    let h = Harness::start_with(|c| c.server.max_connections = 2).await;
    let first = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let _second = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = tokio::spawn({
        let addr = h.gateway.addr;
        async move {
            raw_exchange(
                addr,
                format!("GET {API}/anonymous HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!third.is_finished(), "a connection over the cap was served");
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(3), third)
        .await
        .expect("served once a slot freed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn http2_streams_beyond_the_limit_are_refused_by_protocol_not_served_wrongly() {
    let h = Harness::start_with(|c| c.server.http2_max_concurrent_streams = 4).await;
    h.fake.set_faults(wikigate::fake::Faults {
        delay: Duration::from_millis(50),
        ..Default::default()
    });
    let client = TestClient::h2c(format!("http://{}", h.gateway.addr));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let answer = client
                    .request(Method::GET, &format!("{API}/anonymous?n={i}"))
                    .try_send()
                    .await;
                answer.map(|a| a.status)
            })
        })
        .collect();
    let mut served = 0;
    for task in tasks {
        // Streams over the limit are refused by the protocol (REFUSED_STREAM), never served
        // wrongly; the connection and the gateway carry on.
        if let Some(status) = task.await.unwrap() {
            assert_eq!(status, 200);
            served += 1;
        }
    }
    assert!(served >= 4, "{served}");
    let after = TestClient::h2c(format!("http://{}", h.gateway.addr));
    assert_eq!(
        after.get(&format!("{API}/anonymous"), None).await.status,
        200
    );
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_is_cut_off_and_others_are_still_served() {
    let h = Harness::start().await;
    let tcp = tokio::net::TcpStream::connect(h.gateway.addr)
        .await
        .unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut refused = false;
    for _ in 0..5000 {
        let request = http::Request::get(format!("http://{}{API}/anonymous", h.gateway.addr))
            .body(())
            .unwrap();
        let ready = tokio::time::timeout(Duration::from_secs(2), send.clone().ready()).await;
        let Ok(Ok(mut ready)) = ready else {
            refused = true;
            break;
        };
        match ready.send_request(request, true) {
            // Open a stream and cancel it at once: CVE-2023-44487's pattern.
            Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        refused || ended.is_ok(),
        "the server kept accepting a reset flood on one connection"
    );
    let other = TestClient::h2c(format!("http://{}", h.gateway.addr));
    assert_eq!(
        other.get(&format!("{API}/anonymous"), None).await.status,
        200
    );
}
