//! Every metric the proxy exports: names, labels and help text, registered in one place.
//!
//! Label values are bounded: route templates, scope names, a closed set of methods,
//! outcomes and status codes. Raw paths and ids never become labels.

use std::sync::OnceLock;
use std::time::Duration;

use http::Method;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const REQUESTS_TOTAL: &str = "agent_access_proxy_requests_total";
pub const REQUEST_DURATION: &str = "agent_access_proxy_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "agent_access_proxy_upstream_duration_seconds";
pub const REQUEST_BODY_BYTES: &str = "agent_access_proxy_request_body_bytes";
pub const RESPONSE_BYTES_TOTAL: &str = "agent_access_proxy_response_bytes_total";
pub const REQUESTS_IN_FLIGHT: &str = "agent_access_proxy_requests_in_flight";
pub const BUFFERED_BODY_BYTES: &str = "agent_access_proxy_buffered_body_bytes";
pub const UPSTREAM_UNAUTHORIZED_TOTAL: &str = "agent_access_proxy_upstream_unauthorized_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "agent_access_proxy_upstream_retries_total";
pub const KEY_RELOADS_TOTAL: &str = "agent_access_proxy_key_reloads_total";
pub const KEY_INFO: &str = "agent_access_proxy_key_info";
pub const CONFIG_RELOADS_TOTAL: &str = "agent_access_proxy_config_reloads_total";
pub const CLOCK_SKEW: &str = "agent_access_proxy_upstream_clock_skew_seconds";
pub const STRIPPED_HEADERS_TOTAL: &str = "agent_access_proxy_stripped_headers_total";
pub const BUILD_INFO: &str = "agent_access_proxy_build_info";

/// Route label of requests that matched no route.
pub const NO_ROUTE: &str = "none";
/// Scope label of requests that matched no route.
pub const NO_SCOPE: &str = "none";

const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const BODY_BUCKETS: [f64; 10] = [
    0.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// The result of a request: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    DeniedRoute,
    DeniedScope,
    DeniedWorkspace,
    InvalidRequest,
    BodyTooLarge,
    UpstreamUnavailable,
    UpstreamTimeout,
    Overloaded,
    ClientAborted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::DeniedRoute => "denied_route",
            Outcome::DeniedScope => "denied_scope",
            Outcome::DeniedWorkspace => "denied_workspace",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::Overloaded => "overloaded",
            Outcome::ClientAborted => "client_aborted",
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
///
/// The recorder is global because the `metrics` macros are; several proxies in one
/// process (as in tests) share it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &DURATION_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(REQUEST_BODY_BYTES.into()),
                        &BODY_BUCKETS,
                    )
                })
                .expect("bucket lists are not empty");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed already: keep a detached one, so /metrics
                // still renders what this module records through its handle.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Counters without labels exist from the start, so the first event shows up in
            // increase() and rate() instead of creating the series.
            counter!(STRIPPED_HEADERS_TOTAL).absolute(0);
            counter!(UPSTREAM_UNAUTHORIZED_TOTAL).absolute(0);
            gauge!(REQUESTS_IN_FLIGHT).set(0.0);
            gauge!(BUFFERED_BODY_BYTES).set(0.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Agent requests by route, scope, method, outcome and the status the agent got."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from request to the end of the response, as the agent sees it."
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "Time from sending to the upstream until its response headers arrive."
    );
    describe_histogram!(
        REQUEST_BODY_BYTES,
        Unit::Bytes,
        "Size of the request bodies forwarded upstream."
    );
    describe_counter!(
        RESPONSE_BYTES_TOTAL,
        Unit::Bytes,
        "Response body bytes streamed back to agents."
    );
    describe_gauge!(REQUESTS_IN_FLIGHT, "Agent requests being handled now.");
    describe_gauge!(
        BUFFERED_BODY_BYTES,
        Unit::Bytes,
        "Request body bytes buffered now, over all requests."
    );
    describe_counter!(
        UPSTREAM_UNAUTHORIZED_TOTAL,
        "Upstream 401 responses: the signature, key or clock was rejected."
    );
    describe_counter!(
        UPSTREAM_RETRIES_TOTAL,
        "GET and HEAD requests sent again after the connection failed before a response."
    );
    describe_counter!(
        KEY_RELOADS_TOTAL,
        "Key reloads by result: changed, unchanged or failure."
    );
    describe_gauge!(
        KEY_INFO,
        "The key id requests are signed with now (value 1)."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Policy reloads on SIGHUP by result: success or failure."
    );
    describe_gauge!(
        CLOCK_SKEW,
        Unit::Seconds,
        "Upstream Date header minus the local clock, from the latest response."
    );
    describe_counter!(
        STRIPPED_HEADERS_TOTAL,
        "Agent-supplied x-integration-* headers removed before signing."
    );
    describe_gauge!(BUILD_INFO, "The running version (value 1).");
}

