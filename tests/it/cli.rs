//! The binary itself: `check-config`, `serve` with SIGTERM, and `demo` whose printed curl
//! examples all succeed as printed.

use std::process::Command;
use std::time::Duration;

use wikigate::config::KeyHash;
use wikigate::fake::FakeConfluence;

use crate::support::{API, Process, TestClient, alice, basic, bob, eventually, free_addr, ready};

const BIN: &str = env!("CARGO_BIN_EXE_wikigate");

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wikigate-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_config_accepts_the_documented_default_and_prints_the_effective_config() {
    let documented = concat!(env!("CARGO_MANIFEST_DIR"), "/config/wikigate.toml");
    // No site by default: the documented file alone is refused, naming the key.
    let without = Command::new(BIN)
        .args(["check-config", documented])
        .output()
        .unwrap();
    assert_eq!(without.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&without.stderr).contains("upstream"));
    let out = Command::new(BIN)
        .args([
            "check-config",
            documented,
            "--upstream",
            "https://example.atlassian.net",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let reparsed = wikigate::config::Config::from_toml(&printed).expect("printed config parses");
    assert_eq!(reparsed.server.listen.to_string(), "127.0.0.1:8080");
    assert!(printed.contains("drain_timeout = \"30s\""), "{printed}");
}

#[test]
fn check_config_exits_2_naming_the_bad_key() {
    let cases = [
        (
            "[server]\nlisten = \"nowhere\"\n[upstream]\nurl = \"https://a.example\"\n",
            "server.listen",
        ),
        (
            "[upstream]\nurl = \"https://a.example\"\nretries = 3\n",
            "retries",
        ),
        (
            "[upstream]\nurl = \"https://a.example\"\n[log]\nformat = \"xml\"\n",
            "log.format",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let file = temp_file(&format!("bad{i}.toml"), text);
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key} not named in {stderr}");
    }
}

/// Every environment variable the source reads is in `--help` and in README's tables.
#[test]
fn help_and_readme_list_every_environment_variable_the_binary_reads() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned()
        + &String::from_utf8_lossy(
            &Command::new(BIN)
                .args(["serve", "--help"])
                .output()
                .unwrap()
                .stdout,
        );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut found = 0;
    let mut files = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.components().any(|c| c.as_os_str() == "fake") {
            continue; // the fake site is the tests' and the demo's, not the binary's setting
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for quoted in text.split('"').skip(1).step_by(2) {
            let is_variable = quoted.len() > 3
                && quoted.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && ["WIKIGATE_", "OTEL_", "RUST_LOG", "NO_COLOR"]
                    .iter()
                    .any(|p| quoted.starts_with(p));
            if is_variable && !quoted.starts_with("WIKIGATE_TEST") {
                found += 1;
                assert!(help.contains(quoted), "--help does not name {quoted}");
                assert!(
                    readme.contains(&format!("`{quoted}`")),
                    "README does not name {quoted}"
                );
            }
        }
    }
    assert!(found >= 8, "{found}");
}

