//! Faults on either side of the built binary. Each fault gets its own error code, log line
//! and metric, and the proxy keeps serving afterwards. Nothing leaks: no request stays in
//! flight, no body budget stays reserved, and file descriptors and memory return to their
//! baseline.
//!
//! The tests run on a multi-threaded runtime because the in-process upstream must keep
//! serving while a test waits on the proxy process.

mod agent;
mod agent_faults;
mod baseline;
mod certs;
mod process;
mod tls_faults;
mod upstream;
mod upstream_faults;

use std::time::Duration;

use http::StatusCode;

use process::{api, ProxyProcess, IN_FLIGHT, REQUESTS_TOTAL, SECRET};
use upstream::Upstream;

/// Checks that `proxy` still serves: a normal request through it verifies at the upstream
/// and succeeds, `/readyz` is 200, nothing stays in flight, and no output contains the
/// secret.
pub async fn assert_healthy(proxy: &ProxyProcess, upstream: &Upstream) {
    let verified = upstream.verified();
    let reply = agent::get(&proxy.url(&api("file-tree"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(upstream.verified(), verified + 1, "the request was signed");

    let (status, body) = proxy.admin_get("/readyz").await;
    assert_eq!(status, 200, "/readyz: {body}");
    proxy
        .wait_for_metric(IN_FLIGHT, &[], 0.0, Duration::from_secs(5))
        .await;
    for line in proxy.logs() {
        assert!(!line.contains(SECRET), "the secret leaked: {line}");
    }
}

/// Checks the warning the proxy logs when it responds to an upstream failure with an error.
/// Each proxy logs the first such warning per code at once and rate-limits repeats, so
/// the tests give every fault a fresh proxy.
pub async fn assert_failure_logged(proxy: &ProxyProcess, code: &str) {
    let entry = proxy
        .wait_for_log(
            "request failed",
            &[("level", "WARN"), ("code", code)],
            Duration::from_secs(5),
        )
        .await;
    assert!(
        entry["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "the warning names the error: {entry}"
    );
}

/// Checks the request's log line and its count in `requests_total`.
pub async fn assert_request_recorded(proxy: &ProxyProcess, outcome: &str, status: &str) {
    proxy
        .wait_for_log("request", &[("outcome", outcome)], Duration::from_secs(5))
        .await;
    let entries = proxy.log_entries("request");
    let entry = entries
        .iter()
        .find(|entry| entry["outcome"] == outcome)
        .unwrap();
    assert_eq!(entry["status"].to_string(), status, "{entry}");
    assert_eq!(
        proxy
            .metric(REQUESTS_TOTAL, &[("outcome", outcome), ("status", status)])
            .await,
        1.0,
        "one request counted with outcome {outcome} and status {status}"
    );
}
