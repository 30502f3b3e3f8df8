//! `wikigate demo`: the gateway in front of the built-in fake Confluence site, on loopback,
//! with copy-paste `curl` examples that work as printed (no network needed).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::{Config, LogConfig, TelemetryConfig};
use crate::fake::{DEMO_USERS, FakeConfluence};
use crate::shutdown::Signals;
use crate::{lifecycle, telemetry};

/// One request of the demo's walkthrough.
#[derive(Debug, Clone)]
pub(crate) struct Example {
    pub title: &'static str,
    pub method: &'static str,
    /// Path and query below the gateway's origin.
    pub target: String,
    /// `user:token` for Basic, or a full `Authorization` value when it starts with `Bearer `.
    pub credential: String,
    pub body: Option<&'static str>,
    /// Asks for gzip, as every mainstream HTTP client does (`curl --compressed`).
    pub compressed: bool,
}

impl Example {
    /// The example as a shell command against `origin` (`http://127.0.0.1:8080`).
    pub(crate) fn curl(&self, origin: &str) -> String {
        let mut cmd = String::from("curl -fsS");
        if self.compressed {
            cmd.push_str(" --compressed");
        }
        if self.credential.starts_with("Bearer ") {
            cmd.push_str(&format!(" -H 'Authorization: {}'", self.credential));
        } else {
            cmd.push_str(&format!(" -u '{}'", self.credential));
        }
        if self.method != "GET" {
            cmd.push_str(&format!(" -X {}", self.method));
        }
        if let Some(body) = self.body {
            cmd.push_str(&format!(" -H 'Content-Type: application/json' -d '{body}'"));
        }
        cmd.push_str(&format!(" '{origin}{}'", self.target));
        cmd
    }
}

/// The walkthrough, in an order in which every request succeeds.
pub(crate) fn examples() -> Vec<Example> {
    let [alice, bob, _] = DEMO_USERS;
    let basic = |u: &crate::fake::DemoUser| format!("{}:{}", u.email, u.api_token);
    let api = "/wiki/rest/api/user";
    let property = format!("{api}/{}/property/editor-theme", alice.account_id);
    let ex = |title, method, target: String, credential: String, body| Example {
        title,
        method,
        target,
        credential,
        body,
        compressed: false,
    };
    vec![
        ex(
            "Who am I (Basic email:token)",
            "GET",
            format!("{api}/current"),
            basic(&alice),
            None,
        ),
        ex(
            "Who am I (OAuth bearer)",
            "GET",
            format!("{api}/current"),
            format!("Bearer {}", bob.bearer),
            None,
        ),
        ex(
            "A user by account id",
            "GET",
            format!("{api}?accountId={}&expand=operations", bob.account_id),
            basic(&alice),
            None,
        ),
        Example {
            compressed: true,
            ..ex(
                "Group memberships, in gzip as HTTP libraries ask (the same cache entry serves both)",
                "GET",
                format!("{api}/memberof?accountId={}", alice.account_id),
                basic(&alice),
                None,
            )
        },
        ex(
            "Bulk lookup",
            "GET",
            format!(
                "{api}/bulk?accountId={},{}",
                alice.account_id, bob.account_id
            ),
            basic(&alice),
            None,
        ),
        ex(
            "A user's email",
            "GET",
            format!("{api}/email?accountId={}", bob.account_id),
            basic(&alice),
            None,
        ),
        ex(
            "Watch a space (wikigate adds the XSRF header)",
            "POST",
            format!("{api}/watch/space/DEMO"),
            basic(&bob),
            None,
        ),
        ex(
            "Am I watching it?",
            "GET",
            format!("{api}/watch/space/DEMO"),
            basic(&bob),
            None,
        ),
        ex(
            "Create a user property",
            "POST",
            property.clone(),
            basic(&alice),
            Some(r#"{"value":{"mode":"dark"}}"#),
        ),
        ex("Read it", "GET", property.clone(), basic(&alice), None),
        ex(
            "Update it",
            "PUT",
            property.clone(),
            basic(&alice),
            Some(r#"{"value":{"mode":"light"}}"#),
        ),
        ex(
            "List my properties",
            "GET",
            format!("{api}/{}/property", alice.account_id),
            basic(&alice),
            None,
        ),
        ex("Delete it", "DELETE", property, basic(&alice), None),
        ex(
            "Stop watching",
            "DELETE",
            format!("{api}/watch/space/DEMO"),
            basic(&bob),
            None,
        ),
    ]
}

/// Runs the demo until SIGINT/SIGTERM.
pub(crate) async fn run(mut listen: SocketAddr) -> ExitCode {
    let telemetry = telemetry::init(&LogConfig::default(), &TelemetryConfig::default());
    let signals = Signals::install();
    let fake = match FakeConfluence::start().await {
        Ok(fake) => fake,
        Err(e) => {
            eprintln!("wikigate demo: cannot start the fake Confluence site: {e}");
            return ExitCode::from(1);
        }
    };
    // Links in answers point at the gateway (`server.public_url`), which needs its port now.
    if listen.port() == 0
        && let Ok(free) = std::net::TcpListener::bind(listen).and_then(|l| l.local_addr())
    {
        listen = free;
    }
    let config = Config::from_toml(&format!(
        "[server]\nlisten = \"{listen}\"\npublic_url = \"http://{listen}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n",
        fake.url()
    ))
    .expect("the demo config is valid");
    let running = match lifecycle::start(&config).await {
        Ok(running) => running,
        Err(e) => {
            eprintln!("wikigate demo: {e}");
            return ExitCode::from(1);
        }
    };
    let origin = format!("http://{}", running.addr);
    let admin = format!("http://{}", running.admin_addr);
    let mut text = format!(
        "\nwikigate demo: the gateway on {origin}, in front of a fake Confluence site on {}\n\
         \n  status page   {admin}/        (hit ratio, quota saved, routes, limits)\n\
         \x20 metrics       {admin}/metrics (Prometheus)\n\
         \nTry these (Ctrl-C to stop); run one twice and its Cache-Status says hit (curl -i):\n",
        fake.url()
    );
    for example in examples() {
        text.push_str(&format!(
            "\n# {}\n{}\n",
            example.title,
            example.curl(&origin)
        ));
    }
    text.push_str(&format!(
        "\n# Health and readiness\ncurl -fsS http://{}/readyz\n",
        running.admin_addr
    ));
    // A closed stdout (`wikigate demo | head`) is no reason to stop the demo.
    let _ = writeln!(std::io::stdout().lock(), "{text}");
    let code = signals.stop(running, None).await;
    telemetry.shutdown().await;
    code
}
