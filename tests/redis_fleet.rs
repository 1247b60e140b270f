//! Several layers, as several processes would have, sharing one token through a real
//! `redis-server` that each test starts on a free loopback port. The tests run on real
//! time with short token lifetimes, because Redis expires keys by its own clock.
#![cfg(all(feature = "redis", feature = "mock"))]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bigvision_auth::mock::{Fault, MockServer};
use bigvision_auth::{Backoff, BigVisionAuth, BigVisionAuthLayer, RedisTokenStore};
use common::HttpClient;
use http::StatusCode;
use sha2::{Digest, Sha256};
use tower::Layer;

/// Access-token lifetime in the renewal tests: renewal starts after 3 s (a quarter before
/// expiry) and the token stops being sent 0.4 s before it expires.
const SHORT_LIFETIME: Duration = Duration::from_secs(4);
/// Time after a fetch at which a [`SHORT_LIFETIME`] token is due for renewal but still
/// usable.
const RENEWAL_DUE: Duration = Duration::from_millis(3_200);

type Service = BigVisionAuth<HttpClient>;

/// A `redis-server` child process on a loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("no free loopback port for redis-server")
            .port();
        let mut server = RedisServer { port, child: None };
        server.restart();
        server
    }

    /// Starts the server (again) on its port, with no persistence, and waits until it
    /// accepts connections.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is already running");
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start redis-server ({error}); these tests need it on PATH: \
                     install it with `apt-get install -y redis-server`"
                )
            });
        self.child = Some(child);

        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not accept connections on {addr} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Returns the keys under the store's default prefix.
    async fn keys(&self) -> Vec<String> {
        let mut connection = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("KEYS")
            .arg(format!("{}:*", RedisTokenStore::DEFAULT_KEY_PREFIX))
            .query_async(&mut connection)
            .await
            .unwrap()
    }

    /// Returns the stored token value, if any.
    async fn token_value(&self) -> Option<Vec<u8>> {
        let keys = self.keys().await;
        let key = keys.iter().find(|key| !key.ends_with(":lock"))?;
        let mut connection = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fingerprint(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes())
        .iter()
        .flat_map(|byte| format!("{byte:02x}").into_bytes())
        .collect()
}

fn store(redis: &RedisServer) -> RedisTokenStore {
    RedisTokenStore::from_url(&redis.url()).unwrap()
}

/// Builds a service with its own layer and store handle, as one process of the fleet has.
fn fleet_service(server: &MockServer, store: RedisTokenStore) -> Service {
    let layer: BigVisionAuthLayer = common::builder(server).token_store(store).build().unwrap();
    layer.layer(common::client())
}

/// Sends `per_service` concurrent requests on every service and returns their statuses.
async fn burst(services: &[Service], server: &MockServer, per_service: usize) -> Vec<StatusCode> {
    let mut tasks = tokio::task::JoinSet::new();
    for service in services {
        for _ in 0..per_service {
            let service = service.clone();
            let request = common::get(server.url("/ocr"));
            tasks.spawn(async move { common::send(&service, request).await });
        }
    }
    let mut statuses = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let response = joined.unwrap().expect("request failed");
        statuses.push(response.status());
    }
    statuses
}

fn assert_all_ok(statuses: &[StatusCode]) {
    let failed: Vec<_> = statuses
        .iter()
        .filter(|status| **status != StatusCode::OK)
        .collect();
    assert!(failed.is_empty(), "failed statuses: {failed:?}");
}

/// Returns the number of tokens the mock issued, by login or refresh.
fn issued(server: &MockServer) -> u64 {
    let stats = server.stats();
    stats.logins + stats.refreshes
}

/// Returns the distinct tokens of the last `count` API calls.
fn last_tokens(server: &MockServer, count: usize) -> Vec<String> {
    let mut tokens: Vec<String> = common::api_tokens(server)
        .into_iter()
        .rev()
        .take(count)
        .map(|token| token.expect("API call without a token"))
        .collect();
    tokens.sort();
    tokens.dedup();
    tokens
}

