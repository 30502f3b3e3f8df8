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
    let reloaded = h
        .gateway
        .reload(&config.clone().validate().unwrap())
        .expect("a valid config reloads");
    assert!(reloaded.restart.is_empty(), "{reloaded:?}");
    assert!(
        reloaded.applied.iter().any(|k| k == "callers.clients")
            && reloaded.applied.iter().any(|k| k.starts_with("limits.")),
        "{reloaded:?}"
    );
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
        h.gateway
            .reload(&config.validate().unwrap())
            .unwrap()
            .restart,
        ["server.max_body_bytes"]
    );
}

/// Each key a reload applies changes what the gateway does at once: the CSRF allow-list (an
/// origin removed is refused), the keeping of 404s, the ignored cookies.
#[tokio::test(start_paused = true)]
async fn every_reloadable_key_changes_behaviour_after_a_reload() {
    const ORIGIN: &str = "https://app.example";
    let h = Harness::start_with(|c| {
        c.csrf.allowed_origins = vec![ORIGIN.to_owned()];
        c.cache.cache_not_found = false;
        c.cache.ignored_cookies = vec!["atlassian.xsrf.token".to_owned(), "tracker".to_owned()];
    })
    .await;
    let watch = format!("{API}/watch/space/ENG");
    let write = || {
        h.client
            .request(Method::POST, &watch)
            .auth(alice())
            .header("origin", ORIGIN)
            .send()
    };
    let missing = format!("{API}?accountId=712020:00000000-0000-0000-0000-00000000dead");
    let auth = basic(alice());
    let read_missing = || h.client.get(&missing, Some(&auth));
    let with_cookie = || {
        h.client
            .request(Method::GET, &format!("{API}/memberof?accountId=x&n=1"))
            .auth(alice())
            .header("cookie", "tracker=1; keep=2")
            .header("cache-control", "no-store")
            .send()
    };
    assert_eq!(write().await.status, 204);
    assert_eq!(read_missing().await.status, 404);
    assert!(read_missing().await.cache_status().contains("fwd=miss"));
    with_cookie().await;
    assert_eq!(h.fake.last().unwrap().headers["cookie"], "keep=2");

    let mut config = config_for(&h.fake.url());
    config.csrf.allowed_origins = Vec::new();
    config.cache.cache_not_found = true;
    config.cache.ignored_cookies = vec!["atlassian.xsrf.token".to_owned()];
    let reloaded = h.gateway.reload(&config.validate().unwrap()).unwrap();
    assert_eq!(
        reloaded.applied,
        [
            "cache.cache_not_found",
            "cache.ignored_cookies",
            "csrf.allowed_origins"
        ]
    );
    assert!(reloaded.restart.is_empty(), "{reloaded:?}");

    write().await.assert_error(403);
    read_missing().await;
    assert_eq!(
        read_missing().await.cache_status(),
        "wikigate; hit",
        "404s kept"
    );
    with_cookie().await;
    assert_eq!(
        h.fake.last().unwrap().headers["cookie"],
        "tracker=1; keep=2"
    );
}

