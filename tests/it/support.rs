//! The test harness: a fake Confluence site, a gateway in front of it, and a client.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use wikigate::Running;
use wikigate::config::RawConfig;
use wikigate::fake::{DEMO_USERS, DemoUser, FakeConfluence, FakeOptions};

pub const API: &str = "/wiki/rest/api/user";

pub fn alice() -> &'static DemoUser {
    &DEMO_USERS[0]
}

pub fn bob() -> &'static DemoUser {
    &DEMO_USERS[1]
}

/// `Authorization` value for a user's Basic credential.
pub fn basic(user: &DemoUser) -> String {
    let raw = format!("{}:{}", user.email, user.api_token);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A loopback address that was free a moment ago.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A gateway config in front of `upstream`, on free loopback ports (to change, then validate).
/// A config for a gateway in front of `upstream`, served on the test's own runtime
/// (`server.threads = 0`), whose clock a test may pause.
pub fn config_for(upstream: &str) -> RawConfig {
    RawConfig::from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 0\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n"
    ))
    .expect("test config is valid")
}

pub struct Harness {
    pub fake: FakeConfluence,
    pub gateway: Running,
    pub client: TestClient,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// The gateway's `/metrics`, from its admin listener.
    pub async fn metrics(&self) -> String {
        let admin = TestClient::new(format!("http://{}", self.gateway.admin_addr));
        String::from_utf8_lossy(&admin.get("/metrics", None).await.body).into_owned()
    }

    /// The value of one series (its name and labels, exactly as exported) in `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_in(&self.metrics().await, series)
    }

    /// Starts with the default test config changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut RawConfig)) -> Harness {
        Harness::start_on(FakeOptions::default(), tweak).await
    }

    /// Starts with `server.public_url` set to the gateway's own address (reserved first: it is
    /// only known once the gateway listens); returns the public URL too.
    pub async fn with_public_url() -> (Harness, String) {
        let addr = free_addr();
        let public = format!("http://{addr}");
        let h = Harness::start_with(|c| {
            c.server.listen = addr;
            c.server.public_url = Some(public.clone());
        })
        .await;
        (h, public)
    }

    /// Starts in front of a fake site started with `options`.
    pub async fn start_on(options: FakeOptions, tweak: impl FnOnce(&mut RawConfig)) -> Harness {
        let fake = FakeConfluence::start_with(options)
            .await
            .expect("fake starts");
        let mut config = config_for(&fake.url());
        tweak(&mut config);
        let config = config.validate().expect("tweaked config is valid");
        let gateway = wikigate::start(&config).await.expect("gateway starts");
        let client = TestClient::new(format!("http://{}", gateway.addr));
        Harness {
            fake,
            gateway,
            client,
        }
    }
}

/// An answer, fully read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// A header's value, or "" when it is absent (or not text).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.decoded())
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The body with its content coding (gzip) undone.
    pub fn decoded(&self) -> Bytes {
        match self.headers.get("content-encoding") {
            Some(coding) if coding == "gzip" => {
                wikigate::gunzip(&self.body, 64 << 20).expect("valid gzip")
            }
            Some(other) => panic!("unexpected content coding {other:?}"),
            None => self.body.clone(),
        }
    }

    /// Asserts Confluence's error shape with this status.
    pub fn assert_error(&self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {:?}", self.body);
        let json = self.json();
        assert_eq!(json["statusCode"], status, "{json}");
        assert!(json["message"].is_string(), "{json}");
        assert!(json["data"].is_object(), "{json}");
        json
    }
}

