//! Key rotation and policy reload without a restart.
//!
//! The key files are polled, so that the atomic symlink swap of a mounted Kubernetes Secret
//! is picked up, and re-read on SIGHUP. SIGHUP also reloads the policy part of the
//! configuration. A reload that fails keeps what runs now, and is retried.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, KeyIdSource, KeySource, SecretSource};
use crate::proxy::{Proxy, Rules};
use crate::telemetry::metrics::{self, ReloadResult};
use crate::telemetry::RateLimiter;

/// Interval between repeats of the same reload error in the logs.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Reloads the signing key and the policy.
pub struct Reloader {
    proxy: Arc<Proxy>,
    key_source: KeySource,
    config_path: Option<PathBuf>,
    errors: RateLimiter,
}

impl Reloader {
    pub fn new(
        proxy: Arc<Proxy>,
        key_source: KeySource,
        config_path: Option<PathBuf>,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            proxy,
            key_source,
            config_path,
            errors: RateLimiter::new(ERROR_LOG_INTERVAL),
        })
    }

    /// Polls the key files every `interval`. Keys from inline ids and environment
    /// variables cannot change while the process runs, so they are not polled.
    pub async fn poll_key(self: Arc<Self>, interval: Duration) {
        let from_file = matches!(self.key_source.secret, SecretSource::File(_))
            || matches!(self.key_source.id, KeyIdSource::File(_));
        if !from_file {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.reload_key(false);
        }
    }

    /// Installs the SIGHUP handler now and returns a task that reloads the key and the
    /// policy on every SIGHUP. Installing it before the proxy reports itself started
    /// means an early SIGHUP reloads instead of killing the process.
    pub fn on_sighup(self: Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hangups = signal(SignalKind::hangup());
        async move {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::error!(error = %error, "cannot install the SIGHUP handler; reload by restarting");
                    return;
                }
            };
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received; reloading the key and the policy");
                self.reload_key(true);
                self.reload_policy();
            }
        }
    }

    /// Reads the key again and swaps it in when it changed. `explicit` reloads (SIGHUP)
    /// also count an unchanged key, so an operator sees that the signal arrived.
    pub fn reload_key(&self, explicit: bool) {
        let current = self.proxy.key();
        match self.key_source.load() {
            Ok(key) if key == *current => {
                if explicit {
                    metrics::record_key_reload(ReloadResult::Unchanged);
                }
            }
            Ok(key) => {
                tracing::info!(previous_key_id = %current.id, key_id = %key.id, "signing key reloaded; new requests use it");
                self.proxy.set_key(key);
                metrics::record_key_reload(ReloadResult::Changed);
            }
            Err(error) => {
                metrics::record_key_reload(ReloadResult::Failure);
                if let Some(held_back) = self.errors.check("key") {
                    tracing::error!(error = %error, key_id = %current.id, held_back, "key reload failed; still signing with the loaded key, and retrying");
                }
            }
        }
    }

    /// Validates the configuration file again and swaps in its policy part (scopes, extra
    /// routes, body limit) as one unit. An invalid file changes nothing.
    pub fn reload_policy(&self) {
        let Some(path) = &self.config_path else {
            return;
        };
        match config::load(Some(path)) {
            Ok(settings) => {
                tracing::info!(
                    scopes = %settings.policy.scope_list(),
                    routes = settings.policy.routes.routes().len(),
                    max_body_bytes = settings.max_body_bytes,
                    "policy reloaded; listener, admin, upstream and key source changes need a restart"
                );
                self.proxy.set_rules(Rules {
                    policy: settings.policy,
                    max_body_bytes: settings.max_body_bytes,
                });
                metrics::record_config_reload(true);
            }
            Err(error) => {
                metrics::record_config_reload(false);
                tracing::error!(path = %path.display(), error = %error, "policy reload rejected; the running policy stays");
            }
        }
    }
}
