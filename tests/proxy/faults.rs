//! Upstream failures: each gets its own error code and a 502 or 504.

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{api, Harness, Setup};

/// Starts an upstream that runs `behave` on every connection it accepts.
async fn fake_upstream<F, Fut>(behave: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(behave(stream));
        }
    });
    address
}

async fn harness_for(upstream: SocketAddr, response_timeout_seconds: f64) -> Harness {
    Harness::with(Setup {
        upstream_url: Some(format!("http://{upstream}")),
        response_timeout_seconds,
        ..Setup::default()
    })
    .await
}

/// Reads the request head, so the upstream fails after the request arrived.
async fn read_request(stream: &mut tokio::net::TcpStream) {
    let mut buffer = [0u8; 4096];
    let _ = stream.read(&mut buffer).await;
}

#[tokio::test]
async fn refused_connection_gets_502() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let harness = harness_for(closed, 5.0).await;

    let reply = harness.get(&api("environment")).await;

    reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_unavailable");
}

#[tokio::test]
async fn closed_before_response_gets_502() {
    let upstream = fake_upstream(|mut stream| async move {
        read_request(&mut stream).await;
        drop(stream);
    })
    .await;
    let harness = harness_for(upstream, 5.0).await;

    let reply = harness.get(&api("environment")).await;

    reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_connection_lost");
}

#[tokio::test]
async fn invalid_http_response_gets_502() {
    let upstream = fake_upstream(|mut stream| async move {
        read_request(&mut stream).await;
        let _ = stream.write_all(b"this is not HTTP\r\n\r\n").await;
    })
    .await;
    let harness = harness_for(upstream, 5.0).await;

    let reply = harness.get(&api("environment")).await;

    reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_invalid_response");
}

#[tokio::test]
async fn missing_response_headers_get_504() {
    let upstream = fake_upstream(|mut stream| async move {
        read_request(&mut stream).await;
        // Hold the connection open without answering until the proxy gives up.
        let _ = stream.read(&mut [0u8; 1]).await;
    })
    .await;
    let harness = harness_for(upstream, 0.3).await;

    let reply = harness.get(&api("environment")).await;

    reply.assert_proxy_error(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
}

#[tokio::test]
async fn proxy_serves_again_after_upstream_failure() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let harness = harness_for(closed, 5.0).await;

    for _ in 0..3 {
        let reply = harness.get(&api("environment")).await;
        reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_unavailable");
    }
    let denied = harness
        .get("/agent-api/v1/workspaces/ws_other/environment")
        .await;
    denied.assert_proxy_error(StatusCode::FORBIDDEN, "workspace_not_allowed");
}

#[tokio::test]
async fn upstream_cannot_fake_proxy_error_header() {
    let upstream = fake_upstream(|mut stream| async move {
        read_request(&mut stream).await;
        let response = "HTTP/1.1 403 Forbidden\r\nx-agent-access-proxy-error: scope_not_allowed\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";
        let _ = stream.write_all(response.as_bytes()).await;
    })
    .await;
    let harness = harness_for(upstream, 5.0).await;

    let reply = harness.get(&api("environment")).await;

    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.proxy_error(), None);
}
