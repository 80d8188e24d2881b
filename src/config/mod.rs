//! Configuration: a TOML file, overridden by `AGENT_ACCESS_PROXY__SECTION__KEY` environment
//! variables, validated as a whole before any port is bound.

mod file;

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

pub use crate::secret::{KeyIdSource, KeySource, SecretSource};
pub use file::{
    AdminConfig, ExtraRouteConfig, FileConfig, KeyConfig, ListenConfig, LogConfig, LogFormat,
    PolicyConfig, UpstreamConfig, DEFAULT_ADMIN_ADDRESS, DEFAULT_LISTEN_ADDRESS,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_SECRET_FILE,
};

use crate::policy::{check_path, Policy, Route, RouteTable, Scope, BUILT_IN_SCOPES};
use crate::secret::SigningKey;
use crate::signing::SignatureEncoding;

/// Prefix of environment variables that override configuration keys, as in
/// `AGENT_ACCESS_PROXY__UPSTREAM__URL`.
pub const ENV_PREFIX: &str = "AGENT_ACCESS_PROXY";

/// The validated configuration the proxy runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: ListenAddress,
    pub upstream: UpstreamSettings,
    pub key: SigningKey,
    pub key_source: KeySource,
    pub key_reload_interval: Duration,
    pub signature_encoding: SignatureEncoding,
    pub policy: Policy,
    pub max_body_bytes: usize,
    pub limits: Limits,
    /// The admin listener's address, or `None` when it is disabled.
    pub admin: Option<SocketAddr>,
    pub allow_quit: bool,
    pub log: LogConfig,
    /// Notes about accepted but discouraged input, logged once at start-up.
    pub warnings: Vec<String>,
    /// The file-level view, for `check-config`. It contains no secret.
    pub effective: FileConfig,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(address) => write!(f, "{address}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Limits of the agent-facing server.
#[derive(Clone, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_requests_in_flight: usize,
    pub max_buffered_body_bytes: usize,
    pub drain_timeout: Duration,
}

