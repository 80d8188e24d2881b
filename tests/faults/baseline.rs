//! Repeated faults leak nothing: after rounds of every agent fault and of the upstream's
//! resets and invalid responses, the proxy's file descriptors and resident memory return
//! to their baseline, and every request was counted exactly once.
//!
//! The upstream stalls are left out, because the short timeouts they need would also cut
//! off the uploads here on a busy machine. Their own tests check that the proxy closes
//! the stalled upstream connection.

use std::time::Duration;

use http::Method;

use crate::agent;
use crate::assert_healthy;
use crate::process::{
    api, settled_fds_or_skip, wait_for_fds_at_most, write_config, ProxyProcess,
    BUFFERED_BODY_BYTES, IN_FLIGHT, REQUESTS_TOTAL,
};
use crate::upstream::{Fault, Transport, Upstream};

const MIB: usize = 1024 * 1024;
/// Rounds measured after the warm-up round.
const ROUNDS: usize = 3;
/// Idle connections per round, half of them after one request.
const IDLE_CONNECTIONS: usize = 200;
/// Uploads per round, twice what the body budget holds.
const BURST_UPLOADS: usize = 8;
const MAX_BODY: usize = MIB;
const BUDGET: usize = 4 * MIB;
/// Growth of the resident size over the measured rounds that is not a leak: the allocator
/// keeps freed pages of the bodies and buffers for reuse instead of returning them at once.
const RESIDENT_MARGIN_KIB: u64 = 8 * 1024;
/// Descriptors beyond the baseline that are not a leak: the number of idle connections in
/// the upstream pool varies, because a burst's concurrent uploads open up to four and each
/// later fault closes the one it used.
const FD_MARGIN: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_leave_no_leak() {
    let upstream = Upstream::start(Transport::Plain).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = format!("max_buffered_body_bytes = {BUDGET}");
    let body_limit = format!("max_body_bytes = {MAX_BODY}");
    let extra = [("listen", limits.as_str()), ("policy", body_limit.as_str())];
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream.http_url(), &extra));

    // The warm-up round fills the allocator's caches and the upstream pool, so the
    // baseline is the steady state.
    let mut requests = run_round(&proxy, &upstream).await;
    settle(&proxy).await;
    let fds_baseline = settled_fds_or_skip(&proxy).await;
    let resident_baseline = proxy.memory_kib("VmRSS");

    for _ in 0..ROUNDS {
        requests += run_round(&proxy, &upstream).await;
    }
    settle(&proxy).await;

    let counted = proxy.metric(REQUESTS_TOTAL, &[]).await;
    assert_eq!(
        counted, requests as f64,
        "every request finished exactly once"
    );
    let aborted = proxy
        .metric(REQUESTS_TOTAL, &[("outcome", "client_aborted")])
        .await;
    assert_eq!(
        aborted,
        (3 * (ROUNDS + 1)) as f64,
        "three agents left per round"
    );

    if let Some(baseline) = fds_baseline {
        let after = wait_for_fds_at_most(&proxy, baseline, Duration::from_secs(5)).await;
        eprintln!("open descriptors: {baseline} at the baseline, {after} after {ROUNDS} rounds");
        assert!(
            after <= baseline + FD_MARGIN,
            "{after} descriptors open after {ROUNDS} rounds, {baseline} at the baseline"
        );
    }
    let resident = proxy.memory_kib("VmRSS");
    eprintln!(
        "resident: {resident_baseline} KiB at the baseline, {resident} KiB after {ROUNDS} rounds"
    );
    assert!(
        resident <= resident_baseline + RESIDENT_MARGIN_KIB,
        "resident {resident} KiB after {ROUNDS} rounds, {resident_baseline} KiB at the baseline"
    );
}

/// Waits until no request is in flight and no body budget is reserved.
async fn settle(proxy: &ProxyProcess) {
    proxy
        .wait_for_metric(IN_FLIGHT, &[], 0.0, Duration::from_secs(10))
        .await;
    proxy
        .wait_for_metric(BUFFERED_BODY_BYTES, &[], 0.0, Duration::from_secs(10))
        .await;
}

/// Runs every fault once and returns the number of requests the proxy received.
async fn run_round(proxy: &ProxyProcess, upstream: &Upstream) -> usize {
    let mut requests = 0;

    let upload = agent::start_upload(proxy.listen, &api("artifacts"), MAX_BODY, MAX_BODY / 2).await;
    proxy
        .wait_for_metric(
            BUFFERED_BODY_BYTES,
            &[],
            MAX_BODY as f64,
            Duration::from_secs(5),
        )
        .await;
    drop(upload);
    requests += 1;

    for (fault, min_body_bytes) in [
        (Fault::StreamFast, 64 * 1024),
        (Fault::StreamSlow, 8 * 1024),
    ] {
        let path = format!("{}?{}", api("files/fn_large"), fault.query());
        let status = agent::download_then_close(proxy.listen, &path, min_body_bytes).await;
        assert_eq!(status, 200, "{fault:?}");
        requests += 1;
    }

    let mut idle = agent::open_idle_connections(proxy.listen, IDLE_CONNECTIONS / 2, true).await;
    idle.extend(agent::open_idle_connections(proxy.listen, IDLE_CONNECTIONS / 2, false).await);
    requests += IDLE_CONNECTIONS / 2;
    assert_healthy(proxy, upstream).await;
    requests += 1;
    drop(idle);

    let replies =
        agent::upload_burst(proxy, &api("artifacts"), BURST_UPLOADS, MAX_BODY, BUDGET).await;
    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    let accepted = statuses.iter().filter(|status| **status == 201).count();
    assert_eq!(accepted, BUDGET / MAX_BODY, "burst statuses {statuses:?}");
    requests += BURST_UPLOADS;

    let reset = proxy.url(&format!(
        "{}?{}",
        api("artifacts"),
        Fault::ResetBeforeHeaders.query()
    ));
    let reply = agent::send(Method::POST, &reset, "{}").await;
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.body);
    requests += 1;

    let invalid = proxy.url(&format!(
        "{}?{}",
        api("environment"),
        Fault::Invalid.query()
    ));
    let reply = agent::get(&invalid).await;
    assert_eq!(reply.status.as_u16(), 502, "{}", reply.body);
    requests += 1;

    let cut = proxy.url(&format!(
        "{}?{}",
        api("files/fn_report"),
        Fault::ResetAfterHeaders.query()
    ));
    let streamed = agent::get_streamed(&cut).await;
    assert!(streamed.error.is_some(), "the body fails");
    requests += 1;
    requests
}
