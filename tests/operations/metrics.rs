//! `/metrics`, `/healthz` and `/readyz` on the admin listener.

use http::StatusCode;

use crate::client::{get, post};
use crate::process::{api, parse_prometheus, start_stand_in, sum, write_config, ProxyProcess};
use crate::{assert_nothing_leaked, received_signatures};

const REQUESTS: &str = "agent_access_proxy_requests_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic() {
    let (stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[]));

    for _ in 0..3 {
        assert_eq!(
            get(&proxy.url(&api("environment"))).await.status,
            StatusCode::OK
        );
    }
    let created = post(&proxy.url(&api("artifacts")), r#"{"title":"m","text":"x"}"#).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let denied = post(
        &proxy.url(&api("files/fn_memory/proposals")),
        r#"{"content":"x"}"#,
    )
    .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let unknown = get(&proxy.url(&api("secrets"))).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN);
    let other = get(&proxy.url("/agent-api/v1/workspaces/ws_other/environment")).await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);

    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    let samples = parse_prometheus(&text);
    let environment = "/agent-api/v1/workspaces/{ws}/environment";
    let proposals = "/agent-api/v1/workspaces/{ws}/files/{node}/proposals";

    let forwarded = [
        ("route", environment),
        ("scope", "env:read"),
        ("method", "GET"),
        ("outcome", "forwarded"),
        ("status", "200"),
    ];
    assert_eq!(sum(&samples, REQUESTS, &forwarded), 3.0);
    let created = [
        ("route", "/agent-api/v1/workspaces/{ws}/artifacts"),
        ("outcome", "forwarded"),
        ("status", "201"),
    ];
    assert_eq!(sum(&samples, REQUESTS, &created), 1.0);
    let denied_scope = [
        ("route", proposals),
        ("scope", "files:propose"),
        ("outcome", "denied_scope"),
        ("status", "403"),
    ];
    assert_eq!(sum(&samples, REQUESTS, &denied_scope), 1.0);
    assert_eq!(
        sum(
            &samples,
            REQUESTS,
            &[("route", "none"), ("outcome", "denied_route")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            REQUESTS,
            &[("route", environment), ("outcome", "denied_workspace")]
        ),
        1.0
    );

    let durations = [("route", environment), ("outcome", "forwarded")];
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_request_duration_seconds_count",
            &durations
        ),
        3.0
    );
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_upstream_duration_seconds_count",
            &[("route", environment)]
        ),
        3.0
    );
    assert!(
        sum(
            &samples,
            "agent_access_proxy_response_bytes_total",
            &[("route", environment)]
        ) > 0.0
    );
    assert_eq!(
        sum(&samples, "agent_access_proxy_requests_in_flight", &[]),
        0.0
    );
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_key_info",
            &[("key_id", crate::process::KEY_ID)]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(samples
        .iter()
        .any(|sample| sample.name == "agent_access_proxy_upstream_clock_skew_seconds"));

    let labels: Vec<&str> = samples
        .iter()
        .flat_map(|s| s.labels.iter().map(|(_, value)| value.as_str()))
        .collect();
    assert!(
        !labels
            .iter()
            .any(|value| value.contains("ws_ops") || value.contains("ws_other")),
        "raw ids in labels"
    );
    assert_nothing_leaked(&proxy, &received_signatures(&stand_in), &[&text]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripped_headers_and_upstream_401_counted() {
    let (stand_in, upstream) = start_stand_in().await;
    stand_in.remove_key(crate::process::KEY_ID);
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[]));

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::get(proxy.url(&api("environment")))
        .header("X-Integration-Signature", "forged")
        .header("x-integration-nonce", "forged")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    let samples = parse_prometheus(&text);
    assert_eq!(
        sum(&samples, "agent_access_proxy_stripped_headers_total", &[]),
        2.0
    );
    assert_eq!(
        sum(
            &samples,
            REQUESTS,
            &[("outcome", "forwarded"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_upstream_unauthorized_total",
            &[]
        ),
        1.0
    );
    let warning = proxy.wait_for_log(
        "rejected a signed request with 401",
        std::time::Duration::from_secs(5),
    );
    assert_eq!(warning["level"], "WARN");
    assert_nothing_leaked(&proxy, &received_signatures(&stand_in), &[&text]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_serves_health_and_nothing_else() {
    let (stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[]));
    let admin = format!("http://{}", proxy.admin);

    assert_eq!(
        get(&format!("{admin}/healthz")).await.status,
        StatusCode::OK
    );
    assert_eq!(get(&format!("{admin}/readyz")).await.status, StatusCode::OK);
    assert_eq!(
        get(&format!("{admin}{}", api("environment"))).await.status,
        StatusCode::NOT_FOUND
    );
    let quit = post(&format!("{admin}/quitquitquit"), "").await;
    assert_eq!(
        quit.status,
        StatusCode::NOT_FOUND,
        "quit is off unless allow_quit is set"
    );

    for path in ["/metrics", "/healthz", "/readyz", "/quitquitquit"] {
        let reply = get(&proxy.url(path)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path} on the agent listener"
        );
        assert_eq!(reply.headers["x-agent-access-proxy-error"], "unknown_route");
    }
    assert_eq!(stand_in.received_total(), 0);
    assert_nothing_leaked(&proxy, &[], &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_absent_from_trace_logs_metrics_and_errors() {
    let (stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, &[("policy", "max_body_bytes = 64")]);
    let proxy = ProxyProcess::start_with_env(&config, &[("RUST_LOG", "trace")]);
    let mut bodies = Vec::new();

    let requests = [
        (http::Method::GET, api("environment"), String::new()),
        (
            http::Method::POST,
            api("artifacts"),
            r#"{"title":"t","text":"x"}"#.to_owned(),
        ),
        (http::Method::POST, api("artifacts"), "x".repeat(100)),
        (
            http::Method::POST,
            api("files/fn_memory/proposals"),
            r#"{"content":"x"}"#.to_owned(),
        ),
        (
            http::Method::GET,
            "/agent-api/v1/workspaces/ws_other/environment".to_owned(),
            String::new(),
        ),
        (
            http::Method::GET,
            format!("{}/../x", api("files")),
            String::new(),
        ),
        (http::Method::DELETE, api("files/fn_readme"), String::new()),
    ];
    for (method, path, body) in requests {
        let reply = crate::client::send(method, &proxy.url(&path), &body).await;
        bodies.push(format!("{:?} {}", reply.headers, reply.body));
    }
    stand_in.remove_key(crate::process::KEY_ID);
    let rejected = get(&proxy.url(&api("prompts"))).await;
    assert_eq!(rejected.status, StatusCode::UNAUTHORIZED);
    bodies.push(format!("{:?} {}", rejected.headers, rejected.body));

    let metrics = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    let signatures = received_signatures(&stand_in);
    assert_eq!(
        signatures.len(),
        3,
        "three requests were signed and forwarded"
    );
    let mut outputs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    outputs.push(&metrics);
    assert!(
        proxy.logs().len() > 20,
        "trace logging produced output to scan"
    );
    assert_nothing_leaked(&proxy, &signatures, &outputs);
}
