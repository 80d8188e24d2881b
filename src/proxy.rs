//! The request path: check the policy, buffer the body, sign, forward, stream the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{read_limited, BodyBudget, BufferedBody};
use crate::config::{Settings, UpstreamSettings};
use crate::error::{ProxyError, PROXY_ERROR_HEADER};
use crate::exchange::Exchange;
use crate::headers::{is_upgrade_request, remove_hop_by_hop, remove_signing_headers};
use crate::policy::Policy;
use crate::response::ResponseBody;
use crate::secret::SigningKey;
use crate::signing::{
    self, SignatureEncoding, SignatureInput, KEY_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use crate::telemetry::{metrics, RateLimiter};
use crate::upstream::{ClientError, UpstreamClient};

/// The body of every response the proxy sends: the upstream's, streamed, or its own error.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// Clock skew beyond which a warning is logged: a strict server rejects timestamps more
/// than a few minutes off, so drift is worth an operator's attention well before that.
const CLOCK_SKEW_WARNING_SECONDS: f64 = 30.0;
/// Interval between repeats of the same warning.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

// The signing headers as parsed names. Inserting by `&str` parses and validates each name on
// every request, which cost about 3,400 instructions per request for the four of them.
const KEY_ID: HeaderName = HeaderName::from_static(KEY_ID_HEADER);
const TIMESTAMP: HeaderName = HeaderName::from_static(TIMESTAMP_HEADER);
const NONCE: HeaderName = HeaderName::from_static(NONCE_HEADER);
const SIGNATURE: HeaderName = HeaderName::from_static(SIGNATURE_HEADER);

/// The policy and limits of signing, swapped as one unit when the configuration is reloaded.
#[derive(Debug)]
pub struct Rules {
    pub policy: Policy,
    pub max_body_bytes: usize,
}

/// State shared by every connection.
pub struct Proxy {
    rules: ArcSwap<Rules>,
    key: ArcSwap<SigningKey>,
    encoding: SignatureEncoding,
    upstream: UpstreamSettings,
    client: UpstreamClient,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    body_budget: BodyBudget,
    body_read_timeout: Duration,
    warnings: RateLimiter,
}

/// A request ready to be signed: everything but the four signing headers.
struct Unsigned {
    method: Method,
    uri: Uri,
    path_with_query: String,
    headers: HeaderMap,
    body: Bytes,
    body_sha256: String,
}

impl Proxy {
    pub fn new(settings: &Settings) -> Result<Arc<Proxy>, ClientError> {
        let client = UpstreamClient::new(&settings.upstream)?;
        let rules = Rules {
            policy: settings.policy.clone(),
            max_body_bytes: settings.max_body_bytes,
        };
        metrics::record_key_id(None, &settings.key.id);

        Ok(Arc::new(Proxy {
            rules: ArcSwap::from_pointee(rules),
            key: ArcSwap::from_pointee(settings.key.clone()),
            encoding: settings.signature_encoding,
            upstream: settings.upstream.clone(),
            client,
            in_flight: Arc::new(Semaphore::new(settings.limits.max_requests_in_flight)),
            max_in_flight: settings.limits.max_requests_in_flight,
            body_budget: BodyBudget::new(settings.limits.max_buffered_body_bytes),
            body_read_timeout: settings.limits.body_read_timeout,
            warnings: RateLimiter::new(WARNING_INTERVAL),
        }))
    }

    /// Replaces the signing key; the next request is signed with it. Requests already
    /// signed keep the key they were signed with.
    pub fn set_key(&self, key: SigningKey) {
        let previous = self.key.swap(Arc::new(key));
        metrics::record_key_id(Some(&previous.id), &self.key.load().id);
    }

    /// Returns the key requests are signed with now.
    pub fn key(&self) -> Arc<SigningKey> {
        self.key.load_full()
    }

    /// Replaces the policy and limits as one unit.
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Handles one agent request. Every failure becomes a JSON error response here.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let mut exchange = Exchange::start(request.method());
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            let error = ProxyError::Overloaded {
                limit: self.max_in_flight,
            };
            return Ok(self.answer_error(&mut exchange, error));
        };

        match self.forward(request, &mut exchange).await {
            Ok(response) => Ok(self.stream_response(response, exchange, permit)),
            Err(error) => Ok(self.answer_error(&mut exchange, error)),
        }
    }

    fn answer_error(&self, exchange: &mut Exchange, error: ProxyError) -> Response<ProxyBody> {
        if error.side() != crate::error::Side::Agent {
            self.warn_limited(error.code(), exchange.route(), &error);
        }
        exchange.fail(&error);
        error.to_response().map(Either::Right)
    }

    fn stream_response(
        &self,
        mut response: Response<Incoming>,
        exchange: Exchange,
        permit: OwnedSemaphorePermit,
    ) -> Response<ProxyBody> {
        remove_hop_by_hop(response.headers_mut());
        // Only the proxy may mark a response as its own, or an agent could not trust it.
        response.headers_mut().remove(PROXY_ERROR_HEADER);
        let remaining = self
            .upstream
            .request_timeout
            .saturating_sub(exchange.elapsed());
        let deadline = Box::pin(tokio::time::sleep(remaining));
        let status = response.status().as_u16();
        response
            .map(|body| Either::Left(ResponseBody::new(body, exchange, status, deadline, permit)))
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        reject_unsupported(&request)?;
        let rules = self.rules.load_full();
        let (parts, body) = request.into_parts();

        let decision = rules
            .policy
            .decide(&parts.method, parts.uri.path(), parts.uri.query());
        if let Some((route, scope)) = decision
            .as_ref()
            .err()
            .and_then(|denial| denial.matched_route())
        {
            exchange.set_route(route, scope);
        }
        let allowed = decision?;
        exchange.set_route(allowed.route.template.clone(), allowed.route.scope.name());

        let reading = read_limited(body, rules.max_body_bytes, &self.body_budget);
        let body = tokio::time::timeout(self.body_read_timeout, reading)
            .await
            .map_err(|_| ProxyError::BodyReadTimeout(self.body_read_timeout))??;
        exchange.set_body_bytes(body.bytes.len());
        metrics::record_body(exchange.route(), body.bytes.len());

        // The reservation is held until the upstream responds, because the body stays in
        // memory until then. It is released before the response streams.
        let BufferedBody {
            bytes,
            sha256,
            reservation,
        } = body;
        let unsigned = self.prepare(parts, bytes, sha256, exchange)?;
        let response = self.send_with_retry(&unsigned, exchange).await;
        drop(reservation);
        let response = response?;

        self.inspect_response(&response, exchange);
        Ok(response)
    }

    /// Sends the request. A GET or HEAD whose connection failed before any response byte
    /// is signed again, with a fresh timestamp and nonce, and sent once more.
    async fn send_with_retry(
        &self,
        unsigned: &Unsigned,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        let first = self.send_signed(unsigned, exchange).await;
        let retryable = matches!(
            first,
            Err(ProxyError::UpstreamUnavailable(_) | ProxyError::UpstreamConnectionLost(_))
        ) && matches!(unsigned.method, Method::GET | Method::HEAD);
        if !retryable {
            return first;
        }

        if let Err(error) = &first {
            tracing::info!(route = exchange.route(), error = %error, "retrying once with a fresh nonce");
        }
        metrics::record_retry(exchange.route());
        self.send_signed(unsigned, exchange).await
    }

    async fn send_signed(
        &self,
        unsigned: &Unsigned,
        exchange: &mut Exchange,
    ) -> Result<Response<Incoming>, ProxyError> {
        let nonce = signing::new_nonce();
        let mut headers = unsigned.headers.clone();
        self.insert_signature(&mut headers, unsigned, &nonce)?;
        exchange.set_nonce(nonce);

        let mut request = Request::new(Full::new(unsigned.body.clone()));
        *request.method_mut() = unsigned.method.clone();
        *request.uri_mut() = unsigned.uri.clone();
        *request.headers_mut() = headers;

        let sent = Instant::now();
        let response = self.client.send(request).await?;
        metrics::record_upstream_response(
            exchange.route(),
            sent.elapsed(),
            response.status().as_u16(),
        );
        Ok(response)
    }

    /// Rebuilds the request for the upstream: same method, path, query, headers and body,
    /// minus hop-by-hop and agent-supplied signing headers.
    fn prepare(
        &self,
        parts: Parts,
        body: Bytes,
        body_sha256: String,
        exchange: &mut Exchange,
    ) -> Result<Unsigned, ProxyError> {
        let path_with_query = self.upstream_path_with_query(&parts.uri);
        let uri = self.upstream_uri(&path_with_query)?;

        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        let stripped = remove_signing_headers(&mut headers);
        exchange.set_stripped_headers(stripped);
        metrics::record_stripped_headers(stripped);
        // The client sets Host from the upstream URL. This proxy has handled Expect
        // already, and Content-Length is set from the buffered body.
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        headers.remove(header::CONTENT_LENGTH);
        if !body.is_empty() || !matches!(parts.method, Method::GET | Method::HEAD) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }

        Ok(Unsigned {
            method: parts.method,
            uri,
            path_with_query,
            headers,
            body,
            body_sha256,
        })
    }

    /// Prepends the base URL's path prefix to the target exactly as the agent sent it.
    fn upstream_path_with_query(&self, uri: &Uri) -> String {
        let prefix = &self.upstream.path_prefix;
        let query_length = uri.query().map_or(0, |query| query.len() + 1);
        let mut target = String::with_capacity(prefix.len() + uri.path().len() + query_length);
        target.push_str(prefix);
        target.push_str(uri.path());
        if let Some(query) = uri.query() {
            target.push('?');
            target.push_str(query);
        }
        target
    }

    fn upstream_uri(&self, path_with_query: &str) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path_with_query)
            .build()
            .map_err(|error| {
                ProxyError::Internal(format!("cannot build the upstream URL: {error}"))
            })
    }

    fn insert_signature(
        &self,
        headers: &mut HeaderMap,
        unsigned: &Unsigned,
        nonce: &str,
    ) -> Result<(), ProxyError> {
        let key = self.key.load();
        let input = SignatureInput {
            method: unsigned.method.as_str(),
            path_with_query: &unsigned.path_with_query,
            timestamp: signing::unix_now(),
            nonce,
            body_sha256: &unsigned.body_sha256,
        };
        let signed = signing::sign(&key, &input, self.encoding);

        let value = |text: String| {
            HeaderValue::try_from(text).map_err(|_| {
                ProxyError::Internal("a signing header value is not a valid header".into())
            })
        };
        headers.insert(KEY_ID, value(signed.key_id)?);
        headers.insert(TIMESTAMP, value(signed.timestamp)?);
        headers.insert(NONCE, value(signed.nonce)?);
        let mut signature = value(signed.signature)?;
        signature.set_sensitive(true);
        headers.insert(SIGNATURE, signature);
        Ok(())
    }

    /// Tracks the upstream's clock and flags a rejected signature.
    fn inspect_response(&self, response: &Response<Incoming>, exchange: &mut Exchange) {
        exchange.set_upstream_status(response.status().as_u16());
        if let Some(skew) = clock_skew(response.headers()) {
            metrics::record_clock_skew(skew);
            if skew.abs() > CLOCK_SKEW_WARNING_SECONDS {
                if let Some(held_back) = self.warnings.check("clock_skew") {
                    tracing::warn!(skew_seconds = skew, held_back, "the upstream clock differs from ours; a strict server rejects timestamps beyond its window, so check NTP on this host");
                }
            }
        }
        if response.status() == http::StatusCode::UNAUTHORIZED {
            if let Some(held_back) = self.warnings.check("upstream_unauthorized") {
                let key_id = self.key.load().id.clone();
                tracing::warn!(route = exchange.route(), key_id, held_back, "the upstream rejected a signed request with 401: check the key id and secret, and the clock");
            }
        }
    }

    fn warn_limited(&self, key: &'static str, route: &str, error: &ProxyError) {
        if let Some(held_back) = self.warnings.check(key) {
            tracing::warn!(route, code = error.code(), error = %error, held_back, "request failed");
        }
    }
}

