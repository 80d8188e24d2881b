//! The configuration file's schema. Field docs double as the reference in the README.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::signing::SignatureEncoding;

/// Default agent-facing address: loopback only, because agents run in the same pod or host.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:8080";
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
    pub log: LogConfig,
}

/// Where agents connect. Set `address` or `unix_socket`, not both.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// TCP address such as `127.0.0.1:8080`; the default when `unix_socket` is not set.
    pub address: Option<String>,
    /// Path of a unix socket to listen on instead of TCP.
    pub unix_socket: Option<PathBuf>,
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
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The key id, sent in `x-integration-key-id`. It is not secret.
    pub id: String,
    /// File holding the secret; one trailing newline is ignored. This is the default source.
    pub secret_file: Option<PathBuf>,
    /// Name of an environment variable holding the secret, instead of a file.
    pub secret_env: Option<String>,
    /// Encoding of the signature header: `hex` (default) or `base64`.
    #[serde(default)]
    pub signature_encoding: SignatureEncoding,
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
    /// Scopes this proxy may use. Routes needing any other scope are denied.
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
