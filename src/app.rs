//! Start-up and shutdown: bind the listeners, start the background tasks, serve agents
//! until a shutdown signal or `POST /quitquitquit`, then drain.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, Health};
use crate::config::{ListenAddress, Settings};
use crate::proxy::Proxy;
use crate::reload::Reloader;
use crate::server::{self, BindError, Listener, ServerOptions};
use crate::telemetry::metrics;
use crate::upstream::ClientError;

/// How often the Prometheus recorder's histograms are maintained.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// An error starting the proxy. Each message names the configuration key to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Upstream(#[from] ClientError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("admin.address: cannot listen on {address}: {source}; stop the other process using it, choose another address, or set admin.enabled = false")]
    AdminBind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A started proxy.
pub struct Running {
    pub listen: ListenAddress,
    pub admin: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    /// Completes when the proxy has drained after a shutdown.
    pub done: JoinHandle<()>,
}

/// Binds every listener, then serves in the background until `shutdown` completes or the
/// admin quit endpoint is called.
pub async fn start(
    settings: &Settings,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let metrics_handle = metrics::install();
    let proxy = Proxy::new(settings)?;
    let listener = Listener::bind(&settings.listen).await?;
    let admin_listener = bind_admin(settings.admin).await?;
    let listen = listener.local_address();
    let admin_address = admin_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());

    let health = Arc::new(Health::default());
    let (stop, stopped) = watch::channel(false);
    if let Some(admin_listener) = admin_listener {
        let quit = settings.allow_quit.then(|| stop.clone());
        let admin = Arc::new(Admin {
            health: health.clone(),
            metrics: metrics_handle.clone(),
            quit,
        });
        tokio::spawn(admin::serve(admin_listener, admin));
    }
    tokio::spawn(upkeep(metrics_handle));
    start_reloader(settings, config_path, &proxy);
    tokio::spawn(forward_shutdown(shutdown, stop));

    health.set_serving();
    let options = server_options(settings);
    let done = tokio::spawn(serve(listener, proxy.clone(), options, stopped, health));
    Ok(Running {
        listen,
        admin: admin_address,
        proxy,
        done,
    })
}

async fn bind_admin(address: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    let Some(address) = address else {
        return Ok(None);
    };
    TcpListener::bind(address)
        .await
        .map(Some)
        .map_err(|source| StartError::AdminBind { address, source })
}

fn start_reloader(settings: &Settings, config_path: Option<PathBuf>, proxy: &Arc<Proxy>) {
    let reloader = Reloader::new(proxy.clone(), settings.key_source.clone(), config_path);
    tokio::spawn(reloader.clone().poll_key(settings.key_reload_interval));
    tokio::spawn(reloader.on_sighup());
}

fn server_options(settings: &Settings) -> ServerOptions {
    ServerOptions {
        header_read_timeout: settings.limits.header_read_timeout,
        max_header_bytes: settings.limits.max_header_bytes,
        drain_timeout: settings.limits.drain_timeout,
    }
}

async fn forward_shutdown(shutdown: impl Future<Output = ()>, stop: watch::Sender<bool>) {
    shutdown.await;
    let _ = stop.send(true);
}

async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    mut stopped: watch::Receiver<bool>,
    health: Arc<Health>,
) {
    let stop_signal = async move {
        // An error means every sender is gone, which also means stop.
        let _ = stopped.wait_for(|stop| *stop).await;
        health.set_draining();
    };
    server::serve(listener, proxy, options, stop_signal).await;
}

async fn upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let mut ticker = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
    loop {
        ticker.tick().await;
        handle.run_upkeep();
    }
}
