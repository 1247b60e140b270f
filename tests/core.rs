//! Behaviour of the layer against the mock BigVision server: single flight, renewal,
//! fallback from refresh to login, typed errors and which requests get the token.

mod common;

use std::collections::HashSet;
use std::error::Error as StdError;
use std::time::Duration;

use bigvision_auth::mock::{Fault, MockServer};
use bigvision_auth::{AuthHandle, BigVisionAuth, BoxError, Credentials, Endpoint, Error};
use common::*;
use serde_json::json;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

type AuthService = BigVisionAuth<HttpClient>;

/// A password that the mock's default user does not have.
const WRONG_PASSWORD: &str = "wrong-password-4b1e";

async fn start_layered(server: &MockServer) -> (AuthService, AuthHandle) {
    let layer = builder(server).build().unwrap();
    let handle = layer.handle();
    (layer.layer(client()), handle)
}

/// Spawns `count` requests to `/ocr`, each on its own clone of `service`.
fn spawn_requests(
    service: &AuthService,
    server: &MockServer,
    count: usize,
) -> Vec<tokio::task::JoinHandle<Result<http::Response<hyper::body::Incoming>, Error>>> {
    (0..count)
        .map(|_| {
            let service = service.clone();
            let request = get(server.url("/ocr"));
            tokio::spawn(async move { send(&service, request).await })
        })
        .collect()
}

/// Returns the Display and Debug output of `error` and of every error in its source chain.
fn error_texts(error: &(dyn StdError + 'static)) -> Vec<String> {
    let mut texts = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        texts.push(current.to_string());
        texts.push(format!("{current:?}"));
        next = current.source();
    }
    texts
}

// Single flight.

#[tokio::test(start_paused = true)]
async fn cold_start_logs_in_once() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;

    let calls = spawn_requests(&service, &server, 100);
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let stats = server.stats();
    assert_eq!(stats.login_calls, 1);
    assert_eq!(stats.authorized, 100);
    assert_eq!(handle.stats().logins, 1);
    let tokens: HashSet<_> = api_tokens(&server).into_iter().collect();
    assert_eq!(tokens.len(), 1);
    assert!(!tokens.contains(&None));
}

#[tokio::test(start_paused = true)]
async fn clones_and_sibling_services_share_login() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();
    let first = layer.layer(client());
    let second = layer.layer(client());

    let mut calls = spawn_requests(&first, &server, 50);
    calls.extend(spawn_requests(&second, &server, 50));
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().unwrap().status());
    }

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().authorized, 100);
    assert_eq!(handle.stats().logins, 1);
    let tokens: HashSet<_> = api_tokens(&server).into_iter().collect();
    assert_eq!(tokens.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn aborted_initiator_does_not_cancel_login() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;

    let initiator = spawn_requests(&service, &server, 1).remove(0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = spawn_requests(&service, &server, 2);
    tokio::time::sleep(Duration::from_millis(10)).await;
    initiator.abort();
    let initiator_result = initiator.await;

    assert!(initiator_result.unwrap_err().is_cancelled());
    for call in waiting {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
    }
    let later = send(&service, get(server.url("/ocr"))).await.unwrap();
    assert_eq!(later.status(), 200);
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(handle.stats().logins, 1);
    let tokens: HashSet<_> = api_tokens(&server).into_iter().collect();
    assert_eq!(tokens.len(), 1);
    assert_eq!(server.stats().authorized, 3);
}

#[tokio::test(start_paused = true)]
async fn timed_out_initiator_does_not_cancel_login() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;

    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        service.clone().oneshot(get(server.url("/ocr"))),
    )
    .await;
    let later = send(&service, get(server.url("/ocr"))).await.unwrap();

    assert!(dropped.is_err(), "the first request should have timed out");
    assert_eq!(later.status(), 200);
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(handle.stats().logins, 1);
    assert_eq!(server.stats().authorized, 1);
}

// Renewal.

