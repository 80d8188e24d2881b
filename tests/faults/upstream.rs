//! A verifying upstream written directly on sockets, so that it can fail the way real
//! servers and networks do: reset a connection, stop mid-response, send garbage, present a
//! bad certificate, or speak plain HTTP where TLS is expected.
//!
//! It speaks HTTP/1.1 with keep-alive and verifies every request's signature like the
//! stand-in. The query parameter `fault=NAME` picks a fault for one request (see
//! [`Fault`]). The transport, plain TCP or TLS with a given certificate, applies to the
//! connections accepted after it is set, so a test can fix a broken upstream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_access_proxy::secret::Secret;
use agent_access_proxy::signing::SignatureEncoding;
use agent_access_proxy::standin::Verifier;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::process::{KEY_ID, SECRET};

/// Largest request head the upstream reads, as a real server would limit it.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Maximum time a stalling fault keeps a connection open, so no test can hang on it.
const MAX_STALL: Duration = Duration::from_secs(30);
/// Bytes of the 1000-byte body sent before a fault cuts the response off.
pub const PARTIAL_BODY_BYTES: usize = 100;
/// Declared length of the body that a fault cuts off.
pub const DECLARED_BODY_BYTES: usize = 1000;

/// A fault picked by the query parameter `fault=NAME`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `reset-before-headers`: reads the request, then resets the connection (RST).
    ResetBeforeHeaders,
    /// `reset-after-headers`: sends a 200 declaring 1000 body bytes, 100 of them, then RST.
    ResetAfterHeaders,
    /// `stall-headers`: reads the request and never responds.
    StallHeaders,
    /// `stall-body`: sends a 200 declaring 1000 body bytes, 100 of them, then nothing.
    StallBody,
    /// `invalid`: responds with bytes that are not HTTP.
    Invalid,
    /// `stream-fast`: streams a 256 MiB body as fast as the reader takes it.
    StreamFast,
    /// `stream-slow`: streams a 4 MiB body in 4 KiB pieces every 10 ms.
    StreamSlow,
}

impl Fault {
    pub fn query(self) -> &'static str {
        match self {
            Fault::ResetBeforeHeaders => "fault=reset-before-headers",
            Fault::ResetAfterHeaders => "fault=reset-after-headers",
            Fault::StallHeaders => "fault=stall-headers",
            Fault::StallBody => "fault=stall-body",
            Fault::Invalid => "fault=invalid",
            Fault::StreamFast => "fault=stream-fast",
            Fault::StreamSlow => "fault=stream-slow",
        }
    }

    fn from_target(target: &str) -> Option<Fault> {
        let (_, query) = target.split_once('?')?;
        [
            Fault::ResetBeforeHeaders,
            Fault::ResetAfterHeaders,
            Fault::StallHeaders,
            Fault::StallBody,
            Fault::Invalid,
            Fault::StreamFast,
            Fault::StreamSlow,
        ]
        .into_iter()
        .find(|fault| query.split('&').any(|pair| pair == fault.query()))
    }
}

/// How the upstream talks on connections it accepts.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<rustls::ServerConfig>),
}

/// What the upstream saw, counted as it happens.
#[derive(Default)]
pub struct Seen {
    /// Request heads read, whatever followed.
    pub requests: AtomicUsize,
    /// Requests whose signature verified.
    pub verified: AtomicUsize,
    /// Requests whose signature failed verification.
    pub rejected: AtomicUsize,
    /// Body lengths of verified requests with a body.
    pub bodies: Mutex<Vec<usize>>,
    /// Connections that opened with bytes that are not HTTP, such as a TLS ClientHello.
    pub not_http: AtomicUsize,
    /// TLS handshakes that failed, such as a client rejecting the certificate.
    pub handshakes_failed: AtomicUsize,
    /// Streamed responses that the reader stopped taking before the end.
    pub streams_cut: AtomicUsize,
    /// Connections being served now.
    pub open_connections: AtomicUsize,
}

/// A running upstream; it serves until the test's runtime stops.
pub struct Upstream {
    pub address: SocketAddr,
    pub seen: Arc<Seen>,
    transport: Arc<Mutex<Transport>>,
}

