//! Errors the proxy responds with itself, and the one place that turns them into responses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::policy::Denial;
use crate::telemetry::metrics::Outcome;

/// Response header on every response the proxy generates itself. Its value is the error
/// code, so an agent can tell a proxy denial from an upstream error without parsing the body.
pub const PROXY_ERROR_HEADER: &str = "x-agent-access-proxy-error";

/// The side that caused a failure, for logs and for choosing between 4xx and 5xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Agent,
    Upstream,
    Proxy,
}

/// An error the proxy responds with instead of forwarding the request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("CONNECT is not supported: this proxy is not a forward proxy; use it as your API base URL (for example http://127.0.0.1:8080) and send plain requests")]
    Connect,
    #[error("absolute-form request targets are not supported: this proxy is not a forward proxy; use it as your API base URL and send origin-form paths such as /agent-api/v1/...")]
    AbsoluteForm,
    #[error("an HTTP/1.1 request needs exactly one Host header, and this one has {count}")]
    InvalidHost { count: usize },
    #[error(
        "transfer coding '{0}' is not supported; send the body as is or with chunked framing only"
    )]
    TransferCoding(String),
    #[error("protocol upgrades (such as WebSocket) are not supported: the proxy signs one request and one response at a time")]
    Upgrade,
    #[error("the request body exceeds the limit of {limit} bytes; nothing was forwarded")]
    BodyTooLarge { limit: usize },
    #[error("the request body could not be read: {0}")]
    BodyRead(#[source] hyper::Error),
    #[error("request trailers are not supported, because the signature covers only the body; send the data in the body or a header")]
    TrailersNotSupported,
    #[error("the request body did not arrive within {0:?}; send the body without pauses")]
    BodyReadTimeout(std::time::Duration),
    #[error("the proxy is handling {limit} requests already; retry shortly")]
    Overloaded { limit: usize },
    #[error("the proxy's buffer for request bodies ({budget} bytes over all requests) is full; retry shortly")]
    BodyBudgetExhausted { budget: usize },
    #[error("cannot connect to the upstream API: {0}")]
    UpstreamUnavailable(String),
    #[error("TLS with the upstream API failed: {0}")]
    UpstreamTls(String),
    #[error("the upstream API closed the connection before responding: {0}")]
    UpstreamConnectionLost(String),
    #[error("the upstream API sent an invalid HTTP response: {0}")]
    UpstreamInvalidResponse(String),
    #[error("the upstream API sent no response headers within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Returns the stable error code, documented in the README.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Denied(Denial::InvalidTarget(_)) => "invalid_target",
            ProxyError::Denied(Denial::UnknownRoute { .. }) => "unknown_route",
            ProxyError::Denied(Denial::ScopeNotAllowed { .. }) => "scope_not_allowed",
            ProxyError::Denied(Denial::OtherWorkspace { .. }) => "workspace_not_allowed",
            ProxyError::Connect => "connect_not_supported",
            ProxyError::AbsoluteForm => "absolute_form_not_supported",
            ProxyError::Upgrade => "upgrade_not_supported",
            ProxyError::InvalidHost { .. } => "invalid_host_header",
            ProxyError::TransferCoding(_) => "transfer_coding_not_supported",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BodyRead(_) => "body_read_failed",
            ProxyError::BodyReadTimeout(_) => "body_read_timeout",
            ProxyError::TrailersNotSupported => "trailers_not_supported",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::BodyBudgetExhausted { .. } => "body_budget_exhausted",
            ProxyError::UpstreamUnavailable(_) => "upstream_unavailable",
            ProxyError::UpstreamTls(_) => "upstream_tls_failed",
            ProxyError::UpstreamConnectionLost(_) => "upstream_connection_lost",
            ProxyError::UpstreamInvalidResponse(_) => "upstream_invalid_response",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::Internal(_) => "internal_error",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            // Malformed input the agent can fix.
            ProxyError::Denied(Denial::InvalidTarget(_))
            | ProxyError::AbsoluteForm
            | ProxyError::Upgrade
            | ProxyError::TrailersNotSupported
            | ProxyError::InvalidHost { .. }
            | ProxyError::BodyRead(_) => StatusCode::BAD_REQUEST,
            // RFC 9112, section 6.1: an unknown transfer coding gets 501.
            ProxyError::TransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            // Well-formed, but outside what this proxy may sign.
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // The proxy is at a limit; the agent should retry after Retry-After.
            ProxyError::Overloaded { .. } | ProxyError::BodyBudgetExhausted { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // The upstream failed; the agent may retry later.
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamConnectionLost(_)
            | ProxyError::UpstreamInvalidResponse(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the `outcome` label of metrics and logs.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::Denied(Denial::UnknownRoute { .. }) => Outcome::DeniedRoute,
            ProxyError::Denied(Denial::ScopeNotAllowed { .. }) => Outcome::DeniedScope,
            ProxyError::Denied(Denial::OtherWorkspace { .. }) => Outcome::DeniedWorkspace,
            ProxyError::Denied(Denial::InvalidTarget(_))
            | ProxyError::Connect
            | ProxyError::AbsoluteForm
            | ProxyError::Upgrade
            | ProxyError::TrailersNotSupported
            | ProxyError::InvalidHost { .. }
            | ProxyError::TransferCoding(_) => Outcome::InvalidRequest,
            ProxyError::BodyTooLarge { .. } => Outcome::BodyTooLarge,
            ProxyError::BodyRead(_) | ProxyError::BodyReadTimeout(_) => Outcome::ClientAborted,
            ProxyError::Overloaded { .. } | ProxyError::BodyBudgetExhausted { .. } => {
                Outcome::Overloaded
            }
            ProxyError::UpstreamTimeout(_) => Outcome::UpstreamTimeout,
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamConnectionLost(_)
            | ProxyError::UpstreamInvalidResponse(_)
            | ProxyError::Internal(_) => Outcome::UpstreamUnavailable,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::UpstreamUnavailable(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamConnectionLost(_)
            | ProxyError::UpstreamInvalidResponse(_)
            | ProxyError::UpstreamTimeout(_) => Side::Upstream,
            ProxyError::Overloaded { .. }
            | ProxyError::BodyBudgetExhausted { .. }
            | ProxyError::Internal(_) => Side::Proxy,
            _ => Side::Agent,
        }
    }

    /// Builds the JSON error response `{"error": {"code": ..., "message": ...}}`.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        error_response(self.status(), self.code(), &self.to_string())
    }
}

/// Builds a proxy-generated JSON error response.
pub fn error_response(
    status: StatusCode,
    code: &'static str,
    message: &str,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;

    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(PROXY_ERROR_HEADER, HeaderValue::from_static(code));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
