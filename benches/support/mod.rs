//! Shared pieces of the benchmarks: a no-op inner service, a login service that replies
//! from memory, a call counter for it, the hand-written alternative to the layer, and a
//! minimal executor.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use bigvision_auth::{BigVisionAuthLayer, Credentials};
use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{BoxError, Service};

pub const API_URL: &str = "https://bigvision.example/api/ocr";
pub const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAzMDB9.c2lnbmF0dXJlc2lnbmF0dXJl";

/// The inner service, which returns an empty response to every request at once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

/// Returns a login service that replies from memory with a token that lives an hour, after
/// `latency`.
pub fn memory_login(
    latency: Duration,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_request: Request<Full<Bytes>>| async move {
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let body = format!(
            r#"{{"success":true,"result":{{"token":"{TOKEN}","expires_in":3600,"refresh_token":"r","refresh_expires_in":7200}}}}"#
        );
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
    })
}

/// Wraps a service and counts its calls; clones share the count.
#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
    calls: Arc<AtomicUsize>,
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> Self {
        Counted {
            inner,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Returns a reader of the number of calls, shared with every clone.
    pub fn calls(&self) -> Arc<AtomicUsize> {
        self.calls.clone()
    }
}

impl<S, R> Service<R> for Counted<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.call(request)
    }
}

pub fn layer() -> BigVisionAuthLayer {
    BigVisionAuthLayer::builder(
        memory_login(Duration::ZERO),
        Credentials::new("bench", "bench"),
    )
    .base_url("https://bigvision.example/api")
    .build()
    .expect("valid settings")
}

pub fn request() -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = http::Uri::from_static(API_URL);
    request
}

/// The straightforward hand-written alternative: a token behind an async mutex, checked
/// against the clock and cloned into a new header on every call.
#[derive(Clone)]
pub struct HandWritten<S> {
    inner: S,
    token: Arc<tokio::sync::Mutex<(String, Instant)>>,
}

impl<S> HandWritten<S> {
    pub fn new(inner: S) -> Self {
        let expires = Instant::now() + Duration::from_secs(3600);
        HandWritten {
            inner,
            token: Arc::new(tokio::sync::Mutex::new((TOKEN.to_owned(), expires))),
        }
    }
}

impl<S, B> Service<Request<B>> for HandWritten<S>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let token = self.token.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let cached = token.lock().await;
            if Instant::now() >= cached.1 {
                return Err("token expired".into());
            }
            let token = cached.0.clone();
            drop(cached);
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))?;
            value.set_sensitive(true);
            request.headers_mut().insert(AUTHORIZATION, value);
            inner.call(request).await.map_err(Into::into)
        })
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}

/// Sends one request through a service that is expected to be ready.
pub fn call<S, B>(service: &mut S, request: Request<B>) -> S::Response
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    // Every service in the hot-path benches is ready at once and replies at once, so one
    // poll with a no-op waker suffices; anything else falls back to the parking executor.
    let mut cx = Context::from_waker(Waker::noop());
    if let Poll::Ready(ready) = service.poll_ready(&mut cx) {
        ready.expect("ready");
        let mut future = pin!(service.call(request));
        return match future.as_mut().poll(&mut cx) {
            Poll::Ready(response) => response.expect("response"),
            Poll::Pending => block_on(future).expect("response"),
        };
    }
    block_on(async {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .expect("ready");
        service.call(request).await.expect("response")
    })
}

/// Builds the multi-thread runtime every bench runs on: two workers, one per core here.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
