//! An `https` upstream: rustls with an extra CA file, and HTTP/2 chosen by ALPN.

use std::sync::Arc;

use agent_access_proxy::secret::Secret;
use agent_access_proxy::signing::SignatureEncoding;
use agent_access_proxy::standin::StandIn;
use http::{StatusCode, Version};
use tokio::net::TcpListener;

use crate::harness::{api, Harness, Setup, KEY_ID, SECRET, WORKSPACE};

/// Starts a TLS stand-in for `localhost` with a fresh self-signed CA, and returns its
/// address and the CA's PEM.
async fn tls_stand_in() -> (std::net::SocketAddr, String, Arc<StandIn>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let key_der =
        rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key_der)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stand_in = StandIn::new(WORKSPACE, "", SignatureEncoding::Hex);
    stand_in.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(Arc::clone(&stand_in).serve(listener, Some(acceptor), std::future::pending()));
    (address, cert_pem, stand_in)
}

#[tokio::test]
async fn https_upstream_with_extra_ca_over_http2() {
    let (address, ca_pem, stand_in) = tls_stand_in().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca_pem).unwrap();

    let harness = Harness::with(Setup {
        upstream_url: Some(format!("https://localhost:{}", address.port())),
        upstream_toml: format!("ca_file = {ca_path:?}"),
        ..Setup::default()
    })
    .await;
    let reply = harness
        .post(&api("artifacts"), r#"{"title":"tls","text":"x"}"#)
        .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let received = stand_in.recorded().pop().unwrap();
    assert_eq!(received.rejection, None);
    assert_eq!(received.path_with_query, api("artifacts"));
    assert_eq!(stand_in.with_store(|store| store.artifacts().len()), 1);
    assert_eq!(received_version(&stand_in), Some(Version::HTTP_2));
}

#[tokio::test]
async fn unknown_ca_gets_tls_error() {
    let (address, _ca_pem, stand_in) = tls_stand_in().await;

    let harness = Harness::with(Setup {
        upstream_url: Some(format!("https://localhost:{}", address.port())),
        ..Setup::default()
    })
    .await;
    let reply = harness.get(&api("environment")).await;

    reply.assert_proxy_error(StatusCode::BAD_GATEWAY, "upstream_tls_failed");
    assert_eq!(stand_in.received_total(), 0);
}

fn received_version(stand_in: &StandIn) -> Option<Version> {
    stand_in.recorded().pop().map(|request| request.version)
}
