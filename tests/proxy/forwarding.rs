//! What reaches the upstream: target, headers and signature.

use bytes::Bytes;
use http::{Method, StatusCode};

use crate::harness::{api, http2_client, send, Harness, Setup, KEY_ID};

#[tokio::test]
async fn query_string_kept_byte_for_byte() {
    let harness = Harness::start().await;
    let queries = [
        "version=3&format=raw",
        "b=2&a=1&b=1",
        "q=%2F%2e%2E%25&empty=&flag",
        "x=a+b&y=%20&z=~!$'()*,;:@/?",
        "",
    ];

    for query in queries {
        let target = format!("{}?{query}", api("files/fn_readme"));
        let reply = harness.get(&target).await;
        assert_eq!(reply.status, StatusCode::OK, "{target}: {:?}", reply.body);

        let received = harness.last_upstream_request();
        assert_eq!(received.path_with_query, target);
        assert_eq!(received.rejection, None, "{target}");
    }
}

#[tokio::test]
async fn upstream_path_prefix_prepended_and_signed() {
    let harness = Harness::with(Setup {
        path_prefix: "/gateway/eu",
        ..Setup::default()
    })
    .await;

    let reply = harness.get(&format!("{}?a=1", api("environment"))).await;

    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let received = harness.last_upstream_request();
    assert_eq!(
        received.path_with_query,
        format!("/gateway/eu{}?a=1", api("environment"))
    );
    assert_eq!(received.rejection, None);
}

#[tokio::test]
async fn agent_signing_headers_replaced_in_any_case() {
    let harness = Harness::start().await;
    let forged = [
        ("X-Integration-Signature", "0000"),
        ("x-INTEGRATION-key-id", "key_other"),
        ("X-INTEGRATION-NONCE", "00000000000000000000000000000000"),
        ("x-integration-timestamp", "1"),
        ("X-Integration-Extra", "smuggled"),
    ];

    let reply = harness
        .send(Method::GET, &api("environment"), &forged, Bytes::new())
        .await;

    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let received = harness.last_upstream_request();
    assert_eq!(received.rejection, None);
    assert_eq!(received.headers["x-integration-key-id"], KEY_ID);
    assert_eq!(
        received
            .headers
            .get_all("x-integration-signature")
            .iter()
            .count(),
        1
    );
    assert_ne!(
        received.headers["x-integration-nonce"],
        "00000000000000000000000000000000"
    );
    assert!(received.headers.get("x-integration-extra").is_none());
}

#[tokio::test]
async fn repeated_and_encoding_headers_pass_untouched() {
    let harness = Harness::start().await;
    let headers = [
        ("x-trace", "first"),
        ("x-trace", "second"),
        ("x-trace", "third"),
        ("accept-encoding", "gzip, br"),
        ("content-encoding", "identity"),
        ("range", "bytes=0-99"),
        ("user-agent", "agent/1.0"),
    ];

    let reply = harness
        .send(
            Method::POST,
            &api("artifacts"),
            &headers,
            r#"{"title":"T","text":"x"}"#,
        )
        .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let received = harness.last_upstream_request();
    let traces: Vec<_> = received
        .headers
        .get_all("x-trace")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(traces, ["first", "second", "third"]);
    assert_eq!(received.headers["accept-encoding"], "gzip, br");
    assert_eq!(received.headers["content-encoding"], "identity");
    assert_eq!(received.headers["range"], "bytes=0-99");
    assert_eq!(received.headers["user-agent"], "agent/1.0");
}

#[tokio::test]
async fn host_is_upstream_and_hop_by_hop_removed() {
    let harness = Harness::start().await;
    let headers = [
        ("host", "spoofed.example"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("te", "trailers"),
    ];

    let reply = harness
        .send(Method::GET, &api("environment"), &headers, Bytes::new())
        .await;

    assert_eq!(reply.status, StatusCode::OK);
    let received = harness.last_upstream_request();
    // The stand-in listens on a non-default port, so Host carries it.
    assert_eq!(
        received.headers["host"],
        harness.upstream_address.to_string()
    );
    for name in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert!(received.headers.get(name).is_none(), "{name} was forwarded");
    }
}