/// Several files merge in order, table by table (the Helm chart's own file, then the
/// operator's): a table opened in both is one table, the later file's keys win.
#[test]
fn config_files_merge_in_order() {
    let base = temp_file(
        "base.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:5\"\nmax_body_bytes = 100\n[upstream]\nurl = \"https://a.example\"\n\
             [cache]\nignored_cookies = [\"a\", \"b\"]\n\
             [[callers.clients]]\nname = \"reports\"\nkey_hash = \"{}\"\n\
             [[callers.clients]]\nname = \"search\"\nkey_hash = \"{}\"\n",
            KeyHash::of("reports-key-0123456789"),
            KeyHash::of("search-key-0123456789"),
        ),
    );
    let extra = temp_file(
        "extra.toml",
        &format!(
            "[server]\nmax_body_bytes = 200\n[cache]\ncache_not_found = false\nignored_cookies = [\"c\"]\n\
             [[callers.clients]]\nname = \"search\"\nclass = \"batch\"\nkey_hash = \"{}\"\n\
             [[callers.clients]]\nname = \"wiki-bot\"\nkey_hash = \"{}\"\n\
             [limits.classes.default]\n[limits.classes.batch]\npriority = 0\n",
            KeyHash::of("search-key-rotated-0123"),
            KeyHash::of("wiki-bot-key-0123456789"),
        ),
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&base)
        .arg(&extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged =
        wikigate::config::Config::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(merged.server.listen.to_string(), "127.0.0.1:5");
    assert_eq!(merged.server.max_body_bytes, 200);
    assert!(!merged.cache.cache_not_found);
    assert_eq!(
        merged.cache.ignored_cookies,
        ["c"],
        "an array is replaced whole"
    );
    // Clients merge by name: kept, replaced whole, added.
    let clients: Vec<(&str, &str, KeyHash)> = merged
        .callers
        .clients
        .iter()
        .map(|c| (c.name.as_str(), c.class.as_str(), c.key_hash))
        .collect();
    assert_eq!(
        clients,
        [
            ("reports", "default", KeyHash::of("reports-key-0123456789")),
            ("search", "batch", KeyHash::of("search-key-rotated-0123")),
            (
                "wiki-bot",
                "default",
                KeyHash::of("wiki-bot-key-0123456789")
            ),
        ]
    );
    let both = format!("{},{}", base.display(), extra.display());
    let out = Command::new(BIN)
        .arg("check-config")
        .env("WIKIGATE_CONFIG", &both)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_points_at_the_problem() {
    let run = |name: &str, text: &str, env: &[(&str, &str)]| {
        let file = temp_file(name, text);
        let mut command = Command::new(BIN);
        command.arg("check-config").arg(&file);
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            file,
        )
    };
    // A TOML syntax error: file, line and column.
    let (code, stderr, file) = run(
        "syntax.toml",
        "[upstream]\nurl = \"https://a.example\"\n\n[cache]\nmax_bytes = = 3\n",
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("{}:5:13: not valid TOML", file.display())),
        "{stderr}"
    );
    // The Redis password's variable named but unset: refused, as serve would fail later.
    let (code, stderr, _) = run(
        "redis-password.toml",
        "[upstream]\nurl = \"https://a.example\"\n[cache]\nkey_secret = \"a-shared-key-secret-0123\"\n\
         [cluster]\nredis_url = \"redis://127.0.0.1:1\"\n\
         redis_password_env = \"WIKIGATE_TEST_UNSET_REDIS_PASSWORD\"\n",
        &[],
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("WIKIGATE_TEST_UNSET_REDIS_PASSWORD")
            && stderr.contains("redis_password_env"),
        "{stderr}"
    );
    // A service-account credential without its scheme (a raw email:token).
    let service_account = "[upstream]\nurl = \"https://a.example\"\n[auth]\nmode = \"service-account\"\n\
         credential_env = \"WIKIGATE_TEST_CREDENTIAL\"\n[[callers.clients]]\nname = \"x\"\n\
         key_hash = \"blake3:0000000000000000000000000000000000000000000000000000000000000000\"\n";
    let (code, stderr, _) = run(
        "raw-credential.toml",
        service_account,
        &[("WIKIGATE_TEST_CREDENTIAL", "me@example.com:api-token-1234")],
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("\"Basic \""), "{stderr}");
    let (code, stderr, _) = run(
        "basic-credential.toml",
        service_account,
        &[(
            "WIKIGATE_TEST_CREDENTIAL",
            "Basic bWVAZXhhbXBsZS5jb206dG9rZW4=",
        )],
    );
    assert_eq!(code, Some(0), "{stderr}");
    // "Basic " + email:token not encoded, and base64 of something with no colon: both would
    // be 401 on every upstream call.
    for (value, says) in [
        ("Basic me@example.com:api-token-1234", "not base64"),
        ("Basic bm8tY29sb24taGVyZQ==", "no colon"),
    ] {
        let (code, stderr, _) = run(
            "bad-basic.toml",
            service_account,
            &[("WIKIGATE_TEST_CREDENTIAL", value)],
        );
        assert_eq!(code, Some(2), "{value}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("base64 of email:api-token"),
            "{value}: {stderr}"
        );
        assert!(
            !stderr.contains("api-token-1234"),
            "the value was printed: {stderr}"
        );
    }
    // Confluence's own base URL, ending in /wiki: accepted without it, saying so.
    let run_out = |name: &str, text: &str| {
        let file = temp_file(name, text);
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = run_out(
        "wiki-suffix.toml",
        "[upstream]\nurl = \"https://site.atlassian.net/wiki/\"\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("url = \"https://site.atlassian.net\""),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: upstream.url") && stderr.contains("/wiki"),
        "{stderr}"
    );
    // Plain http to a host that is not loopback: accepted, with a warning naming the key.
    let (code, _, stderr) = run_out(
        "in-clear.toml",
        "[upstream]\nurl = \"http://confluence.internal.example\"\n",
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: upstream.url") && stderr.contains("in clear"),
        "{stderr}"
    );
    let (_, _, stderr) = run_out(
        "loopback.toml",
        "[upstream]\nurl = \"http://127.0.0.1:8081\"\n",
    );
    assert!(
        !stderr.contains("warning"),
        "loopback is not a network: {stderr}"
    );
}