/// Every changed key a reload does not apply is named, one by one, as needing a restart.
#[tokio::test]
async fn every_key_a_reload_cannot_apply_is_named() {
    let h = Harness::start().await;
    let mut config = config_for(&h.fake.url());
    config.server.max_body_bytes += 1;
    config.server.header_read_timeout += Duration::from_secs(1);
    config.admin.listen = free_addr();
    config.admin.token = Some(wikigate::config::Secret::new("a-new-admin-token-0123"));
    config.upstream.burst_wait += Duration::from_secs(1);
    config.upstream.max_in_flight += 1;
    config.cache.max_bytes += 1;
    config.cache.enabled = false;
    config.cache.key_secret = Some(wikigate::config::Secret::new("another-secret-0123456"));
    config.log.format = wikigate::config::LogFormat::Json;
    config.cluster.namespace = "elsewhere".to_owned();
    let reloaded = h.gateway.reload(&config.validate().unwrap()).unwrap();
    assert_eq!(
        reloaded.restart,
        [
            "admin.listen",
            "admin.token",
            "cache.enabled",
            "cache.key_secret",
            "cache.max_bytes",
            "cluster.namespace",
            "log.format",
            "server.header_read_timeout",
            "server.max_body_bytes",
            "upstream.burst_wait",
            "upstream.max_in_flight",
        ]
    );
    assert!(reloaded.applied.is_empty(), "{reloaded:?}");
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

/// `log.level` is applied by SIGHUP: at `warn` the access log stops, at `info` it is back;
/// and `log.access`: at `errors` only answers of 400 or more are logged.
#[tokio::test]
async fn sighup_applies_the_log_level_and_which_requests_are_logged() {
    const TOKEN: &str = "admin-token-0123456789";
    let fake = wikigate::fake::FakeConfluence::start().await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let file = std::env::temp_dir().join(format!("wikigate-level-{}.toml", std::process::id()));
    let config = |level: &str, access: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n[upstream]\nurl = \"{}\"\n[log]\nlevel = \"{level}\"\naccess = \"{access}\"\n",
            fake.url()
        )
    };
    std::fs::write(&file, config("info", "all")).unwrap();
    let gateway = Process::start(&["serve", "--config", &file.to_string_lossy()], &[]);
    let client = TestClient::new(format!("http://{listen}"));
    // The access line names the path (never the query): one route per phase.
    let get = |route: &'static str| {
        let client = client.clone();
        async move {
            client
                .request(Method::GET, &format!("{API}/{route}"))
                .try_send()
                .await
        }
    };
    eventually(Duration::from_secs(10), "started", || async {
        get("anonymous").await.is_some()
    })
    .await;
    eventually(Duration::from_secs(5), "the access line", || async {
        gateway.logged("/user/anonymous")
    })
    .await;
    // What is in force, as the admin endpoint says (at `warn`, the reload's own info line
    // is not logged).
    let admin = TestClient::new(format!("http://{admin}"));
    let in_force = |setting: String| {
        let admin = admin.clone();
        move || {
            let (admin, setting) = (admin.clone(), setting.clone());
            async move {
                let answer = admin
                    .request(Method::GET, "/admin/config")
                    .header("authorization", &format!("Bearer {TOKEN}"))
                    .send()
                    .await;
                String::from_utf8_lossy(&answer.body).contains(&setting)
            }
        }
    };
    let level_is = |level: &str| in_force(format!("level = \"{level}\""));

    std::fs::write(&file, config("warn", "all")).unwrap();
    gateway.signal("HUP");
    eventually(Duration::from_secs(5), "the first reload", level_is("warn")).await;
    get("current").await.unwrap();
    std::fs::write(&file, config("info", "all")).unwrap();
    gateway.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "the second reload",
        level_is("info"),
    )
    .await;
    get("memberof").await.unwrap();
    eventually(Duration::from_secs(5), "the access log is back", || async {
        gateway.logged("/user/memberof")
    })
    .await;
    std::fs::write(&file, config("info", "errors")).unwrap();
    gateway.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "the third reload",
        in_force("access = \"errors\"".to_owned()),
    )
    .await;
    // A 200 (anonymous callers may read who they are) goes unlogged, a 404 is logged.
    assert_eq!(
        get("anonymous?expand=operations").await.unwrap().status,
        200
    );
    assert_eq!(get("nope/nope/nope").await.unwrap().status, 404);
    eventually(Duration::from_secs(5), "the error's line", || async {
        gateway.logged("/user/nope/nope/nope")
    })
    .await;
    gateway.signal("TERM");
    let (status, logs) = gateway.exit().await;
    assert!(status.success(), "{status}: {logs}");
    assert!(!logs.contains("/user/current"), "logged at warn: {logs}");
    let anonymous = logs.matches("/user/anonymous\"").count();
    assert_eq!(anonymous, 1, "logged at errors: {logs}");
    let _ = std::fs::remove_file(&file);
}

