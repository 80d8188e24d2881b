//! Request bodies: sizes, the limit, chunked framing and `Expect: 100-continue`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{api, raw_exchange, raw_status, Harness, Setup};

/// Builds a JSON artifact body of exactly `size` bytes.
fn artifact_body(size: usize) -> String {
    let frame = r#"{"title":"big","text":""}"#;
    assert!(size >= frame.len());
    format!(
        r#"{{"title":"big","text":"{}"}}"#,
        "x".repeat(size - frame.len())
    )
}

#[tokio::test]
async fn bodies_forwarded_exactly() {
    let harness = Harness::start().await;

    for size in [1024, 1024 * 1024] {
        let body = artifact_body(size);
        let reply = harness.post(&api("artifacts"), &body).await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{size} bytes: {:?}",
            reply.body
        );

        let received = harness.last_upstream_request();
        assert_eq!(received.body.len(), size);
        assert_eq!(received.body, body.as_bytes());
        assert_eq!(received.headers["content-length"], size.to_string());
        assert_eq!(received.rejection, None);
    }
}

#[tokio::test]
async fn empty_post_sent_with_zero_length() {
    let harness = Harness::start().await;

    let reply = harness
        .send(Method::POST, &api("events"), &[], Bytes::new())
        .await;

    // The stand-in verified the signature, then rejected the empty JSON.
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.proxy_error(), None);
    let received = harness.last_upstream_request();
    assert_eq!(received.rejection, None);
    assert_eq!(received.headers["content-length"], "0");
    assert!(received.body.is_empty());
}

#[tokio::test]
async fn get_without_body_has_no_length() {
    let harness = Harness::start().await;

    harness.get(&api("environment")).await;

    let received = harness.last_upstream_request();
    assert!(received.headers.get("content-length").is_none());
    assert!(received.headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn body_over_limit_gets_413() {
    let harness = Harness::with(Setup {
        max_body_bytes: Some(1024),
        ..Setup::default()
    })
    .await;

    let at_limit = harness.post(&api("artifacts"), &artifact_body(1024)).await;
    assert_eq!(at_limit.status, StatusCode::CREATED);
    let over = harness.post(&api("artifacts"), &artifact_body(1025)).await;

    over.assert_proxy_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    assert_eq!(harness.upstream_requests(), 1);
}

#[tokio::test]
async fn chunked_body_over_limit_gets_413() {
    let harness = Harness::with(Setup {
        max_body_bytes: Some(100),
        ..Setup::default()
    })
    .await;
    let path = api("artifacts");
    let chunk = "x".repeat(60);

    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         3c\r\n{chunk}\r\n3c\r\n{chunk}\r\n0\r\n\r\n"
    );
    let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;

    assert_eq!(raw_status(&response), 413, "{response}");
    assert!(response.contains("body_too_large"));
    assert_eq!(harness.upstream_requests(), 0);
}

#[tokio::test]
async fn chunked_body_forwarded_with_length() {
    let harness = Harness::start().await;
    let path = api("artifacts");
    let body = r#"{"title":"chunked","text":"in three parts"}"#;
    let (first, rest) = body.split_at(10);
    let (second, third) = rest.split_at(15);

    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{second}\r\n{:x}\r\n{third}\r\n0\r\n\r\n",
        first.len(),
        second.len(),
        third.len()
    );
    let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;

    assert_eq!(raw_status(&response), 201, "{response}");
    let received = harness.last_upstream_request();
    assert_eq!(received.body, body.as_bytes());
    assert_eq!(received.headers["content-length"], body.len().to_string());
    assert!(received.headers.get("transfer-encoding").is_none());
    assert_eq!(received.rejection, None);
}

#[tokio::test]
async fn expect_continue_answered_before_body() {
    let harness = Harness::start().await;
    let path = api("artifacts");
    let body = r#"{"title":"expect","text":"after 100"}"#;
    let mut stream = TcpStream::connect(harness.proxy_address).await.unwrap();

    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let interim = read_some(&mut stream).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");

    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();

    assert_eq!(raw_status(&response), 201, "{response}");
    let received = harness.last_upstream_request();
    assert_eq!(received.body, body.as_bytes());
    assert!(received.headers.get("expect").is_none());
}

#[tokio::test]
async fn expect_continue_over_limit_gets_413_without_100() {
    let harness = Harness::with(Setup {
        max_body_bytes: Some(10),
        ..Setup::default()
    })
    .await;
    let path = api("artifacts");
    let mut stream = TcpStream::connect(harness.proxy_address).await.unwrap();

    let head = format!("POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let response = read_some(&mut stream).await;

    assert_eq!(raw_status(&response), 413, "{response}");
    assert!(!response.contains("100 Continue"));
    assert_eq!(harness.upstream_requests(), 0);
}

/// Reads what has arrived within 10 s, at least one byte.
async fn read_some(stream: &mut TcpStream) -> String {
    let mut buffer = vec![0u8; 8192];
    let count = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
        .await
        .expect("the proxy answers within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buffer[..count]).into_owned()
}

#[tokio::test]
async fn chunked_trailers_rejected() {
    let harness = Harness::start().await;
    let path = api("artifacts");
    let body = r#"{"title":"t","text":"x"}"#;

    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\nconnection: close\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\nx-checksum: abc\r\n\r\n",
        body.len()
    );
    let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;

    assert_eq!(raw_status(&response), 400, "{response}");
    assert!(response.contains("trailers_not_supported"), "{response}");
    assert_eq!(harness.upstream_requests(), 0);
}
