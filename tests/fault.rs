//! A long run with concurrency while the token endpoints restart, reply with HTML 502s, stall,
//! and every token is revoked.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bigvision_auth::mock::{Fault, MockServer};
use bigvision_auth::{Backoff, Error};
use common::*;
use http::StatusCode;
use tower::{Service, ServiceBuilder, ServiceExt};

const WORKERS: u64 = 20;
const REQUESTS_PER_WORKER: u64 = 150;
const REQUEST_SPACING: Duration = Duration::from_millis(400);
const TOKEN_LIFETIME: Duration = Duration::from_secs(4);
const REFRESH_LIFETIME: Duration = Duration::from_secs(12);
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(8),
    jitter: false,
};

/// Outages of the token endpoints: (start, length, fault). A stall keeps each attempt
/// waiting for the fetch timeout.
fn outages() -> Vec<(Duration, Duration, Fault)> {
    vec![
        (Duration::from_secs(8), Duration::from_secs(5), Fault::Close),
        (
            Duration::from_secs(18),
            Duration::from_secs(4),
            Fault::Html502,
        ),
        (
            Duration::from_secs(28),
            Duration::from_secs(6),
            Fault::Stall,
        ),
        (
            Duration::from_secs(45),
            Duration::from_secs(3),
            Fault::status(503),
        ),
    ]
}

const REVOKE_AT: Duration = Duration::from_secs(38);

/// Returns the maximum number of attempts a failure streak can make in an outage of `length`: the first attempt,
/// then one per backoff step that fits in the outage, each step also waiting out a fetch
/// timeout when attempts stall. One more attempt ends the streak after the outage.
fn attempts_in_outage(length: Duration) -> u64 {
    let mut attempts = 1;
    let mut elapsed = Duration::ZERO;
    loop {
        elapsed += BACKOFF.delay(attempts as u32);
        if elapsed > length {
            return attempts + 1;
        }
        attempts += 1;
    }
}

#[tokio::test(start_paused = true)]
async fn chaos_run_stays_within_bounds() {
    let server = Arc::new(
        MockServer::builder()
            .token_lifetime(TOKEN_LIFETIME)
            .refresh_lifetime(REFRESH_LIFETIME)
            .login_latency(Duration::from_millis(50))
            .refresh_latency(Duration::from_millis(50))
            .start()
            .await
            .unwrap(),
    );
    let layer = builder(&server)
        .fetch_timeout(FETCH_TIMEOUT)
        .backoff(BACKOFF)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .layer(layer)
        .service(client());

    let chaos = tokio::spawn({
        let server = server.clone();
        async move {
            let started = tokio::time::Instant::now();
            for (start, length, fault) in outages() {
                if start > REVOKE_AT && started.elapsed() < REVOKE_AT {
                    tokio::time::sleep_until(started + REVOKE_AT).await;
                    server.revoke_all();
                }
                tokio::time::sleep_until(started + start).await;
                server.set_login_fault(Some(fault.clone()));
                server.set_refresh_fault(Some(fault));
                tokio::time::sleep(length).await;
                server.set_login_fault(None);
                server.set_refresh_fault(None);
            }
        }
    });

    let ok = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let typed_errors = Arc::new(AtomicU64::new(0));
    let untyped_errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let mut service = service.clone();
        let url = server.url("/ocr");
        let counters = (
            ok.clone(),
            rejected.clone(),
            typed_errors.clone(),
            untyped_errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            tokio::time::sleep(REQUEST_SPACING / WORKERS as u32 * worker as u32).await;
            for _ in 0..REQUESTS_PER_WORKER {
                let result = match service.ready().await {
                    Ok(ready) => ready.call(get(url.clone())).await,
                    Err(error) => Err(error),
                };
                match result {
                    Ok(response) if response.status() == StatusCode::OK => &counters.0,
                    Ok(_) => &counters.1,
                    Err(error) if error.is::<Error>() => &counters.2,
                    Err(_) => &counters.3,
                }
                .fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(REQUEST_SPACING).await;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    chaos.await.unwrap();

    let total = WORKERS * REQUESTS_PER_WORKER;
    let ok = ok.load(Ordering::Relaxed);
    let rejected = rejected.load(Ordering::Relaxed);
    let typed_errors = typed_errors.load(Ordering::Relaxed);
    let untyped_errors = untyped_errors.load(Ordering::Relaxed);
    let stats = server.stats();
    let run_time = REQUEST_SPACING * REQUESTS_PER_WORKER as u32;

    // Every request got a response or a typed error.
    assert_eq!(ok + rejected + typed_errors + untyped_errors, total);
    assert_eq!(untyped_errors, 0);
    assert!(ok > total / 2, "only {ok} of {total} requests succeeded");
    // No request went out without a token, or with a token past its expiry.
    assert_eq!(stats.rejected_missing, 0);
    assert_eq!(stats.rejected_expired, 0);
    // The only rejections are of the revoked tokens, and each was replayed.
    assert_eq!(rejected, 0);

    // Bound on calls to the token endpoints:
    //   successful fetches <= run_time / (3/4 of the lifetime) + 1 initial + 1 after the
    //     revocation + 1 after each outage, since with the default renewal window a token
    //     is renewed when a quarter of its lifetime is left;
    //   failed attempts <= sum over outages of attempts_in_outage(length + fetch timeout),
    //     plus one rejected refresh after the revocation.
    let successful_bound = run_time.as_millis() as u64
        / (TOKEN_LIFETIME * 3 / 4).as_millis() as u64
        + 2
        + outages().len() as u64;
    let failed_bound: u64 = outages()
        .iter()
        .map(|(_, length, _)| attempts_in_outage(*length + FETCH_TIMEOUT))
        .sum::<u64>()
        + 1;
    let calls = stats.login_calls + stats.refresh_calls;
    let successes = stats.logins + stats.refreshes;
    assert!(
        successes <= successful_bound,
        "{successes} successful fetches, bound {successful_bound}"
    );
    assert!(
        calls - successes <= failed_bound,
        "{} failed attempts, bound {failed_bound}",
        calls - successes
    );
    eprintln!(
        "ok={ok} typed={typed_errors} stats={stats:?} calls={calls} successes={successes} bounds={successful_bound}/{failed_bound} handle={:?}",
        handle.stats()
    );
    let handle_stats = handle.stats();
    assert_eq!(handle_stats.logins + handle_stats.refreshes, successes);
}
