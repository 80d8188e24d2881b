//! The allowlist, over real sockets: every route allowed and denied.

use http::{Method, StatusCode};

use crate::harness::{api, raw_exchange, raw_status, Harness, Setup, WORKSPACE};

/// Each built-in route with a request that the stand-in accepts.
fn route_requests() -> Vec<(Method, String, &'static str, &'static str)> {
    vec![
        (Method::GET, api("environment"), "", "env:read"),
        (Method::GET, api("prompts"), "", "env:read"),
        (Method::GET, api("file-tree"), "", "env:read"),
        (Method::GET, api("files/fn_readme"), "", "env:read"),
        (
            Method::POST,
            api("artifacts"),
            r#"{"title":"T","text":"x"}"#,
            "artifacts:write",
        ),
        (
            Method::POST,
            api("files/fn_memory/proposals"),
            r#"{"content":"new"}"#,
            "files:propose",
        ),
        (
            Method::POST,
            api("events"),
            r#"{"idempotencyKey":"run-1:done","eventType":"agent.run.completed","occurredAt":"2026-01-01T00:00:00Z"}"#,
            "events:write",
        ),
    ]
}

#[tokio::test]
async fn every_route_allowed_and_verified() {
    let harness = Harness::start().await;

    for (method, path, body, _) in route_requests() {
        let reply = harness
            .send(method.clone(), &path, &[], body.to_owned())
            .await;
        assert!(
            reply.status.is_success(),
            "{method} {path}: {} {:?}",
            reply.status,
            reply.body
        );
        assert_eq!(reply.proxy_error(), None);

        let received = harness.last_upstream_request();
        assert_eq!(received.method, method);
        assert_eq!(received.path_with_query, path);
        assert_eq!(received.rejection, None, "{method} {path}");
    }
    assert_eq!(harness.stand_in.rejected_total(), 0);
}

#[tokio::test]
async fn each_route_denied_without_its_scope() {
    for (method, path, body, scope) in route_requests() {
        let scopes = crate::harness::ALL_SCOPES
            .iter()
            .copied()
            .filter(|s| *s != scope)
            .collect();
        let harness = Harness::with(Setup {
            scopes,
            ..Setup::default()
        })
        .await;

        let reply = harness
            .send(method.clone(), &path, &[], body.to_owned())
            .await;

        reply.assert_proxy_error(StatusCode::FORBIDDEN, "scope_not_allowed");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(&format!("'{scope}'")), "{message}");
        assert!(
            message.contains(&format!("{method} /agent-api/v1/workspaces/{{ws}}/")),
            "{message}"
        );
        assert_eq!(harness.upstream_requests(), 0, "{method} {path}");
    }
}

#[tokio::test]
async fn head_allowed_where_get_is() {
    let harness = Harness::start().await;

    let reply = harness
        .send(Method::HEAD, &api("environment"), &[], "")
        .await;

    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
    let received = harness.last_upstream_request();
    assert_eq!(received.method, Method::HEAD);
    assert_eq!(received.rejection, None);
}

#[tokio::test]
async fn other_workspace_denied() {
    let harness = Harness::start().await;

    let reply = harness
        .get("/agent-api/v1/workspaces/ws_other/environment")
        .await;

    reply.assert_proxy_error(StatusCode::FORBIDDEN, "workspace_not_allowed");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("ws_other"));
    assert_eq!(harness.upstream_requests(), 0);
}

#[tokio::test]
async fn unknown_routes_denied() {
    let harness = Harness::start().await;
    let cases = [
        (Method::GET, api("secrets")),
        (Method::DELETE, api("files/fn_readme")),
        (Method::POST, api("environment")),
        (Method::HEAD, api("events")),
        (Method::GET, "/".to_owned()),
        (
            Method::GET,
            "/agent-api/v2/workspaces/ws_test/environment".to_owned(),
        ),
        (Method::from_bytes(b"get").unwrap(), api("environment")),
    ];

    for (method, path) in cases {
        let reply = harness.send(method.clone(), &path, &[], "").await;
        if method == Method::HEAD {
            // A HEAD response has no body; the status and header still tell the reason.
            assert_eq!(reply.status, StatusCode::FORBIDDEN);
            assert_eq!(reply.proxy_error(), Some("unknown_route"));
        } else if path == "/" {
            reply.assert_proxy_error(StatusCode::BAD_REQUEST, "invalid_target");
        } else {
            reply.assert_proxy_error(StatusCode::FORBIDDEN, "unknown_route");
        }
    }
    assert_eq!(harness.upstream_requests(), 0);
}

