//! TLS faults of an `https` upstream: each is `upstream_tls_failed`, and the proxy serves
//! again once the upstream presents a good certificate.

use std::path::Path;
use std::sync::atomic::Ordering;

use http::StatusCode;

use crate::agent;
use crate::certs::Authority;
use crate::process::{api, write_config, ProxyProcess};
use crate::upstream::{Transport, Upstream};
use crate::{assert_failure_logged, assert_healthy, assert_request_recorded};

/// The host name in the upstream URL, and on every good certificate.
const HOST: &str = "localhost";

fn start_proxy(dir: &Path, upstream: &Upstream, upstream_lines: &str) -> ProxyProcess {
    let config = write_config(dir, &upstream.https_url(), &[("upstream", upstream_lines)]);
    ProxyProcess::start(&config)
}

/// Checks that a request through `proxy` fails with `upstream_tls_failed`, that the
/// message names the failure with `detail`, and that the proxy serves again once the
/// upstream switches to `fixed`.
async fn assert_tls_failure(
    proxy: &ProxyProcess,
    upstream: &Upstream,
    detail: &str,
    fixed: Transport,
) {
    let reply = agent::get(&proxy.url(&api("environment"))).await;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.body);
    assert_eq!(
        reply.headers["x-agent-access-proxy-error"],
        "upstream_tls_failed"
    );
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(detail),
        "expected {detail:?} in {message:?}"
    );
    assert_eq!(upstream.requests(), 0, "no HTTP request got through");
    assert_failure_logged(proxy, "upstream_tls_failed").await;
    assert_request_recorded(proxy, "upstream_unavailable", "502").await;

    upstream.set_transport(fixed);
    assert_healthy(proxy, upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ca_fails_tls() {
    let trusted = Authority::new("faults trusted CA");
    let unknown = Authority::new("faults unknown CA");
    let upstream = Upstream::start(Transport::Tls(unknown.server_config(HOST, false))).await;
    let dir = tempfile::tempdir().unwrap();
    // Without upstream.ca_file the proxy trusts only the platform roots. SSL_CERT_FILE
    // makes those the trusted test CA, so a fixed upstream can succeed and no host
    // certificate takes part.
    let roots = trusted.write_pem(dir.path(), "roots.pem");
    let config = write_config(dir.path(), &upstream.https_url(), &[]);
    let proxy =
        ProxyProcess::start_with_env(&config, &[("SSL_CERT_FILE", roots.to_str().unwrap())]);

    let fixed = Transport::Tls(trusted.server_config(HOST, false));
    assert_tls_failure(&proxy, &upstream, "UnknownIssuer", fixed).await;
    assert!(upstream.seen.handshakes_failed.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_fails_tls() {
    let authority = Authority::new("faults CA");
    let upstream = Upstream::start(Transport::Tls(
        authority.server_config("other.example", false),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = authority.write_pem(dir.path(), "ca.pem");
    let proxy = start_proxy(dir.path(), &upstream, &format!("ca_file = {ca_file:?}"));

    let fixed = Transport::Tls(authority.server_config(HOST, false));
    assert_tls_failure(&proxy, &upstream, "not valid for name", fixed).await;
    assert!(upstream.seen.handshakes_failed.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_fails_tls() {
    let authority = Authority::new("faults CA");
    let upstream = Upstream::start(Transport::Tls(authority.server_config(HOST, true))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = authority.write_pem(dir.path(), "ca.pem");
    let proxy = start_proxy(dir.path(), &upstream, &format!("ca_file = {ca_file:?}"));

    let fixed = Transport::Tls(authority.server_config(HOST, false));
    assert_tls_failure(&proxy, &upstream, "certificate expired", fixed).await;
    assert!(upstream.seen.handshakes_failed.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_https_fails_tls() {
    let authority = Authority::new("faults CA");
    let upstream = Upstream::start(Transport::Plain).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = authority.write_pem(dir.path(), "ca.pem");
    let proxy = start_proxy(dir.path(), &upstream, &format!("ca_file = {ca_file:?}"));

    let fixed = Transport::Tls(authority.server_config(HOST, false));
    assert_tls_failure(&proxy, &upstream, "corrupt message", fixed).await;
    assert!(
        upstream.seen.not_http.load(Ordering::SeqCst) >= 1,
        "the plain HTTP server got a ClientHello"
    );
}
