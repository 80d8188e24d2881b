//! The upstream's response body on its way back to the agent: streamed frame by frame,
//! counted, cut off at the whole-request deadline, and finishing the exchange at its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;

use crate::exchange::Exchange;
use crate::telemetry::metrics::{self, Outcome};

/// The reason a response stream was cut off.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the upstream response did not finish within the request timeout")]
    Deadline,
    #[error("the upstream response failed mid-stream: {0}")]
    Upstream(#[from] hyper::Error),
}

/// A streaming upstream response body.
pub struct ResponseBody {
    inner: Incoming,
    exchange: Exchange,
    status: u16,
    bytes_total: ::metrics::Counter,
    deadline: Pin<Box<Sleep>>,
    /// Holds the request's in-flight slot until the response ends.
    _permit: OwnedSemaphorePermit,
}

impl ResponseBody {
    pub fn new(
        inner: Incoming,
        mut exchange: Exchange,
        status: u16,
        deadline: Pin<Box<Sleep>>,
        permit: OwnedSemaphorePermit,
    ) -> ResponseBody {
        let bytes_total = metrics::response_bytes_counter(exchange.route());
        // hyper may never poll a body that is empty from the start (HEAD, 204, 304).
        if inner.is_end_stream() {
            exchange.finish(Outcome::Forwarded, status);
        }
        ResponseBody {
            inner,
            exchange,
            status,
            bytes_total,
            deadline,
            _permit: permit,
        }
    }

    fn fail(&mut self, error: StreamError) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        tracing::warn!(route = self.exchange.route(), error = %error, "response stream to the agent cut off");
        let outcome = match error {
            StreamError::Deadline => Outcome::UpstreamTimeout,
            StreamError::Upstream(_) => Outcome::UpstreamUnavailable,
        };
        self.exchange.finish(outcome, self.status);
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        if this.deadline.as_mut().poll(context).is_ready() {
            return this.fail(StreamError::Deadline);
        }

        match Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.exchange.finish(Outcome::Forwarded, this.status);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => this.fail(StreamError::Upstream(error)),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.exchange.add_response_bytes(data.len() as u64);
                    this.bytes_total.increment(data.len() as u64);
                }
                // hyper stops polling once the body reports its end, so finish here too.
                if this.inner.is_end_stream() {
                    this.exchange.finish(Outcome::Forwarded, this.status);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future as _;
