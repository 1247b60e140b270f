//! The server handle and its accept loop.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::builder::MockServerBuilder;
use super::fault::Fault;
use super::routes;
use super::state::{ApiCall, Config, MockStats, Shared, lock};

/// Pause after a failed `accept`, so that errors such as running out of file
/// descriptors do not turn the accept loop into a busy loop.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A running mock BigVision server on a loopback address.
///
/// Create one with [`MockServer::start`] or [`MockServer::builder`].
/// Dropping the handle stops the server by aborting the accept loop and
/// every open connection. Use [`shutdown`](MockServer::shutdown) to wait until
/// they have stopped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// `None` once `shutdown` has taken it.
    accept_task: Option<JoinHandle<()>>,
    stop_sender: Option<oneshot::Sender<()>>,
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("prefix", &self.shared.config.prefix)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Starts a server with the default settings: user `demo` with password
    /// `demo-password`, prefix `/api`, 300 s access tokens, 1800 s refresh
    /// tokens with rotation, no latency, on `127.0.0.1` with an ephemeral port.
    ///
    /// # Errors
    ///
    /// Returns the error of binding the listener.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    pub async fn start() -> io::Result<MockServer> {
        MockServer::builder().start().await
    }

    /// Returns a builder for a server with non-default settings.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder::default()
    }

    /// Binds `addr` and spawns the accept loop.
    pub(crate) async fn serve(addr: SocketAddr, config: Config) -> io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let (stop_sender, stop_receiver) = oneshot::channel();
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_receiver));
        tracing::debug!(%addr, prefix = %shared.config.prefix, "mock BigVision server started");
        Ok(MockServer {
            addr,
            shared,
            accept_task: Some(accept_task),
            stop_sender: Some(stop_sender),
        })
    }

    /// Returns the address the server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Returns the URL of the API root including the prefix, for example
    /// `http://127.0.0.1:41234/api`, with no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}{}", self.addr, self.shared.config.prefix)
    }

    /// Returns [`base_url`](Self::base_url) followed by `path`, for example
    /// `url("/ocr")` is `http://127.0.0.1:41234/api/ocr`. `path` should
    /// start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// Returns a snapshot of the request counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Returns every protected API call so far, oldest first.
    ///
    /// Login, refresh and not-found requests are not included. A call is
    /// recorded before its reply is sent, so it is already here when the
    /// client receives the reply.
    pub fn api_calls(&self) -> Vec<ApiCall> {
        lock(&self.shared.api_calls).clone()
    }

    /// Revokes every access and refresh token issued so far.
    ///
    /// Revoked access tokens are then rejected as unknown, and refresh
    /// calls with revoked refresh tokens fail with 401. Tokens issued later
    /// work as usual.
    pub fn revoke_all(&self) {
        self.shared.revoke_all();
    }

    /// Queues `fault` as the reply to one future login call.
    ///
    /// Queued faults are used one per call, oldest first, before any
    /// persistent fault set with [`set_login_fault`](Self::set_login_fault).
    pub fn push_login_fault(&self, fault: Fault) {
        lock(&self.shared.login_faults).push(fault);
    }

    /// Queues `fault` as the reply to one future refresh call.
    ///
    /// Queued faults are used one per call, oldest first, before any
    /// persistent fault set with [`set_refresh_fault`](Self::set_refresh_fault).
    pub fn push_refresh_fault(&self, fault: Fault) {
        lock(&self.shared.refresh_faults).push(fault);
    }

    /// Sets a fault that every login call gets once the queue of
    /// [`push_login_fault`](Self::push_login_fault) is empty, or clears it
    /// with `None`.
    pub fn set_login_fault(&self, fault: Option<Fault>) {
        lock(&self.shared.login_faults).set_persistent(fault);
    }

    /// Sets a fault that every refresh call gets once the queue of
    /// [`push_refresh_fault`](Self::push_refresh_fault) is empty, or clears
    /// it with `None`.
    pub fn set_refresh_fault(&self, fault: Option<Fault>) {
        lock(&self.shared.refresh_faults).set_persistent(fault);
    }

    /// Rejects the next `n` protected API calls that carry a valid token,
    /// as if the tokens had been revoked early.
    ///
    /// Each such call gets 401 with the message `token revoked`, counts in
    /// [`MockStats::rejected_unknown`], and its access token stops working.
    /// Calls that would be rejected anyway (missing, unknown or expired
    /// token) do not use up `n`. A new call replaces the remaining count.
    pub fn reject_next_api_calls(&self, n: u64) {
        self.shared
            .reject_next
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops accepting connections, closes every open connection and waits
    /// until the server tasks have ended.
    ///
    /// Requests in progress get no reply.
    pub async fn shutdown(mut self) {
        if let Some(stop_sender) = self.stop_sender.take() {
            // An error means the accept loop has already ended.
            let _ = stop_sender.send(());
        }
        if let Some(accept_task) = self.accept_task.take()
            && let Err(error) = accept_task.await
        {
            tracing::warn!(%error, "mock BigVision server accept loop failed");
        }
        tracing::debug!(addr = %self.addr, "mock BigVision server stopped");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops its `JoinSet`, which aborts every
        // connection task.
        if let Some(accept_task) = self.accept_task.take() {
            accept_task.abort();
        }
    }
}

/// Accepts connections until `stop_receiver` fires or its sender is dropped,
/// then aborts all connections and waits for them to end.
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop_receiver: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop_receiver => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, "mock BigVision server failed to accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            // Reaps finished connection tasks so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let service = service_fn(move |request| routes::handle(Arc::clone(&shared), request));
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "mock BigVision connection ended with an error");
    }
}
