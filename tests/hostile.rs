//! Hostile and malformed requests against a running proxy, over raw TCP and HTTP/2.
//!
//! One table drives the test. Each row is a request an agent that is buggy or hijacked
//! might send, the response it must get, and whether the upstream may see it. A row that
//! hyper rejects before the proxy receives it asserts hyper's own status, as observed with
//! hyper 1.13 and httparse 1.10.

use std::net::SocketAddr;
use std::time::Duration;

use agent_access_proxy::standin::RecordedRequest;

use crate::h2::H2Body;
use crate::stack::{Stack, KEY_ID, WORKSPACE};
use crate::wire::{Ending, Observed};

/// Time any single exchange may take before the row fails.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a stand-in of the API and a proxy in front of it, both on loopback ports.
mod stack {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use agent_access_proxy::config;
    use agent_access_proxy::proxy::Proxy;
    use agent_access_proxy::secret::Secret;
    use agent_access_proxy::server::{self, Listener, ServerOptions};
    use agent_access_proxy::signing::SignatureEncoding;
    use agent_access_proxy::standin::StandIn;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    pub const WORKSPACE: &str = "ws_test";
    pub const KEY_ID: &str = "key_hostile";
    const SECRET: &str = "hostile-secret-3f9a61c2";
    const SCOPES: &str = r#""env:read", "artifacts:write", "files:propose", "events:write""#;

    /// A running proxy and stand-in; both stop when this drops.
    pub struct Stack {
        pub proxy: SocketAddr,
        pub upstream: SocketAddr,
        pub stand_in: Arc<StandIn>,
        pub max_header_bytes: usize,
        _dir: tempfile::TempDir,
        _stop_proxy: oneshot::Sender<()>,
        _stop_upstream: oneshot::Sender<()>,
    }

    impl Stack {
        pub async fn start() -> Stack {
            let dir = tempfile::tempdir().unwrap();
            let upstream_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let upstream = upstream_listener.local_addr().unwrap();

            let stand_in = StandIn::new(WORKSPACE, "", SignatureEncoding::Hex);
            stand_in.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
            let (stop_upstream, upstream_stopped) = oneshot::channel::<()>();
            tokio::spawn(Arc::clone(&stand_in).serve(upstream_listener, None, async {
                let _ = upstream_stopped.await;
            }));

            let secret_path = dir.path().join("secret");
            std::fs::write(&secret_path, SECRET).unwrap();
            let config_path = dir.path().join("proxy.toml");
            // [listen] keeps its defaults apart from the address, so the header limit is
            // the documented default.
            let text = format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n\n\
                 [upstream]\nurl = \"http://{upstream}\"\nconnect_timeout_seconds = 2\n\n\
                 [key]\nid = \"{KEY_ID}\"\nsecret_file = {secret_path:?}\n\n\
                 [policy]\nworkspace = \"{WORKSPACE}\"\nscopes = [{SCOPES}]\n\n\
                 [admin]\nenabled = false\n"
            );
            std::fs::write(&config_path, text).unwrap();

            let settings = config::load(Some(&config_path)).expect("the configuration is valid");
            let proxy = Proxy::new(&settings).expect("the upstream client builds");
            let listener = Listener::bind(&settings.listen)
                .await
                .expect("the proxy binds");
            let config::ListenAddress::Tcp(address) = listener.local_address() else {
                panic!("the proxy listens on TCP");
            };
            // The same options the binary derives from the configuration.
            let options = ServerOptions {
                header_read_timeout: settings.limits.header_read_timeout,
                max_header_bytes: settings.limits.max_header_bytes,
                drain_timeout: Duration::from_secs(2),
            };
            let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
            tokio::spawn(server::serve(listener, proxy, options, async {
                let _ = proxy_stopped.await;
            }));

            Stack {
                proxy: address,
                upstream,
                stand_in,
                max_header_bytes: settings.limits.max_header_bytes,
                _dir: dir,
                _stop_proxy: stop_proxy,
                _stop_upstream: stop_upstream,
            }
        }
    }
}

/// What a client saw of one exchange, over HTTP/1 or HTTP/2.
mod wire {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::EXCHANGE_TIMEOUT;

    #[derive(Debug, Default)]
    pub struct Observed {
        /// Status of the first response, or `None` when none arrived.
        pub status: Option<u16>,
        /// The `x-agent-access-proxy-error` header of the first response.
        pub proxy_error: Option<String>,
        /// Body of the first response (HTTP/1 responses read to the connection's end).
        pub body: Vec<u8>,
        /// Responses received on the connection, counted by their status lines.
        pub responses: usize,
        /// What arrived, for failure messages.
        pub transcript: String,
    }

