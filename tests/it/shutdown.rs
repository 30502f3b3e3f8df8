//! Graceful shutdown: stop accepting, finish what is in flight, within a bounded drain.

use std::time::Duration;

use tokio::time::Instant;

use tokio::task::JoinHandle;
use wikigate::fake::{FakeConfluence, Faults};

use crate::support::{
    API, Answer, Harness, Process, TestClient, alice, eventually, ready, spawn_get,
};

/// A GET as alice, in a task of its own, once it has reached upstream (which delays it).
async fn in_flight(client: &TestClient, fake: &FakeConfluence) -> JoinHandle<Answer> {
    let request = spawn_get(client, &format!("{API}/current"), alice());
    let reached = || async { fake.requests() > 0 };
    eventually(
        Duration::from_secs(3),
        "the request reached upstream",
        reached,
    )
    .await;
    request
}

#[tokio::test(start_paused = true)]
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
    let in_flight = in_flight(&client, &fake).await;

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
    let refused = || async { tokio::net::TcpStream::connect(gateway.addr).await.is_err() };
    eventually(Duration::from_secs(3), "the listener closed", refused).await;

    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "the in-flight request completed");
    assert_eq!(answer.json()["accountId"], alice().account_id);
    tokio::time::timeout(Duration::from_secs(3), gateway.wait())
        .await
        .expect("stopped after the drain");
}

#[tokio::test(start_paused = true)]
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
    let _stuck = in_flight(&client, &fake).await;
    let started = Instant::now();
    gateway.stop().await;
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(300),
        "the drain ends at drain_timeout, not when the stuck request does"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_fails_readiness_first_and_cuts_no_request_short() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let fake = FakeConfluence::start().await.unwrap();
    fake.set_faults(Faults {
        delay: Duration::from_millis(150),
        ..Faults::default()
    });
    let (listen, admin) = (crate::support::free_addr(), crate::support::free_addr());
    let (fake_url, listen_flag, admin_flag) = (fake.url(), listen.to_string(), admin.to_string());
    let gateway = Process::start(
        &[
            "serve",
            "--upstream",
            &fake_url,
            "--listen",
            &listen_flag,
            "--admin-listen",
            &admin_flag,
        ],
        &[],
    );
    let admin = TestClient::new(format!("http://{admin}"));
    eventually(Duration::from_secs(10), "ready", || ready(&admin)).await;

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
    let steady = || async { completed.load(Ordering::SeqCst) > 16 };
    eventually(Duration::from_secs(10), "steady load", steady).await;
    let before = completed.load(Ordering::SeqCst);
    let sigterm_at = Instant::now();
    terminated.store(true, Ordering::SeqCst);
    gateway.signal("TERM");
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
    let (exit, logs) = gateway.exit().await;
    assert!(exit.success(), "{exit}: {logs}");
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