#[tokio::test(start_paused = true)]
async fn renewal_window_sends_old_token_while_refreshing() {
    let refresh_latency = Duration::from_secs(2);
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .refresh_latency(refresh_latency)
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();

    // The default window opens 75 s into a 100 s lifetime.
    tokio::time::sleep(Duration::from_secs(80)).await;
    let started = Instant::now();
    let in_window = send(&service, get(server.url("/ocr"))).await.unwrap();
    let elapsed = started.elapsed();
    let stats_before_refresh = handle.stats();
    let during_refresh = spawn_requests(&service, &server, 5);
    let mut during_statuses = Vec::new();
    for call in during_refresh {
        during_statuses.push(call.await.unwrap().unwrap().status());
    }
    let stats_during_refresh = handle.stats();
    tokio::time::sleep(refresh_latency + Duration::from_secs(1)).await;
    let after_refresh = send(&service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(in_window.status(), 200);
    assert!(
        elapsed < refresh_latency,
        "the request in the window took {elapsed:?}, so it waited for the refresh"
    );
    assert_eq!(stats_before_refresh.refreshes, 0);
    assert!(
        during_statuses.iter().all(|status| *status == 200),
        "{during_statuses:?}"
    );
    assert_eq!(stats_during_refresh.refreshes, 0);
    assert_eq!(after_refresh.status(), 200);

    let tokens = api_tokens(&server);
    assert_eq!(tokens.len(), 8);
    let old_token = tokens[0].clone();
    assert!(old_token.is_some());
    assert!(
        tokens[1..7].iter().all(|token| *token == old_token),
        "requests before the refresh finished must carry the old token"
    );
    assert_ne!(tokens[7], old_token);
    assert!(tokens[7].is_some());

    let server_stats = server.stats();
    assert_eq!(server_stats.login_calls, 1);
    assert_eq!(server_stats.refresh_calls, 1);
    assert_eq!(server_stats.refreshes, 1);
    let stats = handle.stats();
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.refreshes, 1);
}

/// Sends one request through `service` itself, not through a clone of it.
async fn send_through(service: &mut AuthService, server: &MockServer) -> http::StatusCode {
    let ready = tokio::time::timeout(HANG_LIMIT, service.ready())
        .await
        .expect("service did not become ready within the hang limit")
        .unwrap();
    let response = tokio::time::timeout(HANG_LIMIT, ready.call(get(server.url("/ocr"))))
        .await
        .expect("request did not finish within the hang limit")
        .unwrap();
    response.status()
}

#[tokio::test(start_paused = true)]
async fn one_service_sends_each_new_token() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let (mut service, handle) = start_layered(&server).await;

    let mut statuses = Vec::new();
    statuses.push(send_through(&mut service, &server).await);
    for _ in 0..3 {
        // In the renewal window: this request carries the old token and starts a refresh.
        tokio::time::sleep(Duration::from_secs(80)).await;
        statuses.push(send_through(&mut service, &server).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        statuses.push(send_through(&mut service, &server).await);
    }
    server.revoke_all();
    statuses.push(send_through(&mut service, &server).await);
    statuses.push(send_through(&mut service, &server).await);

    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    let tokens = api_tokens(&server);
    let tokens: Vec<&str> = tokens
        .iter()
        .map(|token| token.as_deref().unwrap())
        .collect();
    assert_eq!(tokens.len(), 10, "one call per request and one replay");
    for cycle in 0..3 {
        let (before, after) = (tokens[2 * cycle + 1], tokens[2 * cycle + 2]);
        assert_eq!(
            before,
            tokens[2 * cycle],
            "cycle {cycle}: renewal started early"
        );
        assert_ne!(
            after, before,
            "cycle {cycle}: the service kept the old token"
        );
    }
    // After the revocation: the rejected call, its replay with a new token, then one more.
    assert_eq!(tokens[7], tokens[6]);
    assert_ne!(tokens[8], tokens[7]);
    assert_eq!(tokens[9], tokens[8]);
    let stats = handle.stats();
    assert_eq!(stats.refreshes, 3);
    assert_eq!(stats.logins, 2);
}

