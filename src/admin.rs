//! The admin listener: Prometheus metrics, liveness, readiness and an optional quit
//! endpoint. Nothing of the agent API is reachable here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Time an admin client has to send a request's headers.
const ADMIN_HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The state that `/readyz` reports.
#[derive(Default)]
pub struct Health {
    serving: AtomicBool,
    draining: AtomicBool,
}

impl Health {
    /// Marks the agent listener as bound with a key loaded.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    /// Marks the proxy as draining: it no longer accepts agent connections.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    fn readiness(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Err("draining: the proxy is shutting down")
        } else if !self.serving.load(Ordering::SeqCst) {
            Err("starting: the agent listener is not serving yet")
        } else {
            Ok(())
        }
    }
}

/// Shared by every admin connection.
pub struct Admin {
    pub health: Arc<Health>,
    pub metrics: PrometheusHandle,
    /// Sends `true` to start a graceful shutdown, when `POST /quitquitquit` is enabled.
    pub quit: Option<watch::Sender<bool>>,
}

/// Serves admin requests until the process ends.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(error = %error, "accepting an admin connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.route(&request)) }
            });
            // The admin port may face the cluster network, so a client that never finishes
            // its headers is cut off as on the agent listener.
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT);
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %error, "admin connection ended with an error");
            }
        });
    }
}

impl Admin {
    fn route(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        let read = matches!(*request.method(), Method::GET | Method::HEAD);
        match (request.uri().path(), read, request.method() == Method::POST) {
            ("/metrics", true, _) => {
                let mut response = text(StatusCode::OK, self.metrics.render());
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            ("/healthz", true, _) => text(StatusCode::OK, "ok\n".into()),
            ("/readyz", true, _) => match self.health.readiness() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
            },
            ("/quitquitquit", _, true) if self.quit.is_some() => {
                tracing::info!("quit requested on the admin listener");
                if let Some(quit) = &self.quit {
                    let _ = quit.send(true);
                }
                text(StatusCode::OK, "draining\n".into())
            }
            (path, _, _) => text(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint at {path}; the admin listener serves GET /metrics, /healthz and /readyz\n"),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
