//! Graceful shutdown: SIGTERM drains in-flight requests, `/readyz` fails meanwhile, and a
//! second signal exits at once.

use std::time::Duration;

use http::StatusCode;

use crate::client::{get, post};
use crate::process::{api, wait_for, write_config, ProxyProcess};
use crate::upstream::{self, Behaviour};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_slow_request_finish() {
    let (url, seen) = upstream::start(Behaviour {
        delay: Duration::from_millis(1500),
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = ProxyProcess::start(&write_config(dir.path(), &url, &[]));
    let target = proxy.url(&api("environment"));
    let admin = format!("http://{}/readyz", proxy.admin);

    let slow = tokio::spawn(async move { get(&target).await });
    let arrived = wait_for(Duration::from_secs(10), || {
        (seen.verified.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    });
    assert!(arrived.is_some(), "the slow request reached the upstream");
    proxy.signal("TERM");

    let readiness = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if get(&admin).await.status == StatusCode::SERVICE_UNAVAILABLE {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(readiness.is_ok(), "/readyz fails while draining");

    let reply = slow.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request completed: {}",
        reply.body
    );
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    proxy.wait_for_log("all agent connections closed", Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let (url, _seen) = upstream::start(Behaviour {
        delay: Duration::from_secs(30),
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &url,
        &[("listen", "drain_timeout_seconds = 60")],
    );
    let mut proxy = ProxyProcess::start(&config);
    let target = proxy.url(&api("environment"));

    let _stuck = tokio::spawn(async move { get(&target).await });
    proxy.wait_for_log("agent-access-proxy started", Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM");
    proxy.wait_for_log("shutdown signal received", Duration::from_secs(5));
    proxy.signal("INT");

    let status = proxy.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_drains_and_exits() {
    let (url, _seen) = upstream::start(Behaviour {
        delay: Duration::ZERO,
        drop_first: 0,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = ProxyProcess::start(&write_config(
        dir.path(),
        &url,
        &[("admin", "allow_quit = true")],
    ));

    assert_eq!(
        get(&proxy.url(&api("environment"))).await.status,
        StatusCode::OK
    );
    let reply = post(&format!("http://{}/quitquitquit", proxy.admin), "").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
