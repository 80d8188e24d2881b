//! agent-access-proxy: a sidecar that signs an agent's requests to the Agent Access API,
//! so that the agent never holds the key's secret.
//!
//! Modules in the order a request meets them:
//!
//! - [`config`]: the TOML file and environment overrides, validated before any port binds.
//! - [`server`]: agent-facing listeners (TCP or unix socket), HTTP/1.1 and HTTP/2 cleartext.
//! - [`proxy`]: the request path, from policy check to streamed response.
//! - [`policy`]: route table, scope allowlist, pinned workspace and request-target checks.
//! - [`body`]: buffering the request body within a limit while hashing it.
//! - [`signing`]: the canonical string, HMAC-SHA256 and the four headers.
//! - [`upstream`]: the pooled hyper client with rustls.
//! - [`error`]: the errors the proxy answers itself, and their JSON responses.
//!
//! Beside the request path: [`secret`] (the zeroed, redacted key), [`headers`] (hop-by-hop
//! rules), [`standin`] (a verifying stand-in of the API for tests and offline
//! development), [`demo`] and [`cli`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod exchange;
pub mod hardening;
pub mod headers;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod signing;
pub mod standin;
pub mod telemetry;
pub mod upstream;
