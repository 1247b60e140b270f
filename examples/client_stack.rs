//! A full client stack: retry, timeout, redirects, a concurrency limit and the layer over a
//! hyper-util client, run against the crate's mock server on 127.0.0.1.
//!
//! ```text
//! cargo run --example client_stack --features mock
//! ```
//!
//! The mock's login endpoint fails twice with 503 at first. Each fetch makes one attempt
//! here, so the first requests fail with a transient token error, and the retry layer sends
//! them again once the endpoint recovers.

use std::time::Duration;

use bigvision_auth::mock::{Fault, MockServer};
use bigvision_auth::{BigVisionAuthLayer, BoxError, Credentials, TokenRetryPolicy};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

const REQUESTS: usize = 20;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let server = MockServer::builder()
        .user("alice", "wonderland")
        .start()
        .await?;
    server.push_login_fault(Fault::status(503));
    server.push_login_fault(Fault::status(503));

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = BigVisionAuthLayer::builder(client.clone(), Credentials::new("alice", "wonderland"))
        .base_url(server.base_url())
        .fetch_attempts(1)
        .build()?;
    let handle = auth.handle();

    let service = ServiceBuilder::new()
        // Outermost, so a retry repeats the whole attempt: redirects, the wait for a
        // permit and the wait for a token. The policy retries only transient token-endpoint
        // failures (unreachable, timed out, 429, 5xx), never rejected credentials.
        .layer(RetryLayer::new(TokenRetryPolicy::new(3)))
        // Inside retry, so each attempt gets its own deadline, token wait included.
        .timeout(Duration::from_secs(10))
        // Outside the layer, so every hop of a redirect passes the layer's origin check:
        // a hop to another host never carries the token.
        .layer(FollowRedirectLayer::new())
        // Outside the layer, so it caps the calls in flight to the API. A request waiting
        // for a login holds its permit until the token arrives.
        .concurrency_limit(8)
        // Logs in once for all requests, renews in the background, sets the header.
        .layer(auth)
        .service(client);

    let mut calls = Vec::new();
    for n in 0..REQUESTS {
        let service = service.clone();
        let body = Full::new(Bytes::from(format!(r#"{{"document": {n}}}"#)));
        let request = Request::post(server.url("/ocr"))
            .header("content-type", "application/json")
            .body(body)?;
        calls.push(tokio::spawn(service.oneshot(request)));
    }
    let mut ok = 0;
    for call in calls {
        match call.await? {
            Ok(response) if response.status().is_success() => ok += 1,
            Ok(response) => println!("request answered {}", response.status()),
            Err(error) => println!("request failed: {error}"),
        }
    }

    let mock = server.stats();
    let layer = handle.stats();
    println!("{ok} of {REQUESTS} requests succeeded");
    println!(
        "mock: {} login calls ({} logins), {} API calls authorized, {} rejected",
        mock.login_calls, mock.logins, mock.authorized, mock.rejected
    );
    println!(
        "layer: {} logins, {} failed login attempts",
        layer.logins, layer.login_failures
    );
    if ok != REQUESTS {
        return Err("some requests failed".into());
    }
    Ok(())
}
