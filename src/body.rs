//! Buffering the agent's request body within a limit.
//!
//! The signature covers a hash of the whole body, so the body must be complete before the
//! first byte goes upstream. It is hashed frame by frame while it arrives.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use sha2::{Digest, Sha256};

use crate::error::ProxyError;

/// A complete request body and its lowercase hex SHA-256.
pub struct BufferedBody {
    pub bytes: Bytes,
    pub sha256: String,
}

/// Returns the declared `Content-Length`, if there is exactly one valid value.
///
/// hyper rejects conflicting or malformed lengths on HTTP/1 before the handler runs.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads the body up to `limit` bytes.
///
/// A declared length above the limit is rejected before any byte is read, so with
/// `Expect: 100-continue` the agent never sends the body. A chunked body is cut off as
/// soon as it passes the limit.
pub async fn read_limited(body: Incoming, limit: usize) -> Result<BufferedBody, ProxyError> {
    let declared = body.size_hint().exact();
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }

    let capacity = declared.map_or(0, |length| length as usize);
    let mut buffer = BytesMut::with_capacity(capacity);
    let mut hasher = Sha256::new();
    let mut body = body;

    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ProxyError::BodyRead)?;
        // Trailers are not part of the signed content, so they are not forwarded.
        let Ok(data) = frame.into_data() else {
            continue;
        };

        if buffer.len() + data.len() > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        hasher.update(&data);
        buffer.extend_from_slice(&data);
    }

    Ok(BufferedBody {
        bytes: buffer.freeze(),
        sha256: hex::encode(hasher.finalize()),
    })
}
