//! Per-request latency while a background renewal is in flight against a refresh endpoint
//! that replies after 200 ms, against the latency with no renewal. No request should wait
//! while its token is valid, so both conditions should show the same p99.

mod support;

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bigvision_auth::{BigVisionAuth, BigVisionAuthLayer, Credentials, RenewalWindow};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use support::*;
use tower::{Layer, Service};

const REFRESH_LATENCY: Duration = Duration::from_millis(200);
/// The `expires_in` of the renewing endpoints' tokens. With the renewal window at 99 % of
/// the lifetime, a token is due once a tenth of its lifetime (the earliest the layer allows)
/// has passed: 200 ms after it arrives. Each renewal then takes 200 ms, so a renewal is in
/// flight about half of the time, and the token is usable for 1.8 s, long after the renewal
/// has finished.
const TOKEN_LIFETIME_SECS: u64 = 2;
/// How long each condition is sampled for the percentiles.
const SAMPLING_TIME: Duration = Duration::from_secs(2);
/// The maximum number of latencies kept per class (24 MB each).
const MAX_SAMPLES: usize = 6_000_000;
/// Requests per timed batch in the criterion bench; a batch takes well under a millisecond,
/// far less than one renewal.
const BATCH: u64 = 1_000;

/// Counts the refresh calls that started and finished; a renewal is in flight while the
/// counts differ.
#[derive(Debug, Default)]
struct Refreshes {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Refreshes {
    /// Returns the number of the refresh in flight, or `None` when none is.
    fn in_flight(&self) -> Option<u64> {
        let finished = self.finished.load(Ordering::SeqCst);
        let started = self.started.load(Ordering::SeqCst);
        (started != finished).then_some(started)
    }
}

/// Returns token endpoints in memory: login replies at once, refresh after [`REFRESH_LATENCY`];
/// both grant a token that lives [`TOKEN_LIFETIME_SECS`].
fn slow_refresh_endpoints(
    refreshes: Arc<Refreshes>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let refreshes = refreshes.clone();
        async move {
            let is_refresh = request.uri().path().ends_with("/user/refresh");
            if is_refresh {
                refreshes.started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(REFRESH_LATENCY).await;
            }
            let body = format!(
                r#"{{"success":true,"result":{{"token":"{TOKEN}","expires_in":{TOKEN_LIFETIME_SECS},"refresh_token":"r","refresh_expires_in":7200}}}}"#
            );
            if is_refresh {
                refreshes.finished.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    })
}

/// Builds a service whose token is renewed every 400 ms or so, and returns it with the
/// refresh counts.
fn renewing_service(runtime: &tokio::runtime::Runtime) -> (BigVisionAuth<Noop>, Arc<Refreshes>) {
    let _entered = runtime.enter();
    let refreshes = Arc::new(Refreshes::default());
    let auth = BigVisionAuthLayer::builder(
        slow_refresh_endpoints(refreshes.clone()),
        Credentials::new("bench", "bench"),
    )
    .base_url("https://bigvision.example/api")
    .renewal_window(RenewalWindow::Fraction(0.99))
    .build()
    .expect("valid settings");
    runtime.block_on(auth.handle().login()).expect("login");
    (auth.layer(Noop), refreshes)
}

/// Builds a service whose token lives an hour, so it is never renewed during the bench.
fn steady_service(runtime: &tokio::runtime::Runtime) -> BigVisionAuth<Noop> {
    let _entered = runtime.enter();
    let auth = layer();
    runtime.block_on(auth.handle().login()).expect("login");
    auth.layer(Noop)
}

/// Per-request latencies in nanoseconds, split by what the renewal did during the request.
#[derive(Default)]
struct Samples {
    /// No renewal was in flight.
    idle: Vec<u32>,
    /// One renewal was in flight from the start to the end of the request.
    renewing: Vec<u32>,
    /// A refresh call started or finished during the request. The request that spawns the
    /// refresh task lands here only when the task calls the endpoint before it returns.
    crossing: Vec<u32>,
}

/// Sends requests one after another for `duration` and times each of them.
fn sample(service: &mut BigVisionAuth<Noop>, refreshes: &Refreshes, duration: Duration) -> Samples {
    // Reserved up front, so the sampling loop does not reallocate; a class that fills up
    // drops its later samples.
    let mut samples = Samples {
        idle: Vec::with_capacity(MAX_SAMPLES),
        renewing: Vec::with_capacity(MAX_SAMPLES),
        crossing: Vec::with_capacity(MAX_SAMPLES / 100),
    };
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let request = request();
        let before = refreshes.in_flight();
        let started = Instant::now();
        black_box(call(service, request));
        let elapsed = u32::try_from(started.elapsed().as_nanos()).unwrap_or(u32::MAX);
        let after = refreshes.in_flight();
        let class = match (before, after) {
            (None, None) => &mut samples.idle,
            (Some(before), Some(after)) if before == after => &mut samples.renewing,
            _ => &mut samples.crossing,
        };
        if class.len() < class.capacity() {
            class.push(elapsed);
        }
    }
    samples
}

