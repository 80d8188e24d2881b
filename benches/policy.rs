//! Micro-benchmarks of route matching. Run with `cargo bench --bench policy`.

fn main() {
    divan::main();
}

#[divan::bench]
fn decide_file_route(bencher: divan::Bencher) {
    let settings = agent_access_proxy::policy::RouteTable::built_in();
    let policy = agent_access_proxy::policy::Policy {
        workspace: "ws_demo".into(),
        scopes: ["env:read"]
            .iter()
            .map(|s| agent_access_proxy::policy::Scope::parse(s).unwrap().0)
            .collect(),
        routes: settings,
    };
    bencher.bench_local(|| {
        policy
            .decide(
                &http::Method::GET,
                divan::black_box("/agent-api/v1/workspaces/ws_demo/files/fn_42"),
                Some("version=3"),
            )
            .is_ok()
    });
}
