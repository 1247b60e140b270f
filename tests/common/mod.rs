//! Shared set-up for the integration tests: a hyper-util client, the mock server and a layer
//! pointed at it.
#![allow(dead_code)]

use std::time::Duration;

use bigvision_auth::mock::MockServer;
use bigvision_auth::{Backoff, BigVisionAuthLayer, Builder, Credentials};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceExt};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub const USERNAME: &str = "demo";
pub const PASSWORD: &str = "demo-password";

/// The maximum time a single request may take in a test before it counts as hung. With the
/// clock paused, a hung request makes the runtime jump to this deadline at once.
pub const HANG_LIMIT: Duration = Duration::from_secs(3600);

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .retry_canceled_requests(false)
        .build_http()
}

/// Returns a builder pointed at the mock, with exact (jitter-free) backoff.
pub fn builder(server: &MockServer) -> Builder {
    builder_with_credentials(server, Credentials::new(USERNAME, PASSWORD))
}

/// Returns a builder pointed at the mock that logs in with `credentials`, with exact backoff.
pub fn builder_with_credentials(server: &MockServer, credentials: Credentials) -> Builder {
    BigVisionAuthLayer::builder(client(), credentials)
        .base_url(server.base_url())
        .backoff(Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).without_jitter())
}

pub fn get(url: String) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

pub fn post(url: String, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

pub async fn body_text(response: Response<Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Sends one request on a clone of `service`, failing the test if it does not finish within
/// [`HANG_LIMIT`].
pub async fn send<S, R>(service: &S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R> + Clone,
{
    tokio::time::timeout(HANG_LIMIT, service.clone().oneshot(request))
        .await
        .expect("request did not finish within the hang limit")
}

/// Returns the bearer tokens of the protected API calls the mock received, oldest first.
pub fn api_tokens(server: &MockServer) -> Vec<Option<String>> {
    server
        .api_calls()
        .into_iter()
        .map(|call| call.token)
        .collect()
}
