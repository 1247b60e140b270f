//! The layer's tracing events: login, background renewal, and the replay after the API
//! rejects a token, printed by `tracing-subscriber`. It runs against the crate's mock
//! server on 127.0.0.1 with a 4-second token.
//!
//! ```text
//! cargo run --example tracing --features mock
//! RUST_LOG=bigvision_auth=trace cargo run --example tracing --features mock
//! ```
//!
//! Without `RUST_LOG`, it shows the crate's debug events. No event contains a password or a
//! token.

use std::time::Duration;

use bigvision_auth::mock::MockServer;
use bigvision_auth::{BigVisionAuthLayer, BoxError, Credentials};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("bigvision_auth=debug,info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let server = MockServer::builder()
        .token_lifetime(Duration::from_secs(4))
        .start()
        .await?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let auth =
        BigVisionAuthLayer::builder(client.clone(), Credentials::new("demo", "demo-password"))
            .base_url(server.base_url())
            .build()?;
    let mut service = ServiceBuilder::new().layer(auth).service(client);
    let get = || Request::get(server.url("/ocr")).body(Full::new(Bytes::new()));

    tracing::info!("first request: logs in");
    service.ready().await?.call(get()?).await?;

    tracing::info!("request inside the renewal window: renews in the background");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    service.ready().await?.call(get()?).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    tracing::info!("the API rejects the token: renews and replays");
    server.reject_next_api_calls(1);
    let response = service.ready().await?.call(get()?).await?;
    tracing::info!(status = %response.status(), "replayed request answered");
    Ok(())
}
