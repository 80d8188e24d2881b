//! Micro-benchmarks of the policy check that runs on every request. Run with
//! `cargo bench --bench policy`.

use agent_access_proxy::policy::{self, Policy, RouteTable, Scope, BUILT_IN_SCOPES};
use divan::{black_box, Bencher};
use http::Method;

fn main() {
    divan::main();
}

fn policy(scopes: &[&str]) -> Policy {
    Policy {
        workspace: "ws_demo".into(),
        scopes: scopes
            .iter()
            .map(|scope| Scope::parse(scope).unwrap().0)
            .collect(),
        routes: RouteTable::built_in(),
    }
}

fn decide(policy: &Policy, method: &Method, path: &str, query: Option<&str>) -> bool {
    policy
        .decide(method, black_box(path), black_box(query))
        .is_ok()
}

#[divan::bench]
fn decide_environment(bencher: Bencher) {
    let policy = policy(&BUILT_IN_SCOPES);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::GET,
            "/agent-api/v1/workspaces/ws_demo/environment",
            None,
        )
    });
}

#[divan::bench]
fn decide_artifacts_post(bencher: Bencher) {
    let policy = policy(&BUILT_IN_SCOPES);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::POST,
            "/agent-api/v1/workspaces/ws_demo/artifacts",
            None,
        )
    });
}

#[divan::bench]
fn decide_file_route(bencher: Bencher) {
    let policy = policy(&["env:read"]);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::GET,
            "/agent-api/v1/workspaces/ws_demo/files/fn_42",
            Some("version=3"),
        )
    });
}

/// Checks the last route of the table, so that the lookup passes every other route first.
#[divan::bench]
fn decide_proposal_route(bencher: Bencher) {
    let policy = policy(&BUILT_IN_SCOPES);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::POST,
            "/agent-api/v1/workspaces/ws_demo/files/fn_42/proposals",
            None,
        )
    });
}

/// Denies a route whose scope is not allowed. The error names the route and scope, so a
/// denial allocates.
#[divan::bench]
fn deny_missing_scope(bencher: Bencher) {
    let policy = policy(&["env:read"]);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::POST,
            "/agent-api/v1/workspaces/ws_demo/artifacts",
            None,
        )
    });
}

#[divan::bench]
fn deny_other_workspace(bencher: Bencher) {
    let policy = policy(&BUILT_IN_SCOPES);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::GET,
            "/agent-api/v1/workspaces/ws_other/environment",
            None,
        )
    });
}

#[divan::bench]
fn deny_unknown_route(bencher: Bencher) {
    let policy = policy(&BUILT_IN_SCOPES);
    bencher.bench_local(|| {
        decide(
            &policy,
            &Method::GET,
            "/agent-api/v1/workspaces/ws_demo/secrets",
            None,
        )
    });
}

#[divan::bench]
fn check_path(bencher: Bencher) {
    bencher.bench_local(|| {
        policy::check_path(black_box("/agent-api/v1/workspaces/ws_demo/files/fn_42")).is_ok()
    });
}

#[divan::bench]
fn check_query(bencher: Bencher) {
    bencher.bench_local(|| policy::check_query(black_box("version=3&limit=100")).is_ok());
}
