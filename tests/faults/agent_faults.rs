//! Agent faults: leaving mid-upload or mid-download, holding many idle connections, and
//! uploading more at once than the body budget holds.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::process::{getrlimit, setrlimit, Resource};
use tokio::io::AsyncReadExt;

use crate::agent;
use crate::assert_healthy;
use crate::process::{
    api, settled_fds_or_skip, wait_for_fds_at_most, write_config, ProxyProcess,
    BUFFERED_BODY_BYTES, IN_FLIGHT, REQUESTS_TOTAL,
};
use crate::upstream::{Fault, Transport, Upstream};

const MIB: usize = 1024 * 1024;
/// Idle connections held open at once.
const IDLE_CONNECTIONS: usize = 2000;
/// File descriptors beyond the idle connections that the test process and the proxy may
/// need: listeners, the runtime, pipes, and the other tests of this binary.
const SPARE_FDS: u64 = 1000;

async fn start(extra: &[(&str, &str)]) -> (Upstream, ProxyProcess, tempfile::TempDir) {
    let upstream = Upstream::start(Transport::Plain).await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream.http_url(), extra));
    (upstream, proxy, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_disconnect_aborts_cleanly() {
    let (upstream, proxy, _dir) = start(&[]).await;

    let upload = agent::start_upload(proxy.listen, &api("artifacts"), MIB, MIB / 2).await;
    // The budget is reserved from the declared length when the headers arrive.
    proxy
        .wait_for_metric(BUFFERED_BODY_BYTES, &[], MIB as f64, Duration::from_secs(5))
        .await;
    assert_eq!(proxy.metric(IN_FLIGHT, &[]).await, 1.0);
    drop(upload);

    let entry = proxy
        .wait_for_log(
            "request",
            &[("outcome", "client_aborted")],
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(entry["error_code"], "body_read_failed", "{entry}");
    // NOTE: the request is counted with status 400, the error response that no agent
    // read, although the README documents status 0 for an agent that left first.
    assert_eq!(
        proxy
            .metric(REQUESTS_TOTAL, &[("outcome", "client_aborted")])
            .await,
        1.0
    );
    proxy
        .wait_for_metric(IN_FLIGHT, &[], 0.0, Duration::from_secs(5))
        .await;
    proxy
        .wait_for_metric(BUFFERED_BODY_BYTES, &[], 0.0, Duration::from_secs(5))
        .await;
    assert_eq!(upstream.requests(), 0, "nothing was forwarded");
    assert_healthy(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_disconnect_aborts_cleanly() {
    let (upstream, proxy, _dir) = start(&[]).await;
    // A fast body the agent stops reading after 64 KiB of 256 MiB, and a slow one it
    // leaves after 8 KiB of 4 MiB.
    let cases = [
        (Fault::StreamFast, 64 * 1024),
        (Fault::StreamSlow, 8 * 1024),
    ];

    for (number, (fault, min_body_bytes)) in cases.into_iter().enumerate() {
        let path = format!("{}?{}", api("files/fn_large"), fault.query());
        let status = agent::download_then_close(proxy.listen, &path, min_body_bytes).await;
        assert_eq!(status, 200, "{fault:?}");

        // The proxy drops the upstream response once the agent is gone, so the upstream's
        // writes fail instead of filling a buffer that no one reads.
        let deadline = Instant::now() + Duration::from_secs(10);
        while upstream.seen.streams_cut.load(Ordering::SeqCst) < number + 1 {
            assert!(
                Instant::now() < deadline,
                "{fault:?}: the proxy kept reading the upstream after the agent left"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy
            .wait_for_metric(IN_FLIGHT, &[], 0.0, Duration::from_secs(5))
            .await;
    }

    let aborted = [("outcome", "client_aborted"), ("status", "200")];
    assert_eq!(proxy.metric(REQUESTS_TOTAL, &aborted).await, 2.0);
    let entries = proxy.log_entries("request");
    assert_eq!(entries.len(), 2, "{entries:#?}");
    for entry in &entries {
        assert_eq!(entry["outcome"], "client_aborted", "{entry}");
        assert!(entry["response_bytes"].as_u64().unwrap() > 0, "{entry}");
    }
    assert_healthy(&proxy, &upstream).await;
}

/// Raises the soft limit on open files to the hard limit, which child processes inherit,
/// and returns the new soft limit (`None` when unlimited).
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).expect("raising the soft limit to the hard limit");
    }
    getrlimit(Resource::Nofile).current
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_leave_proxy_serving() {
    let needed = IDLE_CONNECTIONS as u64 + SPARE_FDS;
    if let Some(limit) = raise_open_file_limit().filter(|limit| *limit < needed) {
        eprintln!(
            "skipping idle_connections_leave_proxy_serving: the hard limit on open files is \
             {limit}, and the test needs {needed}; raise it with `ulimit -Hn {needed}`"
        );
        return;
    }
    // The proxy closes an idle keep-alive connection at the header read timeout, 10 s by
    // default. A long timeout keeps them open for the whole test, even on a slow machine.
    let (upstream, proxy, _dir) = start(&[("listen", "header_read_timeout_seconds = 60")]).await;
    assert_healthy(&proxy, &upstream).await;
    let fds_before = settled_fds_or_skip(&proxy).await;

    // Half the connections sent one request and wait for the next; the other half never
    // sent a byte.
    let mut idle = agent::open_idle_connections(proxy.listen, IDLE_CONNECTIONS / 2, true).await;
    idle.extend(agent::open_idle_connections(proxy.listen, IDLE_CONNECTIONS / 2, false).await);
    if let Some(before) = fds_before {
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.open_fds().unwrap() < before + IDLE_CONNECTIONS {
            assert!(
                Instant::now() < deadline,
                "the proxy accepted every connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let started = Instant::now();
    assert_healthy(&proxy, &upstream).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "served in {:?} beside {IDLE_CONNECTIONS} idle connections",
        started.elapsed()
    );
    let closed = idle
        .iter()
        .filter(|stream| agent::closed_by_peer(stream))
        .count();
    assert_eq!(closed, 0, "the proxy kept every idle connection");
    drop(idle);

    proxy
        .wait_for_metric(IN_FLIGHT, &[], 0.0, Duration::from_secs(5))
        .await;
    if let Some(before) = fds_before {
        // Both health checks used the same pooled upstream connection, so the count
        // returns exactly to what it was.
        let after = wait_for_fds_at_most(&proxy, before, Duration::from_secs(10)).await;
        assert!(
            after <= before,
            "{after} descriptors open after closing the idle connections, {before} before"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_budget_overflow_rejects_some() {
    let max_body = 16 * MIB;
    let budget = 64 * MIB;
    let uploads = 8;
    let limits = format!("max_buffered_body_bytes = {budget}");
    let body_limit = format!("max_body_bytes = {max_body}");
    let (upstream, proxy, _dir) = start(&[("listen", &limits), ("policy", &body_limit)]).await;
    assert_healthy(&proxy, &upstream).await;
    let resident_before = proxy.memory_kib("VmRSS");

    let replies = agent::upload_burst(&proxy, &api("artifacts"), uploads, max_body, budget).await;

    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    let accepted: Vec<_> = replies.iter().filter(|reply| reply.status == 201).collect();
    let rejected: Vec<_> = replies.iter().filter(|reply| reply.status == 503).collect();
    assert_eq!(accepted.len(), budget / max_body, "statuses {statuses:?}");
    assert_eq!(
        rejected.len(),
        uploads - budget / max_body,
        "statuses {statuses:?}"
    );
    for reply in &rejected {
        assert_eq!(
            reply.header("x-agent-access-proxy-error"),
            Some("body_budget_exhausted")
        );
        assert_eq!(reply.header("retry-after"), Some("1"));
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "body_budget_exhausted", "{body}");
    }

    // Only the accepted uploads reached the upstream, signed and with all their bytes. A
    // rejected upload forwarded in part would show as an extra, shorter body.
    assert_eq!(
        upstream.requests(),
        accepted.len() + 1,
        "one health check besides"
    );
    assert_eq!(upstream.rejected(), 0);
    let bodies = upstream.seen.bodies.lock().unwrap().clone();
    assert_eq!(bodies, vec![max_body; accepted.len()]);

    let overloaded = [("outcome", "overloaded"), ("status", "503")];
    assert_eq!(
        proxy.metric(REQUESTS_TOTAL, &overloaded).await,
        rejected.len() as f64
    );
    let forwarded = [("outcome", "forwarded"), ("status", "201")];
    assert_eq!(
        proxy.metric(REQUESTS_TOTAL, &forwarded).await,
        accepted.len() as f64
    );
    proxy
        .wait_for_metric(BUFFERED_BODY_BYTES, &[], 0.0, Duration::from_secs(5))
        .await;
    proxy
        .wait_for_metric(IN_FLIGHT, &[], 0.0, Duration::from_secs(5))
        .await;

    // The budget bounds what the proxy holds: the peak resident size may exceed the
    // resident size before the burst by the budget plus a margin for per-connection
    // buffers and allocator overhead, but not by a second copy of every body.
    let peak = proxy.memory_kib("VmHWM");
    let margin_kib = 24 * 1024;
    let limit_kib = resident_before + (budget / 1024) as u64 + margin_kib;
    eprintln!(
        "resident before the burst {resident_before} KiB, peak {peak} KiB, limit {limit_kib} KiB"
    );
    assert!(
        peak <= limit_kib,
        "peak resident {peak} KiB passed {limit_kib} KiB: {resident_before} KiB before, \
         a budget of {} KiB and a margin of {margin_kib} KiB",
        budget / 1024
    );
    assert_healthy(&proxy, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_closed_at_header_timeout() {
    let (upstream, proxy, _dir) = start(&[("listen", "header_read_timeout_seconds = 0.5")]).await;
    let started = Instant::now();
    let mut silent = agent::open_idle_connections(proxy.listen, 1, false)
        .await
        .remove(0);

    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;

    let closed = matches!(read, Ok(Ok(0)) | Ok(Err(_)));
    assert!(
        closed,
        "expected the proxy to close a connection that sent nothing, got {read:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed at the 0.5 s header read timeout, not before: {:?}",
        started.elapsed()
    );
    assert_healthy(&proxy, &upstream).await;
}
