//! The cost of one request with a warm token, against the floor (a fixed sensitive header)
//! and a hand-written alternative: from one thread, and from two threads pinned to two
//! cores. With `--bench`, the two-thread variants also run in interleaved rounds, and the
//! medians of their per-round ratios are printed.

mod support;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bigvision_auth::NoReplay;
use criterion::{Criterion, criterion_group, criterion_main};
use support::*;
use tower::Layer;
use tower_http::auth::AddAuthorizationLayer;

fn hot_path(c: &mut Criterion) {
    let runtime = runtime();
    let _entered = runtime.enter();
    let auth = layer();
    runtime.block_on(auth.handle().login()).expect("login");
    let no_replay = bigvision_auth::BigVisionAuthLayer::builder(
        memory_login(Duration::ZERO),
        bigvision_auth::Credentials::new("bench", "bench"),
    )
    .base_url("https://bigvision.example/api")
    .replay_body(NoReplay)
    .build()
    .expect("valid settings");
    runtime.block_on(no_replay.handle().login()).expect("login");

    let mut group = c.benchmark_group("hot_path");
    let mut bare = Noop;
    group.bench_function("bare", |b| b.iter(|| black_box(call(&mut bare, request()))));
    let mut floor = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(Noop);
    group.bench_function("add_authorization", |b| {
        b.iter(|| black_box(call(&mut floor, request())))
    });
    let mut ours = no_replay.layer(Noop);
    group.bench_function("bigvision_auth_no_replay", |b| {
        b.iter(|| black_box(call(&mut ours, request())))
    });
    let mut ours_replay = auth.layer(Noop);
    group.bench_function("bigvision_auth_replay", |b| {
        b.iter(|| black_box(call(&mut ours_replay, request())))
    });
    // A shared service used from many tasks is often cloned for each request, as in
    // `service.clone().oneshot(request)`: the request goes through a new clone.
    group.bench_function("add_authorization_clone_per_request", |b| {
        b.iter(|| black_box(call(&mut floor.clone(), request())))
    });
    group.bench_function("bigvision_auth_no_replay_clone_per_request", |b| {
        b.iter(|| black_box(call(&mut ours.clone(), request())))
    });
    // tower's retry layer sends through its own service and keeps a clone of it for a retry.
    group.bench_function("add_authorization_clone_held", |b| {
        b.iter(|| {
            let retry_copy = floor.clone();
            black_box(call(&mut floor, request()));
            drop(retry_copy)
        })
    });
    group.bench_function("bigvision_auth_no_replay_clone_held", |b| {
        b.iter(|| {
            let retry_copy = ours.clone();
            black_box(call(&mut ours, request()));
            drop(retry_copy)
        })
    });
    let mut hand = HandWritten::new(Noop);
    group.bench_function("hand_written", |b| {
        b.iter(|| black_box(call(&mut hand, request())))
    });
    #[cfg(feature = "redis")]
    {
        // The store points at a closed loopback port: the login falls back to a local fetch,
        // and what is measured is the hot path of a layer that has a store attached.
        let store = bigvision_auth::RedisTokenStore::from_url("redis://127.0.0.1:1")
            .expect("valid URL")
            .command_timeout(Duration::from_millis(50));
        let with_store = bigvision_auth::BigVisionAuthLayer::builder(
            memory_login(Duration::ZERO),
            bigvision_auth::Credentials::new("bench", "bench"),
        )
        .base_url("https://bigvision.example/api")
        .replay_body(NoReplay)
        .token_store(store)
        .build()
        .expect("valid settings");
        runtime
            .block_on(with_store.handle().login())
            .expect("login");
        let mut ours_store = with_store.layer(Noop);
        group.bench_function("bigvision_auth_no_replay_redis_store", |b| {
            b.iter(|| black_box(call(&mut ours_store, request())))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("contended");
    let floor = AddAuthorizationLayer::bearer(TOKEN)
        .as_sensitive(true)
        .layer(Noop);
    let hand = HandWritten::new(Noop);
    group.bench_function("add_authorization", |b| {
        b.iter_custom(|iters| on_both_cores(iters, || floor.clone()))
    });
    group.bench_function("bigvision_auth_no_replay", |b| {
        b.iter_custom(|iters| on_both_cores(iters, || no_replay.layer(Noop)))
    });
    group.bench_function("bigvision_auth_replay", |b| {
        b.iter_custom(|iters| on_both_cores(iters, || auth.layer(Noop)))
    });
    group.bench_function("hand_written", |b| {
        b.iter_custom(|iters| on_both_cores(iters, || hand.clone()))
    });
    group.finish();

    if should_run_interleaved_rounds() {
        interleaved_rounds(
            || floor.clone(),
            || no_replay.layer(Noop),
            || auth.layer(Noop),
            || hand.clone(),
        );
    }
}

/// Returns whether to run the interleaved rounds: under `cargo bench`, unless a filter that
/// excludes the contended group or `--list` was given.
fn should_run_interleaved_rounds() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|arg| arg == "--bench");
    let listing = args.iter().any(|arg| arg == "--list");
    let filter = args.iter().find(|arg| !arg.starts_with('-'));
    let filter_allows = filter.is_none_or(|filter| {
        "contended/".contains(filter.as_str()) || filter.starts_with("contended")
    });
    benching && !listing && filter_allows
}

/// Threads that send requests at once, one per core of the machine the figures are for.
const THREADS: usize = 2;
/// Clones of the service each thread takes turns with.
const CLONES_PER_THREAD: usize = 4;
/// Rounds of the printed comparison.
const ROUNDS: usize = 11;
/// Requests per variant and round in the printed comparison.
const ROUND_REQUESTS: u64 = 2_000_000;

/// Sends `iters` requests from [`THREADS`] threads, each pinned to its own CPU and taking
/// turns with [`CLONES_PER_THREAD`] clones of the service, and returns the wall time from
/// the first thread's start to the last thread's end. Criterion divides it by `iters`,
/// giving the inverse of the throughput.
fn on_both_cores<S, F>(iters: u64, make: F) -> Duration
where
    F: Fn() -> S,
    S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    S::Error: std::fmt::Debug,
{
    // The first thread also sends the remainder, so that exactly `iters` requests go out.
    let share = iters / THREADS as u64;
    let remainder = iters % THREADS as u64;
    let cpus = bench_cpus();
    let clones: Vec<Vec<S>> = (0..THREADS)
        .map(|_| (0..CLONES_PER_THREAD).map(|_| make()).collect())
        .collect();
    let start = Barrier::new(THREADS);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|scope| {
        let threads: Vec<_> = clones
            .into_iter()
            .enumerate()
            .map(|(index, mut services)| {
                let start = &start;
                let cpu = cpus.get(index).copied();
                let requests = if index == 0 { share + remainder } else { share };
                scope.spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to_cpu(cpu);
                    }
                    start.wait();
                    let started = Instant::now();
                    for turn in 0..requests {
                        let service = &mut services[turn as usize % CLONES_PER_THREAD];
                        black_box(call(service, request()));
                    }
                    (started, Instant::now())
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("bench thread"))
            .collect()
    });
    let first_start = spans.iter().map(|span| span.0).min().expect("threads ran");
    let last_end = spans.iter().map(|span| span.1).max().expect("threads ran");
    last_end - first_start
}