/// Stops a gateway logging JSON with SIGTERM, which it obeys cleanly, and returns what it
/// logged and its access lines.
async fn stopped_for_access_lines(gateway: Process) -> (String, Vec<serde_json::Value>) {
    gateway.signal("TERM");
    let (status, logs) = gateway.exit().await;
    assert!(status.success(), "exit status {status}");
    let access = logs
        .lines()
        .filter(|line| line.contains("wikigate::access"))
        .map(|line| serde_json::from_str(line).expect("JSON log line"))
        .collect();
    (logs, access)
}

#[tokio::test]
async fn serve_runs_from_flags_and_env_and_stops_cleanly_on_sigterm() {
    let fake = FakeConfluence::start().await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    // The file says one port, the environment another, the flag a third: the flag wins.
    let client_key = "logs-client-key-0123456789";
    let file = temp_file(
        "serve.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[upstream]\nurl = \"{}\"\n\
             [log]\nredact_paths = true\n\
             [[callers.clients]]\nname = \"reporting\"\nkey_hash = \"{}\"\n",
            fake.url(),
            KeyHash::of(client_key)
        ),
    );
    let (listen_flag, admin_env) = (listen.to_string(), admin.to_string());
    let gateway = Process::start(
        &[
            "serve",
            "--config",
            &file.to_string_lossy(),
            "--listen",
            &listen_flag,
        ],
        &[
            ("WIKIGATE_LISTEN", "127.0.0.1:2"),
            ("WIKIGATE_ADMIN_LISTEN", &admin_env),
            ("WIKIGATE_LOG_FORMAT", "json"),
        ],
    );
    let admin_client = TestClient::new(format!("http://{admin}"));
    eventually(Duration::from_secs(10), "ready", || ready(&admin_client)).await;
    let client = TestClient::new(format!("http://{listen}"));
    let answer = client
        .get(&format!("{API}/current"), Some(&basic(alice())))
        .await;
    assert_eq!(answer.status, 200);
    // A request id is made when the client sends none, returned, and sent upstream.
    let made = answer.header("x-request-id").to_owned();
    assert_eq!(made.len(), 24, "{made}");
    assert_eq!(fake.last().unwrap().headers["x-request-id"], made.as_str());
    let keyed = client
        .request(http::Method::GET, &format!("{API}/current"))
        .header("x-wikigate-key", client_key)
        .header("authorization", &format!("Bearer {}", bob().bearer))
        .header("user-agent", "confluence.js/1.7.4 \"quoted\"")
        .send()
        .await;
    assert_eq!(keyed.status, 200);
    for _ in 0..100 {
        let hit = client
            .get(&format!("{API}/current"), Some(&basic(alice())))
            .await;
        assert_eq!(hit.status, 200);
    }
    // With log.redact_paths, a path naming an account is logged as its route's template.
    let property = client
        .get(
            &format!("{API}/{}/property", alice().account_id),
            Some(&basic(alice())),
        )
        .await;
    assert_eq!(property.status, 200);

    // The log is buffered; what it holds is written out on the way down, every line whole.
    let (logs, access) = stopped_for_access_lines(gateway).await;
    assert_eq!(access.len(), 103, "{logs}");
    assert_eq!(access[0]["operation"], "getCurrentUser");
    assert_eq!(access[0]["status"], 200);
    // The miss's line: its id, upstream's status and time, the bytes sent.
    assert_eq!(access[0]["request_id"], made.as_str());
    assert_eq!(access[0]["upstream_status"], 200);
    assert!(access[0]["upstream_us"].as_u64().is_some_and(|us| us > 0));
    assert!(access[0]["bytes"].as_u64().is_some_and(|b| b > 100));
    assert_eq!(access[101]["cache"], "wikigate; hit");
    assert!(
        access[101].get("upstream_status").is_none(),
        "a hit made no exchange"
    );
    assert_ne!(access[101]["request_id"], access[100]["request_id"]);
    // Each line names the client's User-Agent (escaped), or `-`.
    assert_eq!(access[1]["user_agent"], "confluence.js/1.7.4 \"quoted\"");
    assert_eq!(access[102]["path"], "/wiki/rest/api/user/{userId}/property");
    assert!(
        !logs.contains(alice().account_id),
        "an account id was logged:\n{logs}"
    );
    for secret in [alice().api_token, &basic(alice()), bob().bearer, client_key] {
        assert!(!logs.contains(secret), "{secret} reached the logs:\n{logs}");
    }
    assert!(
        logs.contains(r#""caller":"reporting""#),
        "the client is logged by name:\n{logs}"
    );
}

