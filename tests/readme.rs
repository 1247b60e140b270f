//! Runs the README's code examples against the mock server, and checks that each Rust code
//! block of the README appears in this file unchanged.
#![cfg(feature = "mock")]

use std::time::Duration;

use bigvision_auth::mock::MockServer;
use bigvision_auth::{BigVisionAuthLayer, BoxError, Credentials, TokenRetryPolicy};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::retry::RetryLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::follow_redirect::FollowRedirectLayer;

// README: first example, verbatim.
async fn fetch_user_info(
    base_url: &str,
    credentials: Credentials,
) -> Result<http::StatusCode, BoxError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        // Also allows http, for a server on loopback such as the mock.
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector);

    let auth = BigVisionAuthLayer::builder(client.clone(), credentials)
        .base_url(base_url)
        // The BigVision API expects `Content-Type: application/json` on every call.
        .default_content_type(http::HeaderValue::from_static("application/json"))
        .build()?;
    // Fail at start-up on a wrong password, not at the first request.
    auth.handle().login().await?;

    let service = ServiceBuilder::new()
        .timeout(Duration::from_secs(30))
        .layer(auth)
        .service(client);

    let request =
        http::Request::get(format!("{base_url}/user/info")).body(Full::new(Bytes::new()))?;
    let response = service.oneshot(request).await?;
    Ok(response.status())
}
// README: end of first example.

#[tokio::test]
async fn readme_example_runs_against_mock() {
    let server = MockServer::start().await.unwrap();

    let status = fetch_user_info(
        &server.base_url(),
        Credentials::new("demo", "demo-password"),
    )
    .await
    .unwrap();

    assert_eq!(status, 200);
    let stats = server.stats();
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.authorized, 1);
    assert_eq!(stats.rejected, 0);
}

#[tokio::test]
async fn readme_stack_runs_against_mock() {
    let server = MockServer::start().await.unwrap();
    let base_url = server.base_url();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth =
        BigVisionAuthLayer::builder(client.clone(), Credentials::new("demo", "demo-password"))
            .base_url(base_url.as_str())
            .build()
            .unwrap();

    // README: stack example, verbatim.
    let service = ServiceBuilder::new()
        // Retries requests that failed on a transient token-endpoint error.
        .layer(RetryLayer::new(TokenRetryPolicy::new(2)))
        // Bounds each attempt, token wait included.
        .timeout(Duration::from_secs(30))
        // Every redirect hop passes through the layer's origin check.
        .layer(FollowRedirectLayer::new())
        .layer(auth)
        .service(client);
    // README: end of stack example.

    let request = http::Request::get(format!("{base_url}/ocr"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();

    assert_eq!(response.status(), 200);
    assert_eq!(server.stats().authorized, 1);
}

#[test]
fn readme_code_blocks_match_this_file() {
    let readme = include_str!("../README.md");
    let this_file = dedent(include_str!("readme.rs"));

    let blocks = rust_code_blocks(readme);

    assert_eq!(
        blocks.len(),
        2,
        "expected two Rust code blocks in README.md"
    );
    for block in blocks {
        assert!(
            this_file.contains(&dedent(&block)),
            "README.md has a Rust code block that tests/readme.rs does not contain verbatim:\n{block}"
        );
    }
}

/// Returns the bodies of the README's `rust` code blocks.
fn rust_code_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim_start() == "```rust" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// Removes the indentation of every line, so a block nested in a function still matches.
fn dedent(text: &str) -> String {
    text.lines()
        .map(|line| format!("{}\n", line.trim_start()))
        .collect()
}