/// Waits until the mock has issued `count` tokens, then a little longer to catch extra
/// fetches.
async fn settle_at(server: &MockServer, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while issued(server) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fleet_logs_in_and_refreshes_once() {
    let redis = RedisServer::start();
    let server = MockServer::builder()
        .token_lifetime(SHORT_LIFETIME)
        .start()
        .await
        .unwrap();
    let services: Vec<Service> = (0..8)
        .map(|_| fleet_service(&server, store(&redis)))
        .collect();

    let cold = burst(&services, &server, 50).await;
    let fetched_at = Instant::now();

    assert_all_ok(&cold);
    assert_eq!(cold.len(), 400);
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().refresh_calls, 0);

    tokio::time::sleep(RENEWAL_DUE.saturating_sub(fetched_at.elapsed())).await;
    let renewing = burst(&services, &server, 50).await;
    settle_at(&server, 2).await;

    assert_all_ok(&renewing);
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().refresh_calls, 1);
    assert_eq!(server.stats().refreshes, 1);

    let after = burst(&services, &server, 1).await;

    assert_all_ok(&after);
    assert_eq!(last_tokens(&server, services.len()).len(), 1);
}

/// Sends one request on each service and returns the results.
async fn one_each(
    services: &[Service],
    server: &MockServer,
) -> Vec<Result<StatusCode, bigvision_auth::Error>> {
    let mut tasks = tokio::task::JoinSet::new();
    for service in services {
        let service = service.clone();
        let request = common::get(server.url("/ocr"));
        tasks.spawn(async move { common::send(&service, request).await });
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        results.push(joined.unwrap().map(|response| response.status()));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_login_is_shared_by_fleet() {
    let redis = RedisServer::start();
    let server = MockServer::start().await.unwrap();
    server.set_login_fault(Some(Fault::status(503)));
    let backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(4)).without_jitter();
    let services: Vec<Service> = (0..8)
        .map(|_| {
            let layer: BigVisionAuthLayer = common::builder(&server)
                .backoff(backoff)
                .fetch_attempts(1)
                .token_store(store(&redis))
                .build()
                .unwrap();
            layer.layer(common::client())
        })
        .collect();

    let first = one_each(&services, &server).await;
    let calls_after_first = server.stats().login_calls;
    let during_backoff = one_each(&services, &server).await;
    let calls_during_backoff = server.stats().login_calls;
    // Past the first backoff (400 ms): one process calls again, and fails again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let second = one_each(&services, &server).await;
    let calls_after_second = server.stats().login_calls;
    // The second failure in a row backs off for 800 ms across the fleet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still_backing_off = one_each(&services, &server).await;
    let calls_still_backing_off = server.stats().login_calls;
    server.set_login_fault(None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recovered = one_each(&services, &server).await;

    for results in [&first, &during_backoff, &second, &still_backing_off] {
        for result in results {
            let error = result.as_ref().expect_err("login is failing");
            assert!(
                matches!(error, bigvision_auth::Error::Unavailable { status, .. } if *status == 503),
                "{error:?}"
            );
        }
    }
    assert_eq!(calls_after_first, 1, "one login call for the whole fleet");
    assert_eq!(calls_during_backoff, 1, "no login call during the backoff");
    assert_eq!(calls_after_second, 2);
    assert_eq!(
        calls_still_backing_off, 2,
        "the backoff grows across the fleet"
    );
    assert!(
        recovered
            .iter()
            .all(|result| matches!(result, Ok(StatusCode::OK))),
        "{recovered:?}"
    );
    assert_eq!(server.stats().login_calls, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_lock_holder_is_taken_over() {
    const LOCK_LIFETIME: Duration = Duration::from_secs(2);
    let redis = RedisServer::start();
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(Fault::Stall);

    // The holder runs on a runtime of its own, which the test shuts down mid-login as a
    // crash would stop a process.
    let holder_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let holder = fleet_service(&server, store(&redis).lock_lifetime(LOCK_LIFETIME));
    let request = common::get(server.url("/ocr"));
    holder_runtime.spawn(async move {
        let _ = common::send(&holder, request).await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis.keys().await.iter().any(|key| key.ends_with(":lock")) {
        assert!(Instant::now() < deadline, "the holder never took the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while server.stats().login_calls == 0 {
        assert!(Instant::now() < deadline, "the holder never called login");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    holder_runtime.shutdown_background();
    let stopped_at = Instant::now();

    let services: Vec<Service> = (0..4)
        .map(|_| fleet_service(&server, store(&redis).lock_lifetime(LOCK_LIFETIME)))
        .collect();
    let statuses = burst(&services, &server, 20).await;
    let waited = stopped_at.elapsed();

    assert_all_ok(&statuses);
    assert_eq!(
        server.stats().login_calls,
        2,
        "one stalled login, one takeover"
    );
    assert_eq!(server.stats().logins, 1);
    assert!(
        waited < LOCK_LIFETIME + Duration::from_secs(2),
        "takeover took {waited:?}"
    );
    assert!(
        waited > LOCK_LIFETIME / 4,
        "took over after {waited:?}, before the lock could have expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_falls_back_and_converges() {
    let mut redis = RedisServer::start();
    let server = MockServer::builder()
        .token_lifetime(SHORT_LIFETIME)
        .start()
        .await
        .unwrap();
    let services: Vec<Service> = (0..4)
        .map(|_| fleet_service(&server, store(&redis)))
        .collect();

    let shared = burst(&services, &server, 10).await;
    let shared_at = Instant::now();

    assert_all_ok(&shared);
    assert_eq!(issued(&server), 1);

    // Outage: every layer renews on its own.
    redis.stop();
    tokio::time::sleep(RENEWAL_DUE.saturating_sub(shared_at.elapsed())).await;
    let during_outage = burst(&services, &server, 10).await;
    let local_at = Instant::now();
    settle_at(&server, 5).await;

    assert_all_ok(&during_outage);
    assert_eq!(issued(&server), 1 + 4, "one local fetch per layer");

    // Redis is back, empty: the next renewal is shared again.
    redis.restart();
    tokio::time::sleep(RENEWAL_DUE.saturating_sub(local_at.elapsed())).await;
    let after_outage = burst(&services, &server, 10).await;
    settle_at(&server, 6).await;

    assert_all_ok(&after_outage);
    assert_eq!(issued(&server), 1 + 4 + 1, "one shared fetch for the fleet");

    let converged = burst(&services, &server, 1).await;

    assert_all_ok(&converged);
    assert_eq!(last_tokens(&server, services.len()).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejection_drops_shared_token_only_if_current() {
    let redis = RedisServer::start();
    let server = MockServer::start().await.unwrap();
    let first = fleet_service(&server, store(&redis));
    let second = fleet_service(&server, store(&redis));
    assert_all_ok(&burst(&[first.clone(), second.clone()], &server, 1).await);
    let old_token = last_tokens(&server, 2);
    assert_eq!(old_token.len(), 1);
    assert_eq!(issued(&server), 1);

    // The API rejects the shared token on the first layer: it drops it from Redis and
    // shares a new one.
    server.reject_next_api_calls(1);
    let response = common::send(&first, common::get(server.url("/ocr")))
        .await
        .unwrap();
    let new_token = last_tokens(&server, 1);
    let stored = redis.token_value().await.expect("no token in Redis");

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(issued(&server), 2);
    assert_ne!(new_token, old_token);
    assert!(stored.starts_with(&fingerprint(&new_token[0])));

    // The second layer's rejection of the old token leaves the new one in Redis and
    // takes it over without a fetch.
    let response = common::send(&second, common::get(server.url("/ocr")))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().rejected_unknown, 2);
    assert_eq!(issued(&server), 2);
    assert_eq!(last_tokens(&server, 1), new_token);
    assert_eq!(redis.token_value().await, Some(stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_store_shares_token() {
    let redis = RedisServer::start();
    let server = MockServer::start().await.unwrap();
    let key = [42u8; 32];
    let services: Vec<Service> = (0..3)
        .map(|_| fleet_service(&server, store(&redis).encryption_key(key)))
        .collect();

    let statuses = burst(&services, &server, 10).await;
    let token = last_tokens(&server, 1);
    let stored = redis.token_value().await.expect("no token in Redis");
    let stored_text = String::from_utf8_lossy(&stored);

    assert_all_ok(&statuses);
    assert_eq!(server.stats().login_calls, 1);
    assert!(!stored_text.contains(&token[0]), "token stored in clear");
    assert!(!stored_text.contains("refresh"), "{stored_text}");
}

/// Builds the `fleet_worker` example with Cargo into the test's own target directory and
/// returns its path. `cargo test --all-targets` builds examples only as test harnesses, so
/// the test cannot rely on the runnable binary being there.
fn build_fleet_worker() -> std::path::PathBuf {
    let test_binary = std::env::current_exe().unwrap();
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary is not in <target>/<profile>/deps");
    let target_dir = profile_dir
        .parent()
        .expect("test binary is not in <target>/<profile>/deps");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--example",
            "fleet_worker",
            "--features",
            "mock redis",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name() == Some("release".as_ref()) {
        cargo.arg("--release");
    }
    let status = cargo
        .status()
        .expect("cannot run cargo to build the fleet_worker example");
    assert!(
        status.success(),
        "building the fleet_worker example failed: {status}"
    );

    let worker = profile_dir
        .join("examples")
        .join(format!("fleet_worker{}", std::env::consts::EXE_SUFFIX));
    assert!(
        worker.exists(),
        "{} is missing after the build",
        worker.display()
    );
    worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_log_in_once() {
    const WORKERS: usize = 6;
    let worker = build_fleet_worker();
    let redis = RedisServer::start();
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(300))
        .start()
        .await
        .unwrap();

    let children: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::process::Command::new(&worker)
                .env("BIGVISION_BASE_URL", server.base_url())
                .env("REDIS_URL", redis.url())
                .env("REQUESTS", "50")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();
    let mut outputs = Vec::new();
    for child in children {
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("worker did not finish within 60 s")
            .unwrap();
        outputs.push(output);
    }

    for output in &outputs {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "worker failed: {}\n{stdout}{stderr}",
            output.status
        );
        assert!(stdout.contains("requests=50 failed=0"), "{stdout}");
    }
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().authorized, (WORKERS * 50) as u64);
}

/// Measures the token calls of fleets of 1, 8 and 32 layers, with and without Redis, and
/// prints them scaled to an hour of 300-second tokens. It runs for about 100 s, so it is
/// ignored by default: `cargo test --all-features --test redis_fleet -- --ignored
/// --nocapture fleet_token_calls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement that runs for about 100 s"]
async fn fleet_token_calls_per_hour() {
    const RUN: Duration = Duration::from_secs(16);
    const REQUEST_INTERVAL: Duration = Duration::from_millis(100);
    // 16 s of 4-second tokens are 4 token lifetimes; an hour of 300-second tokens is 12.
    const SCALE_TO_HOUR: u64 = 3;
    let redis = RedisServer::start();

    for layers in [1, 8, 32] {
        for shared in [false, true] {
            let server = MockServer::builder()
                .token_lifetime(SHORT_LIFETIME)
                .start()
                .await
                .unwrap();
            let services: Vec<Service> = (0..layers)
                .map(|_| match shared {
                    true => fleet_service(&server, store(&redis)),
                    false => common::builder(&server)
                        .build()
                        .unwrap()
                        .layer(common::client()),
                })
                .collect();

            let started = Instant::now();
            let mut failed = 0;
            while started.elapsed() < RUN {
                let statuses = burst(&services, &server, 1).await;
                failed += statuses
                    .iter()
                    .filter(|status| **status != StatusCode::OK)
                    .count();
                tokio::time::sleep(REQUEST_INTERVAL).await;
            }
            let stats = server.stats();
            println!(
                "layers={layers:2} redis={shared:5} | in {RUN:?}: login_calls={} \
                 refresh_calls={} failed_requests={failed} | estimate for an hour of \
                 300-s tokens: {} logins at start, {} refresh calls",
                stats.login_calls,
                stats.refresh_calls,
                stats.login_calls,
                stats.refresh_calls * SCALE_TO_HOUR,
            );
        }
    }
}
