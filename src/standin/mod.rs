//! A verifying stand-in of the Agent Access API, for tests, the demo and offline agent
//! development.
//!
//! It serves the seven endpoints on a listener it is given and verifies every request as a
//! strict server would: the four headers, a known key, a timestamp within ±300 s, an unused
//! nonce, the body hash and the HMAC. A failure gets 401 with a JSON reason. What agents
//! write is kept in memory. `GET /_stand-in/state` returns what was written, unsigned,
//! so scripts can check an agent's run.

mod store;
mod verify;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

pub use store::{Artifact, Event, Proposal, Store};
pub use verify::{Rejection, Verifier, TIMESTAMP_WINDOW_SECONDS};

use crate::secret::Secret;
use crate::signing::SignatureEncoding;

/// Path of the unsigned inspection endpoint.
pub const STATE_PATH: &str = "/_stand-in/state";
/// Largest request body the stand-in reads.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How many requests the stand-in keeps for inspection; older ones are dropped first.
const RECORDED_REQUESTS: usize = 4096;

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: Method,
    pub version: http::Version,
    pub path_with_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `None` when verification passed, else the rejection.
    pub rejection: Option<Rejection>,
}

/// The stand-in server's state.
pub struct StandIn {
    verifier: Verifier,
    store: Mutex<Store>,
    path_prefix: String,
    recorded: Mutex<std::collections::VecDeque<RecordedRequest>>,
    received_total: AtomicU64,
    rejected_total: AtomicU64,
}

impl StandIn {
    /// Creates a stand-in for `workspace`, reached under `path_prefix` (empty for none).
    pub fn new(workspace: &str, path_prefix: &str, encoding: SignatureEncoding) -> Arc<StandIn> {
        Arc::new(StandIn {
            verifier: Verifier::new(encoding),
            store: Mutex::new(Store::demo(workspace)),
            path_prefix: path_prefix.trim_end_matches('/').to_owned(),
            recorded: Mutex::new(std::collections::VecDeque::new()),
            received_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
        })
    }

    /// Trusts a key; several may be trusted at once, as during a rotation.
    pub fn add_key(&self, id: &str, secret: Secret) {
        self.verifier.add_key(id, secret);
    }

    pub fn remove_key(&self, id: &str) {
        self.verifier.remove_key(id);
    }

    /// Returns the requests received so far, oldest first (at most the last 4096).
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.recorded
            .lock()
            .expect("recorded lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Counts every request received, including the rejected ones.
    pub fn received_total(&self) -> u64 {
        self.received_total.load(Ordering::Relaxed)
    }

    /// Counts requests that failed verification.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }

    /// Runs `read` with the store locked.
    pub fn with_store<T>(&self, read: impl FnOnce(&Store) -> T) -> T {
        read(&self.store.lock().expect("store lock"))
    }

    /// Serves connections from `listener` until `shutdown` completes. With `tls`, every
    /// connection is TLS, and HTTP/2 is offered by ALPN when the acceptor's config lists it.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().serve_connection(stream, tls.clone()));
                }
                Err(error) => {
                    tracing::warn!(error = %error, "stand-in: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn serve_connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        tls: Option<TlsAcceptor>,
    ) {
        let service = service_fn(move |request| self.clone().handle(request));
        let builder = auto::Builder::new(TokioExecutor::new());
        let result = match tls {
            None => {
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            }
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(stream) => {
                    builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                }
                Err(error) => {
                    tracing::debug!(error = %error, "stand-in: TLS handshake failed");
                    return;
                }
            },
        };
        if let Err(error) = result {
            tracing::debug!(error = %error, "stand-in: connection ended with an error");
        }
    }

