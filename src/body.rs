//! Buffering the agent's request body within a per-request limit and a global budget.
//!
//! The signature covers a hash of the whole body, so the body must be complete before the
//! first byte goes upstream. It is hashed frame by frame while it arrives.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ProxyError;
use crate::telemetry::metrics;

/// A complete request body, its lowercase hex SHA-256, and its share of the budget.
pub struct BufferedBody {
    pub bytes: Bytes,
    pub sha256: String,
    pub reservation: Reservation,
}

/// The global budget of buffered request body bytes.
pub struct BodyBudget {
    semaphore: Arc<Semaphore>,
    total: usize,
}

/// Bytes of the budget reserved by one request, returned on drop.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<Semaphore>,
    total: usize,
}

impl BodyBudget {
    pub fn new(total: usize) -> BodyBudget {
        // A tokio semaphore holds at most usize::MAX >> 3 permits; budgets are far below.
        BodyBudget {
            semaphore: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
            total,
        }
    }

    fn reserve(&self) -> Reservation {
        Reservation {
            permit: None,
            budget: self.semaphore.clone(),
            total: self.total,
        }
    }
}

impl Reservation {
    fn reserved(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, |permit| permit.num_permits())
    }

    /// Grows the reservation to `bytes` in all, without waiting: over budget, the request
    /// fails at once instead of queueing behind uploads that may take minutes.
    fn reserve_up_to(&mut self, bytes: usize) -> Result<(), ProxyError> {
        let missing = bytes.saturating_sub(self.reserved());
        if missing == 0 {
            return Ok(());
        }
        let exhausted = || ProxyError::BodyBudgetExhausted { budget: self.total };
        let count = u32::try_from(missing).map_err(|_| exhausted())?;
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| exhausted())?;

        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        // Adjusted by the change rather than set from the semaphore's state, so that
        // concurrent requests cannot leave a stale value behind.
        metrics::buffered_body_bytes().increment(missing as f64);
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            metrics::buffered_body_bytes().decrement(permit.num_permits() as f64);
        }
    }
}

/// Reads the body up to `limit` bytes, reserving its size from `budget` as it arrives.
///
/// A declared length above the limit is rejected before any byte is read, so with
/// `Expect: 100-continue` the agent never sends the body. A chunked body is cut off as
/// soon as it passes the limit.
pub async fn read_limited(
    body: Incoming,
    limit: usize,
    budget: &BodyBudget,
) -> Result<BufferedBody, ProxyError> {
    let declared = body.size_hint().exact();
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }

    let capacity = declared.map_or(0, |length| length as usize);
    let mut reservation = budget.reserve();
    reservation.reserve_up_to(capacity)?;
    let mut buffer = BytesMut::with_capacity(capacity);
    let mut hasher = Sha256::new();
    let mut body = body;

    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(ProxyError::BodyRead)?;
        // Trailers are outside the signed content, so forwarding them would send unsigned
        // data, and dropping them silently would lose it: the request is rejected.
        let Ok(data) = frame.into_data() else {
            return Err(ProxyError::TrailersNotSupported);
        };

        let length = buffer.len() + data.len();
        if length > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        reservation.reserve_up_to(length)?;
        hasher.update(&data);
        buffer.extend_from_slice(&data);
    }

    Ok(BufferedBody {
        bytes: buffer.freeze(),
        sha256: crate::signing::lowercase_hex(&hasher.finalize()),
        reservation,
    })
}