/// Returns the CPUs to pin the bench threads to: the first [`THREADS`] of those this process
/// may run on. When there are fewer, prints why once and returns none, so that the threads
/// run unpinned.
#[cfg(target_os = "linux")]
fn bench_cpus() -> Vec<usize> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    // SAFETY: `cpu_set_t` is plain data, and all zeroes is the empty set. The size passed is
    // the set's own, pid 0 is the calling thread, and `CPU_ISSET` indexes the set's array
    // with a bounds check.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            Vec::new()
        } else {
            (0..libc::CPU_SETSIZE as usize)
                .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
                .collect()
        }
    };
    if allowed.len() < THREADS {
        WARNED.call_once(|| {
            eprintln!(
                "only {} CPU(s) allowed for this process, fewer than the {THREADS} bench \
                 threads: the contended figures come from unpinned threads",
                allowed.len()
            )
        });
        return Vec::new();
    }
    allowed[..THREADS].to_vec()
}

#[cfg(not(target_os = "linux"))]
fn bench_cpus() -> Vec<usize> {
    Vec::new()
}

/// Pins the calling thread to `cpu`, so that the threads of a contended run neither share a
/// core nor move between cores during it. Where that fails, the thread runs unpinned and
/// prints why.
#[cfg(target_os = "linux")]
fn pin_to_cpu(cpu: usize) {
    // SAFETY: as in `bench_cpus`, and `sched_setaffinity` only reads the set.
    let status = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if status != 0 {
        eprintln!(
            "could not pin a bench thread to CPU {cpu}: {}; it runs unpinned",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_to_cpu(_cpu: usize) {}

/// Runs the contended variants one after another, round after round, and prints the median
/// time per request of each and the medians of the per-round ratios. Load from elsewhere on
/// the machine hits every variant of a round alike, so the ratios vary less than the times.
fn interleaved_rounds<A, B, C, D>(
    floor: impl Fn() -> A,
    no_replay: impl Fn() -> B,
    replay: impl Fn() -> C,
    hand: impl Fn() -> D,
) where
    A: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    A::Error: std::fmt::Debug,
    B: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    B::Error: std::fmt::Debug,
    C: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    C::Error: std::fmt::Debug,
    D: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    D::Error: std::fmt::Debug,
{
    // The hand-written layer is 50 to 100 times slower here, so it gets fewer requests and
    // its turn takes about as long as the others'.
    let hand_requests = ROUND_REQUESTS / 100;
    let per_request = |time: Duration, count: u64| time.as_secs_f64() * 1e9 / count as f64;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut times = [0.0; 4];
        // Each round starts with a different variant, so that none always follows the
        // hand-written layer's mutex contention.
        for turn in 0..times.len() {
            let variant = (round + turn) % times.len();
            times[variant] = match variant {
                0 => per_request(on_both_cores(ROUND_REQUESTS, &floor), ROUND_REQUESTS),
                1 => per_request(on_both_cores(ROUND_REQUESTS, &no_replay), ROUND_REQUESTS),
                2 => per_request(on_both_cores(ROUND_REQUESTS, &replay), ROUND_REQUESTS),
                _ => per_request(on_both_cores(hand_requests, &hand), hand_requests),
            };
        }
        rounds.push(times);
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let column = |index: usize| median(rounds.iter().map(|round| round[index]).collect());
    // Throughput relative to the floor is the floor's time divided by the variant's.
    let ratio = |over: usize, under: usize| {
        median(
            rounds
                .iter()
                .map(|round| round[over] / round[under])
                .collect(),
        )
    };
    eprintln!(
        "contended, {ROUNDS} interleaved rounds on {THREADS} threads ({}), median ns per \
         request: add_authorization {:.1}, bigvision_auth_no_replay {:.1}, \
         bigvision_auth_replay {:.1}, hand_written {:.1}",
        if bench_cpus().is_empty() {
            "unpinned"
        } else {
            "pinned"
        },
        column(0),
        column(1),
        column(2),
        column(3),
    );
    eprintln!(
        "contended, median of per-round throughput ratios: no_replay / floor {:.2}, \
         replay / floor {:.2}, no_replay / hand_written {:.1}, replay / hand_written {:.1}",
        ratio(0, 1),
        ratio(0, 2),
        ratio(3, 1),
        ratio(3, 2),
    );
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