#[tokio::test]
async fn invalid_targets_rejected() {
    let harness = Harness::start().await;
    let targets = [
        format!("/agent-api/v1/workspaces/{WORKSPACE}/../ws_other/environment"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/./environment"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}//environment"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/environment/"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/files/a%2fb"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/files/a%5Cb"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/files/%2e%2e"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/files/%252e%252e"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/files/a\\b"),
        format!("/agent-api/v1/workspaces/{WORKSPACE}/files/%00"),
    ];

    for target in targets {
        let request = format!("GET {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n");
        let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;
        assert_eq!(raw_status(&response), 400, "{target}: {response}");
        assert!(response.contains("invalid_target"), "{target}: {response}");
    }
    assert_eq!(harness.upstream_requests(), 0);
}

#[tokio::test]
async fn connect_rejected_with_405() {
    let harness = Harness::start().await;
    let upstream = harness.upstream_address;

    let request =
        format!("CONNECT {upstream} HTTP/1.1\r\nhost: {upstream}\r\nconnection: close\r\n\r\n");
    let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;

    assert_eq!(raw_status(&response), 405, "{response}");
    assert!(response.contains("connect_not_supported"));
    assert!(response.contains("base URL"));
    assert_eq!(harness.upstream_requests(), 0);
}

#[tokio::test]
async fn absolute_form_targets_never_forwarded() {
    let harness = Harness::start().await;
    let path = api("environment");
    let hosts = [
        "evil.example".to_owned(),
        harness.upstream_address.to_string(),
        harness.proxy_address.to_string(),
    ];

    for host in hosts {
        let request = format!(
            "GET http://{host}{path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
        );
        let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;
        assert_eq!(raw_status(&response), 400, "{host}: {response}");
        assert!(response.contains("absolute_form_not_supported"));
    }
    assert_eq!(harness.upstream_requests(), 0);
}

#[tokio::test]
async fn websocket_upgrade_refused() {
    let harness = Harness::start().await;
    let path = api("environment");

    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: proxy\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let response = raw_exchange_until_body(harness.proxy_address, request.as_bytes()).await;

    assert_eq!(raw_status(&response), 400, "{response}");
    assert!(response.contains("upgrade_not_supported"));
    assert_eq!(harness.upstream_requests(), 0);
}

/// Like `raw_exchange`, for a connection that stays open: reads until a JSON body ends.
async fn raw_exchange_until_body(address: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();

    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !response.ends_with(b"}}") {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await;
        match read {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(count)) => response.extend_from_slice(&buffer[..count]),
            Ok(Err(error)) => panic!("read failed: {error}"),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn host_and_transfer_coding_checked() {
    let harness = Harness::start().await;
    let path = api("environment");
    let cases = [
        (format!("GET {path} HTTP/1.1\r\nconnection: close\r\n\r\n"), 400, "invalid_host_header"),
        (format!("GET {path} HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n"), 400, "invalid_host_header"),
        (
            format!("POST {} HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n", api("artifacts")),
            501,
            "transfer_coding_not_supported",
        ),
    ];

    for (request, status, code) in cases {
        let response = raw_exchange(harness.proxy_address, request.as_bytes()).await;
        assert_eq!(raw_status(&response), status, "{request:?}: {response}");
        assert!(response.contains(code), "{request:?}: {response}");
    }
    let http10 = format!("GET {path} HTTP/1.0\r\n\r\n");
    let response = raw_exchange(harness.proxy_address, http10.as_bytes()).await;
    assert_eq!(
        raw_status(&response),
        200,
        "HTTP/1.0 may omit Host: {response}"
    );
    assert_eq!(harness.upstream_requests(), 1);
}