    impl Observed {
        /// Returns the `error.code` field of a JSON body, if there is one.
        pub fn body_code(&self) -> Option<String> {
            let value: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
            value["error"]["code"].as_str().map(str::to_owned)
        }
    }

    /// What the client does after writing its request.
    #[derive(Clone, Copy, Debug)]
    pub enum Ending {
        /// Keeps the connection open until the proxy closes it.
        Open,
        /// Closes the write half, so the proxy reads the end of input but can still respond.
        CloseWrite,
        /// Closes the whole connection at once, so no response can arrive.
        Close,
    }

    /// Writes `request` to a new connection, ends the client's side as `ending` specifies, and
    /// reads until the proxy closes the connection.
    pub async fn exchange(
        address: SocketAddr,
        request: &[u8],
        ending: Ending,
    ) -> Result<Observed, String> {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect failed: {error}"))?;
        // hyper may close the connection before it has read the whole request, as it does
        // after an oversized header. Whatever it sent before closing is still read below.
        let _ = stream.write_all(request).await;
        match ending {
            Ending::Open => {}
            Ending::CloseWrite => {
                let _ = stream.shutdown().await;
            }
            Ending::Close => {
                drop(stream);
                return Ok(Observed {
                    transcript: "the client closed the connection".to_owned(),
                    ..Observed::default()
                });
            }
        }

        let mut received = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
        loop {
            let read = tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await;
            match read {
                Err(_) => {
                    return Err(format!(
                        "the connection stayed open for {EXCHANGE_TIMEOUT:?}; received {:?}",
                        String::from_utf8_lossy(&received)
                    ))
                }
                Ok(Ok(0)) => break,
                Ok(Ok(count)) => received.extend_from_slice(&buffer[..count]),
                // A reset that follows a response (the kernel sends one when the peer
                // closes with unread input) leaves what arrived before it intact.
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => break,
                Ok(Err(error)) => return Err(format!("read failed: {error}")),
            }
        }
        Ok(parse_http1(&received))
    }

    fn parse_http1(received: &[u8]) -> Observed {
        let text = String::from_utf8_lossy(received).into_owned();
        let responses = text
            .match_indices("HTTP/1.")
            .filter(|(index, _)| *index == 0 || text[..*index].ends_with('\n'))
            .count();
        let mut observed = Observed {
            responses,
            transcript: text.clone(),
            ..Observed::default()
        };
        let Some(head_end) = find(received, b"\r\n\r\n") else {
            return observed;
        };

        let head = String::from_utf8_lossy(&received[..head_end]);
        let mut lines = head.split("\r\n");
        observed.status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|status| status.parse().ok());
        let mut content_length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case(agent_access_proxy::error::PROXY_ERROR_HEADER) {
                observed.proxy_error = Some(value.to_owned());
            }
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse::<usize>().ok();
            }
        }

        let body = &received[head_end + 4..];
        let length = content_length.unwrap_or(body.len()).min(body.len());
        observed.body = body[..length].to_vec();
        observed
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack
            .windows(needle.len())
            .position(|window| window == needle)
    }
}

/// HTTP/2 requests with prior knowledge, through hyper's client connection.
mod h2 {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Request;
    use http_body_util::channel::Channel;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;

    use super::wire::Observed;
    use super::EXCHANGE_TIMEOUT;

    type Body = BoxBody<Bytes, std::io::Error>;

