//! A proxy in front of a verifying stand-in, both on loopback ports chosen by the kernel,
//! plus the clients the tests talk to them with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_access_proxy::config;
use agent_access_proxy::proxy::Proxy;
use agent_access_proxy::secret::Secret;
use agent_access_proxy::server::{self, Listener, ServerOptions};
use agent_access_proxy::signing::SignatureEncoding;
use agent_access_proxy::standin::StandIn;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const WORKSPACE: &str = "ws_test";
pub const KEY_ID: &str = "key_test";
/// Distinctive, so that a scan of any output for it cannot match by accident.
pub const SECRET: &str = "test-secret-7c1e0b9a-do-not-leak";
pub const ALL_SCOPES: [&str; 4] = [
    "env:read",
    "artifacts:write",
    "files:propose",
    "events:write",
];

/// Returns the API path of `suffix` in the test workspace.
pub fn api(suffix: &str) -> String {
    format!("/agent-api/v1/workspaces/{WORKSPACE}/{suffix}")
}

/// What to start.
pub struct Setup {
    pub scopes: Vec<&'static str>,
    /// Path prefix of the upstream base URL, such as `/gateway/eu`.
    pub path_prefix: &'static str,
    pub max_body_bytes: Option<u64>,
    pub response_timeout_seconds: f64,
    /// Base URL of another upstream in place of the stand-in, for fault tests.
    pub upstream_url: Option<String>,
    /// Extra TOML appended to the `[upstream]` table, such as `ca_file = "..."`.
    pub upstream_toml: String,
    /// Extra TOML appended after the `[policy]` table, such as `[[policy.extra_routes]]`.
    pub policy_toml: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            scopes: ALL_SCOPES.to_vec(),
            path_prefix: "",
            max_body_bytes: None,
            response_timeout_seconds: 10.0,
            upstream_url: None,
            upstream_toml: String::new(),
            policy_toml: String::new(),
        }
    }
}

/// A running proxy and stand-in. Both stop when this drops.
pub struct Harness {
    pub proxy_address: SocketAddr,
    pub upstream_address: SocketAddr,
    pub stand_in: Arc<StandIn>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    stop_stand_in: Option<oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let _ = self.stop_stand_in.take().map(|stop| stop.send(()));
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with(Setup::default()).await
    }

    pub async fn with(setup: Setup) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream_address = upstream_listener.local_addr().unwrap();

        let stand_in = StandIn::new(WORKSPACE, setup.path_prefix, SignatureEncoding::Hex);
        stand_in.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
        let (stop_stand_in, stopped) = oneshot::channel::<()>();
        tokio::spawn(Arc::clone(&stand_in).serve(upstream_listener, None, async {
            let _ = stopped.await;
        }));

        let upstream_url = setup
            .upstream_url
            .clone()
            .unwrap_or_else(|| format!("http://{upstream_address}{}", setup.path_prefix));
        let config_path = write_config(&dir, &setup, &upstream_url);
        let (_proxy, proxy_address, stop) = start_proxy(&config_path).await;

        Harness {
            proxy_address,
            upstream_address,
            stand_in,
            dir,
            stop: Some(stop),
            stop_stand_in: Some(stop_stand_in),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy_address)
    }

    /// Sends a request through the proxy over HTTP/1.1.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        send(
            &http1_client(),
            method,
            &self.url(path),
            headers,
            body.into(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Reply {
        let headers = [("content-type", "application/json")];
        self.send(
            Method::POST,
            path,
            &headers,
            Bytes::copy_from_slice(body.as_bytes()),
        )
        .await
    }

    /// Counts the requests that reached the upstream.
    pub fn upstream_requests(&self) -> u64 {
        self.stand_in.received_total()
    }

    /// Returns the last request the stand-in received; panics when there is none.
    pub fn last_upstream_request(&self) -> agent_access_proxy::standin::RecordedRequest {
        self.stand_in
            .recorded()
            .pop()
            .expect("the upstream received a request")
    }
}

fn write_config(dir: &tempfile::TempDir, setup: &Setup, upstream_url: &str) -> std::path::PathBuf {
    let secret_path = dir.path().join("secret");
    std::fs::write(&secret_path, format!("{SECRET}\n")).unwrap();

    let scopes: Vec<String> = setup
        .scopes
        .iter()
        .map(|scope| format!("{scope:?}"))
        .collect();
    let max_body = setup
        .max_body_bytes
        .map(|bytes| format!("max_body_bytes = {bytes}\n"))
        .unwrap_or_default();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"{upstream_url}\"\nconnect_timeout_seconds = 2\nresponse_timeout_seconds = {}\n{}\n\n\
         [key]\nid = \"{KEY_ID}\"\nsecret_file = {:?}\n\n\
         [policy]\nworkspace = \"{WORKSPACE}\"\nscopes = [{}]\n{max_body}\n{}\n",
        setup.response_timeout_seconds,
        setup.upstream_toml,
        secret_path,
        scopes.join(", "),
        setup.policy_toml,
    );

    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Loads a configuration file and serves it on the address it names (port 0 in tests).
pub async fn start_proxy(
    config_path: &std::path::Path,
) -> (Arc<Proxy>, SocketAddr, oneshot::Sender<()>) {
    let settings = config::load(Some(config_path)).expect("the test configuration is valid");
    let proxy = Proxy::new(&settings).expect("the upstream client builds");
    let listener = Listener::bind(&settings.listen)
        .await
        .expect("the proxy binds");
    let address = match listener.local_address() {
        config::ListenAddress::Tcp(address) => address,
        config::ListenAddress::Unix(path) => panic!("expected TCP, got {}", path.display()),
    };

    let (stop, stopped) = oneshot::channel::<()>();
    let options = ServerOptions {
        drain_timeout: Duration::from_secs(2),
        ..ServerOptions::default()
    };
    tokio::spawn(server::serve(
        listener,
        Arc::clone(&proxy),
        options,
        async {
            let _ = stopped.await;
        },
    ));
    (proxy, address, stop)
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {:?}", self.body))
    }

    /// Returns the proxy's error code, or `None` for an upstream response.
    pub fn proxy_error(&self) -> Option<&str> {
        self.headers
            .get(agent_access_proxy::error::PROXY_ERROR_HEADER)
            .map(|value| value.to_str().unwrap())
    }

    /// Checks that this is a proxy error with `code` and `status`, and that the JSON body
    /// carries the same code.
    pub fn assert_proxy_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "status; body {:?}", self.body);
        assert_eq!(self.proxy_error(), Some(code), "error header");
        assert_eq!(self.json()["error"]["code"], code, "error body");
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body)).unwrap();

    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("the proxy answers within 20 s")
        .expect("the request reaches the proxy");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("the response body arrives")
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Writes `request` to a new connection and reads until the server closes it (within 10 s).
/// For targets and framings that HTTP clients refuse to send.
pub async fn raw_exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();

    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the proxy closes the connection within 10 s");
    String::from_utf8_lossy(&response).into_owned()
}

/// Returns the status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}
