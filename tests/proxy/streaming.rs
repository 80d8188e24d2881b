//! Responses stream back as they arrive: an event stream reaches the agent event by event.

use std::sync::Arc;
use std::time::Duration;

use agent_access_proxy::secret::Secret;
use agent_access_proxy::signing::SignatureEncoding;
use agent_access_proxy::standin::Verifier;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};

use crate::harness::{api, Harness, Setup, KEY_ID, SECRET};

type EventSenders = Arc<Mutex<mpsc::UnboundedSender<Sender<Bytes>>>>;

/// Starts a verifying upstream that answers with an open event stream and hands the
/// stream's sender to the test, which decides when each event goes out.
async fn event_stream_upstream() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Sender<Bytes>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let verifier = Arc::new(Verifier::new(SignatureEncoding::Hex));
    verifier.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
    let (senders_tx, senders_rx) = mpsc::unbounded_channel();
    let senders: EventSenders = Arc::new(Mutex::new(senders_tx));

    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (verifier, senders) = (verifier.clone(), senders.clone());
            let service =
                service_fn(move |request| respond(request, verifier.clone(), senders.clone()));
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, senders_rx)
}

async fn respond(
    request: Request<Incoming>,
    verifier: Arc<Verifier>,
    senders: EventSenders,
) -> Result<Response<http_body_util::Either<Channel<Bytes>, Full<Bytes>>>, std::convert::Infallible>
{
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let target = parts.uri.path_and_query().unwrap().as_str();
    if let Err(rejection) = verifier.verify(parts.method.as_str(), target, &parts.headers, &body) {
        let mut response = Response::new(http_body_util::Either::Right(Full::new(Bytes::from(
            rejection.to_string(),
        ))));
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    }

    let (sender, channel) = Channel::new(4);
    senders.lock().await.send(sender).unwrap();
    let mut response = Response::new(http_body_util::Either::Left(channel));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    Ok(response)
}

#[tokio::test]
async fn event_stream_arrives_event_by_event() {
    let (upstream, mut senders) = event_stream_upstream().await;
    let harness = Harness::with(Setup {
        upstream_url: Some(format!("http://{upstream}")),
        ..Setup::default()
    })
    .await;
    let client = crate::harness::http1_client();
    let request = Request::get(harness.url(&api("environment")))
        .body(Full::new(Bytes::new()))
        .unwrap();

    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut sender = senders.recv().await.unwrap();
    let mut body = response.into_body();

    for event in ["data: one\n\n", "data: two\n\n", "data: three\n\n"] {
        // The next event is sent only after the previous one reached the agent, so a proxy
        // that buffered the response would time out here.
        sender
            .send_data(Bytes::from_static(event.as_bytes()))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the event arrives before the stream ends")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), event.as_bytes());
    }
    drop(sender);
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream ends when the upstream ends it");
}
