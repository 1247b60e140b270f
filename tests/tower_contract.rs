//! The layer keeps tower's `Service` contract: it calls only an inner service instance that
//! was polled ready, reports the inner service's readiness, and fits boxed and
//! concurrency-limited stacks.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bigvision_auth::mock::MockServer;
use bigvision_auth::{BigVisionAuth, BoxError, CloneBody, Error, ResponseFuture};
use bytes::Bytes;
use common::*;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use http_body_util::Full;
use tower::limit::ConcurrencyLimit;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The error a [`StrictService`] returns from `call` when that instance was not polled
/// ready first.
const UNREADY_CALL: &str = "call without a successful poll_ready on this instance";

/// The error a [`StrictService`] returns from `poll_ready` while its gate is failing.
const GATE_FAILED: &str = "strict service is failing on purpose";

/// Whether [`StrictService::poll_ready`] returns ready, pending or an error.
#[derive(Debug)]
enum Gate {
    Open,
    Closed(Vec<Waker>),
    Failing,
}

/// State shared by a [`StrictService`] and all its clones.
#[derive(Debug)]
struct Probe {
    gate: Mutex<Gate>,
    calls: AtomicUsize,
    unready_calls: AtomicUsize,
    /// How many more calls get a 401 response before calls get 200.
    rejections_left: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    authorizations: Mutex<Vec<Option<String>>>,
}

impl Probe {
    fn new() -> Arc<Probe> {
        Arc::new(Probe {
            gate: Mutex::new(Gate::Open),
            calls: AtomicUsize::new(0),
            unready_calls: AtomicUsize::new(0),
            rejections_left: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            authorizations: Mutex::new(Vec::new()),
        })
    }

    fn set_gate(&self, gate: Gate) {
        let previous = std::mem::replace(&mut *self.gate.lock().unwrap(), gate);
        if let Gate::Closed(wakers) = previous {
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    fn authorizations(&self) -> Vec<Option<String>> {
        self.authorizations.lock().unwrap().clone()
    }
}

/// An inner service that fails any `call` not preceded by a successful `poll_ready` on the
/// same instance. A clone starts not ready, as `tower::Service` requires of clones.
#[derive(Debug)]
struct StrictService {
    probe: Arc<Probe>,
    ready: bool,
    latency: Duration,
}

impl StrictService {
    fn new(probe: &Arc<Probe>) -> Self {
        StrictService {
            probe: probe.clone(),
            ready: false,
            latency: Duration::ZERO,
        }
    }

    fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }
}

impl Clone for StrictService {
    fn clone(&self) -> Self {
        StrictService {
            probe: self.probe.clone(),
            ready: false,
            latency: self.latency,
        }
    }
}

type StrictFuture = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

impl Service<Request<Full<Bytes>>> for StrictService {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = StrictFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut *self.probe.gate.lock().unwrap() {
            Gate::Open => {
                self.ready = true;
                Poll::Ready(Ok(()))
            }
            Gate::Closed(wakers) => {
                wakers.push(cx.waker().clone());
                Poll::Pending
            }
            Gate::Failing => Poll::Ready(Err(GATE_FAILED.into())),
        }
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> StrictFuture {
        let probe = self.probe.clone();
        probe.calls.fetch_add(1, Ordering::SeqCst);
        if !std::mem::take(&mut self.ready) {
            probe.unready_calls.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(UNREADY_CALL.into()) });
        }

        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .map(|value| value.to_str().unwrap().to_owned());
        probe.authorizations.lock().unwrap().push(authorization);
        let rejected = probe
            .rejections_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        let in_flight = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        probe.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        let latency = self.latency;
        Box::pin(async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            probe.in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut response = Response::new(String::from("ok"));
            if rejected {
                *response.status_mut() = http::StatusCode::UNAUTHORIZED;
            }
            Ok(response)
        })
    }
}