    /// How the request body is sent.
    #[derive(Clone, Debug)]
    pub enum H2Body {
        Empty,
        Full(&'static str),
        /// Sends these bytes, then resets the stream with RST_STREAM before the body ends.
        ResetAfter(&'static str),
    }

    /// Sends one request on a new connection; a stream reset or connection error becomes
    /// an `Observed` with no status.
    pub async fn exchange(
        address: SocketAddr,
        method: &str,
        uri: &str,
        headers: &[(&'static str, &'static str)],
        body: H2Body,
    ) -> Result<Observed, String> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect failed: {error}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake::<_, Body>(TokioIo::new(stream))
                .await
                .map_err(|error| format!("HTTP/2 handshake failed: {error}"))?;
        let driver = tokio::spawn(connection);

        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (request_body, resetter) = match body {
            H2Body::Empty => (boxed(Empty::new()), None),
            H2Body::Full(text) => (boxed(Full::new(Bytes::from_static(text.as_bytes()))), None),
            H2Body::ResetAfter(text) => {
                let (body_sender, channel) = Channel::<Bytes, std::io::Error>::new(1);
                (channel.boxed(), Some((body_sender, text)))
            }
        };
        let request = builder
            .body(request_body)
            .map_err(|error| format!("the test built an invalid request: {error}"))?;

        let response = sender.send_request(request);
        let reset = async move {
            if let Some((mut body_sender, text)) = resetter {
                let _ = body_sender
                    .send_data(Bytes::from_static(text.as_bytes()))
                    .await;
                // Lets the first DATA frame reach the proxy, so the reset lands mid-body.
                tokio::time::sleep(Duration::from_millis(100)).await;
                body_sender.abort(std::io::Error::other("the test resets the stream"));
            }
        };
        let (response, ()) =
            tokio::time::timeout(EXCHANGE_TIMEOUT, async { tokio::join!(response, reset) })
                .await
                .map_err(|_| format!("no HTTP/2 response within {EXCHANGE_TIMEOUT:?}"))?;

        let observed = match response {
            Err(error) => Observed {
                transcript: format!("no response: {error}"),
                ..Observed::default()
            },
            Ok(response) => {
                let status = response.status().as_u16();
                let proxy_error = response
                    .headers()
                    .get(agent_access_proxy::error::PROXY_ERROR_HEADER)
                    .map(|value| value.to_str().unwrap_or("<not ASCII>").to_owned());
                let collected = tokio::time::timeout(EXCHANGE_TIMEOUT, response.collect())
                    .await
                    .map_err(|_| "the HTTP/2 response body did not end".to_owned())?;
                let body = collected
                    .map_err(|error| format!("the HTTP/2 response body failed: {error}"))?
                    .to_bytes()
                    .to_vec();
                Observed {
                    status: Some(status),
                    proxy_error,
                    transcript: String::from_utf8_lossy(&body).into_owned(),
                    body,
                    responses: 1,
                }
            }
        };
        driver.abort();
        Ok(observed)
    }