    async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let (parts, body) = request.into_parts();
        if parts.method == Method::GET && parts.uri.path() == STATE_PATH {
            let state = self.with_store(Store::written);
            return Ok(json_response(StatusCode::OK, &state));
        }

        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    &error.to_string(),
                ))
            }
        };
        let path_with_query = parts
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str())
            .to_owned();

        let rejection = self
            .verifier
            .verify(
                parts.method.as_str(),
                &path_with_query,
                &parts.headers,
                &body,
            )
            .err();
        self.record(&parts, &path_with_query, &body, rejection.clone());

        if let Some(rejection) = rejection {
            self.rejected_total.fetch_add(1, Ordering::Relaxed);
            tracing::info!(code = rejection.code(), reason = %rejection, "stand-in: request rejected");
            return Ok(error_response(
                StatusCode::UNAUTHORIZED,
                rejection.code(),
                &rejection.to_string(),
            ));
        }

        let key_id = parts.headers[crate::signing::KEY_ID_HEADER]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        Ok(self.route(&parts.method, parts.uri.path(), &key_id, &body))
    }

    fn record(
        &self,
        parts: &http::request::Parts,
        path_with_query: &str,
        body: &Bytes,
        rejection: Option<Rejection>,
    ) {
        self.received_total.fetch_add(1, Ordering::Relaxed);
        let mut recorded = self.recorded.lock().expect("recorded lock");
        if recorded.len() == RECORDED_REQUESTS {
            recorded.pop_front();
        }
        recorded.push_back(RecordedRequest {
            method: parts.method.clone(),
            version: parts.version,
            path_with_query: path_with_query.to_owned(),
            headers: parts.headers.clone(),
            body: body.clone(),
            rejection,
        });
    }

    /// Serves a verified request.
    fn route(
        &self,
        method: &Method,
        path: &str,
        key_id: &str,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        let Some(rest) = path
            .strip_prefix(self.path_prefix.as_str())
            .and_then(|rest| rest.strip_prefix("/agent-api/v1/workspaces/"))
        else {
            return not_found(path);
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let mut store = self.store.lock().expect("store lock");

        if segments[0] != store.workspace {
            return error_response(
                StatusCode::FORBIDDEN,
                "workspace_forbidden",
                "this key cannot reach that workspace",
            );
        }
        let is_read = *method == Method::GET || *method == Method::HEAD;

        match (&segments[1..], is_read, *method == Method::POST) {
            (["environment"], true, _) => json_response(StatusCode::OK, &store.environment(key_id)),
            (["prompts"], true, _) => json_response(StatusCode::OK, &store.prompts()),
            (["file-tree"], true, _) => json_response(StatusCode::OK, &store.file_tree()),
            (["files", node], true, _) => match store.file(node) {
                Some(file) => json_response(StatusCode::OK, &file),
                None => error_response(
                    StatusCode::NOT_FOUND,
                    "file_not_found",
                    &format!("no file node '{node}'"),
                ),
            },
            (["artifacts"], _, true) => with_json(body, |new| {
                let artifact = store.add_artifact(new);
                json_response(
                    StatusCode::CREATED,
                    &json!({ "id": artifact.id, "path": artifact.path }),
                )
            }),
            (["files", node, "proposals"], _, true) => {
                with_json(body, |new| match store.add_proposal(node, new) {
                    Some(proposal) => json_response(
                        StatusCode::CREATED,
                        &json!({ "id": proposal.id, "nodeId": proposal.node_id, "status": proposal.status }),
                    ),
                    None => error_response(
                        StatusCode::NOT_FOUND,
                        "file_not_found",
                        &format!("no file node '{node}'"),
                    ),
                })
            }
            (["events"], _, true) => with_json(body, |new| {
                let outcome = store.add_event(new);
                let status = if outcome.duplicate {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                json_response(
                    status,
                    &json!({ "id": outcome.id, "duplicate": outcome.duplicate }),
                )
            }),
            _ => not_found(path),
        }
    }
}

/// Parses a JSON request body and passes it on, or responds 400.
fn with_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    handle: impl FnOnce(T) -> Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    match serde_json::from_slice(body) {
        Ok(parsed) => handle(parsed),
        Err(error) => error_response(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            &format!("the JSON body is invalid: {error}"),
        ),
    }
}

fn not_found(path: &str) -> Response<Full<Bytes>> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no endpoint at {path}"),
    )
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}