/// `check-config --against` shows what a new file would change on a running gateway, key by
/// key — secrets and the service-account credential too, compared by keyed digest and never
/// shown — and whether SIGHUP applies each; it exits 3 when a key needs a restart, and reads
/// the admin token from the file when the environment has none.
#[tokio::test]
async fn check_config_against_a_running_gateway_names_each_change_and_its_effect() {
    const TOKEN: &str = "admin-token-0123456789";
    const SECRET: &str = "cache-key-secret-0123456789";
    let dir = std::env::temp_dir().join(format!("wikigate-against-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let credential = |name: &str, value: &str| {
        let path = dir.join(name);
        std::fs::write(&path, value).unwrap();
        path
    };
    let started_with = credential("started.cred", "Basic bWVAZXhhbXBsZS5jb206b2xkLXRva2Vu");
    let rotated = credential("rotated.cred", "Basic bWVAZXhhbXBsZS5jb206bmV3LXRva2Vu");
    let key_hash = KeyHash::of("a-client-key-0123456789");
    let h = Harness::start_with(|c| {
        c.admin.token = Some(wikigate::config::Secret::new(TOKEN));
        c.cache.key_secret = Some(wikigate::config::Secret::new(SECRET));
        c.auth.mode = wikigate::config::AuthMode::ServiceAccount;
        c.auth.credential_file = Some(started_with.clone());
        c.callers.clients = vec![ClientConfig {
            name: "app".to_owned(),
            class: "default".to_owned(),
            key_hash,
            requests: None,
            upstream: None,
            points: None,
        }];
    })
    .await;
    let admin = format!("http://{}", h.gateway.admin_addr);
    let file = dir.join("new.toml");
    let write = |token: &str, credential: &std::path::Path, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 0\n{extra}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{token}\"\n\
                 [upstream]\nurl = \"{}\"\n[cache]\nkey_secret = \"{SECRET}\"\n\
                 [auth]\nmode = \"service-account\"\ncredential_file = \"{}\"\n\
                 [[callers.clients]]\nname = \"app\"\nkey_hash = \"{key_hash}\"\n",
                h.fake.url(),
                credential.display()
            ),
        )
        .unwrap();
    };
    let check = |env_token: Option<&str>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wikigate"));
        command
            .args(["check-config", &file.to_string_lossy(), "--against", &admin])
            .env_remove("WIKIGATE_ADMIN_TOKEN");
        if let Some(token) = env_token {
            command.env("WIKIGATE_ADMIN_TOKEN", token);
        }
        async move {
            let out = command.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // The same file: nothing changed, secrets included.
    write(TOKEN, &started_with, "");
    let (code, printed, stderr) = check(None).await;
    assert_eq!(code, Some(0), "{printed}{stderr}");
    assert!(printed.contains("no change"), "{printed}");
    // A reloadable change and one that needs a restart: exit 3, the token read from the file.
    write(
        TOKEN,
        &started_with,
        "max_body_bytes = 4096\n[csrf]\nallowed_origins = [\"https://app.example\"]\n",
    );
    let (code, printed, stderr) = check(None).await;
    assert_eq!(code, Some(3), "{printed}{stderr}");
    assert!(
        printed.contains("csrf.allowed_origins: applied by SIGHUP"),
        "{printed}"
    );
    assert!(
        printed.contains("server.max_body_bytes: needs a restart"),
        "{printed}"
    );
    // A rotated credential: SIGHUP applies it; the values are never printed.
    write(TOKEN, &rotated, "");
    let (code, printed, stderr) = check(None).await;
    assert_eq!(code, Some(0), "{printed}{stderr}");
    assert!(
        printed.contains("auth.credential: applied by SIGHUP"),
        "{printed}"
    );
    assert!(
        printed.contains("auth.credential_file: applied by SIGHUP"),
        "{printed}"
    );
    // The environment's token is the configuration's (as for serve): with the running one
    // there, a file's other token changes nothing.
    write("a-new-admin-token-0123456789", &started_with, "");
    let (code, printed, stderr) = check(Some(TOKEN)).await;
    assert_eq!(code, Some(0), "{printed}{stderr}");
    // The file's new token alone: the running gateway refuses it, so it needs a restart.
    let (code, printed, stderr) = check(None).await;
    assert_eq!(code, Some(3), "{printed}{stderr}");
    assert!(
        printed.contains("admin.token: needs a restart"),
        "{printed}"
    );
    for secret in [TOKEN, SECRET, "a-new-admin-token", "bWVAZXhhbXBsZS5jb20"] {
        assert!(!printed.contains(secret), "{secret} was printed: {printed}");
    }
    // No token at all: the admin endpoint cannot be read.
    std::fs::write(
        &file,
        std::fs::read_to_string(&file)
            .unwrap()
            .replace("token = \"a-new-admin-token-0123456789\"\n", ""),
    )
    .unwrap();
    let (code, _, stderr) = check(None).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("needs the admin token"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
