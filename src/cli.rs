//! The command line: `run`, `demo`, `check-config`, `sign`, `routes` and `stand-in`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::app;
use crate::config::{self, SecretSource, Settings};
use crate::secret::SigningKey;
use crate::signing::{self, SignatureEncoding, SignatureInput};

/// Exit codes, following sysexits(3) where one fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The proxy failed while running.
    Failure = 1,
    /// The configuration or an argument is invalid (EX_USAGE).
    Usage = 64,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "agent-access-proxy",
    version,
    about = "Signs an agent's requests to the Agent Access API, so that the agent never holds the secret.",
    long_about = "Signs an agent's requests to the Agent Access API, so that the agent never holds the secret.\n\n\
        Agents send plain HTTP requests to this proxy (by default http://127.0.0.1:8080). The proxy checks each \
        request against a route table, a scope allowlist and one pinned workspace, adds the four x-integration-* \
        headers (HMAC-SHA256 over the exact bytes it forwards) and forwards it to the upstream API over TLS.\n\n\
        Configuration keys can be overridden by environment variables such as AGENT_ACCESS_PROXY__UPSTREAM__URL."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the proxy with a configuration file.
    Run(ConfigArg),
    /// Starts a verifying stand-in of the API and the proxy in front of it, with a throwaway key.
    Demo(DemoArgs),
    /// Validates a configuration and prints it as the proxy would use it, secret redacted.
    CheckConfig(ConfigArg),
    /// Prints the four signing headers for one request, to debug a client or a server.
    Sign(SignArgs),
    /// Prints the route table and which routes this configuration allows.
    Routes(ConfigArg),
    /// Runs only the verifying stand-in of the API, for developing agents offline.
    StandIn(StandInArgs),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Path of the TOML configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address the proxy listens on for agents.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Scope the demo proxy allows; repeat for several. By default env:read, artifacts:write and
    /// events:write, so that files:propose shows a denial.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Workspace id of the stand-in and the proxy's pinned workspace.
    #[arg(long, default_value = "ws_demo")]
    pub workspace: String,
}

/// The secret source of a command that needs one. It is never an argument, because
/// process arguments are visible to every user of the machine.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct SecretArgs {
    /// File holding the secret (one trailing newline is ignored).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Environment variable holding the secret.
    #[arg(long, value_name = "NAME")]
    secret_env: Option<String>,
}

impl SecretArgs {
    fn source(&self) -> SecretSource {
        match (&self.secret_file, &self.secret_env) {
            (Some(path), _) => SecretSource::File(path.clone()),
            (None, Some(name)) => SecretSource::Env(name.clone()),
            (None, None) => unreachable!("clap requires one secret source"),
        }
    }
}

#[derive(Debug, Args)]
struct SignArgs {
    /// Key id to send.
    #[arg(long)]
    key_id: String,
    #[command(flatten)]
    secret: SecretArgs,
    /// HTTP method, in upper case as sent.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Path and query exactly as the upstream receives them, path prefix included.
    #[arg(long)]
    path: String,
    /// File holding the exact body bytes; empty body when omitted.
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// Unix timestamp in seconds; the current time when omitted.
    #[arg(long)]
    timestamp: Option<u64>,
    /// Nonce; a fresh random one when omitted.
    #[arg(long)]
    nonce: Option<String>,
    /// Signature encoding.
    #[arg(long, value_enum, default_value = "hex")]
    encoding: EncodingArg,
    /// Also print the canonical string, to compare with a server's.
    #[arg(long)]
    show_canonical: bool,
}

#[derive(Debug, Args)]
struct StandInArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Workspace id the stand-in serves.
    #[arg(long, default_value = "ws_demo")]
    workspace: String,
    /// Key id the stand-in trusts.
    #[arg(long)]
    key_id: String,
    #[command(flatten)]
    secret: SecretArgs,
    /// Path prefix the stand-in is reached under, such as /gateway/eu.
    #[arg(long, default_value = "")]
    path_prefix: String,
    /// Signature encoding the stand-in expects.
    #[arg(long, value_enum, default_value = "hex")]
    encoding: EncodingArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum EncodingArg {
    Hex,
    Base64,
}

