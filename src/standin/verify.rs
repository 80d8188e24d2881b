//! Verification of signed requests, as a strict Agent Access server does it.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::secret::Secret;
use crate::signing::{
    self, SignatureEncoding, SignatureInput, KEY_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};

/// Accepted distance between the request's timestamp and the server's clock, in seconds.
pub const TIMESTAMP_WINDOW_SECONDS: u64 = 300;

/// The reason a request failed verification. The stand-in responds 401 with its code and message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the {0} header is not valid ASCII")]
    InvalidHeader(&'static str),
    #[error("key id '{0}' is not known")]
    UnknownKey(String),
    #[error("the timestamp is not a whole number of seconds")]
    InvalidTimestamp,
    #[error("the timestamp is {skew} s away from the server clock; at most {TIMESTAMP_WINDOW_SECONDS} s is accepted")]
    TimestampOutOfWindow { skew: i64 },
    #[error("the nonce was already used")]
    NonceReused,
    #[error("the signature does not match the request")]
    SignatureMismatch,
}

impl Rejection {
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MissingHeader(_) => "missing_signature_header",
            Rejection::InvalidHeader(_) => "invalid_signature_header",
            Rejection::UnknownKey(_) => "unknown_key",
            Rejection::InvalidTimestamp => "invalid_timestamp",
            Rejection::TimestampOutOfWindow { .. } => "timestamp_out_of_window",
            Rejection::NonceReused => "nonce_reused",
            Rejection::SignatureMismatch => "signature_mismatch",
        }
    }
}

/// Verifies the four signing headers against known keys, and remembers nonces.
pub struct Verifier {
    keys: RwLock<HashMap<String, Secret>>,
    encoding: SignatureEncoding,
    /// Nonces seen within the window, with the timestamp they came with.
    seen_nonces: Mutex<HashMap<String, u64>>,
}

impl Verifier {
    pub fn new(encoding: SignatureEncoding) -> Verifier {
        Verifier {
            keys: RwLock::new(HashMap::new()),
            encoding,
            seen_nonces: Mutex::new(HashMap::new()),
        }
    }

    /// Adds or replaces a key. Several keys may be valid at once, as during a rotation.
    pub fn add_key(&self, id: &str, secret: Secret) {
        self.keys
            .write()
            .expect("key table lock")
            .insert(id.to_owned(), secret);
    }

    /// Removes a key, as a workspace admin revoking it would.
    pub fn remove_key(&self, id: &str) {
        self.keys.write().expect("key table lock").remove(id);
    }

