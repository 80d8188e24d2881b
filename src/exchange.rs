//! The record of one agent request, finished exactly once: when the response body ends,
//! when the proxy responds with its own error, or when the agent goes away first.
//!
//! Finishing writes the request's log line and metrics together, so the two always agree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;

use crate::error::ProxyError;
use crate::telemetry::metrics::{self, Outcome, RequestMetrics};

/// One agent request in progress.
pub struct Exchange {
    started: Instant,
    method: Method,
    route: Option<Arc<str>>,
    scope: Option<Arc<str>>,
    nonce: Option<String>,
    body_bytes: usize,
    response_bytes: u64,
    stripped_headers: usize,
    upstream_status: Option<u16>,
    in_flight: metrics_gauge::InFlight,
    finished: bool,
}

impl Exchange {
    pub fn start(method: &Method) -> Exchange {
        Exchange {
            started: Instant::now(),
            method: method.clone(),
            route: None,
            scope: None,
            nonce: None,
            body_bytes: 0,
            response_bytes: 0,
            stripped_headers: 0,
            upstream_status: None,
            in_flight: metrics_gauge::InFlight::enter(),
            finished: false,
        }
    }

    pub fn set_route(&mut self, route: Arc<str>, scope: Arc<str>) {
        self.route = Some(route);
        self.scope = Some(scope);
    }

    pub fn route(&self) -> &str {
        self.route.as_deref().unwrap_or(metrics::NO_ROUTE)
    }

    pub fn set_body_bytes(&mut self, bytes: usize) {
        self.body_bytes = bytes;
    }

    pub fn set_nonce(&mut self, nonce: String) {
        self.nonce = Some(nonce);
    }

    pub fn set_stripped_headers(&mut self, count: usize) {
        self.stripped_headers = count;
    }

    pub fn set_upstream_status(&mut self, status: u16) {
        self.upstream_status = Some(status);
    }

    pub fn add_response_bytes(&mut self, bytes: u64) {
        self.response_bytes += bytes;
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Finishes a request whose response came from the upstream.
    pub fn finish(&mut self, outcome: Outcome, status: u16) {
        self.emit(outcome, status, None);
    }

    /// Finishes a request that the proxy responded to itself.
    pub fn fail(&mut self, error: &ProxyError) {
        self.emit(error.outcome(), error.status().as_u16(), Some(error));
    }

    fn emit(&mut self, outcome: Outcome, status: u16, error: Option<&ProxyError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let duration = self.started.elapsed();

        metrics::record_request(&RequestMetrics {
            route: self.route(),
            scope: self.scope.as_deref().unwrap_or(metrics::NO_SCOPE),
            method: metrics::method_label(&self.method),
            outcome,
            status,
            duration,
        });
        self.log(outcome, status, duration, error);
        self.in_flight.leave();
    }

    fn log(&self, outcome: Outcome, status: u16, duration: Duration, error: Option<&ProxyError>) {
        tracing::info!(
            target: "agent_access_proxy::access",
            method = %self.method,
            route = self.route(),
            scope = self.scope.as_deref().unwrap_or(metrics::NO_SCOPE),
            outcome = outcome.as_str(),
            status,
            duration_ms = (duration.as_secs_f64() * 1e6).round() / 1e3,
            request_bytes = self.body_bytes,
            response_bytes = self.response_bytes,
            nonce = self.nonce.as_deref().unwrap_or("-"),
            stripped_headers = self.stripped_headers,
            error_code = error.map(ProxyError::code),
            error = error.map(tracing::field::display),
            "request"
        );
    }
}

impl Drop for Exchange {
    /// Finishes the request as `client_aborted`, because a request dropped before it
    /// finished lost its agent while the proxy waited for the upstream or streamed.
    fn drop(&mut self) {
        let status = self.upstream_status.unwrap_or(0);
        self.emit(Outcome::ClientAborted, status, None);
    }
}

mod metrics_gauge {
    /// Counts the request in the in-flight gauge until `leave` or drop.
    pub struct InFlight {
        active: bool,
    }

    impl InFlight {
        pub fn enter() -> InFlight {
            super::metrics::in_flight().increment(1.0);
            InFlight { active: true }
        }

        pub fn leave(&mut self) {
            if std::mem::take(&mut self.active) {
                super::metrics::in_flight().decrement(1.0);
            }
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            self.leave();
        }
    }
}