#[tokio::test]
async fn response_hop_by_hop_removed_and_status_kept() {
    let harness = Harness::start().await;

    let reply = harness.get(&api("files/fn_missing")).await;

    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(
        reply.proxy_error(),
        None,
        "an upstream error is not marked as the proxy's"
    );
    assert_eq!(reply.json()["error"]["code"], "file_not_found");
}

#[tokio::test]
async fn http2_prior_knowledge_from_agent() {
    let harness = Harness::start().await;
    let client = http2_client();

    let reply = send(
        &client,
        Method::POST,
        &harness.url(&api("artifacts")),
        &[],
        Bytes::from_static(br#"{"title":"h2","text":"x"}"#),
    )
    .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let received = harness.last_upstream_request();
    assert_eq!(received.rejection, None);
    assert_eq!(received.path_with_query, api("artifacts"));
    assert_eq!(received.headers["content-length"], "25");
}

#[tokio::test]
async fn extra_route_forwarded_with_its_scope() {
    let harness = Harness::with(Setup {
        scopes: vec!["env:read", "runs:read"],
        policy_toml: "[[policy.extra_routes]]\nmethod = \"GET\"\npath = \"/agent-api/v1/workspaces/{ws}/runs/{run}\"\nscope = \"runs:read\"\n".into(),
        ..Setup::default()
    })
    .await;

    let reply = harness.get(&api("runs/run_1")).await;

    // The stand-in does not know the endpoint, but it verified the signature first.
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.proxy_error(), None);
    assert_eq!(harness.last_upstream_request().rejection, None);
}

#[tokio::test]
async fn concurrent_requests_use_distinct_nonces() {
    let harness = std::sync::Arc::new(Harness::start().await);
    let mut tasks = tokio::task::JoinSet::new();

    for index in 0..200 {
        let harness = harness.clone();
        tasks.spawn(async move {
            if index % 2 == 0 {
                harness.get(&api("environment")).await.status
            } else {
                let body = format!(r#"{{"title":"t{index}","text":"x"}}"#);
                harness.post(&api("artifacts"), &body).await.status
            }
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert!(status.unwrap().is_success());
    }

    let recorded = harness.stand_in.recorded();
    assert_eq!(recorded.len(), 200);
    let nonces: std::collections::HashSet<_> = recorded
        .iter()
        .map(|r| r.headers["x-integration-nonce"].clone())
        .collect();
    assert_eq!(nonces.len(), 200);
    assert!(recorded.iter().all(|r| r.rejection.is_none()));
    assert_eq!(
        harness.stand_in.with_store(|store| store.artifacts().len()),
        100
    );
}

#[tokio::test]
async fn unix_socket_listener_serves_agents() {
    use hyper_util::rt::TokioIo;

    let harness = Harness::start().await;
    let socket = harness.dir.path().join("proxy.sock");
    let config = std::fs::read_to_string(harness.dir.path().join("proxy.toml"))
        .unwrap()
        .replace(
            "address = \"127.0.0.1:0\"",
            &format!("unix_socket = {socket:?}"),
        );
    let config_path = harness.dir.path().join("unix.toml");
    std::fs::write(&config_path, config).unwrap();
    let settings = agent_access_proxy::config::load(Some(&config_path)).unwrap();
    let proxy = agent_access_proxy::proxy::Proxy::new(&settings).unwrap();
    let listener = agent_access_proxy::server::Listener::bind(&settings.listen)
        .await
        .unwrap();
    tokio::spawn(agent_access_proxy::server::serve(
        listener,
        proxy,
        Default::default(),
        std::future::pending(),
    ));

    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(api("environment"))
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(harness.last_upstream_request().rejection, None);
}

#[tokio::test]
async fn unix_socket_path_never_replaces_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "precious data").unwrap();
    let address = agent_access_proxy::config::ListenAddress::Unix(path.clone());

    let error = agent_access_proxy::server::Listener::bind(&address)
        .await
        .err()
        .expect("binding fails");

    assert!(error.to_string().contains("not a socket"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious data");
}
