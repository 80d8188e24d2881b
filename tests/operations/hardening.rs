//! What another process can see of a running proxy.

use crate::process::{start_stand_in, write_config, ProxyProcess, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_dumps_disabled_in_running_proxy() {
    let (_stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[]));

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();

    assert_eq!(fields[4], "0", "soft limit: {core}");
    assert_eq!(fields[5], "0", "hard limit: {core}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_absent_from_command_line_and_environment() {
    let (_stand_in, upstream) = start_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = ProxyProcess::start(&write_config(dir.path(), &upstream, &[]));

    let cmdline = std::fs::read(format!("/proc/{}/cmdline", proxy.pid())).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("run"),
        "cmdline was read"
    );
    assert!(!String::from_utf8_lossy(&cmdline).contains(SECRET));

    // The environment is readable only by root here, because the proxy is non-dumpable;
    // when the tests run unprivileged, the read fails, which is the protection itself.
    match std::fs::read(format!("/proc/{}/environ", proxy.pid())) {
        Ok(environ) => assert!(!String::from_utf8_lossy(&environ).contains(SECRET)),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied),
    }
}
