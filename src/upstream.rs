//! The client side: a pooled hyper client to the upstream API, over rustls for `https`.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::config::UpstreamSettings;
use crate::error::ProxyError;

/// A pooled client for the upstream API.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    response_timeout: Duration,
}

/// An error building the upstream client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream.ca_file: cannot read CA certificates from '{path}': {message}; give a PEM file with at least one certificate")]
    CaFile { path: String, message: String },
    #[error("upstream: no trusted CA certificates were found on this system; install the ca-certificates package or set upstream.ca_file")]
    NoRoots,
    #[error("upstream: TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

impl UpstreamClient {
    /// Builds the client. Root certificates are loaded now, so a bad CA file fails start-up
    /// instead of the first request.
    pub fn new(settings: &UpstreamSettings) -> Result<Self, ClientError> {
        let tls = tls_config(settings)?;

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));

        // The HTTPS connector also speaks plain HTTP, so an `http://` base URL works for
        // local development and the stand-in.
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);

        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .timer(TokioTimer::new())
            .build(connector);

        Ok(UpstreamClient {
            client,
            response_timeout: settings.response_timeout,
        })
    }

    /// Sends a signed request and waits for the response headers, within the response timeout.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_) => Err(ProxyError::UpstreamTimeout(self.response_timeout)),
        }
    }
}

fn tls_config(settings: &UpstreamSettings) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    // Unreadable individual system certificates are skipped: one broken file in
    // /etc/ssl/certs should not stop the proxy when the others are fine.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);

    if let Some(path) = &settings.ca_file {
        let ca_error = |message: String| ClientError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|error| ca_error(error.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|error| ca_error(error.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("the file holds no PEM certificate".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| ca_error(error.to_string()))?;
        }
    }
    if roots.is_empty() && settings.scheme == http::uri::Scheme::HTTPS {
        return Err(ClientError::NoRoots);
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Maps a client error to the proxy's error, by type and source chain, never by message.
fn classify(error: &hyper_util::client::legacy::Error) -> ProxyError {
    let detail = describe_chain(error);
    if find_source::<rustls::Error>(error).is_some() {
        return ProxyError::UpstreamTls(detail);
    }
    if error.is_connect() {
        return ProxyError::UpstreamUnavailable(detail);
    }
    match find_source::<hyper::Error>(error) {
        Some(hyper_error) if hyper_error.is_parse() || hyper_error.is_parse_status() => {
            ProxyError::UpstreamInvalidResponse(detail)
        }
        _ => ProxyError::UpstreamConnectionLost(detail),
    }
}

fn find_source<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = next_source(error);
    }
    None
}

/// Steps one error down the chain. An io::Error's `source()` skips the error it wraps,
/// and hyper-rustls reports a TLS failure as an io::Error wrapping an io::Error wrapping
/// the rustls::Error, so the wrapped error is taken explicitly.
fn next_source<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    match error
        .downcast_ref::<std::io::Error>()
        .and_then(|io_error| io_error.get_ref())
    {
        Some(inner) => Some(inner as &(dyn StdError + 'static)),
        None => error.source(),
    }
}

/// Joins an error and its sources into one line, such as
/// `client error (Connect): tcp connect error: Connection refused (os error 111)`.
fn describe_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = next_source(error);
    while let Some(source) = current {
        let text = source.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = next_source(source);
    }
    parts.join(": ")
}
