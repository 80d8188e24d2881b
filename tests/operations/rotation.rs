//! Key rotation without a restart, as Kubernetes updates a mounted Secret: a `..data`
//! symlink swapped atomically to a new directory.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_access_proxy::secret::Secret;
use http::StatusCode;

use crate::client::get;
use crate::process::{
    api, parse_prometheus, start_stand_in, sum, wait_for, write_config, ProxyProcess, KEY_ID,
    SECRET,
};
use crate::{assert_nothing_leaked, received_signatures};

const NEW_KEY_ID: &str = "key_ops_2";
const NEW_SECRET: &str = "ops-secret-rotated-8a7b6c5d";

/// Lays out a mounted Secret: `dir/..vN/{key-id,secret}`, `dir/..data -> ..vN`, and
/// `dir/key-id`, `dir/secret` pointing through `..data`.
fn mount(dir: &Path, version: u32, key_id: &str, secret: &str) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("key-id"), format!("{key_id}\n")).unwrap();
    std::fs::write(data.join("secret"), format!("{secret}\n")).unwrap();

    let staged = dir.join("..data_tmp");
    symlink(format!("..v{version}"), &staged).unwrap();
    // rename(2) replaces the old link atomically, as the kubelet does.
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for name in ["key-id", "secret"] {
        if !dir.join(name).exists() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}

fn key_config(secrets: &Path) -> String {
    format!(
        "id_file = {:?}\nsecret_file = {:?}\nreload_interval_seconds = 0.1",
        secrets.join("key-id"),
        secrets.join("secret")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_swap_rotates_key_without_failures() {
    let (stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secret-volume");
    std::fs::create_dir(&secrets).unwrap();
    mount(&secrets, 1, KEY_ID, SECRET);
    let key = key_config(&secrets);
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[("key", &key)]));

    // Requests run throughout the rotation; every one must succeed.
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicUsize::new(0));
    let url = proxy.url(&api("environment"));
    let load = tokio::spawn({
        let (running, failures) = (running.clone(), failures.clone());
        async move {
            let mut sent = 0;
            while running.load(Ordering::SeqCst) && sent < 5000 {
                if get(&url).await.status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                sent += 1;
            }
            sent
        }
    });

    stand_in.add_key(
        NEW_KEY_ID,
        Secret::new(NEW_SECRET.as_bytes().to_vec()).unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    mount(&secrets, 2, NEW_KEY_ID, NEW_SECRET);
    let rotated = wait_for(Duration::from_secs(10), || {
        let last = stand_in.recorded().pop()?;
        (last.headers["x-integration-key-id"] == NEW_KEY_ID).then_some(())
    });
    assert!(rotated.is_some(), "requests are signed with the new key");
    // Revoke the old key: from now on only the new one verifies.
    stand_in.remove_key(KEY_ID);
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::SeqCst);
    let sent = load.await.unwrap();

    assert!(sent > 5, "requests ran during the rotation ({sent})");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no request failed during the rotation"
    );
    assert_eq!(stand_in.rejected_total(), 0);
    let last = stand_in.recorded().pop().unwrap();
    assert_eq!(last.headers["x-integration-key-id"], NEW_KEY_ID);
    assert_eq!(last.rejection, None);
    let reloaded = proxy.wait_for_log("signing key reloaded", Duration::from_secs(1));
    assert_eq!(reloaded["key_id"], NEW_KEY_ID);

    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    let samples = parse_prometheus(&text);
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_key_reloads_total",
            &[("result", "changed")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_key_info",
            &[("key_id", NEW_KEY_ID)]
        ),
        1.0
    );
    assert_nothing_leaked(&proxy, &received_signatures(&stand_in), &[&text]);
    for line in proxy.logs() {
        assert!(!line.contains(NEW_SECRET), "the new secret leaked: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_reload_keeps_old_key() {
    let (stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secret-volume");
    std::fs::create_dir(&secrets).unwrap();
    mount(&secrets, 1, KEY_ID, SECRET);
    let key = key_config(&secrets);
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[("key", &key)]));

    // An empty secret is invalid: the proxy must keep signing with the loaded key.
    mount(&secrets, 2, NEW_KEY_ID, "");
    proxy.wait_for_log("key reload failed", Duration::from_secs(10));
    let reply = get(&proxy.url(&api("environment"))).await;

    assert_eq!(reply.status, StatusCode::OK);
    let last = stand_in.recorded().pop().unwrap();
    assert_eq!(last.headers["x-integration-key-id"], KEY_ID);
    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    let failures = sum(
        &parse_prometheus(&text),
        "agent_access_proxy_key_reloads_total",
        &[("result", "failure")],
    );
    assert!(failures >= 1.0, "failures counted: {failures}");

    // Once the files are fixed, the retry picks the new key up.
    stand_in.add_key(
        NEW_KEY_ID,
        Secret::new(NEW_SECRET.as_bytes().to_vec()).unwrap(),
    );
    mount(&secrets, 3, NEW_KEY_ID, NEW_SECRET);
    proxy.wait_for_log("signing key reloaded", Duration::from_secs(10));
    assert_eq!(
        get(&proxy.url(&api("environment"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        stand_in.recorded().pop().unwrap().headers["x-integration-key-id"],
        NEW_KEY_ID
    );
    assert_nothing_leaked(&proxy, &received_signatures(&stand_in), &[&text]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_policy_or_keeps_it() {
    let (_stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, &[]);
    let proxy = ProxyProcess::start(&config);
    let events = proxy.url(&api("events"));
    let body = r#"{"idempotencyKey":"k","eventType":"t","occurredAt":"2026-01-01T00:00:00Z"}"#;
    assert_eq!(
        crate::client::post(&events, body).await.status,
        StatusCode::CREATED
    );

    // Narrow the allowlist: events:write goes.
    let text = std::fs::read_to_string(&config).unwrap();
    let narrowed = text.replace(
        "\"artifacts:write\", \"events:write\"",
        "\"artifacts:write\"",
    );
    assert_ne!(narrowed, text);
    std::fs::write(&config, &narrowed).unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("policy reloaded", Duration::from_secs(10));
    let denied = crate::client::post(&events, body).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.body.contains("events:write"));

    // An invalid file is rejected whole: the narrowed policy stays.
    std::fs::write(
        &config,
        narrowed.replace("\"artifacts:write\"", "\"env:read\", \"no-such:scope\""),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("policy reload rejected", Duration::from_secs(10));
    assert_eq!(
        get(&proxy.url(&api("environment"))).await.status,
        StatusCode::OK
    );
    assert_eq!(
        crate::client::post(&events, body).await.status,
        StatusCode::FORBIDDEN
    );
    let text = get(&format!("http://{}/metrics", proxy.admin)).await.body;
    let samples = parse_prometheus(&text);
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_config_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "agent_access_proxy_config_reloads_total",
            &[("result", "failure")]
        ),
        1.0
    );
}
