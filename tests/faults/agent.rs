//! The agent's side: a well-behaved HTTP client, and raw sockets for agents that leave
//! mid-request, stop reading, or hold connections open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::{ProxyProcess, BUFFERED_BODY_BYTES};

/// Maximum time any single agent operation here may take before the test fails.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum time an upload of a burst may wait for its response. Both the proxy and the
/// upstream hash every accepted body, and a debug build hashes 16 MiB in about 0.5 s
/// (`signing::body_sha256` on one core of a 2-core container). A burst of 16 MiB uploads
/// on busy cores therefore takes far longer than one request.
const BURST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Sends a request with a hyper client and reads the whole response.
pub async fn send(method: Method, url: &str, body: &str) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let response = tokio::time::timeout(OPERATION_TIMEOUT, client.request(request))
        .await
        .expect("response headers within 30 s")
        .expect("the request reaches the proxy");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a complete body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(url: &str) -> Reply {
    send(Method::GET, url, "").await
}

/// A response read frame by frame, keeping what arrived before the body failed.
#[derive(Debug)]
pub struct Streamed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub received: usize,
    pub error: Option<hyper::Error>,
    /// Time from sending the request to the end of the body or its error.
    pub elapsed: Duration,
}

/// Sends a GET with a hyper client and reads the body until it ends or fails.
pub async fn get_streamed(url: &str) -> Streamed {
    let started = Instant::now();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = tokio::time::timeout(OPERATION_TIMEOUT, client.request(request))
        .await
        .expect("response headers within 30 s")
        .expect("the request reaches the proxy");
    let (parts, mut body) = response.into_parts();

    let mut received = 0;
    let mut error = None;
    let reading = async {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => received += frame.data_ref().map_or(0, Bytes::len),
                Err(failure) => {
                    error = Some(failure);
                    break;
                }
            }
        }
    };
    tokio::time::timeout(OPERATION_TIMEOUT, reading)
        .await
        .expect("the body ends or fails within 30 s");
    Streamed {
        status: parts.status,
        headers: parts.headers,
        received,
        error,
        elapsed: started.elapsed(),
    }
}

/// A response read from a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads one response with a Content-Length body from a raw socket.
pub async fn read_response<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<RawReply> {
    let mut buffer = Vec::new();
    let end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let count = reader.read(&mut chunk).await?;
        if count == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..count]);
    };
    let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| value.parse().unwrap());

    let mut body = buffer[end + 4..].to_vec();
    let buffered = body.len();
    body.resize(length.max(buffered), 0);
    reader.read_exact(&mut body[buffered..]).await?;
    Ok(RawReply {
        status,
        headers,
        body,
    })
}

/// Opens an upload that declares `declared` body bytes and sends only `sent` of them.
/// The caller closes the returned socket to leave mid-upload.
pub async fn start_upload(
    proxy: SocketAddr,
    path: &str,
    declared: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/octet-stream\r\ncontent-length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'u'; sent]).await.unwrap();
    stream
}

/// Sends a GET, reads the response head and at least `min_body_bytes`, then closes the
/// connection without reading the rest. Returns the status code.
pub async fn download_then_close(proxy: SocketAddr, path: &str, min_body_bytes: usize) -> u16 {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: proxy\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut buffer = Vec::new();
    let reading = async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let count = stream.read(&mut chunk).await.unwrap();
            assert!(count > 0, "the proxy closed the download early");
            buffer.extend_from_slice(&chunk[..count]);
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                if buffer.len() >= end + 4 + min_body_bytes {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(OPERATION_TIMEOUT, reading)
        .await
        .expect("the first body bytes within 30 s");
    let status_line = String::from_utf8_lossy(&buffer[..12]).into_owned();
    status_line[9..12].parse().unwrap()
}

/// Opens `count` connections, 100 at a time. When `with_request` is set, each sends one
/// request that the proxy rejects itself (403, the workspace is not allowed) and reads the
/// response, so the connection is an idle keep-alive one. Otherwise it sends nothing.
pub async fn open_idle_connections(
    proxy: SocketAddr,
    count: usize,
    with_request: bool,
) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(count);
    for batch in 0..count.div_ceil(100) {
        let size = 100.min(count - batch * 100);
        let opening: Vec<_> = (0..size)
            .map(|_| tokio::spawn(open_idle_connection(proxy, with_request)))
            .collect();
        for task in opening {
            streams.push(task.await.unwrap());
        }
    }
    streams
}

async fn open_idle_connection(proxy: SocketAddr, with_request: bool) -> TcpStream {
    let mut stream = tokio::time::timeout(OPERATION_TIMEOUT, TcpStream::connect(proxy))
        .await
        .expect("connected within 30 s")
        .unwrap();
    if with_request {
        let request =
            "GET /agent-api/v1/workspaces/ws_other/environment HTTP/1.1\r\nhost: proxy\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = tokio::time::timeout(OPERATION_TIMEOUT, read_response(&mut stream))
            .await
            .expect("a response within 30 s")
            .unwrap();
        assert_eq!(reply.status, 403);
        assert_eq!(
            reply.header("connection"),
            None,
            "the proxy keeps the connection alive"
        );
    }
    stream
}

/// Returns whether the proxy has closed `stream`, without waiting.
pub fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.try_read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("unexpected bytes on an idle connection"),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Starts `count` uploads of `size` bytes at once, each sending its headers first. The
/// bodies follow only after the proxy has responded to every upload that the body budget
/// cannot hold (`count - budget / size` of them) and reserved the budget for the rest.
/// Returns each upload's response.
pub async fn upload_burst(
    proxy: &ProxyProcess,
    path: &str,
    count: usize,
    size: usize,
    budget: usize,
) -> Vec<RawReply> {
    let fitting = budget / size;
    let answered = Arc::new(AtomicUsize::new(0));
    let (go, ready) = tokio::sync::watch::channel(false);

    let mut uploads = Vec::with_capacity(count);
    for _ in 0..count {
        let stream = TcpStream::connect(proxy.listen).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: proxy\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await.unwrap();

        let answered = answered.clone();
        let reading = tokio::spawn(async move {
            let reply = tokio::time::timeout(BURST_TIMEOUT, read_response(&mut reader))
                .await
                .expect("a response within 60 s")
                .expect("a complete response");
            answered.fetch_add(1, Ordering::SeqCst);
            reply
        });
        let mut ready = ready.clone();
        uploads.push(tokio::spawn(async move {
            ready.wait_for(|go| *go).await.unwrap();
            // A rejected upload keeps sending, as a client that does not wait for an
            // early response does. The proxy may close the connection under it.
            let piece = vec![b'b'; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let length = left.min(piece.len());
                if writer.write_all(&piece[..length]).await.is_err() {
                    break;
                }
                left -= length;
            }
            let reply = reading.await.unwrap();
            // The write half closes only now: a client that half-closes early could be
            // taken for one that left.
            drop(writer);
            reply
        }));
    }

    let rejected = count.saturating_sub(fitting);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let buffered = proxy.metric(BUFFERED_BODY_BYTES, &[]).await;
        let answered_now = answered.load(Ordering::SeqCst);
        if answered_now == rejected && buffered == (fitting * size) as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected {rejected} early answers and {} bytes reserved; got {answered_now} and {buffered}",
            fitting * size
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    go.send(true).unwrap();

    let mut replies = Vec::with_capacity(count);
    for upload in uploads {
        replies.push(upload.await.unwrap());
    }
    replies
}