    /// Checks a request. `path_with_query` is the target exactly as received.
    pub fn verify(
        &self,
        method: &str,
        path_with_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Rejection> {
        let key_id = header(headers, KEY_ID_HEADER)?;
        let timestamp_text = header(headers, TIMESTAMP_HEADER)?;
        let nonce = header(headers, NONCE_HEADER)?;
        let signature = header(headers, SIGNATURE_HEADER)?;

        let secret = self
            .keys
            .read()
            .expect("key table lock")
            .get(key_id)
            .cloned();
        let secret = secret.ok_or_else(|| Rejection::UnknownKey(key_id.to_owned()))?;
        let timestamp = check_timestamp(timestamp_text)?;

        let body_sha256 = signing::body_sha256(body);
        let input = SignatureInput {
            method,
            path_with_query,
            timestamp,
            nonce,
            body_sha256: &body_sha256,
        };
        self.check_signature(&secret, &input, signature)?;
        self.remember_nonce(nonce, timestamp)
    }

    fn check_signature(
        &self,
        secret: &Secret,
        input: &SignatureInput<'_>,
        signature: &str,
    ) -> Result<(), Rejection> {
        let provided = match self.encoding {
            SignatureEncoding::Hex => hex::decode(signature).ok(),
            SignatureEncoding::Base64 => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(signature)
                    .ok()
            }
        };
        let provided = provided.ok_or(Rejection::SignatureMismatch)?;

        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose())
            .expect("HMAC accepts keys of any length");
        mac.update(signing::canonical_string(input).as_bytes());
        // verify_slice compares in constant time.
        mac.verify_slice(&provided)
            .map_err(|_| Rejection::SignatureMismatch)
    }

    /// Records the nonce, after the signature is known to be good, so that a forged request
    /// cannot burn a nonce of a real one.
    fn remember_nonce(&self, nonce: &str, timestamp: u64) -> Result<(), Rejection> {
        let mut seen = self.seen_nonces.lock().expect("nonce table lock");
        let now = signing::unix_now();
        seen.retain(|_, seen_at| now.abs_diff(*seen_at) <= TIMESTAMP_WINDOW_SECONDS);

        if seen.contains_key(nonce) {
            return Err(Rejection::NonceReused);
        }
        seen.insert(nonce.to_owned(), timestamp);
        Ok(())
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Rejection> {
    let value = headers.get(name).ok_or(Rejection::MissingHeader(name))?;
    value.to_str().map_err(|_| Rejection::InvalidHeader(name))
}

fn check_timestamp(text: &str) -> Result<u64, Rejection> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::InvalidTimestamp);
    }
    let timestamp: u64 = text.parse().map_err(|_| Rejection::InvalidTimestamp)?;

    let skew = timestamp as i64 - signing::unix_now() as i64;
    if skew.unsigned_abs() > TIMESTAMP_WINDOW_SECONDS {
        return Err(Rejection::TimestampOutOfWindow { skew });
    }
    Ok(timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SigningKey;
    use http::HeaderValue;

    fn signed_headers(
        key: &SigningKey,
        path: &str,
        body: &[u8],
        timestamp: u64,
        nonce: &str,
    ) -> HeaderMap {
        let hash = signing::body_sha256(body);
        let input = SignatureInput {
            method: "POST",
            path_with_query: path,
            timestamp,
            nonce,
            body_sha256: &hash,
        };
        let signed = signing::sign(key, &input, SignatureEncoding::Hex);

        let mut headers = HeaderMap::new();
        headers.insert(
            KEY_ID_HEADER,
            HeaderValue::from_str(&signed.key_id).unwrap(),
        );
        headers.insert(
            TIMESTAMP_HEADER,
            HeaderValue::from_str(&signed.timestamp).unwrap(),
        );
        headers.insert(NONCE_HEADER, HeaderValue::from_str(&signed.nonce).unwrap());
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&signed.signature).unwrap(),
        );
        headers
    }

    #[test]
    fn verifier_accepts_once_and_rejects_tampering() {
        let key = SigningKey {
            id: "k1".into(),
            secret: Secret::new(b"s3cret".to_vec()).unwrap(),
        };
        let verifier = Verifier::new(SignatureEncoding::Hex);
        verifier.add_key("k1", key.secret.clone());
        let now = signing::unix_now();

        let headers = signed_headers(&key, "/p?q=1", b"body", now, "n1");
        assert_eq!(
            verifier.verify("POST", "/p?q=1", &headers, b"bodx"),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            verifier.verify("POST", "/p?q=2", &headers, b"body"),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(
            verifier.verify("PUT", "/p?q=1", &headers, b"body"),
            Err(Rejection::SignatureMismatch)
        );
        assert_eq!(verifier.verify("POST", "/p?q=1", &headers, b"body"), Ok(()));
        assert_eq!(
            verifier.verify("POST", "/p?q=1", &headers, b"body"),
            Err(Rejection::NonceReused)
        );

        let stale = signed_headers(&key, "/p", b"", now - 301, "n2");
        assert!(matches!(
            verifier.verify("POST", "/p", &stale, b""),
            Err(Rejection::TimestampOutOfWindow { .. })
        ));

        let mut missing = signed_headers(&key, "/p", b"", now, "n3");
        missing.remove(NONCE_HEADER);
        assert_eq!(
            verifier.verify("POST", "/p", &missing, b""),
            Err(Rejection::MissingHeader(NONCE_HEADER))
        );

        verifier.remove_key("k1");
        let unknown = signed_headers(&key, "/p", b"", now, "n4");
        assert_eq!(
            verifier.verify("POST", "/p", &unknown, b""),
            Err(Rejection::UnknownKey("k1".into()))
        );
    }
}