/// Returns the upstream's `Date` minus the local clock, in seconds.
fn clock_skew(headers: &HeaderMap) -> Option<f64> {
    let date = headers.get(header::DATE)?.to_str().ok()?;
    let upstream = httpdate::parse_http_date(date).ok()?;
    let now = std::time::SystemTime::now();
    Some(match upstream.duration_since(now) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    })
}

/// Rejects requests that must never be forwarded, whatever the policy allows.
fn reject_unsupported(request: &Request<Incoming>) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    if is_upgrade_request(request.headers()) {
        return Err(ProxyError::Upgrade);
    }
    // HTTP/2 always carries a scheme and authority; in HTTP/1 they mean the agent treats
    // this proxy as a forward proxy. Either way the authority never picks the destination.
    if request.version() < Version::HTTP_2 && request.uri().authority().is_some() {
        return Err(ProxyError::AbsoluteForm);
    }
    // HTTP/1.1 requires exactly one Host (RFC 9112, section 3.2); HTTP/1.0 may omit it.
    let hosts = request.headers().get_all(header::HOST).iter().count();
    if request.version() == Version::HTTP_11 && hosts != 1 {
        return Err(ProxyError::InvalidHost { count: hosts });
    }
    // hyper decodes only `chunked`. A body in any other transfer coding would reach the
    // upstream as bytes it cannot read, under a signature it would accept.
    if let Some(coding) = unsupported_transfer_coding(request.headers()) {
        return Err(ProxyError::TransferCoding(coding));
    }
    Ok(())
}

fn unsupported_transfer_coding(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("invalid").split(','))
        .map(|coding| coding.trim().to_ascii_lowercase())
        .find(|coding| coding != "chunked")
}
