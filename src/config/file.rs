//! The configuration file's schema. Field docs double as the reference in the README.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::signing::SignatureEncoding;

/// Default agent-facing address: loopback only, because agents run in the same pod or host.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:8080";
/// Default admin address: loopback, so that metrics are not exposed by accident.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9090";
/// Default secret file, where the Kubernetes manifests mount the key's Secret.
pub const DEFAULT_SECRET_FILE: &str = "/var/run/secrets/agent-access-proxy/secret";
/// Default maximum request body: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub key: KeyConfig,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
}

/// The agent-facing listener and the limits that protect the proxy from agents.
/// Set `address` or `unix_socket`, not both.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// TCP address such as `127.0.0.1:8080`; the default when `unix_socket` is not set.
    pub address: Option<String>,
    /// Path of a unix socket to listen on instead of TCP.
    pub unix_socket: Option<PathBuf>,
    /// Time an agent has to send a request's headers, in seconds.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: f64,
    /// Time an agent has to send a whole request body once its headers arrived, in seconds.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_seconds: f64,
    /// Maximum size of a request's headers, in bytes (at least 8192).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Requests handled at once. Above it the proxy responds 503 at once.
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: usize,
    /// Bytes of request bodies buffered at once, over all requests; a request that would
    /// pass it gets 503 and nothing is forwarded.
    #[serde(default = "default_max_buffered_body_bytes")]
    pub max_buffered_body_bytes: u64,
    /// Time in-flight requests get to finish after SIGTERM, in seconds.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: f64,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: None,
            unix_socket: None,
            header_read_timeout_seconds: default_header_read_timeout(),
            body_read_timeout_seconds: default_body_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_requests_in_flight: default_max_requests_in_flight(),
            max_buffered_body_bytes: default_max_buffered_body_bytes(),
            drain_timeout_seconds: default_drain_timeout(),
        }
    }
}

/// The operator's listener: metrics and health checks, never the agent API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin endpoints at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// TCP address of the admin listener. In Kubernetes use `0.0.0.0:9090`, so that probes
    /// and Prometheus reach it on the pod IP.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// Serve `POST /quitquitquit`, which drains and exits, for agents run as Jobs.
    #[serde(default)]
    pub allow_quit: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: default_admin_address(),
            allow_quit: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the Agent Access API, `http` or `https`, optionally with a path prefix.
    pub url: String,
    /// PEM file of extra CA certificates trusted besides the platform's roots.
    pub ca_file: Option<PathBuf>,
    /// Time allowed to open a TCP connection (and TLS) to the upstream, in seconds.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: f64,
    /// Time allowed from sending a request until the upstream's response headers arrive,
    /// in seconds. The body may stream for longer.
    #[serde(default = "default_response_timeout")]
    pub response_timeout_seconds: f64,
    /// Time allowed for a whole exchange with the upstream, response body included, in
    /// seconds. A response still streaming then is cut off.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: f64,
    /// Time an idle pooled connection to the upstream is kept, in seconds.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout_seconds: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id, sent in `x-integration-key-id`. It is not secret.
    pub id: Option<String>,
    /// File holding the key id, instead of `id`: with a mounted Secret holding both the id
    /// and the secret, a rotation swaps both at once.
    pub id_file: Option<PathBuf>,
    /// File holding the secret; one trailing newline is ignored. This is the default source.
    pub secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the secret, instead of a file.
    pub secret_env: Option<String>,
    /// Encoding of the signature header: `hex` (default) or `base64`.
    #[serde(default)]
    pub signature_encoding: SignatureEncoding,
    /// How often the key files are checked for a new key, in seconds.
    #[serde(default = "default_reload_interval")]
    pub reload_interval_seconds: f64,
    /// Present only to reject a secret written into the configuration itself. The value is
    /// discarded unread.
    #[serde(default, skip_serializing)]
    pub secret: Option<serde::de::IgnoredAny>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The one workspace id this proxy signs requests for.
    pub workspace: String,
    /// Scopes this proxy may use. Routes needing any other scope are denied. An environment
    /// variable gives them comma-separated.
    #[serde(deserialize_with = "scope_list")]
    pub scopes: Vec<String>,
    /// Maximum request body in bytes; larger requests get 413 and nothing is forwarded.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Routes appended to the built-in table, for endpoints newer than this release.
    #[serde(default)]
    pub extra_routes: Vec<ExtraRouteConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraRouteConfig {
    /// Upper-case HTTP method, such as `GET`.
    pub method: String,
    /// Path template with one `{ws}` segment, such as `/agent-api/v1/workspaces/{ws}/runs/{run}`.
    pub path: String,
    /// Scope the route needs.
    pub scope: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `agent_access_proxy=debug`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Reads a TOML array of scope names, or one comma-separated string as environment
/// variables give it. Names are trimmed, so `env:read, events:write` works.
fn scope_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }

    let names = match List::deserialize(deserializer)? {
        List::Many(names) => names,
        List::One(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(names
        .iter()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .collect())
}

fn default_true() -> bool {
    true
}

fn default_admin_address() -> String {
    DEFAULT_ADMIN_ADDRESS.to_owned()
}

fn default_body_read_timeout() -> f64 {
    60.0
}

fn default_header_read_timeout() -> f64 {
    10.0
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

fn default_max_requests_in_flight() -> usize {
    1024
}

fn default_max_buffered_body_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_drain_timeout() -> f64 {
    20.0
}

fn default_request_timeout() -> f64 {
    300.0
}

fn default_pool_idle_timeout() -> f64 {
    90.0
}

fn default_reload_interval() -> f64 {
    5.0
}

fn default_connect_timeout() -> f64 {
    5.0
}

fn default_response_timeout() -> f64 {
    30.0
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

fn default_log_level() -> String {
    "info".to_owned()
}