/// The upstream API's address and timeouts.
#[derive(Clone, Debug)]
pub struct UpstreamSettings {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path prefix of the base URL without a trailing `/`, or empty.
    pub path_prefix: String,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

/// A configuration that cannot be used. Each problem names the key, the value and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot load the configuration: {0}")]
    Load(#[from] LoadError),
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// A configuration file that cannot be read or parsed.
///
/// A TOML syntax error is reported by line and column without the offending text, because
/// the text may be a secret (a secret file passed as the configuration, say).
#[derive(Debug)]
pub struct LoadError(String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    fn new(error: config::ConfigError, path: Option<&Path>) -> LoadError {
        match error {
            config::ConfigError::FileParse { cause, .. } => {
                LoadError(describe_parse_error(cause.as_ref(), path))
            }
            other => LoadError(other.to_string()),
        }
    }
}

fn describe_parse_error(
    cause: &(dyn std::error::Error + Send + Sync + 'static),
    path: Option<&Path>,
) -> String {
    let Some(toml_error) = cause.downcast_ref::<toml::de::Error>() else {
        return "the file is not valid TOML".to_owned();
    };
    let location = toml_error
        .span()
        .zip(path.and_then(|path| std::fs::read(path).ok()))
        .map(|(span, text)| {
            let before = &text[..span.start.min(text.len())];
            let line = before.iter().filter(|byte| **byte == b'\n').count() + 1;
            let column = before
                .iter()
                .rev()
                .take_while(|byte| **byte != b'\n')
                .count()
                + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    format!(
        "the file is not valid TOML{location}: {}",
        toml_error.message()
    )
}

/// One invalid key.
#[derive(Debug)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Reads `path` (when given) and the environment overrides into the file schema.
pub fn load_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    load_file_with_env(path, None)
}

/// Like [`load_file`], with the environment replaced by `environment` when given, so that
/// tests need not change the process environment.
pub fn load_file_with_env(
    path: Option<&Path>,
    environment: Option<std::collections::HashMap<String, String>>,
) -> Result<FileConfig, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        // Values stay strings, typed by the key they set: a key id `007` must not become 7.
        .try_parsing(false)
        .source(environment);

    let merged = builder
        .add_source(environment)
        .build()
        .map_err(|error| LoadError::new(error, path))?;
    Ok(merged
        .try_deserialize()
        .map_err(|error| LoadError::new(error, path))?)
}

/// Loads and validates the configuration.
pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
    validate(load_file(path)?)
}

/// Validates a configuration given as TOML text, with no environment overrides.
pub fn load_toml(text: &str) -> Result<Settings, ConfigError> {
    let source = config::File::from_str(text, config::FileFormat::Toml);
    let merged = config::Config::builder()
        .add_source(source)
        .build()
        .map_err(|error| LoadError::new(error, None))?;
    validate(
        merged
            .try_deserialize()
            .map_err(|error| LoadError::new(error, None))?,
    )
}

/// Checks every key and collects all problems, so one run shows every mistake.
pub fn validate(file: FileConfig) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let listen = collect(&mut problems, validate_listen(&file.listen));
    let limits = collect(&mut problems, validate_limits(&file.listen));
    let admin = collect(&mut problems, validate_admin(&file.admin));
    let upstream = collect(&mut problems, validate_upstream(&file.upstream));
    let key = collect(&mut problems, validate_key(&file.key));
    let reload_interval = parse_timeout(file.key.reload_interval_seconds)
        .map_err(|message| problem("key.reload_interval_seconds", message));
    let key_reload_interval = collect(&mut problems, reload_interval);
    let policy = collect(&mut problems, validate_policy(&file.policy, &mut warnings));
    let max_body_bytes = collect(&mut problems, validate_max_body(file.policy.max_body_bytes));
    if file.listen.max_buffered_body_bytes < file.policy.max_body_bytes {
        problems.extend(problem(
            "listen.max_buffered_body_bytes",
            format!(
                "{} is below policy.max_body_bytes ({}), so a body within the limit could never be buffered; raise it or lower policy.max_body_bytes",
                file.listen.max_buffered_body_bytes, file.policy.max_body_bytes
            ),
        ));
    }
    if let Err(problem) = validate_log(&file.log) {
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }

    let (key, key_source) = key.expect("no problems means the key loaded");
    Ok(Settings {
        listen: listen.expect("validated"),
        upstream: upstream.expect("validated"),
        key,
        key_source,
        key_reload_interval: key_reload_interval.expect("validated"),
        signature_encoding: file.key.signature_encoding,
        policy: policy.expect("validated"),
        max_body_bytes: max_body_bytes.expect("validated"),
        limits: limits.expect("validated"),
        admin: admin.expect("validated"),
        allow_quit: file.admin.allow_quit,
        log: file.log.clone(),
        warnings,
        effective: file,
    })
}

fn collect<T>(problems: &mut Vec<Problem>, result: Result<T, Vec<Problem>>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(mut found) => {
            problems.append(&mut found);
            None
        }
    }
}

fn problem(key: &'static str, message: impl Into<String>) -> Vec<Problem> {
    vec![Problem {
        key,
        message: message.into(),
    }]
}

fn validate_listen(listen: &ListenConfig) -> Result<ListenAddress, Vec<Problem>> {
    match (&listen.address, &listen.unix_socket) {
        (Some(_), Some(_)) => Err(problem(
            "listen",
            "both listen.address and listen.unix_socket are set; keep one of them",
        )),
        (None, Some(path)) if path.as_os_str().is_empty() => Err(problem(
            "listen.unix_socket",
            "the path is empty; give a socket path such as /run/agent-access-proxy/proxy.sock",
        )),
        (None, Some(path)) => Ok(ListenAddress::Unix(path.clone())),
        (address, None) => {
            let address = address.as_deref().unwrap_or(DEFAULT_LISTEN_ADDRESS);
            address.parse().map(ListenAddress::Tcp).map_err(|_| {
                problem(
                    "listen.address",
                    format!("'{address}' is not an IP address with a port; write it as 127.0.0.1:8080 or [::1]:8080"),
                )
            })
        }
    }
}

