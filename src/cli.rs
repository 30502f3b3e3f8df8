//! The command line: `serve`, `demo`, `check-config`, `hash-key`.
//!
//! `serve` and `check-config` load the configuration one way (`ConfigArgs`): the same file,
//! flags and `WIKIGATE_*` variables, so that what `check-config` accepts is what `serve`
//! starts with.
//!
//! Exit codes: 0 on a clean stop, 1 when the gateway could not start (a port in use, an
//! unreadable certificate), 2 when the configuration is invalid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::shutdown::Signals;
use crate::{demo, lifecycle, telemetry};

#[derive(Debug, Parser)]
#[command(
    name = "wikigate",
    version,
    about = "A caching gateway for the Confluence Cloud user API"
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
        /// The config file (else --config or WIKIGATE_CONFIG).
        file: Option<PathBuf>,
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
    /// Config file (TOML); see config/wikigate.toml.
    #[arg(long, env = "WIKIGATE_CONFIG")]
    config: Option<PathBuf>,
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
    /// The configuration from `file` (else `--config`) with every override applied.
    fn load(&self, file: Option<&std::path::Path>) -> Result<Config, crate::config::ConfigError> {
        Config::load(file.or(self.config.as_deref()), &self.overrides())
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
        Command::CheckConfig { file, args } => {
            let config = match args.load(file.as_deref()) {
                Ok(config) => config,
                Err(e) => return config_error(&e),
            };
            // What `serve` builds before it listens: certificates, CA bundles, credentials.
            if let Err(e) = runtime().block_on(async { lifecycle::check(&config) }) {
                eprintln!("wikigate: serve would not start: {e}");
                return ExitCode::from(2);
            }
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            let config = match args.load(None) {
                Ok(config) => config,
                Err(e) => return config_error(&e),
            };
            // SIGHUP reads the same file with the same flags and environment again.
            let reload = move || args.load(None);
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

async fn serve(
    config: Config,
    reload: impl Fn() -> Result<Config, crate::config::ConfigError>,
) -> ExitCode {
    let signals = Signals::install();
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
