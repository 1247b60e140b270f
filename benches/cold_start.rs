//! 10,000 concurrent requests on an empty token cache, with a login service that replies
//! after 50 ms: the time until the last request gets its response, and the number of logins.

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bigvision_auth::{BigVisionAuthLayer, Credentials};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use support::*;
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt};

const REQUESTS: usize = 10_000;
const LOGIN_LATENCY: Duration = Duration::from_millis(50);

/// One cold start, timed from the spawn of the first request.
struct ColdStart {
    first_answered: Duration,
    last_answered: Duration,
    login_calls: usize,
}

/// Sends [`REQUESTS`] requests at once, each as a task of its own on a clone of a new
/// layer's service, and waits for all of them. The inner service returns its response at once, so
/// a request gets its response as soon as it is sent with the token.
fn cold_start(runtime: &Runtime) -> ColdStart {
    let login = Counted::new(memory_login(LOGIN_LATENCY));
    let login_calls = login.calls();
    let _entered = runtime.enter();
    let auth = BigVisionAuthLayer::builder(login, Credentials::new("bench", "bench"))
        .base_url("https://bigvision.example/api")
        .build()
        .expect("valid settings");
    let service = auth.layer(Noop);
    let requests: Vec<_> = (0..REQUESTS)
        .map(|_| (service.clone(), request()))
        .collect();

    let (first, last, started) = runtime.block_on(async move {
        let started = Instant::now();
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|(service, request)| {
                tokio::spawn(async move {
                    service.oneshot(request).await.expect("response");
                    Instant::now()
                })
            })
            .collect();
        let mut first = None::<Instant>;
        let mut last = started;
        for task in tasks {
            let answered = task.await.expect("request task panicked");
            first = Some(first.map_or(answered, |first| first.min(answered)));
            last = last.max(answered);
        }
        (first.unwrap_or(started), last, started)
    });

    let login_calls = login_calls.load(Ordering::Relaxed);
    assert_eq!(
        login_calls, 1,
        "{REQUESTS} concurrent requests on an empty cache made {login_calls} login calls, expected 1"
    );
    ColdStart {
        first_answered: first - started,
        last_answered: last - started,
        login_calls,
    }
}

fn cold_start_bench(c: &mut Criterion) {
    let runtime = runtime();

    let run = cold_start(&runtime);
    eprintln!(
        "cold_start: {REQUESTS} requests, {} login call(s); first answered after {:.1?}, \
         last after {:.1?} = {:.2} x the {:?} login latency",
        run.login_calls,
        run.first_answered,
        run.last_answered,
        run.last_answered.as_secs_f64() / LOGIN_LATENCY.as_secs_f64(),
        LOGIN_LATENCY,
    );

    let mut group = c.benchmark_group("cold_start");
    // One iteration takes at least the login latency, so keep the sample count low.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("10k_requests_50ms_login", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| cold_start(&runtime).last_answered).sum())
    });
    group.finish();
}

criterion_group!(benches, cold_start_bench);
criterion_main!(benches);