fn validate_limits(listen: &ListenConfig) -> Result<Limits, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut seconds = |key: &'static str, value: f64| match parse_timeout(value) {
        Ok(duration) => duration,
        Err(message) => {
            problems.extend(problem(key, message));
            Duration::ZERO
        }
    };
    let header_read_timeout = seconds(
        "listen.header_read_timeout_seconds",
        listen.header_read_timeout_seconds,
    );
    let body_read_timeout = seconds(
        "listen.body_read_timeout_seconds",
        listen.body_read_timeout_seconds,
    );
    let drain_timeout = seconds("listen.drain_timeout_seconds", listen.drain_timeout_seconds);

    if !(8192..=1 << 20).contains(&listen.max_header_bytes) {
        problems.extend(problem(
            "listen.max_header_bytes",
            format!(
                "{} is out of range; give a size in bytes from 8192 to 1048576",
                listen.max_header_bytes
            ),
        ));
    }
    if listen.max_requests_in_flight == 0 {
        problems.extend(problem(
            "listen.max_requests_in_flight",
            "0 would reject every request; give a positive number such as 1024",
        ));
    }
    let budget = usize::try_from(listen.max_buffered_body_bytes)
        .ok()
        .filter(|bytes| *bytes > 0);
    if budget.is_none() {
        problems.extend(problem(
            "listen.max_buffered_body_bytes",
            format!(
                "{} is out of range; give a positive size in bytes",
                listen.max_buffered_body_bytes
            ),
        ));
    }

    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Limits {
        header_read_timeout,
        body_read_timeout,
        max_header_bytes: listen.max_header_bytes,
        max_requests_in_flight: listen.max_requests_in_flight,
        max_buffered_body_bytes: budget.unwrap_or_default(),
        drain_timeout,
    })
}

fn validate_admin(admin: &AdminConfig) -> Result<Option<SocketAddr>, Vec<Problem>> {
    if !admin.enabled {
        return Ok(None);
    }
    admin.address.parse().map(Some).map_err(|_| {
        problem(
            "admin.address",
            format!(
                "'{}' is not an IP address with a port; write it as 127.0.0.1:9090",
                admin.address
            ),
        )
    })
}

fn validate_upstream(upstream: &UpstreamConfig) -> Result<UpstreamSettings, Vec<Problem>> {
    let mut problems = Vec::new();
    let base = parse_base_url(&upstream.url).map_err(|message| problem("upstream.url", message));
    let connect_timeout = parse_timeout(upstream.connect_timeout_seconds)
        .map_err(|message| problem("upstream.connect_timeout_seconds", message));
    let response_timeout = parse_timeout(upstream.response_timeout_seconds)
        .map_err(|message| problem("upstream.response_timeout_seconds", message));
    let request_timeout = parse_timeout(upstream.request_timeout_seconds)
        .map_err(|message| problem("upstream.request_timeout_seconds", message));
    let pool_idle_timeout = parse_timeout(upstream.pool_idle_timeout_seconds)
        .map_err(|message| problem("upstream.pool_idle_timeout_seconds", message));
    if let Some(path) = &upstream.ca_file {
        if let Err(error) = std::fs::metadata(path) {
            problems.extend(problem(
                "upstream.ca_file",
                format!(
                    "cannot read '{}': {error}; point it at a PEM file of CA certificates",
                    path.display()
                ),
            ));
        }
    }

    let base = collect(&mut problems, base);
    let connect_timeout = collect(&mut problems, connect_timeout);
    let response_timeout = collect(&mut problems, response_timeout);
    let request_timeout = collect(&mut problems, request_timeout);
    let pool_idle_timeout = collect(&mut problems, pool_idle_timeout);
    if !problems.is_empty() {
        return Err(problems);
    }

    let (scheme, authority, path_prefix) = base.expect("validated");
    Ok(UpstreamSettings {
        scheme,
        authority,
        path_prefix,
        ca_file: upstream.ca_file.clone(),
        connect_timeout: connect_timeout.expect("validated"),
        response_timeout: response_timeout.expect("validated"),
        request_timeout: request_timeout.expect("validated"),
        pool_idle_timeout: pool_idle_timeout.expect("validated"),
    })
}

