//! One process of a fleet that shares its BigVision token through Redis.
//!
//! It sends concurrent requests to a BigVision API (the mock server, in the tests) through
//! a layer with a [`RedisTokenStore`], prints one line with its counts and exits with
//! status 1 when a request failed. The `redis_fleet` test starts several of these
//! processes against one mock and one Redis and counts the logins.
//!
//! ```text
//! BIGVISION_BASE_URL=http://127.0.0.1:41234/api REDIS_URL=redis://127.0.0.1:6379 \
//!     cargo run --example fleet_worker --features mock,redis
//! ```
//!
//! Environment: `BIGVISION_BASE_URL` (required), `REDIS_URL` (required), `REQUESTS`
//! (concurrent requests, default 50), `BIGVISION_USERNAME` and `BIGVISION_PASSWORD`
//! (default: the mock's user `demo`).

use std::process::ExitCode;
use std::time::Duration;

use bigvision_auth::{BigVisionAuthLayer, Credentials, RedisTokenStore};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

/// The maximum time one request may take, token wait included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn required_env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set; see the example's documentation"))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fleet_worker: {error}");
            ExitCode::from(2)
        }
    }
}

/// Sends the requests and returns how many failed.
async fn run() -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let base_url = required_env("BIGVISION_BASE_URL")?;
    let redis_url = required_env("REDIS_URL")?;
    let requests: usize = match std::env::var("REQUESTS") {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("REQUESTS must be a whole number, got {text:?}"))?,
        Err(_) => 50,
    };
    let username = std::env::var("BIGVISION_USERNAME").unwrap_or_else(|_| "demo".to_owned());
    let password =
        std::env::var("BIGVISION_PASSWORD").unwrap_or_else(|_| "demo-password".to_owned());

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth = BigVisionAuthLayer::builder(client.clone(), Credentials::new(username, password))
        .base_url(&base_url)
        .token_store(RedisTokenStore::from_url(&redis_url)?)
        .build()?;
    let service = ServiceBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .layer(auth.clone())
        .service(client);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..requests {
        let request =
            http::Request::get(format!("{base_url}/ocr")).body(Full::new(Bytes::new()))?;
        let service = service.clone();
        tasks.spawn(async move { service.oneshot(request).await });
    }
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(response)) if response.status().is_success() => {}
            Ok(Ok(response)) => {
                eprintln!(
                    "fleet_worker: request failed with status {}",
                    response.status()
                );
                failed += 1;
            }
            Ok(Err(error)) => {
                eprintln!("fleet_worker: request failed: {error}");
                failed += 1;
            }
            Err(error) => {
                eprintln!("fleet_worker: request task failed: {error}");
                failed += 1;
            }
        }
    }

    let stats = auth.handle().stats();
    println!(
        "requests={requests} failed={failed} logins={} refreshes={}",
        stats.logins, stats.refreshes
    );
    Ok(failed)
}