    fn boxed<B>(body: B) -> Body
    where
        B: http_body::Body<Data = Bytes, Error = std::convert::Infallible> + Send + Sync + 'static,
    {
        body.map_err(|never| match never {}).boxed()
    }
}

/// How a row's request is sent.
enum Send {
    /// Bytes on a new TCP connection, which stays open until the proxy closes it.
    Raw(Vec<u8>),
    /// Bytes on a new TCP connection, then the given end of the client's side.
    Cut(Vec<u8>, Ending),
    /// One HTTP/2 request with prior knowledge.
    H2 {
        method: &'static str,
        uri: String,
        headers: Vec<(&'static str, &'static str)>,
        body: H2Body,
    },
}

/// A check of what the upstream received, beyond the ones every forwarded row gets.
type UpstreamCheck = fn(&RecordedRequest) -> Result<(), String>;

/// What must happen. Every outcome but `Forwarded` asserts that the upstream received
/// nothing.
enum Outcome {
    /// The proxy sent its own error response with this status, and this code in the
    /// `x-agent-access-proxy-error` header and the JSON body.
    Proxy(u16, &'static str),
    /// hyper responded with this status before the proxy received the request.
    Hyper(u16),
    /// The connection closed, or the HTTP/2 stream was reset, without any response.
    NoResponse,
    /// The upstream received exactly one request, with a signature the stand-in verified,
    /// the upstream's own Host, and this target byte for byte. Its status came back
    /// unchanged.
    Forwarded {
        status: u16,
        target: String,
        check: Option<UpstreamCheck>,
    },
}

struct Case {
    name: &'static str,
    send: Send,
    outcome: Outcome,
}

fn case(name: &'static str, send: Send, outcome: Outcome) -> Case {
    Case {
        name,
        send,
        outcome,
    }
}

/// Returns the API path of `suffix` in the pinned workspace.
fn api(suffix: &str) -> String {
    format!("/agent-api/v1/workspaces/{WORKSPACE}/{suffix}")
}

fn raw(text: impl Into<Vec<u8>>) -> Send {
    Send::Raw(text.into())
}

/// Builds a GET of `target` with ordinary headers.
fn get(target: &str) -> Send {
    with_headers("GET", target, "")
}

/// Builds a request with `extra` header lines (each ending in CRLF) and no body.
fn with_headers(method: &str, target: &str, extra: &str) -> Send {
    raw(format!(
        "{method} {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n{extra}\r\n"
    ))
}

/// Builds a POST of `body` to `target` after the header lines in `framing`, which set its
/// length.
fn post(target: &str, framing: &str, body: &str) -> Send {
    raw(format!(
        "POST {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n{framing}\r\n{body}"
    ))
}

fn h2(method: &'static str, uri: String, body: H2Body) -> Send {
    Send::H2 {
        method,
        uri,
        headers: Vec::new(),
        body,
    }
}

fn forwarded(status: u16, target: &str) -> Outcome {
    Outcome::Forwarded {
        status,
        target: target.to_owned(),
        check: None,
    }
}

fn forwarded_with(status: u16, target: &str, check: UpstreamCheck) -> Outcome {
    Outcome::Forwarded {
        status,
        target: target.to_owned(),
        check: Some(check),
    }
}

/// A valid artifact body of 24 bytes.
const ARTIFACT: &str = r#"{"title":"T","text":"x"}"#;

/// A request for another workspace, hidden in the body of a request-smuggling attempt.
const SMUGGLED: &str =
    "GET /agent-api/v1/workspaces/ws_other/environment HTTP/1.1\r\nhost: proxy\r\n\r\n";

fn cases(stack: &Stack) -> Vec<Case> {
    use Outcome::{Hyper, NoResponse, Proxy};

    let environment = &api("environment");
    let artifacts = &api("artifacts");
    let events = &api("events");
    let proxy = stack.proxy;
    let oversized = "a".repeat(stack.max_header_bytes + 1024);
    let under_limit = "a".repeat(stack.max_header_bytes - 4096);
    let many_headers: String = (0..120).map(|index| format!("x-h{index}: v\r\n")).collect();
    let artifact_length = format!("content-length: {}\r\n", ARTIFACT.len());
    let chunked = "transfer-encoding: chunked\r\n";

    vec![
        // Traversal, in every encoding the checks know of.
        case("dot-dot segment", get(&api("../ws_other/environment")), Proxy(400, "invalid_target")),
        case("dot segment", get(&api("./environment")), Proxy(400, "invalid_target")),
        case("dot-dot as last segment", get(&api("files/..")), Proxy(400, "invalid_target")),
        case(
            "encoded dot-dot, lower case",
            get(&api("%2e%2e/ws_other/environment")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "encoded dot-dot, upper case",
            get(&api("%2E%2E/ws_other/environment")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "half-encoded dot-dot, mixed case",
            get(&api(".%2E/ws_other/environment")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "double-encoded dot-dot",
            get(&api("%252e%252e/ws_other/environment")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "overlong UTF-8 dot-dot",
            get(&api("%c0%ae%c0%ae/ws_other/environment")),
            Proxy(400, "invalid_target"),
        ),
        // Servlet-style servers drop `;parameters` before resolving dot segments, so these
        // read as `files/..` and `files/` there, and as the same once a server in front
        // decodes `%3B`.
        case(
            "path parameter on dot-dot",
            get(&api("files/..;x=1/proposals")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "encoded path parameter on dot-dot",
            get(&api("files/..%3Bx=1")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "path parameter alone",
            get(&api("files/;x=1")),
            Proxy(400, "invalid_target"),
        ),
        // Encoded separators, which would split or join segments after a decode.
        case(
            "encoded slash, lower case",
            get(&api("files/..%2f..%2fws_other%2fenvironment")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "encoded slash, upper case",
            get(&api("files/..%2F..%2Fws_other")),
            Proxy(400, "invalid_target"),
        ),
        case(
            "double-encoded slash",
            get(&api("files/..%252f..%252fws_other")),
            Proxy(400, "invalid_target"),
        ),
        case("backslash", get(&api("files/..\\..\\ws_other")), Proxy(400, "invalid_target")),
        case(
            "encoded backslash",
            get(&api("files/..%5C..%5cws_other")),
            Proxy(400, "invalid_target"),
        ),
        // Empty segments, which servers collapse or keep.
        case(
            "double slash before workspace",
            get(&format!("/agent-api/v1/workspaces//{WORKSPACE}/environment")),
            Proxy(400, "invalid_target"),
        ),
        case("leading double slash", get(&format!("/{environment}")), Proxy(400, "invalid_target")),
        case("trailing slash", get(&format!("{environment}/")), Proxy(400, "invalid_target")),
        // Another workspace, in the path, a second segment or the query.
        case(
            "other workspace",
            get("/agent-api/v1/workspaces/ws_other/environment"),
            Proxy(403, "workspace_not_allowed"),
        ),
        case(
            "workspace in upper case",
            get("/agent-api/v1/workspaces/WS_TEST/environment"),
            Proxy(403, "workspace_not_allowed"),
        ),
        case(
            "workspace percent-encoded",
            get("/agent-api/v1/workspaces/ws%5Ftest/environment"),
            Proxy(403, "workspace_not_allowed"),
        ),
        case(
            "workspace with path parameter",
            get(&format!("/agent-api/v1/workspaces/{WORKSPACE};ws_other/environment")),
            Proxy(403, "workspace_not_allowed"),
        ),
        case(
            "other workspace as second segment",
            get(&api("ws_other/environment")),
            Proxy(403, "unknown_route"),
        ),
        // The node id is opaque: the upstream looks it up in the pinned workspace.
        case(
            "other workspace as node id",
            get(&api("files/ws_other")),
            forwarded(404, &api("files/ws_other")),
        ),
        // The query is forwarded byte for byte and never picks the workspace.
        case(
            "other workspace in query",
            get(&format!("{environment}?workspace=ws_other")),
            forwarded(200, &format!("{environment}?workspace=ws_other")),
        ),
        case(
            "traversal in query",
            get(&format!("{environment}?next=/../../ws_other/%2e%2e")),
            forwarded(200, &format!("{environment}?next=/../../ws_other/%2e%2e")),
        ),
        // The http crate drops a fragment while parsing, so neither the policy nor the
        // upstream receives it.
        case(
            "fragment dropped",
            get(&format!("{environment}#/../../ws_other")),
            forwarded(200, environment),
        ),
        // Targets in other forms, and methods outside the route table.
        case(
            "absolute form, other host",
            with_headers("GET", &format!("http://evil.example{environment}"), ""),
            Proxy(400, "absolute_form_not_supported"),
        ),
        case(
            "absolute form, proxy itself",
            with_headers("GET", &format!("http://{proxy}{environment}"), ""),
            Proxy(400, "absolute_form_not_supported"),
        ),
        case(
            "authority form on GET",
            get("evil.example:443"),
            Proxy(400, "absolute_form_not_supported"),
        ),
        case("asterisk form", with_headers("OPTIONS", "*", ""), Proxy(400, "invalid_target")),
        case(
            "CONNECT to another host",
            with_headers("CONNECT", "evil.example:443", ""),
            Proxy(405, "connect_not_supported"),
        ),
        case(
            "TRACE",
            with_headers("TRACE", environment, "max-forwards: 0\r\n"),
            Proxy(403, "unknown_route"),
        ),
        case("method in lower case", with_headers("get", environment, ""), Proxy(403, "unknown_route")),
        case("method in title case", with_headers("Get", environment, ""), Proxy(403, "unknown_route")),
        case(
            "upgrade to h2c",
            with_headers(
                "GET",
                environment,
                "connection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
            ),
            Proxy(400, "upgrade_not_supported"),
        ),
        // Host spoofing: the destination comes from the configuration, never a header.
        case(
            "HTTP/1.0 without Host",
            raw(format!("GET {environment} HTTP/1.0\r\n\r\n")),
            forwarded(200, environment),
        ),
        case(
            "Host of another server",
            raw(format!("GET {environment} HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n")),
            forwarded(200, environment),
        ),
        // RFC 9112, section 3.2: an HTTP/1.1 request carries exactly one Host.
        case(
            "two Host headers",
            with_headers("GET", environment, "host: other.example\r\n"),
            Proxy(400, "invalid_host_header"),
        ),
        case(
            "HTTP/1.1 without Host",
            raw(format!(
                "GET {environment} HTTP/1.1\r\nconnection: close\r\n\r\n"
            )),
            Proxy(400, "invalid_host_header"),
        ),
        // X-Forwarded-Host and Forwarded are ordinary end-to-end headers: they pass through
        // as the agent sent them, the signature does not cover them, and they never pick
        // the destination.
        case(
            "X-Forwarded-Host of another server",
            with_headers(
                "GET",
                environment,
                "x-forwarded-host: evil.example\r\nforwarded: host=evil.example\r\n",
            ),
            forwarded_with(200, environment, forwarded_host_passes_through),
        ),
        case(
            "forged signing headers",
            with_headers(
                "GET",
                environment,
                "x-integration-key-id: key_forged\r\nX-Integration-Signature: 00\r\nx-integration-nonce: n\r\nx-integration-timestamp: 1\r\n",
            ),
            forwarded_with(200, environment, signed_by_proxy_only),
        ),
        // Message framing. hyper drops Content-Length when Transfer-Encoding is present and
        // reads the chunked body, so bytes past Content-Length's end are body, never a
        // second request. The stand-in rejects that body as invalid JSON.
        case(
            "Content-Length with chunked",
            post(
                events,
                &format!("content-length: 0\r\n{chunked}"),
                &format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
            forwarded_with(400, events, smuggled_bytes_are_body),
        ),
        case(
            "two different Content-Lengths",
            post(artifacts, &format!("{artifact_length}content-length: 2\r\n"), ARTIFACT),
            Hyper(400),
        ),
        case(
            "two equal Content-Lengths",
            post(artifacts, &artifact_length.repeat(2), ARTIFACT),
            forwarded_with(201, artifacts, one_content_length),
        ),
        case(
            "Content-Length list of two values",
            post(artifacts, "content-length: 24, 2\r\n", ARTIFACT),
            Hyper(400),
        ),
        case("signed Content-Length", post(artifacts, "content-length: +24\r\n", ARTIFACT), Hyper(400)),
        case(
            "chunked not the last coding",
            post(artifacts, "transfer-encoding: chunked, gzip\r\n", "0\r\n\r\n"),
            Hyper(400),
        ),
        // hyper decodes only chunked, so a body in another coding would reach the upstream
        // as bytes it cannot read.
        case(
            "gzip before chunked",
            post(
                artifacts,
                "transfer-encoding: gzip, chunked\r\n",
                &format!("18\r\n{ARTIFACT}\r\n0\r\n\r\n"),
            ),
            Proxy(501, "transfer_coding_not_supported"),
        ),
        // A trailer could carry fields, such as a signing header, after the proxy checked
        // the header section.
        case(
            "chunked body with trailer",
            post(
                artifacts,
                chunked,
                &format!(
                    "18\r\n{ARTIFACT}\r\n0\r\nx-integration-signature: forged\r\n\r\n"
                ),
            ),
            Proxy(400, "trailers_not_supported"),
        ),
        case(
            "chunked in HTTP/1.0",
            raw(format!("POST {artifacts} HTTP/1.0\r\n{chunked}\r\n0\r\n\r\n")),
            Hyper(400),
        ),
        case(
            "bad chunk size",
            post(artifacts, chunked, &format!("zz\r\n{ARTIFACT}\r\n0\r\n\r\n")),
            Proxy(400, "body_read_failed"),
        ),
        case(
            "chunk size overflow",
            post(artifacts, chunked, &format!("fffffffffffffffffff\r\n{ARTIFACT}\r\n0\r\n\r\n")),
            Proxy(400, "body_read_failed"),
        ),
        // The client stops sending mid-body. With only the write half closed, hyper reads
        // the end of input and the proxy can still respond.
        case(
            "body stops early",
            Send::Cut(
                format!("POST {artifacts} HTTP/1.1\r\nhost: proxy\r\ncontent-length: 100\r\n\r\n{ARTIFACT}").into_bytes(),
                Ending::CloseWrite,
            ),
            Proxy(400, "body_read_failed"),
        ),
        case(
            "chunked body stops early",
            Send::Cut(
                format!("POST {artifacts} HTTP/1.1\r\nhost: proxy\r\n{chunked}\r\n18\r\n{ARTIFACT}\r\n").into_bytes(),
                Ending::CloseWrite,
            ),
            Proxy(400, "body_read_failed"),
        ),
        case(
            "connection closed mid-body",
            Send::Cut(
                format!("POST {artifacts} HTTP/1.1\r\nhost: proxy\r\ncontent-length: 100\r\n\r\n{ARTIFACT}").into_bytes(),
                Ending::Close,
            ),
            NoResponse,
        ),
        // Header limits, and bytes that must never reach a header value.
        case(
            "header over max_header_bytes",
            with_headers("GET", environment, &format!("x-big: {oversized}\r\n")),
            Hyper(431),
        ),
        case(
            "header under max_header_bytes",
            with_headers("GET", environment, &format!("x-big: {under_limit}\r\n")),
            forwarded(200, environment),
        ),
        case("too many header fields", with_headers("GET", environment, &many_headers), Hyper(431)),
        case("NUL in header value", with_headers("GET", environment, "x-a: a\0b\r\n"), Hyper(400)),
        case(
            "CR in header value",
            with_headers("GET", environment, "x-a: a\rinjected: 1\r\n"),
            Hyper(400),
        ),
        // httparse accepts a bare LF as a line ending, so the agent sent two headers. The
        // upstream receives two headers, which hyper serialises again, never a value with a
        // line break inside.
        case(
            "bare LF ends a header line",
            with_headers("GET", environment, "x-a: a\ninjected: 1\r\n"),
            forwarded_with(200, environment, bare_lf_split_headers),
        ),
        case(
            "obsolete line folding",
            with_headers("GET", environment, "x-a: a\r\n folded\r\n"),
            Hyper(400),
        ),
        case(
            "space before header colon",
            with_headers("GET", environment, "host : evil.example\r\n"),
            Hyper(400),
        ),
        case(
            "non-UTF-8 path",
            raw([
                format!("GET {}", api("files/")).as_bytes(),
                b"\xff\xfe HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n",
            ]
            .concat()),
            Hyper(400),
        ),
        case("control byte in path", get(&api("files/a\x01")), Hyper(400)),
        case("space in path", get(&api("files/a b")), Hyper(400)),
        // HTTP/2, where hyper's client frames the request.
        case(
            "HTTP/2 dot-dot segment",
            h2("GET", format!("http://{proxy}{}", api("../ws_other/environment")), H2Body::Empty),
            Proxy(400, "invalid_target"),
        ),
        case(
            "HTTP/2 other workspace",
            h2(
                "GET",
                format!("http://{proxy}/agent-api/v1/workspaces/ws_other/environment"),
                H2Body::Empty,
            ),
            Proxy(403, "workspace_not_allowed"),
        ),
        // HTTP/2 always carries :authority; it never picks the destination.
        case(
            "HTTP/2 authority of another host",
            h2("GET", format!("http://evil.example{environment}"), H2Body::Empty),
            forwarded(200, environment),
        ),
        case(
            "HTTP/2 CONNECT",
            h2("CONNECT", "evil.example:443".to_owned(), H2Body::Empty),
            Proxy(405, "connect_not_supported"),
        ),
        case(
            "HTTP/2 forged signing headers",
            Send::H2 {
                method: "GET",
                uri: format!("http://{proxy}{environment}"),
                headers: vec![("x-integration-key-id", "key_forged"), ("x-integration-signature", "00")],
                body: H2Body::Empty,
            },
            forwarded_with(200, environment, signed_by_proxy_only),
        ),
        case(
            "HTTP/2 stream reset mid-body",
            Send::H2 {
                method: "POST",
                uri: format!("http://{proxy}{artifacts}"),
                headers: vec![("content-length", "100")],
                body: H2Body::ResetAfter(ARTIFACT),
            },
            NoResponse,
        ),
        case(
            "HTTP/2 stream reset before any DATA",
            h2("POST", format!("http://{proxy}{artifacts}"), H2Body::ResetAfter("")),
            NoResponse,
        ),
        // A well-formed request still goes through after all of the above.
        case(
            "HTTP/2 well-formed artifact",
            h2("POST", format!("http://{proxy}{artifacts}"), H2Body::Full(ARTIFACT)),
            forwarded(201, artifacts),
        ),
    ]
}

/// Returns the header's values as text, in order.
fn header_values(received: &RecordedRequest, name: &str) -> Vec<String> {
    received
        .headers
        .get_all(name)
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect()
}

/// Returns an error naming `name` unless its values are exactly `expected`.
fn expect_values(received: &RecordedRequest, name: &str, expected: &[&str]) -> Result<(), String> {
    let values = header_values(received, name);
    if values != expected {
        return Err(format!(
            "{name} values are {values:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

fn forwarded_host_passes_through(received: &RecordedRequest) -> Result<(), String> {
    expect_values(received, "x-forwarded-host", &["evil.example"])?;
    expect_values(received, "forwarded", &["host=evil.example"])
}

fn signed_by_proxy_only(received: &RecordedRequest) -> Result<(), String> {
    expect_values(received, "x-integration-key-id", &[KEY_ID])?;
    let signatures = header_values(received, "x-integration-signature");
    if signatures.len() != 1 || signatures[0] == "00" {
        return Err(format!(
            "x-integration-signature values are {signatures:?}, expected the proxy's alone"
        ));
    }
    Ok(())
}

fn smuggled_bytes_are_body(received: &RecordedRequest) -> Result<(), String> {
    if received.body != SMUGGLED.as_bytes() {
        return Err(format!(
            "the body is {:?}, expected the smuggled request's bytes",
            received.body
        ));
    }
    expect_values(received, "content-length", &[&SMUGGLED.len().to_string()])?;
    expect_values(received, "transfer-encoding", &[])
}

fn one_content_length(received: &RecordedRequest) -> Result<(), String> {
    expect_values(received, "content-length", &["24"])
}

fn bare_lf_split_headers(received: &RecordedRequest) -> Result<(), String> {
    expect_values(received, "x-a", &["a"])?;
    expect_values(received, "injected", &["1"])
}

async fn send(address: SocketAddr, send: &Send) -> Result<Observed, String> {
    match send {
        Send::Raw(bytes) => wire::exchange(address, bytes, Ending::Open).await,
        Send::Cut(bytes, ending) => wire::exchange(address, bytes, *ending).await,
        Send::H2 {
            method,
            uri,
            headers,
            body,
        } => h2::exchange(address, method, uri, headers, body.clone()).await,
    }
}

/// Pushes a message onto `problems` when `got` differs from `expected`.
fn compare<T: PartialEq + std::fmt::Debug>(
    problems: &mut Vec<String>,
    what: &str,
    got: T,
    expected: T,
) {
    if got != expected {
        problems.push(format!("{what} is {got:?}, expected {expected:?}"));
    }
}

/// Compares one row's observation with its expected outcome and returns every mismatch.
fn check(
    stack: &Stack,
    outcome: &Outcome,
    observed: &Observed,
    upstream_requests: u64,
    last_upstream: Option<RecordedRequest>,
) -> Vec<String> {
    let (status, proxy_error, forwarded) = match outcome {
        Outcome::Proxy(status, code) => (Some(*status), Some(*code), 0),
        Outcome::Hyper(status) => (Some(*status), None, 0),
        Outcome::NoResponse => (None, None, 0),
        Outcome::Forwarded { status, .. } => (Some(*status), None, 1),
    };

    let mut problems = Vec::new();
    compare(&mut problems, "the status", observed.status, status);
    compare(
        &mut problems,
        "the proxy error header",
        observed.proxy_error.as_deref(),
        proxy_error,
    );
    if let Some(code) = proxy_error {
        compare(
            &mut problems,
            "the error code in the body",
            observed.body_code().as_deref(),
            Some(code),
        );
    }
    if status.is_some() {
        compare(
            &mut problems,
            "the number of responses",
            observed.responses,
            1,
        );
    }
    compare(
        &mut problems,
        "the number of requests the upstream received",
        upstream_requests,
        forwarded,
    );

    let Outcome::Forwarded { target, check, .. } = outcome else {
        return problems;
    };
    let Some(received) = last_upstream else {
        problems.push("the upstream recorded no request".to_owned());
        return problems;
    };
    compare(
        &mut problems,
        "the upstream's target",
        &received.path_with_query,
        target,
    );
    compare(
        &mut problems,
        "the stand-in's rejection",
        &received.rejection,
        &None,
    );
    compare(
        &mut problems,
        "the upstream's Host values",
        header_values(&received, "host"),
        vec![stack.upstream.to_string()],
    );
    if let Some(Err(message)) = check.map(|check| check(&received)) {
        problems.push(message);
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_table() {
    let stack = Stack::start().await;
    let cases = cases(&stack);
    assert!(cases.len() >= 40, "the table has {} rows", cases.len());

    let mut failures = Vec::new();
    let mut forwarded_rows = 0;
    for case in &cases {
        let before = stack.stand_in.received_total();
        let observed = match send(stack.proxy, &case.send).await {
            Ok(observed) => observed,
            Err(error) => {
                failures.push(format!("{}: {error}", case.name));
                continue;
            }
        };
        // Without a response, the client cannot tell when the proxy is done with the
        // request. A pause lets one that would wrongly be forwarded arrive first.
        if matches!(case.outcome, Outcome::NoResponse) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if matches!(case.outcome, Outcome::Forwarded { .. }) {
            forwarded_rows += 1;
        }

        let upstream_requests = stack.stand_in.received_total() - before;
        let last_upstream = stack.stand_in.recorded().pop();
        let problems = check(
            &stack,
            &case.outcome,
            &observed,
            upstream_requests,
            last_upstream,
        );
        if !problems.is_empty() {
            let transcript: String = observed.transcript.chars().take(400).collect();
            failures.push(format!(
                "{}:\n  - {}\n  received: {transcript:?}",
                case.name,
                problems.join("\n  - ")
            ));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // A request still in the proxy when its row was checked would arrive by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stack.stand_in.received_total(),
        forwarded_rows,
        "the upstream received a different number of requests than the table forwards"
    );
    let outside: Vec<String> = stack
        .stand_in
        .recorded()
        .into_iter()
        .map(|request| request.path_with_query)
        .filter(|target| !target.starts_with(&api("")))
        .collect();
    assert!(
        outside.is_empty(),
        "the upstream received targets outside the pinned workspace: {outside:?}"
    );
}