/// Splits a base URL into scheme, authority and path prefix.
pub fn parse_base_url(url: &str) -> Result<(Scheme, Authority, String), String> {
    let fix =
        "write it as http(s)://host[:port][/prefix], such as https://api.example.com/gateway/eu";
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("'{url}' is not a valid URL ({error}); {fix}"))?;

    let scheme = match uri.scheme() {
        Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => scheme.clone(),
        _ => return Err(format!("'{url}' must use http or https; {fix}")),
    };
    let authority = match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            return Err(format!("'{url}' must not contain user information; {fix}"))
        }
        Some(authority) if !authority.host().is_empty() => authority.clone(),
        _ => return Err(format!("'{url}' has no host; {fix}")),
    };
    if uri.query().is_some() || url.contains('#') {
        return Err(format!("'{url}' must not have a query or fragment; {fix}"));
    }

    let prefix = uri.path().trim_end_matches('/').to_owned();
    if !prefix.is_empty() {
        check_path(&prefix)
            .map_err(|error| format!("the path prefix of '{url}' is invalid: {error}"))?;
    }
    Ok((scheme, authority, prefix))
}

fn parse_timeout(seconds: f64) -> Result<Duration, String> {
    if seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!(
            "{seconds} is not a usable timeout; give a number of seconds above 0 and at most 86400"
        ))
    }
}

fn validate_key(key: &KeyConfig) -> Result<(SigningKey, KeySource), Vec<Problem>> {
    let mut problems = Vec::new();
    if key.secret.is_some() {
        problems.extend(problem(
            "key.secret",
            "a secret is never read from the configuration; put it in a file (key.secret_file) or an environment variable (key.secret_env)",
        ));
    }

    let id = match (&key.id, &key.id_file) {
        (Some(_), Some(_)) => Err(problem(
            "key",
            "both key.id and key.id_file are set; keep one of them",
        )),
        (None, None) => Err(problem(
            "key.id",
            "the key id is missing; set key.id to the id shown with the key, or key.id_file",
        )),
        (Some(id), None) => validate_key_id(id)
            .map(|()| KeyIdSource::Inline(id.clone()))
            .map_err(|message| problem("key.id", message)),
        (None, Some(path)) => Ok(KeyIdSource::File(path.clone())),
    };
    let secret = match (&key.secret_file, &key.secret_env) {
        (Some(_), Some(_)) => Err(problem("key", "both key.secret_file and key.secret_env are set; keep one of them")),
        (_, Some(name)) if is_env_name(name) => Ok(SecretSource::Env(name.clone())),
        // The value is not echoed: a secret pasted here by mistake must not reach the logs.
        (_, Some(_)) => Err(problem("key.secret_env", "the value is not an environment variable name (letters, digits and '_', not starting with a digit); give the variable's name, not the secret")),
        (Some(path), None) => Ok(SecretSource::File(path.clone())),
        (None, None) => Ok(SecretSource::File(PathBuf::from(DEFAULT_SECRET_FILE))),
    };

    let id = collect(&mut problems, id);
    let secret = collect(&mut problems, secret);
    let (Some(id), Some(secret)) = (id, secret) else {
        return Err(problems);
    };
    let source = KeySource { id, secret };
    match source.load() {
        Ok(signing_key) if problems.is_empty() => Ok((signing_key, source)),
        Ok(_) => Err(problems),
        Err(error) => {
            problems.extend(problem(
                key_error_name(&error),
                format!("{error}; {}", key_error_fix(&error)),
            ));
            Err(problems)
        }
    }
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

fn key_error_name(error: &crate::secret::KeyError) -> &'static str {
    use crate::secret::KeyError;
    match error {
        KeyError::IdFile { .. } => "key.id_file",
        KeyError::SecretFile { .. } | KeyError::Torn => "key.secret_file",
        KeyError::SecretEnv { .. } => "key.secret_env",
    }
}

