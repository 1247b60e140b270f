//! The cost of one request with a warm token, against the floor (a fixed sensitive header)
//! and a hand-written alternative; single-threaded and from both cores at once.

mod support;

use std::hint::black_box;
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
    group.bench_function("add_authorization", |b| {
        let floor = AddAuthorizationLayer::bearer(TOKEN)
            .as_sensitive(true)
            .layer(Noop);
        b.iter_custom(|iters| on_both_cores(iters, || floor.clone()))
    });
    group.bench_function("bigvision_auth_no_replay", |b| {
        b.iter_custom(|iters| on_both_cores(iters, || no_replay.layer(Noop)))
    });
    group.bench_function("bigvision_auth_replay", |b| {
        b.iter_custom(|iters| on_both_cores(iters, || auth.layer(Noop)))
    });
    group.bench_function("hand_written", |b| {
        let hand = HandWritten::new(Noop);
        b.iter_custom(|iters| on_both_cores(iters, || hand.clone()))
    });
    group.finish();
}

/// Sends `iters` requests from two threads, each with its own clone of the service, and
/// returns the wall time; criterion divides it by `iters`, giving the inverse throughput.
fn on_both_cores<S, F>(iters: u64, make: F) -> Duration
where
    F: Fn() -> S,
    S: tower::Service<http::Request<http_body_util::Full<bytes::Bytes>>> + Send,
    S::Error: std::fmt::Debug,
{
    let services = [make(), make()];
    let started = Instant::now();
    std::thread::scope(|scope| {
        for mut service in services {
            scope.spawn(move || {
                for _ in 0..iters / 2 {
                    black_box(call(&mut service, request()));
                }
            });
        }
    });
    started.elapsed()
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