/// Prints p50, p99, p99.9 and the maximum of `latencies`, in nanoseconds.
fn print_percentiles(label: &str, latencies: &mut [u32]) {
    if latencies.is_empty() {
        eprintln!("renewal: {label:<40} no requests");
        return;
    }
    latencies.sort_unstable();
    let percentile = |share: f64| {
        let index = ((latencies.len() - 1) as f64 * share).round() as usize;
        latencies[index]
    };
    eprintln!(
        "renewal: {label:<40} n = {:>9}  p50 = {:>6} ns  p99 = {:>6} ns  p99.9 = {:>7} ns  max = {:>9} ns",
        latencies.len(),
        percentile(0.50),
        percentile(0.99),
        percentile(0.999),
        latencies[latencies.len() - 1],
    );
}

fn renewal(c: &mut Criterion) {
    let runtime = support::runtime();
    // A renewal is spawned on the runtime of the request that finds the token due, so the
    // requests must be sent from inside the runtime's context.
    let _entered = runtime.enter();
    let mut steady = steady_service(&runtime);
    let never_renewed = Refreshes::default();
    let mut steady_samples = sample(&mut steady, &never_renewed, SAMPLING_TIME);

    // Logged in only now: a 2 s token from before the steady run would have expired, and the
    // first request would wait for a new one.
    let (mut renewing, refreshes) = renewing_service(&runtime);
    let mut renewing_samples = sample(&mut renewing, &refreshes, SAMPLING_TIME);
    print_percentiles("hour-long token, no renewal", &mut steady_samples.idle);
    print_percentiles("2 s tokens, between renewals", &mut renewing_samples.idle);
    print_percentiles(
        "2 s tokens, renewal in flight",
        &mut renewing_samples.renewing,
    );
    print_percentiles(
        "2 s tokens, renewal started or finished",
        &mut renewing_samples.crossing,
    );
    eprintln!(
        "renewal: {} refresh calls in {SAMPLING_TIME:?}",
        refreshes.finished.load(Ordering::SeqCst)
    );

    let mut group = c.benchmark_group("renewal");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    group.bench_function("no_renewal", |b| {
        b.iter(|| black_box(call(&mut steady, request())))
    });
    group.bench_function("renewal_in_flight", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // Send untimed requests until a renewal is in flight; one of them starts it.
                let refresh = loop {
                    if let Some(refresh) = refreshes.in_flight() {
                        break refresh;
                    }
                    black_box(call(&mut renewing, request()));
                };
                let batch = (iters - done).min(BATCH);
                let started = Instant::now();
                for _ in 0..batch {
                    black_box(call(&mut renewing, request()));
                }
                let elapsed = started.elapsed();
                // A batch that outlived the renewal is timed again.
                if refreshes.in_flight() == Some(refresh) {
                    measured += elapsed;
                    done += batch;
                }
            }
            measured
        })
    });
    group.finish();
}

criterion_group!(benches, renewal);
criterion_main!(benches);
