//! How the layer behaves when the API rejects tokens and the token endpoints fail.

mod common;

use std::future::Future;
use std::time::Duration;

use bigvision_auth::mock::{ExpiresIn, Fault, MockServer};
use bigvision_auth::{Error, MAX_TOKEN_LIFETIME, TokenRetryPolicy};
use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::retry::RetryLayer;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

async fn send<S>(service: &mut S, request: Request<Full<Bytes>>) -> Result<S::Response, S::Error>
where
    S: Service<Request<Full<Bytes>>>,
{
    service.ready().await?.call(request).await
}

fn error_of(error: BoxError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => panic!("not a bigvision_auth::Error: {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn rejected_token_is_replayed_once() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.reject_next_api_calls(1);
    let response = send(&mut service, post(server.url("/ocr"), "{}"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(handle.stats().rejected_tokens, 1);
    assert_eq!(handle.stats().replays, 1);
    assert_eq!(server.stats().refreshes, 1);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn rejected_replay_goes_to_caller() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.reject_next_api_calls(5);
    let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(handle.stats().replays, 1);
    assert_eq!(server.api_calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn server_that_rejects_everything_is_not_stormed() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.reject_next_api_calls(u64::MAX);
    for _ in 0..50 {
        let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }

    // Fifty rejected requests in no time: the first rejection renews, the next ones within
    // the rejection backoff (250 ms, growing) keep the token.
    let stats = server.stats();
    assert_eq!(stats.refresh_calls + stats.login_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn revoked_tokens_cause_one_renewal() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).build().unwrap();
    let service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service.clone(), get(server.url("/ocr")))
        .await
        .unwrap();

    server.revoke_all();
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut service = service.clone();
        let url = server.url("/ocr");
        calls.push(tokio::spawn(
            async move { send(&mut service, get(url)).await },
        ));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    // The revoked refresh token is rejected once, then one password login serves all ten.
    let stats = server.stats();
    assert_eq!(stats.refresh_calls, 1);
    assert_eq!(stats.refreshes, 0);
    assert_eq!(stats.login_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn late_rejection_keeps_newer_token() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    // Holds back responses to requests marked `x-slow` by 5 s, so their 401 arrives after
    // a newer token replaced the one they carried.
    let slow_client = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let slow = request.headers().contains_key("x-slow");
        let client = client();
        async move {
            let response = client.request(request).await;
            if slow {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            response
        }
    });
    let service = ServiceBuilder::new().layer(layer).service(slow_client);
    send(&mut service.clone(), get(server.url("/ocr")))
        .await
        .unwrap();

    server.revoke_all();
    let mut slow_request = get(server.url("/ocr"));
    slow_request
        .headers_mut()
        .insert("x-slow", "1".parse().unwrap());
    let slow = tokio::spawn({
        let mut service = service.clone();
        async move { send(&mut service, slow_request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fast = send(&mut service.clone(), get(server.url("/ocr")))
        .await
        .unwrap();
    let slow = slow.await.unwrap().unwrap();

    assert_eq!(fast.status(), StatusCode::OK);
    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(handle.stats().rejected_tokens, 1);
    assert_eq!(server.stats().login_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn without_replay_caller_gets_rejection() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).without_replay().build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.reject_next_api_calls(1);
    let rejected = send(&mut service, get(server.url("/ocr"))).await.unwrap();
    let next = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(next.status(), StatusCode::OK);
    assert_eq!(server.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn outer_retry_policy_replays_rejection() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).without_replay().build().unwrap();
    let mut service = ServiceBuilder::new()
        .layer(RetryLayer::new(
            TokenRetryPolicy::new(1).replay_status(StatusCode::UNAUTHORIZED),
        ))
        .layer(layer)
        .service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.reject_next_api_calls(1);
    let response = send(&mut service, post(server.url("/ocr"), "{}"))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.api_calls().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn caller_timeout_does_not_cancel_login() {
    let server = MockServer::builder()
        .login_latency(Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new()
        .timeout(Duration::from_secs(1))
        .layer(layer)
        .service(client());

    let first = send(&mut service, get(server.url("/ocr"))).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert!(first.unwrap_err().is::<tower::timeout::error::Elapsed>());
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn stalled_login_times_out_and_retries() {
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(Fault::Stall);
    let layer = builder(&server)
        .fetch_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    let started = Instant::now();

    let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().login_calls, 2);
    // 2 s timeout, then the first backoff step of 500 ms.
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert!(started.elapsed() < Duration::from_millis(2600));
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_and_fail_fast() {
    let server = MockServer::start().await.unwrap();
    server.set_login_fault(Some(Fault::status(503)));
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    let started = Instant::now();

    let first = send(&mut service, get(server.url("/ocr")))
        .await
        .unwrap_err();
    let first_done = started.elapsed();
    let fast = send(&mut service, get(server.url("/ocr")))
        .await
        .unwrap_err();

    // Three attempts, 500 ms and 1 s apart; the next step is 2 s.
    assert!(matches!(error_of(first.into()), Error::Unavailable { status, .. } if status == 503));
    assert_eq!(first_done, Duration::from_millis(1500));
    assert!(error_of(fast.into()).is_transient());
    assert_eq!(server.stats().login_calls, 3);
    assert_eq!(handle.stats().fast_failures, 1);
    assert_eq!(handle.stats().failures.unavailable, 3);
    assert_eq!(handle.stats().failures.rejected, 0);

    tokio::time::sleep(Duration::from_millis(1900)).await;
    let still_fast = send(&mut service, get(server.url("/ocr"))).await;
    assert!(still_fast.is_err());
    assert_eq!(server.stats().login_calls, 3);

    server.set_login_fault(None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let recovered = send(&mut service, get(server.url("/ocr"))).await.unwrap();
    assert_eq!(recovered.status(), StatusCode::OK);
    assert_eq!(server.stats().login_calls, 4);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(Fault::retry_after(429, 3));
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    let started = Instant::now();

    let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(server.stats().login_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn wrong_password_is_not_retried() {
    let server = MockServer::builder()
        .user(USERNAME, "another password")
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new().layer(layer).service(client());

    for _ in 0..20 {
        let error = send(&mut service, get(server.url("/ocr")))
            .await
            .unwrap_err();
        assert!(error_of(error.into()).is_rejected());
    }

    assert_eq!(server.stats().login_calls, 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut service, get(server.url("/ocr")))
        .await
        .unwrap_err();
    assert_eq!(server.stats().login_calls, 2);
    assert_eq!(handle.stats().failures.rejected, 2);
}

#[tokio::test(start_paused = true)]
async fn wrong_password_slows_down_to_minutes() {
    let server = MockServer::builder()
        .user(USERNAME, "another password")
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());

    // Ten requests a second for ten minutes.
    let results = timeline(
        &mut service,
        &server,
        Duration::from_millis(100),
        Duration::from_secs(600),
    )
    .await;

    assert_eq!(failures(&results).len(), results.len());
    // Delays of 0.5 s doubling up to 300 s: 11 attempts in ten minutes, where a 30 s cap
    // would give about 25.
    let login_calls = server.stats().login_calls;
    assert!(login_calls <= 12, "{login_calls} login calls");
    assert!(login_calls >= 10, "{login_calls} login calls");
}

#[tokio::test(start_paused = true)]
async fn failed_renewal_keeps_valid_token() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.set_refresh_fault(Some(Fault::Html502));
    server.set_login_fault(Some(Fault::Html502));
    tokio::time::sleep(Duration::from_secs(76)).await;
    // Every second until the token's margin (5 s before expiry) the old token still works.
    for _ in 0..18 {
        let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expired = send(&mut service, get(server.url("/ocr"))).await;

    assert!(matches!(
        error_of(expired.unwrap_err().into()),
        Error::Unavailable { .. }
    ));
    let stats = server.stats();
    assert_eq!(stats.rejected, 0);
    // Each renewal tries the refresh once, then the login with its retries.
    assert!(stats.refresh_calls >= 2, "{stats:?}");
    assert!(
        stats.login_calls >= 1 + 3 * stats.refresh_calls - 1,
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_expires_in_uses_jwt_exp() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(120))
        .expires_in(ExpiresIn::Omit)
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();

    handle.login().await.unwrap();
    let left = handle.expires_in().unwrap();

    assert!(left <= Duration::from_secs(120));
    assert!(left >= Duration::from_secs(115));
}

#[tokio::test(start_paused = true)]
async fn huge_expires_in_is_capped() {
    let server = MockServer::builder()
        .expires_in(ExpiresIn::Value(serde_json::json!(1e15)))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();

    handle.login().await.unwrap();

    assert!(handle.expires_in().unwrap() <= MAX_TOKEN_LIFETIME);
}

#[tokio::test(start_paused = true)]
async fn oversized_reply_is_rejected() {
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(Fault::reply("x".repeat(70_000)));
    let layer = builder(&server).build().unwrap();

    let error = layer.handle().login().await.unwrap_err();

    assert!(
        matches!(error, Error::InvalidReply { field: "body", .. }),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_policy_retries_transient_token_errors() {
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(Fault::status(503));
    let layer = builder(&server).fetch_attempts(1).build().unwrap();
    let mut service = ServiceBuilder::new()
        .layer(RetryLayer::new(TokenRetryPolicy::new(2)))
        .timeout(Duration::from_secs(30))
        .layer(layer)
        .service(client());

    let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().login_calls, 2);
}

#[tokio::test(start_paused = true)]
async fn retry_policy_skips_rejected_credentials() {
    let server = MockServer::builder()
        .user(USERNAME, "another password")
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new()
        .layer(RetryLayer::new(TokenRetryPolicy::new(3)))
        .timeout(Duration::from_secs(30))
        .layer(layer)
        .service(client());

    let error = send(&mut service, get(server.url("/ocr")))
        .await
        .unwrap_err();

    assert!(error_of(error).is_rejected());
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_layer_stops_its_tasks() {
    let server = MockServer::start().await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    handle.login().await.unwrap();
    let service = ServiceBuilder::new().layer(layer).service(client());
    let with_layer = metrics.num_alive_tasks();

    drop(service);
    drop(handle);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }

    // The phase timer of the token is gone; connection tasks of the dropped clients may
    // linger, so only the timer is counted here.
    assert!(metrics.num_alive_tasks() < with_layer);
}

#[tokio::test(start_paused = true)]
async fn unreadable_refresh_reply_falls_back_to_login() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    server.set_refresh_fault(Some(Fault::reply("<html>not a token reply</html>")));
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    tokio::time::sleep(Duration::from_secs(96)).await;
    let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(96)).await;
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    // The first renewal tries the refresh endpoint once, then logs in and drops the
    // refresh token; the login's new refresh token is tried again at the next renewal.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.stats().refresh_calls, 2);
    assert_eq!(server.stats().logins, 3);
    assert_eq!(handle.stats().refresh_failures, 2);
}

#[test]
fn fetch_lost_with_its_runtime_is_started_again() {
    // The mock runs on a runtime of its own, so it outlives the runtime that starts the
    // first login.
    let mock_runtime = tokio::runtime::Runtime::new().unwrap();
    let server = mock_runtime.block_on(async {
        MockServer::builder()
            .login_latency(Duration::from_millis(300))
            .start()
            .await
            .unwrap()
    });
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();

    let first_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first_runtime.block_on(async {
        let login = handle.login();
        let _ = tokio::time::timeout(Duration::from_millis(50), login).await;
    });
    drop(first_runtime);
    let second_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let result = second_runtime.block_on(handle.login());

    // The first login reached the server, but its reply was lost with the runtime.
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(server.stats().login_calls, 2);
    drop(mock_runtime);
}

#[test]
fn renewal_starts_from_outside_any_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(async {
        MockServer::builder()
            .token_lifetime(Duration::from_secs(2))
            .start()
            .await
            .unwrap()
    });
    let layer = builder(&server).build().unwrap();
    runtime.block_on(layer.handle().login()).unwrap();
    // An inner service that needs no runtime, called from this thread, which has none.
    let inner = tower::service_fn(|_request: Request<Full<Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    });
    let mut service = ServiceBuilder::new().layer(layer).service(inner);

    std::thread::sleep(Duration::from_millis(1600));
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    assert!(service.poll_ready(&mut context).is_ready());
    let mut future = std::pin::pin!(service.call(get(server.url("/ocr"))));
    let response = future.as_mut().poll(&mut context);
    std::thread::sleep(Duration::from_millis(300));

    assert!(matches!(response, std::task::Poll::Ready(Ok(_))));
    assert_eq!(server.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn panicking_login_is_retried_after_a_delay() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let login = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let call = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            assert!(call > 0, "the first login panics");
            let body = r#"{"success":true,"result":{"token":"t","expires_in":300}}"#;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
        }
    });
    let layer = bigvision_auth::BigVisionAuthLayer::builder(
        login,
        bigvision_auth::Credentials::new(USERNAME, PASSWORD),
    )
    .base_url("http://127.0.0.1:9/api")
    .build()
    .unwrap();
    let handle = layer.handle();

    let first = handle.login().await;
    let during_delay = handle.login().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_delay = handle.login().await;

    assert!(matches!(first, Err(Error::Aborted)), "{first:?}");
    assert!(
        matches!(during_delay, Err(Error::Aborted)),
        "{during_delay:?}"
    );
    assert!(after_delay.is_ok(), "{after_delay:?}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Sends a request every `every` for `total` and returns the statuses, or the error's text.
async fn timeline<S>(
    service: &mut S,
    server: &MockServer,
    every: Duration,
    total: Duration,
) -> Vec<Result<StatusCode, String>>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Display,
{
    let mut results = Vec::new();
    let end = Instant::now() + total;
    while Instant::now() < end {
        tokio::time::sleep(every).await;
        let result = send(service, get(server.url("/ocr"))).await;
        results.push(
            result
                .map(|response| response.status())
                .map_err(|error| error.to_string()),
        );
    }
    results
}

fn failures(results: &[Result<StatusCode, String>]) -> Vec<&Result<StatusCode, String>> {
    results
        .iter()
        .filter(|result| !matches!(result, Ok(StatusCode::OK)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn failing_refresh_falls_back_to_login() {
    for fault in [Fault::status(500), Fault::Stall] {
        let server = MockServer::builder()
            .token_lifetime(Duration::from_secs(100))
            .start()
            .await
            .unwrap();
        let layer = builder(&server).build().unwrap();
        let mut service = ServiceBuilder::new().layer(layer).service(client());
        send(&mut service, get(server.url("/ocr"))).await.unwrap();

        server.set_refresh_fault(Some(fault.clone()));
        let results = timeline(
            &mut service,
            &server,
            Duration::from_secs(5),
            Duration::from_secs(400),
        )
        .await;

        let failed = failures(&results);
        assert!(failed.is_empty(), "{fault:?}: {failed:?}");
        let stats = server.stats();
        assert_eq!(stats.refreshes, 0, "{fault:?}");
        assert!(stats.refresh_calls >= 4, "{fault:?}: {stats:?}");
        // Each failed refresh is followed by one login, and nothing else is called.
        assert_eq!(
            stats.login_calls,
            1 + stats.refresh_calls,
            "{fault:?}: {stats:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_ended_early_are_renewed_each_time() {
    // The server ends each token after 30 s but reports a lifetime of 300 s.
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(30))
        .expires_in(ExpiresIn::Value(serde_json::json!(300)))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());

    let results = timeline(
        &mut service,
        &server,
        Duration::from_secs(1),
        Duration::from_secs(600),
    )
    .await;

    // Every rejection renews the token and the request is replayed, so no caller sees it.
    assert!(failures(&results).is_empty(), "{:?}", failures(&results));
    let stats = server.stats();
    assert!(stats.rejected >= 15, "{stats:?}");
    assert!(
        stats.logins + stats.refreshes <= stats.rejected + 1,
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn quick_second_revocation_is_replayed() {
    let server = MockServer::start().await.unwrap();
    let layer = builder(&server).build().unwrap();
    let mut service = ServiceBuilder::new().layer(layer).service(client());
    send(&mut service, get(server.url("/ocr"))).await.unwrap();

    server.revoke_all();
    let first = send(&mut service, get(server.url("/ocr"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.revoke_all();
    let second = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(server.stats().rejected, 2);
}

/// Returns a layer pointed at the mock that sends its login calls through `login`.
fn layer_with_login_service<L>(server: &MockServer, login: L) -> bigvision_auth::BigVisionAuthLayer
where
    L: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    L::Future: Send,
    L::Error: Into<BoxError>,
{
    bigvision_auth::BigVisionAuthLayer::builder(
        login,
        bigvision_auth::Credentials::new(USERNAME, PASSWORD),
    )
    .base_url(server.base_url())
    .build()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn login_shares_concurrency_limit_with_requests() {
    let server = MockServer::start().await.unwrap();
    let limited = ServiceBuilder::new().concurrency_limit(2).service(client());
    let layer = layer_with_login_service(&server, limited.clone());
    let service = ServiceBuilder::new().layer(layer).service(limited);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut service = service.clone();
        let request = get(server.url("/ocr"));
        tasks.spawn(async move { send(&mut service, request).await.map(|r| r.status()) });
    }
    let started = Instant::now();
    let mut statuses = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        statuses.push(joined.unwrap().unwrap());
    }

    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.stats().login_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn login_shares_buffer_with_requests() {
    let server = MockServer::start().await.unwrap();
    let buffered = tower::buffer::Buffer::new(client(), 1);
    let layer = layer_with_login_service(&server, buffered.clone());
    let mut service = ServiceBuilder::new().layer(layer).service(buffered);

    let started = Instant::now();
    let response = send(&mut service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// A program that drives a current-thread runtime only inside `block_on`, once per request.
#[test]
fn runtime_driven_per_request_sends_no_expired_token() {
    let (addr_sender, addr) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let server = MockServer::builder()
                .token_lifetime(Duration::from_secs(2))
                .start()
                .await
                .unwrap();
            addr_sender
                .send((server.base_url(), server.url("/ocr")))
                .unwrap();
            let _ = stopped.await;
            server.stats()
        })
    });
    let (base_url, api_url) = addr.recv().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let layer = runtime.block_on(async {
        bigvision_auth::BigVisionAuthLayer::builder(
            client(),
            bigvision_auth::Credentials::new(USERNAME, PASSWORD),
        )
        .base_url(base_url)
        .build()
        .unwrap()
    });
    let mut service = ServiceBuilder::new().layer(layer).service(client());

    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = runtime.block_on(send(&mut service, get(api_url.clone())));
        statuses.push(response.unwrap().status());
        // Past the token's expiry, with the runtime idle.
        std::thread::sleep(Duration::from_millis(2_300));
    }
    stop.send(()).unwrap();
    let stats = server_thread.join().unwrap();

    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(stats.rejected, 0, "{stats:?}");
}
