//! Micro-benchmarks of the signing hot path. Run with `cargo bench --bench signing`.

use agent_access_proxy::secret::{Secret, SigningKey};
use agent_access_proxy::signing::{self, SignatureEncoding, SignatureInput};

fn main() {
    divan::main();
}

fn key() -> SigningKey {
    SigningKey {
        id: "key_bench".into(),
        secret: Secret::new(b"bench-secret-0123456789abcdef".to_vec()).unwrap(),
    }
}

#[divan::bench]
fn sign_small_request(bencher: divan::Bencher) {
    let key = key();
    let body_sha256 = signing::body_sha256(br#"{"title":"t","text":"x"}"#);
    bencher.bench_local(|| {
        let input = SignatureInput {
            method: "POST",
            path_with_query: "/agent-api/v1/workspaces/ws_demo/artifacts",
            timestamp: 1_767_225_600,
            nonce: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            body_sha256: &body_sha256,
        };
        signing::sign(divan::black_box(&key), &input, SignatureEncoding::Hex)
    });
}