#[tokio::test(start_paused = true)]
async fn refresh_token_used_while_valid() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();

    // Two renewal cycles: each token is due 75 s after it arrives.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(80)).await;
        send(&service, get(server.url("/ocr"))).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        send(&service, get(server.url("/ocr"))).await.unwrap();
    }

    let server_stats = server.stats();
    assert_eq!(server_stats.login_calls, 1);
    assert_eq!(server_stats.refresh_calls, 2);
    assert_eq!(server_stats.refreshes, 2);
    assert_eq!(server_stats.authorized, 5);
    let stats = handle.stats();
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.refreshes, 2);
    assert_eq!(stats.refresh_failures, 0);
    let tokens: HashSet<_> = api_tokens(&server).into_iter().collect();
    assert_eq!(tokens.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn expired_refresh_token_falls_back_to_login() {
    // Without rotation, the refresh token keeps its first deadline: 150 s after the login.
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .refresh_lifetime(Duration::from_secs(150))
        .rotate_refresh_tokens(false)
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();

    // At 80 s the refresh token is still valid.
    tokio::time::sleep(Duration::from_secs(80)).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();
    let stats_after_refresh = handle.stats();
    // The refreshed token is due at about 155 s, after the refresh token expired at 150 s.
    tokio::time::sleep(Duration::from_secs(80)).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = send(&service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(stats_after_refresh.refreshes, 1);
    assert_eq!(stats_after_refresh.logins, 1);
    assert_eq!(last.status(), 200);
    let server_stats = server.stats();
    assert_eq!(server_stats.login_calls, 2);
    assert_eq!(server_stats.refresh_calls, 1);
    assert_eq!(server_stats.authorized, 5);
    let stats = handle.stats();
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.refresh_failures, 0);
    let tokens: HashSet<_> = api_tokens(&server).into_iter().collect();
    assert_eq!(tokens.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn rejected_refresh_falls_back_to_login_once() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();
    server.push_refresh_fault(Fault::status(401));

    tokio::time::sleep(Duration::from_secs(80)).await;
    let in_window = send(&service, get(server.url("/ocr"))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_renewal = send(&service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(in_window.status(), 200);
    assert_eq!(after_renewal.status(), 200);
    let server_stats = server.stats();
    assert_eq!(server_stats.refresh_calls, 1);
    assert_eq!(server_stats.refreshes, 0);
    assert_eq!(server_stats.login_calls, 2);
    assert_eq!(server_stats.logins, 2);
    let stats = handle.stats();
    assert_eq!(stats.refresh_failures, 1);
    assert_eq!(stats.refreshes, 0);
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.login_failures, 0);
    let tokens = api_tokens(&server);
    assert_eq!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
}

#[tokio::test(start_paused = true)]
async fn revoked_tokens_recover_with_one_login() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();

    tokio::time::sleep(Duration::from_secs(80)).await;
    server.revoke_all();
    let response = send(&service, get(server.url("/ocr"))).await.unwrap();
    let later = send(&service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(later.status(), 200);
    let server_stats = server.stats();
    assert_eq!(server_stats.refresh_calls, 1);
    assert_eq!(server_stats.refreshes, 0);
    assert_eq!(server_stats.login_calls, 2);
    assert_eq!(server_stats.rejected_unknown, 1);
    assert_eq!(server_stats.authorized, 3);
    let stats = handle.stats();
    assert_eq!(stats.logins, 2);
    assert_eq!(stats.refresh_failures, 1);
    assert_eq!(stats.replays, 1);
}

#[tokio::test(start_paused = true)]
async fn rejected_token_is_replaced_and_replayed() {
    let server = MockServer::start().await.unwrap();
    let (service, handle) = start_layered(&server).await;
    send(&service, get(server.url("/ocr"))).await.unwrap();
    server.reject_next_api_calls(1);

    let response = send(&service, post(server.url("/ocr"), "{}"))
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    let statuses: Vec<u16> = server.api_calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [200, 401, 200]);
    let tokens = api_tokens(&server);
    assert_eq!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
    // The token was rejected while the refresh token was valid, so the renewal is a refresh.
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().refresh_calls, 1);
    let stats = handle.stats();
    assert_eq!(stats.rejected_tokens, 1);
    assert_eq!(stats.replays, 1);
}

// Errors.

#[tokio::test(start_paused = true)]
async fn wrong_password_is_login_rejected() {
    let server = MockServer::start().await.unwrap();
    let layer = builder_with_credentials(&server, Credentials::new(USERNAME, WRONG_PASSWORD))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(client());

    let error = send(&service, get(server.url("/ocr"))).await.unwrap_err();
    let boxed: BoxError = error.into();
    let error = boxed
        .downcast_ref::<Error>()
        .expect("service error is Error");

    assert!(
        matches!(error, Error::LoginRejected { status, .. } if *status == 401),
        "{error:?}"
    );
    assert!(error.is_rejected());
    assert!(!error.is_transient());
    assert_eq!(error.endpoint(), Some(Endpoint::Login));
    for text in error_texts(error) {
        assert!(!text.contains(WRONG_PASSWORD), "{text}");
    }
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(server.stats().authorized, 0);
    assert_eq!(handle.stats().login_failures, 1);
    assert_eq!(handle.stats().logins, 0);
}

#[tokio::test(start_paused = true)]
async fn rejection_echoing_password_is_redacted() {
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(Fault::json(
        401,
        json!({"success": false, "message": format!("password {WRONG_PASSWORD} is wrong")}),
    ));
    let layer = builder_with_credentials(&server, Credentials::new(USERNAME, WRONG_PASSWORD))
        .build()
        .unwrap();

    let error = layer.handle().login().await.unwrap_err();

    assert!(matches!(error, Error::LoginRejected { .. }), "{error:?}");
    for text in error_texts(&error) {
        assert!(!text.contains(WRONG_PASSWORD), "{text}");
    }
    assert!(error.to_string().contains("[redacted]"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn failed_login_fails_fast_during_backoff() {
    let server = MockServer::start().await.unwrap();
    let layer = builder_with_credentials(&server, Credentials::new(USERNAME, WRONG_PASSWORD))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(client());

    let first = send(&service, get(server.url("/ocr"))).await.unwrap_err();
    let second = send(&service, get(server.url("/ocr"))).await.unwrap_err();

    assert!(matches!(first, Error::LoginRejected { .. }), "{first:?}");
    assert!(matches!(second, Error::LoginRejected { .. }), "{second:?}");
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(handle.stats().fast_failures, 1);
}

/// Sends one request through a layer whose first login reply is `fault`, and returns the
/// error. Checks that the layer made exactly one login call.
async fn login_error_for(fault: Fault) -> Error {
    let server = MockServer::start().await.unwrap();
    server.push_login_fault(fault);
    let (service, handle) = start_layered(&server).await;

    let error = send(&service, get(server.url("/ocr"))).await.unwrap_err();

    assert_eq!(server.stats().login_calls, 1, "{error:?}");
    assert_eq!(server.stats().authorized, 0, "{error:?}");
    assert_eq!(handle.stats().login_failures, 1, "{error:?}");
    error
}

fn token_reply(token: &str, expires_in: serde_json::Value) -> Fault {
    Fault::reply_json(json!({
        "success": true,
        "result": {"token": token, "expires_in": expires_in},
    }))
}

#[tokio::test(start_paused = true)]
async fn non_json_reply_is_invalid_body() {
    let error = login_error_for(Fault::reply("<html>not json</html>")).await;

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                endpoint: Endpoint::Login,
                field: "body",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("is not JSON"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn success_false_is_login_rejected() {
    let error = login_error_for(Fault::reply_json(
        json!({"success": false, "message": "account locked"}),
    ))
    .await;

    assert!(
        matches!(&error, Error::LoginRejected { status, .. } if *status == 200),
        "{error:?}"
    );
    assert!(error.to_string().contains("account locked"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn missing_token_is_invalid_reply() {
    let error = login_error_for(Fault::reply_json(
        json!({"success": true, "result": {"expires_in": 300}}),
    ))
    .await;

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                field: "result.token",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn missing_result_is_invalid_reply() {
    let error = login_error_for(Fault::reply_json(json!({"success": true}))).await;

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                field: "result",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn zero_expires_in_is_invalid_reply() {
    let error = login_error_for(token_reply("abc.def.ghi", json!(0))).await;

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                field: "expires_in",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn negative_expires_in_is_invalid_reply() {
    let error = login_error_for(token_reply("abc.def.ghi", json!(-5))).await;

    assert!(
        matches!(
            error,
            Error::InvalidReply {
                field: "expires_in",
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn token_with_space_is_invalid_reply() {
    let token = "secret token-9c2d";

    let error = login_error_for(token_reply(token, json!(300))).await;

    assert!(
        matches!(error, Error::InvalidReply { field: "token", .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with("invalid login reply: `token`"),
        "{error}"
    );
    for text in error_texts(&error) {
        assert!(!text.contains(token), "{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn token_with_newline_is_invalid_reply() {
    let token = "secret\ntoken-9c2d";

    let error = login_error_for(token_reply(token, json!(300))).await;

    assert!(
        matches!(error, Error::InvalidReply { field: "token", .. }),
        "{error:?}"
    );
    for text in error_texts(&error) {
        assert!(!text.contains("token-9c2d"), "{text}");
    }
}

// The handle.

#[tokio::test(start_paused = true)]
async fn handle_login_ahead_of_first_request() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(300))
        .start()
        .await
        .unwrap();
    let (service, handle) = start_layered(&server).await;
    let expires_before_login = handle.expires_in();

    handle.login().await.unwrap();
    let expires_in = handle.expires_in().expect("a token is cached after login");
    let stats_after_login = handle.stats();
    handle.login().await.unwrap();
    let response = send(&service, get(server.url("/ocr"))).await.unwrap();

    assert_eq!(expires_before_login, None);
    assert!(expires_in <= Duration::from_secs(300), "{expires_in:?}");
    assert!(expires_in >= Duration::from_secs(299), "{expires_in:?}");
    assert_eq!(stats_after_login.logins, 1);
    assert_eq!(stats_after_login.refreshes, 0);
    assert_eq!(stats_after_login.expires_in, Some(expires_in));
    assert_eq!(response.status(), 200);
    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(handle.stats().logins, 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_handle_logins_share_one_fetch() {
    let server = MockServer::builder()
        .login_latency(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let layer = builder(&server).build().unwrap();
    let handle = layer.handle();

    let logins: Vec<_> = (0..10)
        .map(|_| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.login().await })
        })
        .collect();
    for login in logins {
        login.await.unwrap().unwrap();
    }

    assert_eq!(server.stats().login_calls, 1);
    assert_eq!(handle.stats().logins, 1);
}

#[tokio::test(start_paused = true)]
async fn expires_in_counts_down() {
    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    let (_service, handle) = start_layered(&server).await;
    handle.login().await.unwrap();

    tokio::time::sleep(Duration::from_secs(30)).await;
    let expires_in = handle.expires_in().unwrap();

    assert!(expires_in <= Duration::from_secs(70), "{expires_in:?}");
    assert!(expires_in >= Duration::from_secs(69), "{expires_in:?}");
}

// Which requests get the token.

#[tokio::test(start_paused = true)]
async fn own_authorization_header_is_kept() {
    let server = MockServer::start().await.unwrap();
    let (service, handle) = start_layered(&server).await;
    let request = http::Request::get(server.url("/ocr"))
        .header(http::header::AUTHORIZATION, "Bearer caller-token")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();

    let response = send(&service, request).await.unwrap();

    // The mock never issued `caller-token`, so it returns 401; the layer passes that on.
    assert_eq!(response.status(), 401);
    assert_eq!(api_tokens(&server), [Some("caller-token".to_owned())]);
    assert_eq!(server.stats().login_calls, 0);
    assert_eq!(handle.stats().logins, 0);
    assert_eq!(handle.stats().rejected_tokens, 0);
}

#[tokio::test(start_paused = true)]
async fn other_origin_gets_no_token() {
    let server = MockServer::start().await.unwrap();
    let other = MockServer::start().await.unwrap();
    let (service, handle) = start_layered(&server).await;
    handle.login().await.unwrap();

    let response = send(&service, get(other.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(api_tokens(&other), [None]);
    assert_eq!(other.stats().rejected_missing, 1);
    assert_eq!(other.stats().login_calls, 0);
    assert_eq!(server.stats().login_calls, 1);
    assert!(server.api_calls().is_empty());
    assert_eq!(handle.stats().rejected_tokens, 0);
}

#[tokio::test(start_paused = true)]
async fn other_origin_before_login_starts_no_login() {
    let server = MockServer::start().await.unwrap();
    let other = MockServer::start().await.unwrap();
    let (service, handle) = start_layered(&server).await;

    let response = send(&service, get(other.url("/ocr"))).await.unwrap();

    assert_eq!(response.status(), 401);
    assert_eq!(api_tokens(&other), [None]);
    assert_eq!(server.stats().login_calls, 0);
    assert_eq!(handle.stats().logins, 0);
}
