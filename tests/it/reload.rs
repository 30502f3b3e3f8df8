//! Config reload: callers, client keys, limits and TTLs change without touching a connection;
//! a bad configuration is refused and the running one stays.

use std::num::NonZeroU32;
use std::time::Duration;

use http::Method;
use wikigate::config::{ClientConfig, KeyHash, Rate, RoutePolicy};
use wikigate::fake::Faults;
use wikigate::routes::Route;

use crate::support::{
    API, Harness, Process, TestClient, alice, basic, config_for, eventually, free_addr,
};

const KEY: &str = "reloaded-client-key-0123456789";

#[tokio::test(start_paused = true)]
async fn reload_changes_limits_ttls_and_keys_without_dropping_requests() {
    let h = Harness::start_with(|c| {
        c.limits.classes.get_mut("default").unwrap().requests = Some(Rate {
            rate: NonZeroU32::new(1).unwrap(),
            per: Duration::from_secs(60),
            burst: None,
        });
        c.cache.routes.set(
            Route::Current,
            RoutePolicy {
                ttl: Duration::ZERO,
                ..*c.cache.routes.get(Route::Current)
            },
        );
    })
    .await;
    let current = format!("{API}/current");
    assert_eq!(
        h.client.get(&current, Some(&basic(alice()))).await.status,
        200
    );
    h.client
        .get(&current, Some(&basic(alice())))
        .await
        .assert_error(429);
    let keyed = || {
        h.client
            .request(Method::GET, &format!("{API}/anonymous"))
            .header("x-wikigate-key", KEY)
            .send()
    };
    keyed().await.assert_error(401);

    // A request in flight across the reload.
    h.fake.set_faults(Faults {
        delay: Duration::from_millis(400),
        ..Faults::default()
    });
    let in_flight = tokio::spawn({
        let client = h.client.clone();
        async move {
            client
                .get(
                    &format!("{API}/memberof?accountId=x"),
                    Some(&basic(crate::support::bob())),
                )
                .await
        }
    });
    // Reloaded while the request waits out upstream's delay.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut config = config_for(&h.fake.url());
    config.cache.routes.set(
        Route::Current,
        RoutePolicy {
            ttl: Duration::from_secs(60),
            ..*config.cache.routes.get(Route::Current)
        },
    );
    config.callers.clients = vec![ClientConfig {
        name: "reloaded".into(),
        class: "default".into(),
        key_hash: KeyHash::of(KEY),
        requests: None,
        upstream: None,
        points: None,
    }];
    let restart = h
        .gateway
        .reload(&config.clone().validate().unwrap())
        .expect("a valid config reloads");
    assert!(restart.is_empty(), "{restart:?}");
    h.fake.set_faults(Faults::default());

    assert_eq!(
        in_flight.await.unwrap().status.as_u16(),
        404,
        "the in-flight request finished"
    );
    assert_eq!(
        h.client.get(&current, Some(&basic(alice()))).await.status,
        200,
        "the limit is gone"
    );
    assert_eq!(
        h.client
            .get(&current, Some(&basic(alice())))
            .await
            .cache_status(),
        "wikigate; hit",
        "the new TTL caches"
    );
    assert_eq!(keyed().await.status, 200, "the new client key is known");

    // What cannot change while listening is reported, not half-applied.
    config.server.max_body_bytes = 1;
    assert_eq!(
        h.gateway.reload(&config.validate().unwrap()).unwrap(),
        ["server"]
    );
}

#[tokio::test]
async fn sighup_reloads_the_file_and_refuses_a_bad_one() {
    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let file = std::env::temp_dir().join(format!("wikigate-reload-{}.toml", std::process::id()));
    let base = format!(
        "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[upstream]\nurl = \"{}\"\n",
        fake.url()
    );
    std::fs::write(&file, &base).unwrap();
    let gateway = Process::start(
        &["serve", "--config", &file.to_string_lossy()],
        &[("WIKIGATE_LOG_FORMAT", "json")],
    );
    let client = TestClient::new(format!("http://{listen}"));
    let keyed = || {
        client
            .request(Method::GET, &format!("{API}/anonymous"))
            .header("x-wikigate-key", KEY)
            .try_send()
    };
    eventually(Duration::from_secs(10), "started", || async {
        keyed().await.is_some()
    })
    .await;
    assert_eq!(
        keyed().await.unwrap().status,
        401,
        "the key is unknown before the reload"
    );
    let with_client = format!(
        "{base}[[callers.clients]]\nname = \"reloaded\"\nkey_hash = \"{}\"\n",
        KeyHash::of(KEY)
    );
    std::fs::write(&file, &with_client).unwrap();
    gateway.signal("HUP");
    eventually(Duration::from_secs(5), "the reload took effect", || async {
        keyed().await.is_some_and(|a| a.status == 200)
    })
    .await;

    std::fs::write(&file, format!("{with_client}[limits]\nnot_a_key = 1\n")).unwrap();
    gateway.signal("HUP");
    eventually(Duration::from_secs(5), "the bad file was read", || async {
        keyed().await.is_some() && gateway.logged("new configuration refused")
    })
    .await;
    assert_eq!(
        keyed().await.unwrap().status,
        200,
        "the running config stayed in force"
    );

    gateway.signal("TERM");
    let (status, logs) = gateway.exit().await;
    assert!(status.success(), "{status}: {logs}");
    assert!(logs.contains("configuration reloaded"), "{logs}");
    assert!(
        logs.contains("new configuration refused") && logs.contains("not_a_key"),
        "{logs}"
    );
}
