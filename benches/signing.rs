//! Micro-benchmarks of the signing hot path. Run with `cargo bench --bench signing`.
//!
//! Compare `body_sha256` at 1 MiB with `openssl speed -evp sha256 -bytes 1048576` on the
//! same machine: the proxy hashes every body it forwards, so hashing speed bounds large
//! uploads. BENCHMARKS.md records both.

use agent_access_proxy::secret::{Secret, SigningKey};
use agent_access_proxy::signing::{self, SignatureEncoding, SignatureInput};
use bytes::BytesMut;
use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use sha2::{Digest, Sha256};

fn main() {
    divan::main();
}

const SMALL_BODY: &[u8] = br#"{"title":"t","text":"x"}"#;
const ARTIFACTS_PATH: &str = "/agent-api/v1/workspaces/ws_demo/artifacts";
const NONCE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// Body sizes: a small JSON body, 1 KiB, 64 KiB and 1 MiB.
const BODY_SIZES: [usize; 4] = [24, 1024, 64 * 1024, 1024 * 1024];
/// Size of the frames hyper hands over while a large body arrives, at most the read buffer.
const FRAME_BYTES: usize = 64 * 1024;

fn key() -> SigningKey {
    SigningKey {
        id: "key_bench".into(),
        secret: Secret::new(b"bench-secret-0123456789abcdef".to_vec()).unwrap(),
    }
}

fn input<'a>(body_sha256: &'a str) -> SignatureInput<'a> {
    SignatureInput {
        method: "POST",
        path_with_query: ARTIFACTS_PATH,
        timestamp: 1_767_225_600,
        nonce: NONCE,
        body_sha256,
    }
}

/// Signs a request whose body is already hashed: canonical string, HMAC-SHA256 and hex.
#[divan::bench]
fn sign_small_request(bencher: Bencher) {
    let key = key();
    let body_sha256 = signing::body_sha256(SMALL_BODY);
    bencher.bench_local(|| {
        signing::sign(
            black_box(&key),
            &input(black_box(&body_sha256)),
            SignatureEncoding::Hex,
        )
    });
}

#[divan::bench]
fn sign_small_request_base64(bencher: Bencher) {
    let key = key();
    let body_sha256 = signing::body_sha256(SMALL_BODY);
    bencher.bench_local(|| {
        signing::sign(
            black_box(&key),
            &input(black_box(&body_sha256)),
            SignatureEncoding::Base64,
        )
    });
}

#[divan::bench]
fn canonical_string(bencher: Bencher) {
    let body_sha256 = signing::body_sha256(SMALL_BODY);
    bencher.bench_local(|| signing::canonical_string(&input(black_box(&body_sha256))));
}

#[divan::bench]
fn hmac_of_canonical_string(bencher: Bencher) {
    let key = key();
    let canonical = signing::canonical_string(&input(&signing::body_sha256(SMALL_BODY)));
    bencher.bench_local(|| signing::hmac_sha256(key.secret.expose(), black_box(&canonical)));
}

#[divan::bench]
fn new_nonce() -> String {
    signing::new_nonce()
}

/// Hashes the whole body at once and encodes the digest as lowercase hex.
#[divan::bench(args = BODY_SIZES)]
fn body_sha256(bencher: Bencher, size: usize) {
    let body = vec![b'x'; size];
    bencher
        .counter(BytesCount::new(size))
        .bench_local(|| signing::body_sha256(black_box(&body)));
}

/// Hashes each frame and copies it into one buffer, as the proxy does with a body. The
/// difference to `body_sha256` is the cost of buffering.
#[divan::bench(args = BODY_SIZES)]
fn hash_and_buffer_frames(bencher: Bencher, size: usize) {
    let body = vec![b'x'; size];
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        let mut hasher = Sha256::new();
        let mut buffer = BytesMut::with_capacity(size);
        for frame in black_box(&body).chunks(FRAME_BYTES) {
            hasher.update(frame);
            buffer.extend_from_slice(frame);
        }
        (buffer.freeze(), signing::lowercase_hex(&hasher.finalize()))
    });
}

/// Does everything signing adds to a request: body hash, nonce, clock, canonical string
/// and HMAC.
#[divan::bench(args = BODY_SIZES)]
fn hash_and_sign(bencher: Bencher, size: usize) {
    let key = key();
    let body = vec![b'x'; size];
    bencher.counter(BytesCount::new(size)).bench_local(|| {
        let body_sha256 = signing::body_sha256(black_box(&body));
        let nonce = signing::new_nonce();
        let input = SignatureInput {
            method: "POST",
            path_with_query: ARTIFACTS_PATH,
            timestamp: signing::unix_now(),
            nonce: &nonce,
            body_sha256: &body_sha256,
        };
        signing::sign(&key, &input, SignatureEncoding::Hex)
    });
}