fn request(server: &MockServer) -> Request<Full<Bytes>> {
    get(server.url("/ocr"))
}

fn assert_send<T: Send>() {}

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>(_: &T) {}

#[tokio::test]
async fn strict_service_rejects_unready_call() {
    let probe = Probe::new();
    let mut service = StrictService::new(&probe);

    let unready = service.call(Request::new(Full::new(Bytes::new()))).await;
    service.ready().await.unwrap();
    let ready = service.call(Request::new(Full::new(Bytes::new()))).await;
    let again = service.call(Request::new(Full::new(Bytes::new()))).await;

    assert_eq!(unready.unwrap_err().to_string(), UNREADY_CALL);
    assert!(ready.is_ok());
    assert_eq!(again.unwrap_err().to_string(), UNREADY_CALL);
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn cold_start_calls_only_ready_inner() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let probe = Probe::new();
    let mut service = builder(&server)
        .build()
        .unwrap()
        .layer(StrictService::new(&probe));

    // Both requests go through the same instance while the login is in flight.
    let first = service.ready().await.unwrap().call(request(&server));
    let second = service.ready().await.unwrap().call(request(&server));
    let (first, second) = tokio::join!(first, second);

    assert_eq!(first.unwrap().status(), 200);
    assert_eq!(second.unwrap().status(), 200);
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
    assert_eq!(server.stats().login_calls, 1);
    let authorizations = probe.authorizations();
    assert!(authorizations[0].is_some());
    assert_eq!(authorizations[0], authorizations[1]);
}

