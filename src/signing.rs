//! Agent Access v1 request signing.
//!
//! Each request carries four headers. The signature is HMAC-SHA256, keyed with the secret,
//! over five fields joined by `\n` with no trailing newline. The fields are the upper-case
//! method, the path and query exactly as the upstream receives them, the Unix timestamp in
//! seconds, the nonce, and the lowercase hex SHA-256 of the body bytes as sent.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::SigningKey;

pub const KEY_ID_HEADER: &str = "x-integration-key-id";
pub const TIMESTAMP_HEADER: &str = "x-integration-timestamp";
pub const NONCE_HEADER: &str = "x-integration-nonce";
pub const SIGNATURE_HEADER: &str = "x-integration-signature";

/// Prefix shared by the four signing headers. Agent-supplied headers with this prefix are
/// removed, so an agent cannot smuggle its own signature past the proxy.
pub const SIGNING_HEADER_PREFIX: &str = "x-integration-";

/// Hex SHA-256 of the empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The text encoding of the signature bytes in the header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    /// Lowercase hexadecimal, as the API documents.
    #[default]
    Hex,
    /// Standard base64 with padding.
    Base64,
}

/// The inputs of one signature besides the key.
#[derive(Clone, Copy, Debug)]
pub struct SignatureInput<'a> {
    pub method: &'a str,
    pub path_with_query: &'a str,
    pub timestamp: u64,
    pub nonce: &'a str,
    /// Lowercase hex SHA-256 of the body.
    pub body_sha256: &'a str,
}

/// The four header values that authenticate one request.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub key_id: String,
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
}

impl std::fmt::Debug for SignedHeaders {
    // The signature is as sensitive as a password for the replay window, so it is redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedHeaders")
            .field("key_id", &self.key_id)
            .field("timestamp", &self.timestamp)
            .field("nonce", &self.nonce)
            .field("signature", &crate::secret::REDACTED)
            .finish()
    }
}

/// Builds the canonical string that the signature covers.
pub fn canonical_string(input: &SignatureInput<'_>) -> String {
    let mut out = String::with_capacity(
        input.method.len() + input.path_with_query.len() + input.nonce.len() + 64 + 24,
    );
    out.push_str(input.method);
    out.push('\n');
    out.push_str(input.path_with_query);
    out.push('\n');
    out.push_str(&input.timestamp.to_string());
    out.push('\n');
    out.push_str(input.nonce);
    out.push('\n');
    out.push_str(input.body_sha256);
    out
}

/// Computes the raw HMAC-SHA256 of the canonical string.
pub fn hmac_sha256(secret: &[u8], canonical: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(canonical.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Encodes a raw signature for the header.
pub fn encode_signature(raw: &[u8; 32], encoding: SignatureEncoding) -> String {
    match encoding {
        SignatureEncoding::Hex => lowercase_hex(raw),
        SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(raw),
    }
}

/// Signs one request and returns its four header values.
pub fn sign(
    key: &SigningKey,
    input: &SignatureInput<'_>,
    encoding: SignatureEncoding,
) -> SignedHeaders {
    let canonical = canonical_string(input);
    let raw = hmac_sha256(key.secret.expose(), &canonical);

    SignedHeaders {
        key_id: key.id.clone(),
        timestamp: input.timestamp.to_string(),
        nonce: input.nonce.to_owned(),
        signature: encode_signature(&raw, encoding),
    }
}

/// Returns the lowercase hex SHA-256 of `body`.
pub fn body_sha256(body: &[u8]) -> String {
    lowercase_hex(&Sha256::digest(body))
}

/// Encodes bytes as lowercase hexadecimal, the same text as `hex::encode`.
///
/// `hex::encode` collects the digits one `char` at a time. For the nonce, body hash and
/// signature of one proxied GET that cost about 4,500 instructions, against about 2,000
/// for this table lookup (callgrind, in the setup of `scripts/bench-load.sh`).
pub fn lowercase_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = vec![0; bytes.len() * 2];
    for (pair, byte) in text.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    String::from_utf8(text).expect("hex digits are ASCII")
}

/// Draws a fresh nonce: 128 bits from the operating system's CSPRNG as 32 lowercase hex
/// characters.
pub fn new_nonce() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    lowercase_hex(&bytes)
}

/// Returns the current Unix time in whole seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_32_lowercase_hex() {
        let nonce = new_nonce();
        assert_eq!(nonce.len(), 32);
        assert!(nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_ne!(nonce, new_nonce());
    }

    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        secret: String,
        method: String,
        path_with_query: String,
        timestamp: u64,
        nonce: String,
        body: String,
        body_sha256: String,
        canonical_string: String,
        signature_hex: String,
    }

    #[derive(serde::Deserialize)]
    struct VectorFile {
        vectors: Vec<Vector>,
    }

    #[test]
    fn signing_vectors_reproduce_exactly() {
        let file: VectorFile =
            serde_json::from_str(include_str!("../tests/fixtures/signing-vectors.json")).unwrap();
        assert_eq!(file.vectors.len(), 5);

        for vector in &file.vectors {
            let body_hash = body_sha256(vector.body.as_bytes());
            assert_eq!(
                body_hash, vector.body_sha256,
                "body hash of {}",
                vector.name
            );

            let input = SignatureInput {
                method: &vector.method,
                path_with_query: &vector.path_with_query,
                timestamp: vector.timestamp,
                nonce: &vector.nonce,
                body_sha256: &body_hash,
            };
            assert_eq!(
                canonical_string(&input),
                vector.canonical_string,
                "canonical string of {}",
                vector.name
            );

            let key = SigningKey {
                id: "key_vectors".into(),
                secret: crate::secret::Secret::new(vector.secret.clone().into_bytes()).unwrap(),
            };
            let signed = sign(&key, &input, SignatureEncoding::Hex);
            assert_eq!(
                signed.signature, vector.signature_hex,
                "signature of {}",
                vector.name
            );
            assert_eq!(signed.timestamp, vector.timestamp.to_string());
        }
    }

    #[test]
    fn lowercase_hex_matches_hex_crate() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(lowercase_hex(&bytes), hex::encode(&bytes));
        assert_eq!(lowercase_hex(&[]), "");
    }

    #[test]
    fn empty_body_hash_matches_constant() {
        assert_eq!(body_sha256(b""), EMPTY_BODY_SHA256);
    }

    #[test]
    fn base64_encoding_of_signature() {
        let raw = [0xffu8; 32];
        assert_eq!(
            encode_signature(&raw, SignatureEncoding::Base64),
            "//////////////////////////////////////////8="
        );
        assert_eq!(
            encode_signature(&raw, SignatureEncoding::Hex),
            "ff".repeat(32)
        );
    }

    #[test]
    fn signed_headers_debug_hides_signature() {
        let headers = SignedHeaders {
            key_id: "k".into(),
            timestamp: "1".into(),
            nonce: "n".into(),
            signature: "deadbeef".into(),
        };
        assert!(!format!("{headers:?}").contains("deadbeef"));
    }
}