#[tokio::test]
async fn log_access_except_hits_writes_every_line_but_the_hits() {
    let fake = FakeConfluence::start().await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let file = temp_file(
        "except-hits.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
             [upstream]\nurl = \"{}\"\n[log]\nformat = \"json\"\naccess = \"except-hits\"\n",
            fake.url()
        ),
    );
    let gateway = Process::start(&["serve", "--config", &file.to_string_lossy()], &[]);
    let admin_client = TestClient::new(format!("http://{admin}"));
    eventually(Duration::from_secs(10), "ready", || ready(&admin_client)).await;
    let client = TestClient::new(format!("http://{listen}"));
    let current = format!("{API}/current");
    for _ in 0..20 {
        let answer = client.get(&current, Some(&basic(alice()))).await;
        assert_eq!(answer.status, 200);
    }
    let refused = client
        .get(&format!("{API}/nope/nope/nope"), Some(&basic(alice())))
        .await;
    assert_eq!(refused.status, 404);
    let bypass = client
        .request(http::Method::GET, &current)
        .header("authorization", &basic(alice()))
        .header("cache-control", "no-cache")
        .send()
        .await;
    assert_eq!(bypass.status, 200);

    let (logs, access) = stopped_for_access_lines(gateway).await;
    // The miss, the refusal and the request that went upstream by its own choice; none of the
    // 19 hits.
    let said: Vec<(u64, &str)> = access
        .iter()
        .map(|line| {
            (
                line["status"].as_u64().unwrap(),
                line["cache"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            (200, "wikigate; fwd=miss; stored"),
            (404, "-"),
            (200, "wikigate; fwd=request; stored"),
        ],
        "{logs}"
    );
}

#[tokio::test]
async fn demo_prints_curl_examples_that_all_succeed() {
    let demo = Process::start(&["demo", "--listen", "127.0.0.1:0"], &[]);
    let mut commands = Vec::new();
    let mut screen = Vec::new();
    loop {
        let line = demo.line(Duration::from_secs(30));
        if line.starts_with("curl ") {
            commands.push(line.clone());
        }
        screen.push(line.clone());
        if line.contains("/readyz") {
            break;
        }
    }
    assert!(commands.len() >= 14, "{commands:#?}");
    assert!(
        commands.iter().any(|c| c.contains("-X POST"))
            && commands.iter().any(|c| c.contains("-X PUT"))
            && commands.iter().any(|c| c.contains("--compressed"))
    );
    // The first screen says where to look: the status page and /metrics, and they answer.
    let url_on = |label: &str| {
        let line = screen
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {screen:#?}"));
        line.split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("a URL")
            .to_owned()
    };
    for (label, expected) in [("status page", "<html"), ("metrics", "wikigate_build_info")] {
        let url = url_on(label);
        let out = Command::new("curl").args(["-fsS", &url]).output().unwrap();
        assert!(out.status.success(), "{label} at {url}");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains(expected), "{label} at {url}: {body}");
    }
    for command in &commands {
        let out = Command::new("sh")
            .args(["-c", command])
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{command}\nexit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
        );
    }
    demo.signal("TERM");
    let (status, logs) = demo.exit().await;
    assert!(status.success(), "{status}: {logs}");
}

