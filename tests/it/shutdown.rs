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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_readiness_first_and_cuts_no_request_short() {
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    fake.set_faults(Faults {
        delay: Duration::from_millis(150),
        ..Faults::default()
    });
    let (listen, admin) = (crate::support::free_addr(), crate::support::free_addr());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wikigate"))
        .args([
            "serve",
            "--upstream",
            &fake.url(),
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin = TestClient::new(format!("http://{admin}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin
        .request(http::Method::GET, "/readyz")
        .try_send()
        .await
        .is_none_or(|a| a.status != 200)
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let terminated = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let client = TestClient::new(format!("http://{listen}"));
    let load: Vec<_> = (0..8)
        .map(|i| {
            let (client, terminated, completed) =
                (client.clone(), terminated.clone(), completed.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    // A connection per request: what is measured is in-flight requests, not
                    // the race of reusing an idle connection the server is closing.
                    let answer = client
                        .request(http::Method::GET, &format!("{API}/current?load={i}-{n}"))
                        .auth(alice())
                        .header("connection", "close")
                        .try_send()
                        .await;
                    match answer {
                        Some(a) if a.status == 200 => {
                            completed.fetch_add(1, Ordering::SeqCst);
                        }
                        // Refused once the listener closed: the load ends.
                        _ if terminated.load(Ordering::SeqCst) => break,
                        _ => panic!("a request failed before SIGTERM"),
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = completed.load(Ordering::SeqCst);
    let sigterm_at = Instant::now();
    terminated.store(true, Ordering::SeqCst);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Readiness fails (the admin listener still answering) while requests are draining.
    let mut readiness_failed = false;
    while sigterm_at.elapsed() < Duration::from_secs(3) {
        match admin.request(http::Method::GET, "/readyz").try_send().await {
            Some(answer) if answer.status == 503 => {
                readiness_failed = true;
                break;
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            None => break,
        }
    }
    assert!(
        readiness_failed,
        "/readyz never failed before the process stopped answering"
    );
    for task in load {
        task.await.unwrap();
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit}");
    assert!(
        sigterm_at.elapsed() < Duration::from_secs(5),
        "exited within the drain"
    );
    assert!(before > 8, "steady load before the signal ({before})");
    assert!(
        completed.load(Ordering::SeqCst) > before,
        "in-flight requests completed after SIGTERM"
    );
    // Every request that reached the upstream — in flight through the gateway — was answered.
    assert_eq!(
        completed.load(Ordering::SeqCst),
        fake.hits(wikigate::routes::Operation::GetCurrentUser),
        "a request in flight at SIGTERM was cut short"
    );
}