/// Maps a method to a bounded label value.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// One finished request, as recorded in metrics.
pub struct RequestMetrics<'a> {
    pub route: &'a str,
    pub scope: &'a str,
    pub method: &'static str,
    pub outcome: Outcome,
    /// The status the agent got, or `0` when it disconnected before any.
    pub status: u16,
    pub duration: Duration,
}

pub fn record_request(request: &RequestMetrics<'_>) {
    let labels = [
        ("route", request.route.to_owned()),
        ("scope", request.scope.to_owned()),
        ("method", request.method.to_owned()),
        ("outcome", request.outcome.as_str().to_owned()),
        ("status", request.status.to_string()),
    ];
    counter!(REQUESTS_TOTAL, &labels).increment(1);
    histogram!(
        REQUEST_DURATION,
        "route" => request.route.to_owned(),
        "outcome" => request.outcome.as_str()
    )
    .record(request.duration.as_secs_f64());
}

pub fn record_upstream_response(route: &str, elapsed: Duration, status: u16) {
    histogram!(UPSTREAM_DURATION, "route" => route.to_owned()).record(elapsed.as_secs_f64());
    if status == 401 {
        counter!(UPSTREAM_UNAUTHORIZED_TOTAL).increment(1);
    }
}

pub fn record_body(route: &str, bytes: usize) {
    histogram!(REQUEST_BODY_BYTES, "route" => route.to_owned()).record(bytes as f64);
}

pub fn response_bytes_counter(route: &str) -> metrics::Counter {
    counter!(RESPONSE_BYTES_TOTAL, "route" => route.to_owned())
}

pub fn in_flight() -> metrics::Gauge {
    gauge!(REQUESTS_IN_FLIGHT)
}

pub fn buffered_body_bytes() -> metrics::Gauge {
    gauge!(BUFFERED_BODY_BYTES)
}

pub fn record_stripped_headers(count: usize) {
    if count > 0 {
        counter!(STRIPPED_HEADERS_TOTAL).increment(count as u64);
    }
}

pub fn record_retry(route: &str) {
    counter!(UPSTREAM_RETRIES_TOTAL, "route" => route.to_owned()).increment(1);
}

pub fn record_clock_skew(seconds: f64) {
    gauge!(CLOCK_SKEW).set(seconds);
}

/// Result label of a key reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    Changed,
    Unchanged,
    Failure,
}

pub fn record_key_reload(result: ReloadResult) {
    let label = match result {
        ReloadResult::Changed => "changed",
        ReloadResult::Unchanged => "unchanged",
        ReloadResult::Failure => "failure",
    };
    counter!(KEY_RELOADS_TOTAL, "result" => label).increment(1);
}

/// Points the key info metric at `new_id`, clearing the previous id's series.
pub fn record_key_id(previous_id: Option<&str>, new_id: &str) {
    if let Some(previous) = previous_id.filter(|previous| *previous != new_id) {
        gauge!(KEY_INFO, "key_id" => previous.to_owned()).set(0.0);
    }
    gauge!(KEY_INFO, "key_id" => new_id.to_owned()).set(1.0);
}

pub fn record_config_reload(success: bool) {
    let label = if success { "success" } else { "failure" };
    counter!(CONFIG_RELOADS_TOTAL, "result" => label).increment(1);
}
