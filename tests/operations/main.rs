//! Operating the proxy: metrics, health, shutdown, key rotation, limits and retries, tested
//! against the built binary. Every test ends with a scan of what the process printed.
//!
//! The tests run on a multi-threaded runtime because some of them wait on the process with
//! blocking polls while the in-process upstream must keep serving.

mod client;
mod hardening;
mod limits;
mod metrics;
mod process;
mod rotation;
mod shutdown;
mod upstream;

use process::{ProxyProcess, SECRET};

/// Checks that nothing the proxy printed contains the secret or any signature the
/// upstream received.
pub fn assert_nothing_leaked(proxy: &ProxyProcess, signatures: &[String], extra_output: &[&str]) {
    let logs = proxy.logs();
    let outputs = logs
        .iter()
        .map(String::as_str)
        .chain(extra_output.iter().copied());
    for output in outputs {
        assert!(!output.contains(SECRET), "the secret leaked: {output}");
        for signature in signatures {
            assert!(
                !output.contains(signature.as_str()),
                "a signature leaked: {output}"
            );
        }
    }
}

/// Returns every signature the stand-in received.
pub fn received_signatures(stand_in: &agent_access_proxy::standin::StandIn) -> Vec<String> {
    stand_in
        .recorded()
        .iter()
        .filter_map(|request| request.headers.get("x-integration-signature"))
        .map(|value| value.to_str().unwrap().to_owned())
        .collect()
}