#[test]
fn logs_are_coloured_only_on_a_terminal_and_never_with_no_color() {
    // `serve` logs a line when it listens, then runs until `timeout` stops it.
    let serve = || {
        let file = temp_file(
            "colour.toml",
            &format!(
                "[server]\nlisten = \"{}\"\n[admin]\nlisten = \"{}\"\n[upstream]\nurl = \"http://127.0.0.1:9\"\n",
                free_addr(),
                free_addr()
            ),
        );
        format!("timeout -s TERM 2 {BIN} serve --config {}", file.display())
    };
    let piped = Command::new("sh")
        .args(["-c", &serve()])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let piped = String::from_utf8_lossy(&piped.stderr);
    assert!(piped.contains("wikigate listening"), "{piped}");
    assert!(
        !piped.contains('\x1b'),
        "colour escapes in a pipe: {piped:?}"
    );
    // On a terminal (script(1) gives the command one), colour, unless NO_COLOR says no.
    let on_terminal = |no_color: Option<&str>| {
        let mut command = Command::new("script");
        command.args(["-qec", &serve(), "/dev/null"]);
        match no_color {
            Some(value) => command.env("NO_COLOR", value),
            None => command.env_remove("NO_COLOR"),
        };
        String::from_utf8_lossy(&command.output().unwrap().stdout).into_owned()
    };
    let coloured = on_terminal(None);
    assert!(coloured.contains("wikigate listening"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
    let plain = on_terminal(Some("1"));
    assert!(plain.contains("wikigate listening"), "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
}

#[test]
fn check_config_accepts_and_refuses_exactly_what_serve_does() {
    let cluster = temp_file(
        "cluster.toml",
        "[upstream]\nurl = \"https://a.example\"\n[cluster]\nredis_url = \"redis://127.0.0.1:9/0\"\n",
    );
    let check = |file: &std::path::Path, env: &[(&str, &str)], flags: &[&str]| {
        let mut command = Command::new(BIN);
        command.arg("check-config").arg(file).args(flags);
        for name in [
            "WIKIGATE_CACHE_KEY_SECRET",
            "WIKIGATE_UPSTREAM",
            "WIKIGATE_LISTEN",
        ] {
            command.env_remove(name);
        }
        command.envs(env.iter().copied()).output().unwrap()
    };
    // The cluster's key secret from the environment, as the chart's Deployment gives it.
    let refused = check(&cluster, &[], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cache.key_secret"));
    let accepted = check(
        &cluster,
        &[
            (
                "WIKIGATE_CACHE_KEY_SECRET",
                "a-secret-from-a-kubernetes-secret",
            ),
            ("WIKIGATE_UPSTREAM", "https://b.example"),
        ],
        &["--listen", "127.0.0.1:5"],
    );
    let printed = String::from_utf8_lossy(&accepted.stdout);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(printed.contains("listen = \"127.0.0.1:5\""), "{printed}");
    assert!(printed.contains("url = \"https://b.example\""), "{printed}");
    assert!(
        !printed.contains("a-secret-from"),
        "a secret was printed: {printed}"
    );
    // What serve cannot start with, check-config refuses: a credential file that is missing.
    let missing = temp_file(
        "service-account.toml",
        "[upstream]\nurl = \"https://a.example\"\n[auth]\nmode = \"service-account\"\n\
         credential_file = \"/nonexistent/wikigate-credential\"\n\
         [[callers.clients]]\nname = \"x\"\n\
         key_hash = \"blake3:0000000000000000000000000000000000000000000000000000000000000000\"\n",
    );
    let refused = check(&missing, &[], &[]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("/nonexistent/wikigate-credential"));
    let serve = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!serve.status.success());
}

#[tokio::test]
async fn a_stuck_log_output_never_blocks_a_request_and_dropped_lines_are_counted() {
    let fake = FakeConfluence::start().await.unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let file = temp_file(
        "stuck-log.toml",
        &format!(
            "[server]\nlisten = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n\
             [upstream]\nurl = \"{}\"\n[log]\nformat = \"json\"\n",
            fake.url()
        ),
    );
    // Nobody reads its stderr: the pipe fills and the log's writer blocks on it.
    let mut gateway = Process::start_stalled(&["serve", "--config", &file.to_string_lossy()], &[]);
    let admin_client = TestClient::new(format!("http://{admin}"));
    eventually(Duration::from_secs(10), "ready", || ready(&admin_client)).await;
    // More lines than the pipe and the log's buffer hold together (~250 bytes a line).
    const REQUESTS: usize = 24_000;
    let client = TestClient::new(format!("http://{listen}"));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..REQUESTS / 8 {
                    let answer = client
                        .get(&format!("{API}/current"), Some(&basic(alice())))
                        .await;
                    assert!(matches!(answer.status.as_u16(), 200 | 429));
                }
            })
        })
        .collect();
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("requests never wait on the log")
            .unwrap();
    }
    let metrics = admin_client.get("/metrics", None).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    let dropped: usize = metrics
        .lines()
        .find_map(|line| line.strip_prefix("wikigate_log_dropped_lines_total "))
        .expect("the dropped-lines counter")
        .parse()
        .unwrap();
    assert!(dropped > 0, "nothing dropped: the test filled nothing");

    // Read again, the output catches up: a warning says how many lines were lost.
    gateway.read_logs();
    eventually(Duration::from_secs(10), "the drop reported", || {
        std::future::ready(gateway.logged("log lines dropped"))
    })
    .await;
    gateway.signal("TERM");
    let (status, logs) = gateway.exit().await;
    assert!(status.success(), "exit status {status}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line whole JSON"))
        .collect();
    let access = lines.iter().filter(|l| l["target"] == "wikigate::access");
    assert_eq!(access.count() + dropped, REQUESTS);
    let reported: usize = lines
        .iter()
        .filter_map(|l| l["dropped"].as_u64())
        .sum::<u64>() as usize;
    assert_eq!(reported, dropped);
}