#[tokio::test(start_paused = true)]
async fn cold_start_clones_call_only_ready_inner() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let probe = Probe::new();
    let service = builder(&server)
        .build()
        .unwrap()
        .layer(StrictService::new(&probe));

    let calls: Vec<_> = (0..20)
        .map(|_| {
            let service = service.clone();
            let request = request(&server);
            tokio::spawn(async move { send(&service, request).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 20);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn warm_path_calls_only_ready_inner() {
    let server = MockServer::start().await.unwrap();
    let probe = Probe::new();
    let layer = builder(&server).build().unwrap();
    layer.handle().login().await.unwrap();
    let mut service = layer.layer(StrictService::new(&probe));

    let first = service.ready().await.unwrap().call(request(&server));
    let second = service.ready().await.unwrap().call(request(&server));
    let (first, second) = tokio::join!(first, second);

    assert_eq!(first.unwrap().status(), 200);
    assert_eq!(second.unwrap().status(), 200);
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn replay_calls_only_ready_inner() {
    let server = MockServer::start().await.unwrap();
    let probe = Probe::new();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    handle.login().await.unwrap();
    let mut service = layer.layer(StrictService::new(&probe));
    probe.rejections_left.store(1, Ordering::SeqCst);

    let response = service
        .ready()
        .await
        .unwrap()
        .call(request(&server))
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 2);
    let authorizations = probe.authorizations();
    assert_ne!(authorizations[0], authorizations[1]);
    assert_eq!(handle.stats().replays, 1);
    assert_eq!(handle.stats().rejected_tokens, 1);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reports_inner_pending() {
    let server = MockServer::start().await.unwrap();
    let probe = Probe::new();
    let mut service = builder(&server)
        .build()
        .unwrap()
        .layer(StrictService::new(&probe));
    probe.set_gate(Gate::Closed(Vec::new()));
    let mut cx = Context::from_waker(Waker::noop());

    let closed = service.poll_ready(&mut cx);
    probe.set_gate(Gate::Open);
    let opened = service.poll_ready(&mut cx);

    assert!(closed.is_pending());
    assert!(matches!(opened, Poll::Ready(Ok(()))), "{opened:?}");
}

#[tokio::test(start_paused = true)]
async fn pending_inner_wakes_waiting_caller() {
    let server = MockServer::start().await.unwrap();
    let probe = Probe::new();
    let service = builder(&server)
        .build()
        .unwrap()
        .layer(StrictService::new(&probe));
    probe.set_gate(Gate::Closed(Vec::new()));

    let call = tokio::spawn({
        let service = service.clone();
        let request = request(&server);
        async move { send(&service, request).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let finished_while_closed = call.is_finished();
    probe.set_gate(Gate::Open);
    let response = call.await.unwrap().unwrap();

    assert!(!finished_while_closed);
    assert_eq!(response.status(), 200);
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reports_inner_error() {
    let server = MockServer::start().await.unwrap();
    let probe = Probe::new();
    let mut service = builder(&server)
        .build()
        .unwrap()
        .layer(StrictService::new(&probe));
    probe.set_gate(Gate::Failing);
    let mut cx = Context::from_waker(Waker::noop());

    let polled = service.poll_ready(&mut cx);

    let Poll::Ready(Err(error)) = polled else {
        panic!("expected a readiness error, got {polled:?}");
    };
    assert!(matches!(error, Error::Inner(_)), "{error:?}");
    let source = std::error::Error::source(&error).expect("the inner error is the source");
    assert_eq!(source.to_string(), GATE_FAILED);
    assert_eq!(server.stats().login_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_inside_is_free_during_login() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let probe = Probe::new();
    let limited = ConcurrencyLimit::new(StrictService::new(&probe), 1);
    let mut service = builder(&server).build().unwrap().layer(limited);
    let mut cx = Context::from_waker(Waker::noop());

    let first = tokio::spawn(service.ready().await.unwrap().call(request(&server)));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The waiting request released its permit, so the same instance is ready again.
    let during_login = service.poll_ready(&mut cx);
    let second = tokio::spawn(service.call(request(&server)));
    let first = first.await.unwrap().unwrap();
    let second = second.await.unwrap().unwrap();

    assert!(
        matches!(during_login, Poll::Ready(Ok(()))),
        "{during_login:?}"
    );
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_inside_serializes_clones() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let probe = Probe::new();
    let inner = StrictService::new(&probe).with_latency(Duration::from_millis(100));
    let service = builder(&server)
        .build()
        .unwrap()
        .layer(ConcurrencyLimit::new(inner, 1));

    let calls: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            let request = request(&server);
            tokio::spawn(async move { send(&service, request).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrency_limit_outside_bounds_inner_calls() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let probe = Probe::new();
    let inner = StrictService::new(&probe).with_latency(Duration::from_millis(100));
    let service = ServiceBuilder::new()
        .concurrency_limit(2)
        .layer(builder(&server).build().unwrap())
        .service(inner);

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let service = service.clone();
            let request = request(&server);
            tokio::spawn(async move { send(&service, request).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(probe.unready_calls.load(Ordering::SeqCst), 0);
    assert_eq!(probe.calls.load(Ordering::SeqCst), 10);
    assert_eq!(probe.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn boxed_clone_sync_stack_sends_requests() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let service: BoxCloneSyncService<Request<Full<Bytes>>, Response<hyper::body::Incoming>, Error> =
        ServiceBuilder::new()
            .boxed_clone_sync()
            .concurrency_limit(4)
            .layer(layer)
            .service(client());
    assert_send_sync_clone(&service);

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let service = service.clone();
            let request = request(&server);
            tokio::spawn(async move { send(&service, request).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().authorized, 10);
    assert_eq!(handle.stats().logins, 1);
}

#[test]
fn service_is_send_sync_clone() {
    fn check(service: &BigVisionAuth<HttpClient>) {
        assert_send_sync_clone(service);
    }
    let _ = check;
}

#[test]
fn response_future_is_send() {
    assert_send::<ResponseFuture<HttpClient, Full<Bytes>, CloneBody>>();
    assert_send::<ResponseFuture<StrictService, Full<Bytes>, CloneBody>>();
    assert_send::<ResponseFuture<ConcurrencyLimit<HttpClient>, Full<Bytes>, CloneBody>>();
}
