//! The request path: check the policy, buffer the body, sign, forward, stream the response.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::body::{read_limited, BufferedBody};
use crate::config::{Settings, UpstreamSettings};
use crate::error::ProxyError;
use crate::headers::{is_upgrade_request, remove_hop_by_hop, remove_signing_headers};
use crate::policy::Policy;
use crate::secret::SigningKey;
use crate::signing::{
    self, SignatureEncoding, SignatureInput, KEY_ID_HEADER, NONCE_HEADER, SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
};
use crate::upstream::{ClientError, UpstreamClient};

/// The body of every response the proxy sends: the upstream's, streamed, or its own error.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// What the proxy may sign, swapped as one unit when the configuration is reloaded.
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
}

/// What one request did, for its log line.
#[derive(Default)]
struct Summary {
    route: Option<String>,
    scope: Option<String>,
    nonce: Option<String>,
    stripped_headers: usize,
}

impl Proxy {
    pub fn new(settings: &Settings) -> Result<Arc<Proxy>, ClientError> {
        let client = UpstreamClient::new(&settings.upstream)?;
        let rules = Rules {
            policy: settings.policy.clone(),
            max_body_bytes: settings.max_body_bytes,
        };

        Ok(Arc::new(Proxy {
            rules: ArcSwap::from_pointee(rules),
            key: ArcSwap::from_pointee(settings.key.clone()),
            encoding: settings.signature_encoding,
            upstream: settings.upstream.clone(),
            client,
        }))
    }

    /// Replaces the signing key; the next request is signed with it.
    pub fn set_key(&self, key: SigningKey) {
        self.key.store(Arc::new(key));
    }

    /// Replaces the policy and limits as one unit.
    pub fn set_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    /// Returns the id of the key requests are signed with now.
    pub fn key_id(&self) -> String {
        self.key.load().id.clone()
    }

    /// Handles one agent request. Every failure becomes a JSON error response here.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let method = request.method().clone();
        let mut summary = Summary::default();

        let response = match self.forward(request, &mut summary).await {
            Ok(response) => response.map(Either::Left),
            Err(error) => {
                log_error(&method, &summary, &error);
                error.to_response().map(Either::Right)
            }
        };

        tracing::info!(
            target: "agent_access_proxy::access",
            %method,
            route = summary.route.as_deref().unwrap_or("-"),
            scope = summary.scope.as_deref().unwrap_or("-"),
            status = response.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            nonce = summary.nonce.as_deref().unwrap_or("-"),
            stripped_headers = summary.stripped_headers,
            "request"
        );
        Ok(response)
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        summary: &mut Summary,
    ) -> Result<Response<Incoming>, ProxyError> {
        reject_unsupported(&request)?;
        let rules = self.rules.load_full();
        let (parts, body) = request.into_parts();

        let allowed = rules
            .policy
            .decide(&parts.method, parts.uri.path(), parts.uri.query())?;
        summary.route = Some(allowed.route.template.clone());
        summary.scope = Some(allowed.route.scope.to_string());

        let body = read_limited(body, rules.max_body_bytes).await?;
        let upstream_request = self.build_upstream_request(parts, body, summary)?;

        let response = self.client.send(upstream_request).await?;
        Ok(strip_response_headers(response))
    }

    /// Rebuilds the request for the upstream: same method, path, query, headers and body,
    /// minus hop-by-hop and agent-supplied signing headers, plus the four signing headers.
    fn build_upstream_request(
        &self,
        parts: Parts,
        body: BufferedBody,
        summary: &mut Summary,
    ) -> Result<Request<Full<Bytes>>, ProxyError> {
        let path_with_query = self.upstream_path_with_query(&parts.uri);
        let uri = self.upstream_uri(&path_with_query)?;

        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        summary.stripped_headers = remove_signing_headers(&mut headers);
        // The client sets Host from the upstream URL. Expect was answered by this proxy
        // already, and Content-Length is set below from the buffered body.
        headers.remove(header::HOST);
        headers.remove(header::EXPECT);
        headers.remove(header::CONTENT_LENGTH);
        if !body.bytes.is_empty() || !matches!(parts.method, Method::GET | Method::HEAD) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.bytes.len()));
        }

        let nonce = signing::new_nonce();
        self.insert_signature(
            &mut headers,
            &parts.method,
            &path_with_query,
            &nonce,
            &body.sha256,
        )?;
        summary.nonce = Some(nonce);

        let mut request = Request::new(Full::new(body.bytes));
        *request.method_mut() = parts.method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Ok(request)
    }

    /// Prepends the base URL's path prefix to the target exactly as the agent sent it.
    fn upstream_path_with_query(&self, uri: &Uri) -> String {
        let prefix = &self.upstream.path_prefix;
        let mut target = String::with_capacity(
            prefix.len() + uri.path().len() + uri.query().map_or(0, |q| q.len() + 1),
        );
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
        method: &Method,
        path_with_query: &str,
        nonce: &str,
        body_sha256: &str,
    ) -> Result<(), ProxyError> {
        let key = self.key.load();
        let input = SignatureInput {
            method: method.as_str(),
            path_with_query,
            timestamp: signing::unix_now(),
            nonce,
            body_sha256,
        };
        let signed = signing::sign(&key, &input, self.encoding);

        let value = |text: String| {
            HeaderValue::try_from(text).map_err(|_| {
                ProxyError::Internal("a signing header value is not a valid header".into())
            })
        };
        headers.insert(KEY_ID_HEADER, value(signed.key_id)?);
        headers.insert(TIMESTAMP_HEADER, value(signed.timestamp)?);
        headers.insert(NONCE_HEADER, value(signed.nonce)?);
        let mut signature = value(signed.signature)?;
        signature.set_sensitive(true);
        headers.insert(SIGNATURE_HEADER, signature);
        Ok(())
    }
}

/// Rejects requests that must never be forwarded, whatever the policy says.
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
    Ok(())
}

fn strip_response_headers(mut response: Response<Incoming>) -> Response<Incoming> {
    remove_hop_by_hop(response.headers_mut());
    response
}

fn log_error(method: &Method, summary: &Summary, error: &ProxyError) {
    let route = summary.route.as_deref().unwrap_or("-");
    match error.side() {
        crate::error::Side::Agent => {
            tracing::info!(%method, route, code = error.code(), error = %error, "request rejected")
        }
        _ => tracing::warn!(%method, route, code = error.code(), error = %error, "request failed"),
    }
}
