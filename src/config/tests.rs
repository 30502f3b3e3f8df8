use super::*;

#[test]
fn a_reload_applies_the_documented_keys_and_nothing_else() {
    for key in [
        "callers.clients",
        "auth.credential_env",
        "limits.classes.default.requests",
        "quota.reserve",
        "csrf.allowed_origins",
        "cache.routes.user.ttl",
        "cache.cache_not_found",
        "cache.ignored_cookies",
        "log.level",
        "log.access",
        "server.tls.cert_file",
    ] {
        assert!(reloadable(key), "{key}");
    }
    for key in [
        "auth.mode",
        "server.tls",
        "server.listen",
        "cache.max_bytes",
        "cache.routesx",
        "log.format",
        "upstream.url",
        "admin.token",
        "cluster.redis_url",
    ] {
        assert!(!reloadable(key), "{key}");
    }
}

#[test]
fn the_effective_config_takes_reloaded_keys_only() {
    let started = RawConfig::from_toml(
        "[upstream]\nurl = \"https://a.example\"\n[csrf]\nallowed_origins = [\"https://x.example\"]\n",
    )
    .unwrap()
    .validate()
    .unwrap();
    let mut running = (*started).clone();
    running.csrf.allowed_origins.clear();
    running.server.max_body_bytes = 7;
    let running = running.validate().unwrap();
    let effective: toml::Table = toml::from_str(&started.effective(&running)).unwrap();
    assert_eq!(
        effective["csrf"]["allowed_origins"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_ne!(effective["server"]["max_body_bytes"].as_integer(), Some(7));
    assert_eq!(
        started.changed_keys(&running),
        ["csrf.allowed_origins", "server.max_body_bytes"]
    );
}

const MINIMAL: &str = "[upstream]\nurl = \"https://example.atlassian.net\"\n";

#[test]
fn defaults_fill_everything_but_the_upstream() {
    let config = Config::from_toml(MINIMAL).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.admin.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(config.server.max_body_bytes, 1 << 20);
    assert_eq!(config.upstream.url.prefix(), "");
}

#[test]
fn upstream_url_keeps_its_path_prefix() {
    let url: UpstreamUrl = "https://api.atlassian.com/ex/confluence/abc-123/"
        .parse()
        .unwrap();
    assert_eq!(url.prefix(), "/ex/confluence/abc-123");
    assert_eq!(url.authority().as_str(), "api.atlassian.com");
    for bad in [
        "api.atlassian.com",
        "ftp://x.example",
        "https://u:p@x.example",
        "https://x.example/?a=1",
    ] {
        assert!(bad.parse::<UpstreamUrl>().is_err(), "{bad}");
    }
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("[server]\nlisten = \"nope\"\n", "server.listen"),
        ("[server]\nlsten = \"1.2.3.4:1\"\n", "server"),
        (
            "[upstream]\nurl = \"https://a.example\"\nconnect_timeout = \"5 parsecs\"\n",
            "upstream.connect_timeout",
        ),
        (
            "[upstream]\nconnect_timeout = \"5s\"\n",
            "upstream.url: is required",
        ),
        ("[server]\nmax_body_bytes = -1\n", "server.max_body_bytes"),
        ("", "upstream: is required"),
        (
            "[csrf]\nallowed_origins = [\"https://a.example/path\"]\n",
            "csrf.allowed_origins[0]",
        ),
    ];
    for (text, key) in cases {
        let text = if text.contains("[upstream]") || text.is_empty() {
            text.to_owned()
        } else {
            format!("{text}{MINIMAL}")
        };
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.starts_with(key), "{text:?} gave {err:?}");
    }
}

#[test]
fn overrides_win_over_the_file_and_are_validated() {
    let dir = std::env::temp_dir().join(format!("wikigate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.toml");
    std::fs::write(
        &file,
        format!("[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL}"),
    )
    .unwrap();
    let mut overrides = Overrides::default();
    overrides.set("server.listen", Some("127.0.0.1:2"));
    let config = Config::load(std::slice::from_ref(&file), &overrides).unwrap();
    assert_eq!(config.server.listen.port(), 2);
    let mut bad = Overrides::default();
    bad.set("upstream.url", Some("not a url"));
    let err = Config::load(std::slice::from_ref(&file), &bad)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("upstream.url"), "{err}");
}

#[test]
fn durations_round_trip() {
    for s in ["250ms", "5s", "2m", "1h", "90s"] {
        let d = duration::parse(s).unwrap();
        assert_eq!(duration::parse(&duration::format(&d)).unwrap(), d);
    }
    assert!(duration::parse("5").is_err());
    assert!(duration::parse("s").is_err());
    assert!(duration::parse("5d").is_err());
    assert_eq!(duration::parse("8760h"), Ok(duration::MAX));
}

#[test]
fn durations_that_overflow_are_refused_naming_the_key() {
    for too_long in [
        "9999999999999999h",
        "99999999999999999999999s",
        "8761h",
        "5124095576030431h",
    ] {
        assert!(
            duration::parse(too_long).unwrap_err().contains("too long"),
            "{too_long}"
        );
        let text = format!("[cache.routes]\nuser = {{ ttl = \"{too_long}\" }}\n{MINIMAL}");
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.starts_with("cache.routes.user.ttl: "), "{err}");
        assert!(err.contains("too long"), "{err}");
    }
}

#[test]
fn every_read_route_serves_an_hour_stale_through_an_outage_unless_told() {
    let defaults = RoutePolicies::default();
    for route in crate::routes::Route::ALL {
        assert_eq!(defaults.get(route).stale_if_error, STALE_IF_ERROR_DEFAULT);
    }
    // A route written with its ttl only keeps the default window; "0s" turns it off.
    let written: RoutePolicies =
        toml::from_str("user = { ttl = \"1m\" }\nbulk = { ttl = \"1m\", stale_if_error = \"0s\" }")
            .unwrap();
    assert_eq!(
        written.get(crate::routes::Route::User).stale_if_error,
        STALE_IF_ERROR_DEFAULT
    );
    assert!(
        written
            .get(crate::routes::Route::Bulk)
            .stale_if_error
            .is_zero()
    );
}

const STALE_IF_ERROR_DEFAULT: Duration = Duration::from_secs(3600);