impl From<EncodingArg> for SignatureEncoding {
    fn from(encoding: EncodingArg) -> Self {
        match encoding {
            EncodingArg::Hex => SignatureEncoding::Hex,
            EncodingArg::Base64 => SignatureEncoding::Base64,
        }
    }
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // --help and --version print to standard output and succeed.
            let exit = if error.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            return exit.into();
        }
    };
    // Before any command can load a secret.
    if let Err(error) = crate::hardening::harden_process() {
        eprintln!("warning: cannot disable core dumps or mark the process non-dumpable: {error}; the secret is less protected from other processes of this user");
    }
    let exit = match cli.command {
        Command::Run(args) => run(&args.config),
        Command::Demo(args) => block_on(crate::demo::run(args)),
        Command::CheckConfig(args) => check_config(&args.config),
        Command::Sign(args) => sign(&args),
        Command::Routes(args) => routes(&args.config),
        Command::StandIn(args) => block_on(stand_in(args)),
    };
    exit.into()
}

fn block_on(future: impl std::future::Future<Output = Exit>) -> Exit {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            Exit::Failure
        }
    }
}

/// Loads the configuration or prints why it is invalid.
fn load_settings(path: &Path) -> Result<Settings, Exit> {
    config::load(Some(path)).map_err(|error| {
        eprintln!("error: {}: {error}", path.display());
        Exit::Usage
    })
}

fn run(path: &Path) -> Exit {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(exit) => return exit,
    };
    crate::telemetry::init_logging(&settings.log);
    block_on(serve_until_signal(settings, path.to_owned()))
}

async fn serve_until_signal(settings: Settings, path: PathBuf) -> Exit {
    let running = match app::start(&settings, Some(path), crate::shutdown::wait_for_signal()).await
    {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(error = %error, "cannot start");
            eprintln!("error: {error}");
            return Exit::Usage;
        }
    };

    log_start(&settings, &running);
    match running.done.await {
        Ok(()) => {
            tracing::info!("stopped");
            Exit::Ok
        }
        Err(error) => {
            tracing::error!(error = %error, "the server task failed");
            Exit::Failure
        }
    }
}

/// Logs the effective configuration, secret redacted, and any start-up warnings.
fn log_start(settings: &Settings, running: &app::Running) {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let upstream = &settings.upstream;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %running.listen,
        admin = %running.admin.map_or("disabled".to_owned(), |address| address.to_string()),
        upstream = %format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.path_prefix),
        workspace = %settings.policy.workspace,
        scopes = %settings.policy.scope_list(),
        key_id = %settings.key.id,
        secret = %settings.key.secret,
        max_body_bytes = settings.max_body_bytes,
        max_requests_in_flight = settings.limits.max_requests_in_flight,
        max_buffered_body_bytes = settings.limits.max_buffered_body_bytes,
        "agent-access-proxy started"
    );
}

fn check_config(path: &Path) -> Exit {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(exit) => return exit,
    };
    if let Err(error) = crate::upstream::UpstreamClient::new(&settings.upstream) {
        eprintln!("error: {}: {error}", path.display());
        return Exit::Usage;
    }

    for warning in &settings.warnings {
        eprintln!("warning: {warning}");
    }
    let mut effective = settings.effective.clone();
    match &settings.listen {
        config::ListenAddress::Tcp(address) => effective.listen.address = Some(address.to_string()),
        config::ListenAddress::Unix(path) => effective.listen.unix_socket = Some(path.clone()),
    }
    effective.policy.scopes = settings
        .policy
        .scopes
        .iter()
        .map(|scope| scope.to_string())
        .collect();
    let secret_line = match &settings.key_source.secret {
        SecretSource::File(path) => format!(
            "# key secret: {} (loaded from file {})",
            settings.key.secret,
            path.display()
        ),
        SecretSource::Env(name) => format!(
            "# key secret: {} (loaded from ${name})",
            settings.key.secret
        ),
    };
    match toml_string(&effective) {
        Ok(text) => {
            println!("# configuration is valid\n{secret_line}\n\n{text}");
            Exit::Ok
        }
        Err(error) => {
            eprintln!("error: cannot print the configuration: {error}");
            Exit::Failure
        }
    }
}

