//! The agent-facing side: listeners, the accept loop and per-connection HTTP serving.

use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Sleep;

use crate::config::ListenAddress;
use crate::proxy::Proxy;

/// Pause after a failed accept, so that running out of file descriptors does not turn
/// the accept loop into a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A bound agent-facing listener.
pub enum Listener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener drops.
    Unix(UnixListener, UnixSocketFile),
}

/// Removes a unix socket file on drop.
pub struct UnixSocketFile(PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An error binding the listener. The message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listen.address: cannot listen on {address}: {source}; stop the other process using it or choose another address")]
    Tcp { address: String, source: io::Error },
    #[error("listen.unix_socket: cannot listen on {path}: {source}; check that the directory exists and is writable, and that no other proxy uses the socket")]
    Unix { path: String, source: io::Error },
}

impl Listener {
    /// Binds `address`. A stale unix socket file left by a crashed process is replaced;
    /// one that still accepts connections is not.
    pub async fn bind(address: &ListenAddress) -> Result<Listener, BindError> {
        match address {
            ListenAddress::Tcp(socket_address) => TcpListener::bind(socket_address)
                .await
                .map(Listener::Tcp)
                .map_err(|source| BindError::Tcp {
                    address: socket_address.to_string(),
                    source,
                }),
            ListenAddress::Unix(path) => bind_unix(path).await,
        }
    }

    /// Returns the bound address, such as `127.0.0.1:8080` or `unix:/run/proxy.sock`.
    pub fn local_address(&self) -> ListenAddress {
        match self {
            Listener::Tcp(listener) => ListenAddress::Tcp(
                listener
                    .local_addr()
                    .expect("a bound TCP listener has an address"),
            ),
            Listener::Unix(_, file) => ListenAddress::Unix(file.0.clone()),
        }
    }
}

async fn bind_unix(path: &std::path::Path) -> Result<Listener, BindError> {
    let unix_error = |source| BindError::Unix {
        path: path.display().to_string(),
        source,
    };
    if let Ok(metadata) = std::fs::symlink_metadata(path) {
        // Only a socket is ever replaced: any other file at the path is someone's data.
        if !metadata.file_type().is_socket() {
            return Err(unix_error(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            )));
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(unix_error(io::Error::from(io::ErrorKind::AddrInUse)));
        }
        std::fs::remove_file(path).map_err(unix_error)?;
    }
    let listener = UnixListener::bind(path).map_err(unix_error)?;
    Ok(Listener::Unix(listener, UnixSocketFile(path.to_owned())))
}

/// Connection-level settings of the agent-facing server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Time an agent has to send a request's headers; a slow client cannot hold a
    /// connection forever.
    pub header_read_timeout: Duration,
    /// Maximum size of a request's headers, in bytes.
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Accepts agent connections until `shutdown` completes, then lets in-flight requests
/// finish within the drain timeout.
pub async fn serve(
    listener: Listener,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(connection_builder(&options));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(stream) => {
                let stream = FirstByteDeadline::new(stream, options.header_read_timeout);
                serve_connection(Box::new(stream), &builder, &graceful, proxy.clone());
            }
            Err(error) => {
                tracing::warn!(error = %error, "accepting an agent connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }

    drop(listener);
    drain(graceful, options.drain_timeout).await;
}

fn connection_builder(options: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

type BoxedStream = Box<dyn Stream>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

async fn accept(listener: &Listener) -> io::Result<BoxedStream> {
    match listener {
        Listener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream))
        }
        Listener::Unix(listener, _) => {
            let (stream, _) = listener.accept().await?;
            Ok(Box::new(stream))
        }
    }
}

/// Fails a connection's reads with `TimedOut` when its first byte does not arrive within
/// the header read timeout. hyper's own header timeout starts only after the first bytes
/// have shown whether the connection speaks HTTP/1 or HTTP/2. Without this, a client that
/// connects and sends nothing would keep its connection, and a file descriptor, open for
/// as long as it likes.
///
/// NOTE: a client that sends the start of the HTTP/2 preface and then stops is still held
/// until it leaves, and so is an idle HTTP/2 connection.
struct FirstByteDeadline<S> {
    inner: S,
    /// `None` once the first read completed.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> FirstByteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        FirstByteDeadline {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(context, buffer);
        if result.is_ready() {
            // Bytes, the end of the stream or an error: the connection is no longer silent.
            this.deadline = None;
        } else if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(context).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request byte arrived within the header read timeout",
                )));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(context, buffer)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }
}

fn serve_connection(
    stream: BoxedStream,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    proxy: Arc<Proxy>,
) {
    let service = service_fn(move |request| proxy.clone().handle(request));
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);

    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(error = %error, "agent connection ended with an error");
        }
    });
}

async fn drain(graceful: GracefulShutdown, timeout: Duration) {
    tracing::info!(
        timeout_seconds = timeout.as_secs_f64(),
        "draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all agent connections closed"),
        () = tokio::time::sleep(timeout) => tracing::warn!("drain timeout passed; closing the remaining agent connections"),
    }
}
