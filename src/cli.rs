//! The command line: `serve`, `demo`, `check-config`, `hash-key`.
//!
//! `serve` and `check-config` load the configuration one way (`ConfigArgs`): the same file,
//! flags and `WIKIGATE_*` variables, so that what `check-config` accepts is what `serve`
//! starts with.
//!
//! Exit codes: 0 on a clean stop, 1 when the gateway could not start (a port in use, an
//! unreadable certificate), 2 when the configuration is invalid; `check-config --against`: 3
//! when a changed key needs a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides, Secret};
use crate::shutdown::Signals;
use crate::{demo, lifecycle, telemetry};

/// Every environment variable the binary reads besides the flags' own (README lists them too).
const ENVIRONMENT: &str = "\
Environment (besides each flag's WIKIGATE_* variable):
  WIKIGATE_ADMIN_TOKEN            admin.token: the bearer token of /admin/* (also sent by
                                  check-config --against)
  WIKIGATE_CACHE_KEY_SECRET       cache.key_secret: the partition hash's key, the same on every
                                  replica
  (auth.credential_env)           the variable it names holds the service-account credential:
                                  \"Basic \" + base64 of email:api-token, or \"Bearer \" + a token
  (cluster.redis_password_env)    the variable it names holds Redis's password
  RUST_LOG                        a tracing filter that stands over log.level
  NO_COLOR                        set to anything: no colour in log lines
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
                                  where spans go (OTLP/HTTP) when telemetry.otlp_endpoint is unset
  OTEL_SERVICE_NAME               the service name on exported spans";

#[derive(Debug, Parser)]
#[command(
    name = "wikigate",
    version,
    about = "A caching gateway for the Confluence Cloud user API",
    after_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ConfigArgs),
    /// Run the gateway in front of a built-in fake Confluence site, and print curl examples.
    Demo {
        /// Address the demo gateway listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Check a configuration exactly as `serve` would load it — the same file, flags and
    /// `WIKIGATE_*` variables, and the files it names (certificates, CA bundles, credentials)
    /// — without listening; print the effective configuration.
    CheckConfig {
        /// The config files, merged in order (else --config or WIKIGATE_CONFIG).
        files: Vec<PathBuf>,
        /// Instead of the effective configuration, print how this one differs from what a
        /// running gateway has in force (its admin address, e.g. http://127.0.0.1:9090; the
        /// admin token from WIKIGATE_ADMIN_TOKEN, else the file's admin.token): each changed
        /// key, secrets and the service-account credential included (compared by keyed digest,
        /// never shown), and whether SIGHUP applies it or it needs a restart. Exits 3 when a
        /// key needs a restart.
        #[arg(long, value_name = "ADMIN_URL")]
        against: Option<String>,
        #[command(flatten)]
        args: ConfigArgs,
    },
    /// Print the hash of a gateway client key, for `callers.clients[].key_hash`. Reads the key
    /// from standard input.
    HashKey {
        /// Generate a new random key instead, and print it with its hash.
        #[arg(long)]
        generate: bool,
    },
}

/// Where `serve` (and `check-config`) get the configuration. Each flag overrides its config
/// key; its environment variable is used when the flag is absent, and the config file when
/// neither is given. Secrets come from the environment only.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Config file (TOML); see config/wikigate.toml. Repeat it (or separate paths with commas
    /// in WIKIGATE_CONFIG) to merge several in order: a later file's keys win, table by table;
    /// [[callers.clients]] merge by name; any other array is replaced whole.
    #[arg(long, env = "WIKIGATE_CONFIG", value_delimiter = ',')]
    config: Vec<PathBuf>,
    /// server.listen — address the gateway listens on.
    #[arg(long, env = "WIKIGATE_LISTEN")]
    listen: Option<String>,
    /// upstream.url — the Confluence site, https://SITE.atlassian.net or
    /// https://api.atlassian.com/ex/confluence/CLOUD_ID.
    #[arg(long, env = "WIKIGATE_UPSTREAM")]
    upstream: Option<String>,
    /// admin.listen — address of the health and readiness endpoints.
    #[arg(long, env = "WIKIGATE_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// log.format — pretty or json.
    #[arg(long, env = "WIKIGATE_LOG_FORMAT")]
    log_format: Option<String>,
}

impl ConfigArgs {
    /// The configuration from `files` (else `--config`) with every override applied.
    fn load(&self, files: &[PathBuf]) -> Result<Config, crate::config::ConfigError> {
        let files = if files.is_empty() {
            &self.config
        } else {
            files
        };
        Config::load(files, &self.overrides())
    }

    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides::default();
        overrides
            .set("server.listen", self.listen.clone())
            .set("upstream.url", self.upstream.clone())
            .set("admin.listen", self.admin_listen.clone())
            .set("log.format", self.log_format.clone())
            // Secrets come from the environment only: a flag would show in `ps`. Empty counts as
            // unset: Kubernetes sets an optional secret key that is absent to "".
            .set("admin.token", non_empty_env("WIKIGATE_ADMIN_TOKEN"))
            .set(
                "cache.key_secret",
                non_empty_env("WIKIGATE_CACHE_KEY_SECRET"),
            );
        overrides
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig {
            files,
            against,
            args,
        } => {
            let config = match args.load(&files) {
                Ok(config) => config,
                Err(e) => return config_error(&e),
            };
            for warning in config.warnings() {
                eprintln!("wikigate: warning: {warning}");
            }
            // What `serve` builds before it listens: certificates, CA bundles, credentials.
            if let Err(e) = runtime().block_on(async { lifecycle::check(&config) }) {
                eprintln!("wikigate: serve would not start: {e}");
                return ExitCode::from(2);
            }
            match against {
                None => {
                    print!("{}", config.to_toml());
                    ExitCode::SUCCESS
                }
                Some(admin) => runtime().block_on(compare(&config, &admin)),
            }
        }
        Command::Serve(args) => {
            let config = match args.load(&[]) {
                Ok(config) => config,
                Err(e) => return config_error(&e),
            };
            // SIGHUP reads the same file with the same flags and environment again.
            let reload = move || args.load(&[]);
            runtime().block_on(async move {
                let telemetry = telemetry::init(&config.log, &config.telemetry);
                let code = serve(config, reload).await;
                telemetry.shutdown().await;
                code
            })
        }
        Command::Demo { listen } => runtime().block_on(demo::run(listen)),
        Command::HashKey { generate } => hash_key(generate),
    }
}

fn hash_key(generate: bool) -> ExitCode {
    let key = if generate {
        use base64::Engine as _;
        use ring::rand::SecureRandom as _;
        let mut bytes = [0u8; 32];
        if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
            eprintln!("wikigate: no randomness available");
            return ExitCode::from(1);
        }
        let key = format!(
            "wg_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        println!("key = \"{key}\"   # give this to the client; do not put it in the config");
        key
    } else {
        let mut line = String::new();
        if std::io::stdin().read_line(&mut line).is_err() || line.trim().is_empty() {
            eprintln!("wikigate: hash-key reads the key from standard input (or use --generate)");
            return ExitCode::from(2);
        }
        line.trim().to_owned()
    };
    if key.len() < 16 {
        eprintln!("wikigate: a client key needs at least 16 characters");
        return ExitCode::from(2);
    }
    println!("key_hash = \"{}\"", crate::config::KeyHash::of(&key));
    ExitCode::SUCCESS
}

fn config_error(e: &crate::config::ConfigError) -> ExitCode {
    eprintln!("wikigate: invalid configuration: {e}");
    ExitCode::from(2)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Exit code of `check-config --against` when a changed key needs a restart (SIGHUP would not
/// apply it): a deploy step can stop there.
const NEEDS_RESTART: u8 = 3;

/// Prints how `config` differs from the effective configuration of the gateway whose admin
/// listener is at `admin`: each changed key, secrets included (compared by keyed digest), and
/// whether a reload applies it. Exits [`NEEDS_RESTART`] when a key needs a restart.
async fn compare(config: &Config, admin: &str) -> ExitCode {
    // `config` took admin.token from WIKIGATE_ADMIN_TOKEN when it is set, else from the file.
    let token = config.admin.token.as_ref().map(Secret::expose);
    let running = match fetch_config(admin, token).await {
        Ok(running) => running,
        Err(Fetch::Refused) if token.is_some() => {
            println!(
                "admin.token: needs a restart (the running gateway does not take this configuration's token)"
            );
            return ExitCode::from(NEEDS_RESTART);
        }
        Err(Fetch::Refused) => {
            eprintln!(
                "wikigate: {admin}/admin/config needs the admin token (WIKIGATE_ADMIN_TOKEN or admin.token)"
            );
            return ExitCode::from(1);
        }
        Err(Fetch::Failed(e)) => {
            eprintln!("wikigate: cannot read {admin}/admin/config: {e}");
            return ExitCode::from(1);
        }
    };
    let Ok(mut new) = toml::Value::try_from(&**config) else {
        eprintln!("wikigate: the configuration does not serialize");
        return ExitCode::from(1);
    };
    let Some(key) = running.digest_key else {
        eprintln!("wikigate: {admin} does not state its secrets' digests (an older wikigate?)");
        return ExitCode::from(1);
    };
    crate::config::with_digests(&mut new, &config.secret_digests(&key));
    let mut changed = crate::config::changed_between(&running.config, &new);
    if running.credential != crate::caller::credential_digest(config, &key) {
        changed.push("auth.credential".to_owned());
    }
    if changed.is_empty() {
        println!("no change against the running gateway");
    }
    let mut restart = false;
    for key in changed {
        let effect = match crate::config::reloadable(&key) {
            true => "applied by SIGHUP",
            false => {
                restart = true;
                "needs a restart"
            }
        };
        println!("{key}: {effect}");
    }
    match restart {
        true => ExitCode::from(NEEDS_RESTART),
        false => ExitCode::SUCCESS,
    }
}

/// What a running gateway has in force: its configuration with secrets as keyed digests, the
/// digests' key, and the service-account credential's digest.
struct Running {
    config: toml::Value,
    digest_key: Option<[u8; 32]>,
    credential: Option<String>,
}

/// Why the running configuration could not be read.
enum Fetch {
    /// 401: no token, or not the running gateway's.
    Refused,
    Failed(String),
}

impl From<String> for Fetch {
    fn from(error: String) -> Fetch {
        Fetch::Failed(error)
    }
}

/// `GET {admin}/admin/config?digests`, with the admin `token`.
async fn fetch_config(admin: &str, token: Option<&str>) -> Result<Running, Fetch> {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let url = format!("{}/admin/config?digests", admin.trim_end_matches('/'));
    let mut request = http::Request::get(url);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let header = |name: &str| {
        answer
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let digest_key = header("x-wikigate-digest-key")
        .and_then(|hex| blake3::Hash::from_hex(hex).ok())
        .map(|hash| *hash.as_bytes());
    let credential = header("x-wikigate-credential-digest");
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status == http::StatusCode::UNAUTHORIZED {
        return Err(Fetch::Refused);
    }
    if !status.is_success() {
        return Err(Fetch::Failed(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    let text = String::from_utf8(body.to_vec()).map_err(|e| e.to_string())?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
    Ok(Running {
        config: toml::Value::Table(table),
        digest_key,
        credential,
    })
}

async fn serve(
    config: Config,
    reload: impl Fn() -> Result<Config, crate::config::ConfigError>,
) -> ExitCode {
    let signals = Signals::install();
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let running = match lifecycle::start(&config).await {
        Ok(running) => running,
        Err(e) => {
            tracing::error!(error = %e, "wikigate could not start");
            eprintln!("wikigate: {e}");
            return ExitCode::from(1);
        }
    };
    signals.stop(running, Some(&reload)).await
}