impl Upstream {
    pub async fn start(transport: Transport) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let verifier = Arc::new(Verifier::new(SignatureEncoding::Hex));
        verifier.add_key(KEY_ID, Secret::new(SECRET.as_bytes().to_vec()).unwrap());
        let seen = Arc::new(Seen::default());
        let transport = Arc::new(Mutex::new(transport));

        let server = Server {
            verifier,
            seen: seen.clone(),
        };
        let current = transport.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let transport = current.lock().unwrap().clone();
                tokio::spawn(server.clone().accept(stream, transport));
            }
        });
        Upstream {
            address,
            seen,
            transport,
        }
    }

    /// Returns `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Returns `https://localhost:PORT`, the name the test certificates are issued for.
    pub fn https_url(&self) -> String {
        format!("https://localhost:{}", self.address.port())
    }

    /// Switches the transport for the connections accepted from now on.
    pub fn set_transport(&self, transport: Transport) {
        *self.transport.lock().unwrap() = transport;
    }

    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    pub fn verified(&self) -> usize {
        self.seen.verified.load(Ordering::SeqCst)
    }

    pub fn rejected(&self) -> usize {
        self.seen.rejected.load(Ordering::SeqCst)
    }
}

/// A socket the upstream can reset: plain TCP, or TLS over TCP.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {
    fn tcp(&self) -> &TcpStream;

    /// Sets SO_LINGER to zero and drops the socket, so it closes with RST instead of FIN,
    /// as a crashed server or a middlebox would.
    fn reset(self)
    where
        Self: Sized,
    {
        self.tcp().set_zero_linger().unwrap();
    }
}

impl Connection for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Connection for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// A request as the upstream read it.
struct Head {
    method: String,
    target: String,
    headers: HeaderMap,
    content_length: usize,
}

enum ReadError {
    /// The connection opened with bytes that are not an HTTP request line.
    NotHttp,
    Io,
}

#[derive(Clone)]
struct Server {
    verifier: Arc<Verifier>,
    seen: Arc<Seen>,
}

