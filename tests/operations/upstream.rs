//! A verifying upstream with knobs the stand-in lacks: a response delay, and dropping the
//! first connections without an answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_access_proxy::secret::Secret;
use agent_access_proxy::signing::{SignatureEncoding, NONCE_HEADER};
use agent_access_proxy::standin::Verifier;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::process::{KEY_ID, SECRET};

/// What the upstream saw.
#[derive(Default)]
pub struct Seen {
    /// Nonce of every request that arrived, answered or not.
    pub nonces: Mutex<Vec<String>>,
    /// Requests that passed verification.
    pub verified: AtomicUsize,
    /// Requests that failed verification.
    pub rejected: AtomicUsize,
}

pub struct Behaviour {
    pub delay: Duration,
    /// How many requests are dropped, connection and all, before any response byte.
    pub drop_first: usize,
}

/// Starts the upstream and returns its base URL and what it sees.
pub async fn start(behaviour: Behaviour) -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let verifier = Arc::new(Verifier::new(SignatureEncoding::Hex));
    verifier.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
    let seen = Arc::new(Seen::default());
    let behaviour = Arc::new(behaviour);

    let state = (verifier, seen.clone(), behaviour);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| respond(request, state.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{address}"), seen)
}

type State = (Arc<Verifier>, Arc<Seen>, Arc<Behaviour>);

async fn respond(
    request: Request<Incoming>,
    (verifier, seen, behaviour): State,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let nonce = parts
        .headers
        .get(NONCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let arrived = {
        let mut nonces = seen.nonces.lock().unwrap();
        nonces.push(nonce);
        nonces.len()
    };
    if arrived <= behaviour.drop_first {
        // An error from the service makes hyper close the connection without a response.
        return Err(std::io::Error::other("dropping this connection on purpose"));
    }

    let target = parts.uri.path_and_query().unwrap().as_str();
    if let Err(rejection) = verifier.verify(parts.method.as_str(), target, &parts.headers, &body) {
        seen.rejected.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from(rejection.to_string())));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    }
    seen.verified.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(behaviour.delay).await;
    Ok(Response::new(Full::new(Bytes::from_static(
        b"{\"ok\":true}",
    ))))
}
