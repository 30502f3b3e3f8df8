//! Graceful shutdown: stop accepting, finish what is in flight, within a bounded drain.

use std::time::{Duration, Instant};

use wikigate::fake::Faults;

use crate::support::{API, Harness, TestClient, alice, basic};

async fn wait_until_refused(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still accepting after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_in_flight_request() {
    let Harness {
        fake,
        gateway,
        client,
    } = Harness::start().await;
    fake.set_faults(Faults {
        delay: Duration::from_millis(800),
        ..Faults::default()
    });
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(&format!("{API}/current"), Some(&basic(alice())))
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while fake.requests() == 0 {
        assert!(Instant::now() < deadline, "request never reached upstream");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let admin = TestClient::new(format!("http://{}", gateway.admin_addr));
    assert_eq!(admin.get("/readyz", None).await.status, 200);
    gateway.shutdown();
    assert_eq!(
        admin.get("/readyz", None).await.status,
        503,
        "readyz reports draining"
    );
    assert_eq!(
        admin.get("/healthz", None).await.status,
        200,
        "still alive while draining"
    );
    wait_until_refused(gateway.addr).await;

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request completed");
    assert_eq!(answer.json()["accountId"], alice().account_id);
    tokio::time::timeout(Duration::from_secs(3), gateway.wait())
        .await
        .expect("stopped after the drain");
}

#[tokio::test]
async fn drain_is_bounded_by_drain_timeout() {
    let Harness {
        fake,
        gateway,
        client,
    } = Harness::start_with(|c| c.server.drain_timeout = Duration::from_millis(300)).await;
    fake.set_faults(Faults {
        delay: Duration::from_secs(30),
        ..Faults::default()
    });
    let _stuck = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .get(&format!("{API}/current"), Some(&basic(alice())))
                .await
        }
    });
    while fake.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    gateway.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drain took {:?}",
        started.elapsed()
    );
}
