//! Heap allocations of a request with a warm token, counted by a global allocator that wraps
//! the system allocator, and the sizes of the service, its future and one token cache.
//!
//! The allocation counts hold for the `http` 1 and `bytes` 1 versions in Cargo.lock; a
//! change in how those crates allocate changes them.

#[path = "../benches/support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready};
use std::mem::size_of;
use std::pin::pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bigvision_auth::{
    AuthHandle, BigVisionAuth, BigVisionAuthLayer, CloneBody, Credentials, NoReplay, ResponseFuture,
};
use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use support::{API_URL, Noop, TOKEN, memory_login, request};
use tower::{Layer, Service};
use tower_http::auth::AddAuthorizationLayer;

/// Counts the allocations of the calling thread, and the bytes live in the whole process.
struct CountingAllocator;

thread_local! {
    /// Allocations and reallocations made by this thread. Const-initialized and without a
    /// destructor, so the allocator may touch it at any point of the thread's life.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Bytes allocated and not yet freed, by all threads.
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

fn record_allocation(bytes: isize) {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    LIVE_BYTES.fetch_add(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// caller's guarantees to `GlobalAlloc` carry over to `System`. The counting touches neither
// the pointers nor the layouts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_allocation(layout.size() as isize);
        // SAFETY: forwarded as received; see the impl's comment.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_allocation(layout.size() as isize);
        // SAFETY: forwarded as received; see the impl's comment.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_allocation(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded as received; see the impl's comment.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as received; see the impl's comment.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Serializes the tests of this file, so that the process-wide live-byte count in
/// `token_cache_memory` includes no other test's allocations.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Builds a layer on the in-memory login service with `policy` and logs it in.
fn warm_layer<P>(runtime: &tokio::runtime::Runtime, policy: P) -> BigVisionAuthLayer<P> {
    let _entered = runtime.enter();
    let auth = BigVisionAuthLayer::builder(
        memory_login(Duration::ZERO),
        Credentials::new("bench", "bench"),
    )
    .base_url("https://bigvision.example/api")
    .replay_body(policy)
    .build()
    .expect("valid settings");
    runtime.block_on(auth.handle().login()).expect("login");
    auth
}

/// Sends one request and drops the response, polling with a no-op waker. The inner service
/// returns its response at once, so nothing ever waits.
fn send_once<S, B>(service: &mut S, request: Request<B>)
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(result) => result.expect("service ready"),
        Poll::Pending => panic!("the service was not ready at once"),
    }
    let future = pin!(service.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(result) => drop(result.expect("response")),
        Poll::Pending => panic!("the request did not finish at once"),
    }
}

/// Returns the allocations this thread makes to send one request, after a warm-up. The
/// request is built before counting starts; every measured request must allocate alike.
fn allocations_per_request<S, B>(service: &mut S, make_request: impl Fn() -> Request<B>) -> u64
where
    S: Service<Request<B>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..100 {
        send_once(service, make_request());
    }
    let counts: Vec<u64> = (0..10)
        .map(|_| {
            let request = make_request();
            let before = allocations();
            send_once(service, request);
            allocations() - before
        })
        .collect();
    assert!(
        counts.iter().all(|&count| count == counts[0]),
        "allocations per request vary between requests: {counts:?}"
    );
    counts[0]
}

/// Builds a request with the headers a JSON API call usually has, the usual way: the values
/// and the custom name are copied from `&str`, so each is its own heap buffer.
fn request_with_headers() -> Request<Full<Bytes>> {
    Request::post(Uri::from_static(API_URL))
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .header("x-request-id", "5f0c7a2e-3b1d-4c6e-9a8f-1d2e3f4a5b6c")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("valid request")
}

#[test]
fn no_replay_allocates_like_add_authorization() {
    let _serial = serial();
    let runtime = runtime();
    let auth = warm_layer(&runtime, NoReplay);
    let mut ours = auth.layer(Noop);
    let mut floor = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(Noop);

    let floor_plain = allocations_per_request(&mut floor, request);
    let ours_plain = allocations_per_request(&mut ours, request);
    let floor_headers = allocations_per_request(&mut floor, request_with_headers);
    let ours_headers = allocations_per_request(&mut ours, request_with_headers);
    eprintln!(
        "allocations per request without headers: AddAuthorization {floor_plain}, \
         BigVisionAuth with NoReplay {ours_plain}"
    );
    eprintln!(
        "allocations per request with three headers: AddAuthorization {floor_headers}, \
         BigVisionAuth with NoReplay {ours_headers}"
    );

    assert!(
        ours_plain <= floor_plain,
        "BigVisionAuth made {ours_plain} allocations per request, AddAuthorization {floor_plain}"
    );
    assert!(
        ours_headers <= floor_headers,
        "BigVisionAuth made {ours_headers} allocations per request with headers, \
         AddAuthorization {floor_headers}"
    );
}