/// Decrements the open connection count when a connection's task ends.
struct OpenConnection(Arc<Seen>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    async fn accept(self, stream: TcpStream, transport: Transport) {
        self.seen.open_connections.fetch_add(1, Ordering::SeqCst);
        let _open = OpenConnection(self.seen.clone());
        match transport {
            Transport::Plain => self.serve(stream).await,
            Transport::Tls(config) => match TlsAcceptor::from(config).accept(stream).await {
                Ok(stream) => self.serve(stream).await,
                Err(_) => {
                    self.seen.handshakes_failed.fetch_add(1, Ordering::SeqCst);
                }
            },
        }
    }

    /// Serves requests on one connection until the peer closes it or a fault ends it.
    async fn serve<S: Connection>(&self, mut stream: S) {
        let mut buffer = Vec::new();
        loop {
            let head = match read_head(&mut stream, &mut buffer).await {
                Ok(Some(head)) => head,
                Ok(None) | Err(ReadError::Io) => return,
                Err(ReadError::NotHttp) => {
                    // What a plain HTTP server does with a TLS ClientHello.
                    self.seen.not_http.fetch_add(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    return;
                }
            };
            self.seen.requests.fetch_add(1, Ordering::SeqCst);
            let Ok(body) = read_body(&mut stream, &mut buffer, head.content_length).await else {
                return;
            };
            let verified = self
                .verifier
                .verify(&head.method, &head.target, &head.headers, &body);
            if let Err(rejection) = verified {
                self.seen.rejected.fetch_add(1, Ordering::SeqCst);
                let text = rejection.to_string();
                if respond(&mut stream, "401 Unauthorized", text.as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            self.seen.verified.fetch_add(1, Ordering::SeqCst);
            if !body.is_empty() {
                self.seen.bodies.lock().unwrap().push(body.len());
            }

            match Fault::from_target(&head.target) {
                None => {
                    let answer = if head.method == "POST" {
                        respond(&mut stream, "201 Created", b"{\"created\":true}").await
                    } else {
                        respond(&mut stream, "200 OK", b"{\"ok\":true}").await
                    };
                    if answer.is_err() {
                        return;
                    }
                }
                Some(fault) => return self.fail(stream, fault).await,
            }
        }
    }

    async fn fail<S: Connection>(&self, mut stream: S, fault: Fault) {
        let partial_head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {DECLARED_BODY_BYTES}\r\n\r\n"
        );
        match fault {
            Fault::ResetBeforeHeaders => stream.reset(),
            Fault::ResetAfterHeaders => {
                let _ = stream.write_all(partial_head.as_bytes()).await;
                let _ = stream.write_all(&[b'p'; PARTIAL_BODY_BYTES]).await;
                let _ = stream.flush().await;
                // Lets the proxy pass the partial body on before the reset arrives, so the
                // agent receives both.
                tokio::time::sleep(Duration::from_millis(100)).await;
                stream.reset();
            }
            Fault::StallHeaders => hold(stream).await,
            Fault::StallBody => {
                let _ = stream.write_all(partial_head.as_bytes()).await;
                let _ = stream.write_all(&[b'p'; PARTIAL_BODY_BYTES]).await;
                let _ = stream.flush().await;
                hold(stream).await;
            }
            Fault::Invalid => {
                let _ = stream.write_all(b"this is not HTTP\r\n\r\n").await;
            }
            Fault::StreamFast => self.stream(stream, 64 * 1024, 4096, Duration::ZERO).await,
            Fault::StreamSlow => {
                self.stream(stream, 4096, 1024, Duration::from_millis(10))
                    .await
            }
        }
    }

    /// Streams `count` pieces of `piece` bytes, `pause` apart, and counts a stream that
    /// the reader stops taking.
    async fn stream<S: Connection>(
        &self,
        mut stream: S,
        piece: usize,
        count: usize,
        pause: Duration,
    ) {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            piece * count
        );
        if stream.write_all(head.as_bytes()).await.is_err() {
            self.seen.streams_cut.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let data = vec![b's'; piece];
        for _ in 0..count {
            if stream.write_all(&data).await.is_err() {
                self.seen.streams_cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Keeps the connection open without sending, until the peer closes it or `MAX_STALL`.
async fn hold<S: Connection>(mut stream: S) {
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(MAX_STALL, async {
        while let Ok(count) = stream.read(&mut sink).await {
            if count == 0 {
                break;
            }
        }
    })
    .await;
}

async fn respond<S: Connection>(stream: &mut S, status: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

/// Reads one request head. `buffer` keeps bytes read past the head for the body.
/// Returns `None` when the peer closed the connection between requests.
async fn read_head<S: Connection>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
) -> Result<Option<Head>, ReadError> {
    loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = parse_head(&buffer[..end]).ok_or(ReadError::NotHttp)?;
            buffer.drain(..end + 4);
            return Ok(Some(head));
        }
        if buffer
            .first()
            .is_some_and(|byte| !byte.is_ascii_uppercase())
            || buffer.len() > MAX_HEAD_BYTES
        {
            return Err(ReadError::NotHttp);
        }
        let mut chunk = [0u8; 8192];
        let count = stream.read(&mut chunk).await.map_err(|_| ReadError::Io)?;
        if count == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..count]);
    }
}

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    if request_line.next()? != "HTTP/1.1" {
        return None;
    }

    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    // The proxy sends every body with Content-Length, never chunked.
    assert!(
        !headers.contains_key(http::header::TRANSFER_ENCODING),
        "unexpected chunked request: {text}"
    );
    let content_length = match headers.get(http::header::CONTENT_LENGTH) {
        Some(value) => value.to_str().ok()?.parse().ok()?,
        None => 0,
    };
    Some(Head {
        method,
        target,
        headers,
        content_length,
    })
}

async fn read_body<S: Connection>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    length: usize,
) -> std::io::Result<Vec<u8>> {
    let buffered = buffer.len().min(length);
    let mut body: Vec<u8> = buffer.drain(..buffered).collect();
    body.resize(length, 0);
    stream.read_exact(&mut body[buffered..]).await?;
    Ok(body)
}
