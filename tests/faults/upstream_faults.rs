//! Upstream faults on plain TCP: resets, stalls and garbage, before and after the
//! response headers.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::agent::{self, Reply};
use crate::process::{api, write_config, ProxyProcess, IN_FLIGHT};
use crate::upstream::{Fault, Transport, Upstream, DECLARED_BODY_BYTES, PARTIAL_BODY_BYTES};
use crate::{assert_failure_logged, assert_healthy, assert_request_recorded};

async fn start(upstream_lines: &str) -> (Upstream, ProxyProcess, tempfile::TempDir) {
    let upstream = Upstream::start(Transport::Plain).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &upstream.http_url(),
        &[("upstream", upstream_lines)],
    );
    let proxy = ProxyProcess::start(&config);
    (upstream, proxy, dir)
}

fn with_fault(path: &str, fault: Fault) -> String {
    format!("{path}?{}", fault.query())
}

fn assert_proxy_error(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.headers["x-agent-access-proxy-error"], code);
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
}

/// Returns the kind of the I/O error under a hyper error, if there is one.
fn io_error_kind(error: &hyper::Error) -> Option<std::io::ErrorKind> {
    let source = std::error::Error::source(error)?;
    source
        .downcast_ref::<std::io::Error>()
        .map(std::io::Error::kind)
}

/// Waits until the upstream has no open connection, which shows that the proxy closed the
/// one the fault used instead of keeping it.
async fn wait_for_upstream_idle(upstream: &Upstream) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upstream.seen.open_connections.load(Ordering::SeqCst) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy still holds the faulty upstream connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_before_headers_gets_502() {
    let (upstream, proxy, _dir) = start("").await;
    let target = with_fault(&api("artifacts"), Fault::ResetBeforeHeaders);

    let reply = agent::send(
        Method::POST,
        &proxy.url(&target),
        r#"{"title":"reset","text":"x"}"#,
    )
    .await;

    assert_proxy_error(&reply, StatusCode::BAD_GATEWAY, "upstream_connection_lost");
    assert!(reply.body.contains("reset"), "{}", reply.body);
    assert_eq!(upstream.verified(), 1, "the request arrived signed");
    assert_eq!(upstream.requests(), 1, "a POST is never sent twice");
    assert_failure_logged(&proxy, "upstream_connection_lost").await;
    assert_request_recorded(&proxy, "upstream_unavailable", "502").await;
    assert_healthy(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_headers_breaks_body() {
    let (upstream, proxy, _dir) = start("").await;
    let target = with_fault(&api("files/fn_report"), Fault::ResetAfterHeaders);

    let streamed = agent::get_streamed(&proxy.url(&target)).await;

    // The status and headers had reached the agent before the upstream failed, so the
    // agent gets a 200 whose body ends short of its Content-Length.
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(
        streamed.headers["content-length"],
        DECLARED_BODY_BYTES.to_string()
    );
    assert_eq!(streamed.received, PARTIAL_BODY_BYTES);
    let error = streamed.error.expect("the body fails");
    assert_eq!(
        io_error_kind(&error),
        Some(std::io::ErrorKind::UnexpectedEof),
        "the connection ended before the declared length: {error:?}"
    );

    let warning = proxy
        .wait_for_log(
            "response stream to the agent cut off",
            &[("level", "WARN")],
            Duration::from_secs(5),
        )
        .await;
    assert!(
        warning["error"].as_str().unwrap().contains("mid-stream"),
        "{warning}"
    );
    assert_request_recorded(&proxy, "upstream_unavailable", "200").await;
    let entry = &proxy.log_entries("request")[0];
    assert_eq!(entry["response_bytes"], PARTIAL_BODY_BYTES, "{entry}");
    assert_healthy(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_cut_at_request_timeout() {
    let (upstream, proxy, _dir) = start("request_timeout_seconds = 1").await;
    let target = with_fault(&api("files/fn_report"), Fault::StallBody);

    let streamed = agent::get_streamed(&proxy.url(&target)).await;

    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.received, PARTIAL_BODY_BYTES);
    let error = streamed.error.expect("the body fails");
    assert_eq!(
        io_error_kind(&error),
        Some(std::io::ErrorKind::UnexpectedEof),
        "the connection ended before the declared length: {error:?}"
    );
    assert!(
        streamed.elapsed >= Duration::from_millis(900),
        "cut off at the 1 s request timeout, not before: {:?}",
        streamed.elapsed
    );
    assert!(
        streamed.elapsed < Duration::from_secs(5),
        "cut off near the 1 s request timeout: {:?}",
        streamed.elapsed
    );

    let warning = proxy
        .wait_for_log(
            "response stream to the agent cut off",
            &[("level", "WARN")],
            Duration::from_secs(5),
        )
        .await;
    assert!(
        warning["error"]
            .as_str()
            .unwrap()
            .contains("request timeout"),
        "{warning}"
    );
    assert_request_recorded(&proxy, "upstream_timeout", "200").await;
    wait_for_upstream_idle(&upstream).await;
    assert_healthy(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_headers_get_504() {
    let (upstream, proxy, _dir) = start("response_timeout_seconds = 1").await;
    let target = with_fault(&api("environment"), Fault::StallHeaders);

    let reply = agent::get(&proxy.url(&target)).await;

    assert_proxy_error(&reply, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(upstream.requests(), 1, "a timeout is not retried");
    assert_failure_logged(&proxy, "upstream_timeout").await;
    assert_request_recorded(&proxy, "upstream_timeout", "504").await;
    wait_for_upstream_idle(&upstream).await;
    assert_healthy(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_http_gets_502() {
    let (upstream, proxy, _dir) = start("").await;
    let target = with_fault(&api("environment"), Fault::Invalid);

    let reply = agent::get(&proxy.url(&target)).await;

    assert_proxy_error(&reply, StatusCode::BAD_GATEWAY, "upstream_invalid_response");
    assert_eq!(upstream.requests(), 1, "an invalid response is not retried");
    assert_failure_logged(&proxy, "upstream_invalid_response").await;
    assert_request_recorded(&proxy, "upstream_unavailable", "502").await;
    assert_eq!(proxy.metric(IN_FLIGHT, &[]).await, 0.0);
    assert_healthy(&proxy, &upstream).await;
}