#[test]
fn replay_copy_allocations() {
    let _serial = serial();
    let runtime = runtime();
    let mut no_replay = warm_layer(&runtime, NoReplay).layer(Noop);
    let mut replay = warm_layer(&runtime, CloneBody).layer(Noop);

    let extra_plain = allocations_per_request(&mut replay, request)
        - allocations_per_request(&mut no_replay, request);
    let extra_headers = allocations_per_request(&mut replay, request_with_headers)
        - allocations_per_request(&mut no_replay, request_with_headers);
    eprintln!(
        "extra allocations of the CloneBody replay copy: {extra_plain} without headers, \
         {extra_headers} with three headers"
    );

    // The copy is taken before the Authorization header goes in, so an empty header map
    // clones without allocating; the body shares its static bytes and the URI is static.
    assert_eq!(extra_plain, 0, "replay copy of a request without headers");
    // The copy's header map: its index table and its entry vector. Then the first clone of
    // each header value and custom header name that was copied from a `&str`: `bytes` moves
    // such a buffer into a shared, reference-counted one on its first clone. Here that is
    // three values and the name `x-request-id`.
    assert_eq!(
        extra_headers, 6,
        "replay copy of a request with three headers"
    );
}

#[test]
fn service_and_future_sizes() {
    let _serial = serial();
    type Floor = tower_http::auth::AddAuthorization<Noop>;
    type NoopFuture = Ready<Result<Response<()>, Infallible>>;
    let service = size_of::<BigVisionAuth<Noop>>();
    let future = size_of::<ResponseFuture<Noop, Full<Bytes>, CloneBody>>();
    let future_no_replay = size_of::<ResponseFuture<Noop, Full<Bytes>, NoReplay>>();
    let request = size_of::<Request<Full<Bytes>>>();
    let inner_future = size_of::<NoopFuture>();
    eprintln!(
        "size_of: BigVisionAuth<Noop> {service} B, AddAuthorization<Noop> {} B, \
         ResponseFuture<Noop, Full<Bytes>, CloneBody> {future} B, with NoReplay \
         {future_no_replay} B, Noop's future {inner_future} B, Request<Full<Bytes>> {request} B",
        size_of::<Floor>()
    );

    // An Arc on the shared state, an arc_swap::Cache (its slot and the loaded Arc), and the
    // clone's copy of the token's header with the token's id.
    assert_eq!(
        service,
        3 * size_of::<usize>() + size_of::<Option<(u64, HeaderValue)>>(),
        "size of BigVisionAuth<Noop>"
    );
    // The largest state keeps the inner future, the token id, the state reference and the
    // request copy for the replay. The waiting states keep the request instead of the
    // future. 64 bytes of slack cover the ids, the enum tag and padding.
    assert!(
        future <= inner_future + request + 64,
        "ResponseFuture is {future} B, more than the inner future ({inner_future} B), \
         a request ({request} B) and 64 B"
    );
    assert!(
        future_no_replay <= future,
        "ResponseFuture with NoReplay ({future_no_replay} B) is larger than with CloneBody \
         ({future} B)"
    );
}

/// Returns the bytes live in the process once background work has settled.
fn settled_live_bytes(runtime: &tokio::runtime::Runtime) -> isize {
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    LIVE_BYTES.load(Ordering::Relaxed)
}

/// Builds a layer, logs in and sends one request; returns what must stay alive.
fn warm_service(runtime: &tokio::runtime::Runtime) -> (BigVisionAuth<Noop>, AuthHandle) {
    let auth = warm_layer(runtime, CloneBody);
    let mut service = auth.layer(Noop);
    send_once(&mut service, request());
    let handle = auth.handle();
    (service, handle)
}

#[test]
fn token_cache_memory() {
    let _serial = serial();
    let runtime = runtime();
    // The first layer makes the runtime allocate what it keeps for timers and tasks.
    drop(warm_service(&runtime));

    let before = settled_live_bytes(&runtime);
    let warm = warm_service(&runtime);
    let held = settled_live_bytes(&runtime) - before;
    drop(warm);
    // More layers, so that memory a layer leaves behind adds up past the bound below.
    for _ in 0..10 {
        drop(warm_service(&runtime));
    }
    let after_drop = settled_live_bytes(&runtime) - before;

    // An estimate of the token alone: the Arc's counts, the token's id, header value, four
    // instants and phase, then the header's bytes and their shared buffer's header.
    let token_struct = 2 * size_of::<usize>()
        + size_of::<u64>()
        + size_of::<HeaderValue>()
        + 4 * size_of::<std::time::Instant>()
        + size_of::<u64>();
    let header_bytes = "Bearer ".len() + TOKEN.len() + 3 * size_of::<usize>();
    eprintln!(
        "token cache: {held} B live after login and one request ({} B token, estimated: \
         {token_struct} B token struct + {header_bytes} B header); {after_drop} B left \
         after dropping it and 10 more",
        TOKEN.len()
    );

    assert!(
        held > 0,
        "a logged-in layer holds no memory ({held} B), the count is wrong"
    );
    assert!(
        held < 64 * 1024,
        "a logged-in layer holds {held} B, expected a few KiB"
    );
    assert!(
        after_drop < 1024,
        "{after_drop} B stay live after dropping 11 layers"
    );
}