fn toml_string(value: &impl serde::Serialize) -> Result<String, String> {
    toml::to_string_pretty(value).map_err(|error| error.to_string())
}

fn sign(args: &SignArgs) -> Exit {
    if let Err(message) = config::validate_key_id(&args.key_id) {
        eprintln!("error: --key-id: {message}");
        return Exit::Usage;
    }
    let secret = match args.secret.source().load() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("error: cannot load the secret: {error}");
            return Exit::Usage;
        }
    };
    let body = match &args.body_file {
        Some(path) => match std::fs::read(path) {
            Ok(body) => body,
            Err(error) => {
                eprintln!("error: --body-file {}: {error}", path.display());
                return Exit::Usage;
            }
        },
        None => Vec::new(),
    };

    let key = SigningKey {
        id: args.key_id.clone(),
        secret,
    };
    let nonce = args.nonce.clone().unwrap_or_else(signing::new_nonce);
    let body_sha256 = signing::body_sha256(&body);
    let input = SignatureInput {
        method: &args.method,
        path_with_query: &args.path,
        timestamp: args.timestamp.unwrap_or_else(signing::unix_now),
        nonce: &nonce,
        body_sha256: &body_sha256,
    };
    let signed = signing::sign(&key, &input, args.encoding.into());

    let mut out = std::io::stdout().lock();
    if args.show_canonical {
        let _ = writeln!(out, "# canonical string:");
        for line in signing::canonical_string(&input).lines() {
            let _ = writeln!(out, "#   {line}");
        }
    }
    let _ = writeln!(out, "{}: {}", signing::KEY_ID_HEADER, signed.key_id);
    let _ = writeln!(out, "{}: {}", signing::TIMESTAMP_HEADER, signed.timestamp);
    let _ = writeln!(out, "{}: {}", signing::NONCE_HEADER, signed.nonce);
    let _ = writeln!(out, "{}: {}", signing::SIGNATURE_HEADER, signed.signature);
    Exit::Ok
}

fn routes(path: &Path) -> Exit {
    let settings = match load_settings(path) {
        Ok(settings) => settings,
        Err(exit) => return exit,
    };
    let policy = &settings.policy;
    println!("workspace: {}", policy.workspace);
    println!("{:<7} {:<56} {:<16} allowed", "method", "path", "scope");
    for route in policy.routes.routes() {
        let allowed = if policy.scopes.contains(&route.scope) {
            "yes"
        } else {
            "no"
        };
        println!(
            "{:<7} {:<56} {:<16} {allowed}",
            route.method.as_str(),
            route.template,
            route.scope.as_str()
        );
    }
    Exit::Ok
}

async fn stand_in(args: StandInArgs) -> Exit {
    crate::telemetry::init_logging(&config::LogConfig::default());
    let secret = match args.secret.source().load() {
        Ok(secret) => secret,
        Err(error) => {
            eprintln!("error: cannot load the secret: {error}");
            return Exit::Usage;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "error: --listen {}: {error}; choose another address",
                args.listen
            );
            return Exit::Usage;
        }
    };

    let stand_in =
        crate::standin::StandIn::new(&args.workspace, &args.path_prefix, args.encoding.into());
    stand_in.add_key(&args.key_id, secret);
    println!(
        "stand-in of the Agent Access API on http://{}{} (workspace {})",
        args.listen, args.path_prefix, args.workspace
    );
    Arc::clone(&stand_in)
        .serve(listener, None, crate::shutdown::wait_for_signal())
        .await;
    Exit::Ok
}