fn key_error_fix(error: &crate::secret::KeyError) -> &'static str {
    use crate::secret::KeyError;
    match error {
        KeyError::IdFile { .. } => "mount the key id there or set key.id",
        KeyError::SecretFile { .. } | KeyError::Torn => {
            "mount the key's secret there or set key.secret_file"
        }
        KeyError::SecretEnv { .. } => "export the secret in that variable or use key.secret_file",
    }
}

/// Checks that a key id can travel in a header unchanged.
pub fn validate_key_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "'{}' is not a usable key id; copy the id shown with the key (printable ASCII, no spaces, at most 256 bytes)",
            id.escape_default()
        ));
    }
    Ok(())
}

fn validate_policy(
    policy: &PolicyConfig,
    warnings: &mut Vec<String>,
) -> Result<Policy, Vec<Problem>> {
    let mut problems = Vec::new();
    if let Err(message) = check_workspace(&policy.workspace) {
        problems.extend(problem("policy.workspace", message));
    }

    let mut routes = RouteTable::built_in();
    for extra in &policy.extra_routes {
        let added = parse_extra_route(extra).and_then(|route| routes.push(route));
        if let Err(message) = added {
            problems.extend(problem("policy.extra_routes", message));
        }
    }

    let scopes = collect(
        &mut problems,
        validate_scopes(&policy.scopes, &routes, warnings),
    );
    match scopes {
        Some(scopes) if problems.is_empty() => Ok(Policy {
            workspace: policy.workspace.clone(),
            scopes,
            routes,
        }),
        _ => Err(problems),
    }
}

fn check_workspace(workspace: &str) -> Result<(), String> {
    let valid = !workspace.is_empty()
        && workspace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
        && workspace != "."
        && workspace != "..";
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a workspace id; copy the id from the workspace URL (letters, digits, '-', '_', '.', '~')",
            workspace.escape_default()
        ))
    }
}

fn parse_extra_route(extra: &ExtraRouteConfig) -> Result<Route, String> {
    let (scope, _) = Scope::parse(&extra.scope)?;
    Route::new(&extra.method, &extra.path, scope)
}

fn validate_scopes(
    names: &[String],
    routes: &RouteTable,
    warnings: &mut Vec<String>,
) -> Result<BTreeSet<Scope>, Vec<Problem>> {
    if names.is_empty() {
        return Err(problem(
            "policy.scopes",
            format!("the allowlist is empty, so every request would be denied; list the scopes this agent needs, from {}", BUILT_IN_SCOPES.join(", ")),
        ));
    }

    let mut problems = Vec::new();
    let mut scopes = BTreeSet::new();
    for name in names {
        match Scope::parse(name) {
            Ok((scope, _)) if !routes.knows_scope(&scope) => problems.extend(problem(
                "policy.scopes",
                format!("unknown scope '{scope}'; known scopes are {} plus those of policy.extra_routes", BUILT_IN_SCOPES.join(", ")),
            )),
            Ok((scope, alias)) => {
                if alias {
                    warnings.push(format!("policy.scopes: '{name}' is read as '{scope}'; write '{scope}'"));
                }
                scopes.insert(scope);
            }
            Err(message) => problems.extend(problem("policy.scopes", message)),
        }
    }

    if problems.is_empty() {
        Ok(scopes)
    } else {
        Err(problems)
    }
}

fn validate_max_body(bytes: u64) -> Result<usize, Vec<Problem>> {
    const CEILING: u64 = 1 << 30;
    match usize::try_from(bytes) {
        Ok(limit) if bytes > 0 && bytes <= CEILING => Ok(limit),
        _ => Err(problem(
            "policy.max_body_bytes",
            format!("{bytes} is out of range; give a size in bytes from 1 to {CEILING} (the default is {DEFAULT_MAX_BODY_BYTES})"),
        )),
    }
}

fn validate_log(log: &LogConfig) -> Result<(), Problem> {
    tracing_subscriber::EnvFilter::try_new(&log.level)
        .map(|_| ())
        .map_err(|error| Problem {
            key: "log.level",
            message: format!(
                "'{}' is not a log filter ({error}); use a level such as info or debug",
                log.level
            ),
        })
}