/// A plain HTTP client bound to one origin.
#[derive(Clone)]
pub struct TestClient {
    origin: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new(origin: String) -> TestClient {
        TestClient {
            origin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// An HTTP/2-only client (h2c with prior knowledge).
    pub fn h2c(origin: String) -> TestClient {
        TestClient {
            origin,
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    pub fn request(&self, method: Method, target: &str) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            builder: Request::builder()
                .method(method)
                .uri(format!("{}{target}", self.origin)),
            body: Bytes::new(),
        }
    }

    /// A GET as a mainstream HTTP client sends it: `Accept-Encoding: gzip, deflate`.
    pub async fn get_gzip(&self, target: &str, user: &DemoUser) -> Answer {
        self.request(Method::GET, target)
            .auth(user)
            .header("accept-encoding", "gzip, deflate")
            .send()
            .await
    }

    pub async fn get(&self, target: &str, auth: Option<&str>) -> Answer {
        let mut request = self.request(Method::GET, target);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send().await
    }
}

pub struct RequestBuilder<'a> {
    client: &'a TestClient,
    builder: http::request::Builder,
    body: Bytes,
}

impl RequestBuilder<'_> {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.builder = self.builder.header(name, value);
        self
    }

    pub fn auth(self, user: &DemoUser) -> Self {
        let value = basic(user);
        self.header("authorization", &value)
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub async fn send(self) -> Answer {
        self.try_send().await.expect("request succeeds")
    }

    /// Sends; `None` when there was no complete answer (connection refused or reset).
    pub async fn try_send(self) -> Option<Answer> {
        let request = self.builder.body(Full::new(self.body)).expect("request");
        let response =
            tokio::time::timeout(Duration::from_secs(10), self.client.client.request(request))
                .await
                .expect("answer within 10 s")
                .ok()?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.ok()?.to_bytes();
        Some(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

impl Answer {
    /// The `Cache-Status` header, or "" without one.
    pub fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The account the fake answered for (`X-AAccountId`, as Atlassian sends it).
    pub fn viewer(&self) -> &str {
        self.headers
            .get("x-aaccountid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Writes `request` on a fresh connection (ignoring a write cut short by the server) and reads
/// until the server closes or resets it; panics if it keeps the connection open for 5 s.
pub async fn raw_exchange(addr: std::net::SocketAddr, request: impl AsRef<[u8]>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request.as_ref()).await;
    let mut answer = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        // A reset after the answer (unread request bytes) ends the read, not the test.
        while let Ok(n @ 1..) = stream.read(&mut buffer).await {
            answer.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the server closed the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Creates (POST) or updates (PUT) `owner`'s property `key` as `user`, with `{"value": value}`.
pub async fn put_property(
    client: &TestClient,
    user: &DemoUser,
    owner: &str,
    key: &str,
    method: Method,
    value: Value,
) -> Answer {
    client
        .request(method, &format!("{API}/{owner}/property/{key}"))
        .auth(user)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "value": value }).to_string())
        .send()
        .await
}

/// Starts a GET as `user` in a task of its own (for interleavings with held upstream answers).
pub fn spawn_get(
    client: &TestClient,
    target: &str,
    user: &'static DemoUser,
) -> tokio::task::JoinHandle<Answer> {
    let (client, target) = (client.clone(), target.to_owned());
    tokio::spawn(async move { client.get(&target, Some(&basic(user))).await })
}

/// The wikigate binary run as a process of its own (`serve`, `demo`): its stdout and stderr
/// read as they come (so a chatty process never blocks on a full pipe) — stdout line by line
/// ([`Process::line`]), stderr, the logs, kept for [`Process::exit`].
pub struct Process {
    child: std::process::Child,
    stdout: std::sync::mpsc::Receiver<String>,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    /// Ends when stderr closes: the process exited.
    reader: Option<std::thread::JoinHandle<()>>,
    /// Lets a stalled reader start reading (see [`Process::start_stalled`]).
    go: Option<std::sync::mpsc::Sender<()>>,
}

impl Process {
    /// Runs `wikigate ARGS` with `env` added to this process's environment.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut process = Process::spawn(args, env);
        process.read_logs();
        process
    }

    /// As [`Process::start`], but nothing reads its stderr until [`Process::read_logs`]: its
    /// log output is stuck, as on a disk that stopped answering.
    pub fn start_stalled(args: &[&str], env: &[(&str, &str)]) -> Process {
        Process::spawn(args, env)
    }

    /// Starts reading the logs (of a process started stalled).
    pub fn read_logs(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wikigate"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the wikigate binary runs");
        let stdout = child.stdout.take().expect("piped");
        let (lines, stdout_lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines.send(line);
            }
        });
        let stderr = child.stderr.take().expect("piped");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = logs.clone();
        let (go, stalled) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let _ = stalled.recv();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Process {
            child,
            stdout: stdout_lines,
            logs,
            reader: Some(reader),
            go: Some(go),
        }
    }

    /// The next line the process prints, waiting at most `within` for it.
    pub fn line(&self, within: Duration) -> String {
        self.stdout
            .recv_timeout(within)
            .unwrap_or_else(|e| panic!("no line printed within {within:?}: {e}"))
    }

    /// Whether the process has logged `text` so far.
    pub fn logged(&self, text: &str) -> bool {
        self.logs.lock().unwrap().contains(text)
    }

    /// Sends `signal` (`TERM`, `HUP`).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most 10 s) for the process to exit: its status and everything it logged.
    pub async fn exit(mut self) -> (std::process::ExitStatus, String) {
        self.read_logs();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("a child") {
                break status;
            }
            if tokio::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("wikigate did not exit within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader ends with the pipe, which closed when the process exited.
        let reader = self.reader.take().expect("exits once");
        tokio::task::spawn_blocking(move || reader.join().expect("the log reader"))
            .await
            .expect("joined");
        let logs = self.logs.lock().unwrap().clone();
        (status, logs)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` until it holds, at most `within` (a process starting, a reload taking
/// effect): for what another process does, whose time a test cannot control.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `client`'s origin answers `/readyz` with 200 (an admin listener).
pub async fn ready(admin: &TestClient) -> bool {
    admin
        .request(Method::GET, "/readyz")
        .try_send()
        .await
        .is_some_and(|a| a.status == StatusCode::OK)
}

/// The value of one series (its name and labels, exactly as exported) in a `/metrics` text.
pub fn metric_in(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
