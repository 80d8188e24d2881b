//! Overload, the body budget, slow agents and retries.

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{get, post};
use crate::process::{api, parse_prometheus, sum, wait_for, write_config, ProxyProcess};
use crate::upstream::{self, Behaviour};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_answers_503_at_once() {
    let (url, seen) = upstream::start(Behaviour {
        delay: Duration::from_secs(2),
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(
        dir.path(),
        &url,
        &[("listen", "max_requests_in_flight = 2")],
    ));
    let target = proxy.url(&api("environment"));

    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get_owned(target.clone())))
        .collect();
    let busy = wait_for(Duration::from_secs(10), || {
        (seen.verified.load(Ordering::SeqCst) == 2).then_some(())
    });
    assert!(busy.is_some(), "two slow requests are in flight");
    let started = std::time::Instant::now();
    let rejected = get(&target).await;

    assert_eq!(rejected.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(rejected.headers["x-agent-access-proxy-error"], "overloaded");
    assert_eq!(rejected.headers["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered without waiting for a slot"
    );
    for request in slow {
        assert_eq!(request.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        seen.nonces.lock().unwrap().len(),
        2,
        "the rejected request was not forwarded"
    );

    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    assert_eq!(
        sum(
            &parse_prometheus(&text),
            "agent_access_proxy_requests_total",
            &[("outcome", "overloaded"), ("status", "503")]
        ),
        1.0
    );
}

async fn get_owned(url: String) -> crate::client::Reply {
    get(&url).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_budget_answers_503_and_forwards_nothing() {
    let (url, seen) = upstream::start(Behaviour {
        delay: Duration::ZERO,
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        ("listen", "max_buffered_body_bytes = 100000"),
        ("policy", "max_body_bytes = 100000"),
    ];
    let proxy = ProxyProcess::start(&write_config(dir.path(), &url, &limits));
    let path = api("artifacts");

    // An upload of 80 kB that stalls after its headers holds 80 kB of the budget.
    let mut stalled = TcpStream::connect(proxy.listen).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/json\r\ncontent-length: 80000\r\n\r\n");
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&[b' '; 1000]).await.unwrap();
    let held = wait_for(Duration::from_secs(10), || {
        let text = futures_free_get(&format!("http://{}/metrics", proxy.admin));
        (sum(
            &parse_prometheus(&text),
            "agent_access_proxy_buffered_body_bytes",
            &[],
        ) >= 80000.0)
            .then_some(())
    });
    assert!(
        held.is_some(),
        "the stalled upload holds its share of the budget"
    );

    let second = post(
        &proxy.url(&path),
        &format!(r#"{{"title":"b","text":"{}"}}"#, "x".repeat(40000)),
    )
    .await;
    assert_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.body
    );
    assert_eq!(
        second.headers["x-agent-access-proxy-error"],
        "body_budget_exhausted"
    );
    let small = post(&proxy.url(&path), r#"{"title":"s","text":"x"}"#).await;
    assert_eq!(
        small.status,
        StatusCode::OK,
        "a small body still fits: {}",
        small.body
    );
    assert_eq!(
        seen.nonces.lock().unwrap().len(),
        1,
        "only the small request was forwarded"
    );
    drop(stalled);
}

/// Fetches a URL from a synchronous context with a blocking socket.
fn futures_free_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_agent_headers_time_out() {
    let (url, _seen) = upstream::start(Behaviour {
        delay: Duration::ZERO,
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(
        dir.path(),
        &url,
        &[("listen", "header_read_timeout_seconds = 0.5")],
    ));

    let mut slow = TcpStream::connect(proxy.listen).await.unwrap();
    slow.write_all(b"GET /agent-api/v1/workspaces/ws_ops/environment HTTP/1.1\r\nhost: pro")
        .await
        .unwrap();
    let mut response = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut response)).await;

    assert!(closed.is_ok(), "the proxy closed the slow connection");
    let response = String::from_utf8_lossy(&response);
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
    assert_eq!(
        get(&proxy.url(&api("environment"))).await.status,
        StatusCode::OK,
        "others are still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_retried_once_with_fresh_nonce() {
    let (url, seen) = upstream::start(Behaviour {
        delay: Duration::ZERO,
        drop_first: 1,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &url, &[]));

    let reply = get(&proxy.url(&api("environment"))).await;

    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let nonces = seen.nonces.lock().unwrap().clone();
    assert_eq!(nonces.len(), 2);
    assert_ne!(nonces[0], nonces[1], "the retry was signed again");
    assert_eq!(seen.verified.load(Ordering::SeqCst), 1);
    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    assert_eq!(
        sum(
            &parse_prometheus(&text),
            "agent_access_proxy_upstream_retries_total",
            &[]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_never_retried() {
    let (url, seen) = upstream::start(Behaviour {
        delay: Duration::ZERO,
        drop_first: 1,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &url, &[]));

    let reply = post(
        &proxy.url(&api("artifacts")),
        r#"{"title":"once","text":"x"}"#,
    )
    .await;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.headers["x-agent-access-proxy-error"],
        "upstream_connection_lost"
    );
    assert_eq!(seen.nonces.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upload_times_out_with_408() {
    let (url, seen) = upstream::start(Behaviour {
        delay: Duration::ZERO,
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(
        dir.path(),
        &url,
        &[("listen", "body_read_timeout_seconds = 0.5")],
    ));
    let path = api("artifacts");

    let mut slow = TcpStream::connect(proxy.listen).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-length: 100\r\n\r\n{{\"title\":");
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut response = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut response)).await;

    let count = read.expect("the proxy responds within 10 s").unwrap();
    let response = String::from_utf8_lossy(&response[..count]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("body_read_timeout"), "{response}");
    assert!(
        seen.nonces.lock().unwrap().is_empty(),
        "nothing was forwarded"
    );
}
